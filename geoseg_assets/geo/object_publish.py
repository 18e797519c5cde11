"""Atomic publishing to an S3-compatible bucket: the object-store counterpart of `geo/publish.py`'s `Publication`.

A step's outputs are written to local temp files, uploaded under temp keys (`<prefix>.tmp/<publication>/...`, which
no listing of outputs matches), and only once every upload is complete copied over their final keys server-side; the
temp keys are then deleted. A reader never sees a partial object (an upload killed midway leaves only a temp key or an
unfinished multipart upload, neither visible at the final key), and a failure before the copies leaves every earlier
output as it was. If a copy fails, the outputs already replaced get their earlier versions back from backup copies.

No Dagster here; the boto3 client comes from the caller.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path, PurePosixPath

from geoseg_assets.geo.publish import PublishError

TEMP_PREFIX = ".tmp/"  # under the store's prefix: publications in flight (and what killed ones left)


def object_url(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def object_key(path: str | os.PathLike, bucket: str, prefix: str) -> str:
    """The key of an object given by its GDAL path `/vsis3/<bucket>/<key>`; ValueError for a path outside the bucket's
    `prefix`."""
    head, text = f"/vsis3/{bucket}/", str(path)
    if not text.startswith(head + prefix):
        raise ValueError(f"{text}: not a path of the store s3://{bucket}/{prefix}")
    return text[len(head):]


def is_missing(exc: BaseException) -> bool:
    """Whether a boto error says the object (or bucket) does not exist."""
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def delete_keys(client, bucket: str, keys: list[str]) -> None:
    """Delete objects, 1000 keys per request (the API's limit)."""
    for start in range(0, len(keys), 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]]})


class ObjectPublication:
    """Local temp files standing for objects of one bucket; `commit` makes them the objects (all of them, or on an
    error none), `discard` drops them. Targets are the keys' GDAL paths (`/vsis3/<bucket>/<key>`), as
    `ObjectDataStore.file` gives them."""

    def __init__(self, client, bucket: str, prefix: str, staging_dir: str | os.PathLike) -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix
        self.id = uuid.uuid4().hex
        self.staging = Path(tempfile.mkdtemp(prefix=f"publication-{self.id[:8]}-", dir=staging_dir))
        self.staged: dict[PurePosixPath, Path] = {}

    def key(self, target: str | os.PathLike) -> str:
        """The object key of a target path; ValueError for a path outside this bucket."""
        return object_key(target, self.bucket, self.prefix)

    def path(self, target: str | os.PathLike) -> Path:
        """The local temp file to write `target`'s new content to (the same one if asked twice); its name ends like
        the target's, so a writer that picks its format by suffix still does."""
        target = PurePosixPath(target)
        self.key(target)
        if target not in self.staged:
            self.staged[target] = self.staging / f"{len(self.staged)}-{target.name}"
        return self.staged[target]

    def write_bytes(self, target: str | os.PathLike, data: bytes) -> PurePosixPath:
        """Stage `data` as `target`'s new content; returns `target`."""
        self.path(target).write_bytes(data)
        return PurePosixPath(target)

    def add_folder(self, target: str | os.PathLike, folder: str | os.PathLike) -> list[PurePosixPath]:
        """Stage every file under the local `folder` as the object of the same relative path under `target`."""
        folder, staged = Path(folder), []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            dest = PurePosixPath(target) / path.relative_to(folder).as_posix()
            os.link(path, self.path(dest)) if _same_device(path, self.staging) else shutil.copy2(path, self.path(dest))
            staged.append(dest)
        return staged

    def commit(self) -> None:
        """Upload every staged file under a temp key, then copy each over its final key. An error before the copies
        leaves every object as it was; one during them puts back the earlier versions of those already replaced
        (PublishError says which target failed)."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        missing = [str(t) for t, tmp in self.staged.items() if not tmp.exists()]
        if missing:
            self.discard()
            raise FileNotFoundError(f"staged outputs were never written: {missing}")
        temp_root = f"{self.prefix}{TEMP_PREFIX}{self.id}/"
        uploaded: dict[str, str] = {}  # final key -> temp key
        backups: dict[str, str | None] = {}  # final key -> backup key (None: there was no object)
        current = None
        try:
            for target, local in self.staged.items():
                current = key = self.key(target)
                uploaded[key] = temp_key = f"{temp_root}new/{key}"
                self.client.upload_file(str(local), self.bucket, temp_key)
            for key, temp_key in uploaded.items():
                current = key
                backups[key] = self._backup(key, f"{temp_root}previous/{key}")
                self._copy(temp_key, key)
        except (Boto3Error, BotoCoreError, ClientError, OSError) as exc:  # Boto3Error: a failed managed upload
            self._restore(backups)
            self._delete(list(uploaded.values()) + [b for b in backups.values() if b])
            self.discard()
            raise PublishError(f"{object_url(self.bucket, current or self.prefix)}: cannot be published ({exc}); "
                               "every output of the step was kept as it was. Fix: check that the object store is "
                               "reachable and the credentials may write the bucket, then re-run") from exc
        self._delete(list(uploaded.values()) + [b for b in backups.values() if b])
        self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staged.clear()

    def _copy(self, source_key: str, key: str) -> None:
        self.client.copy({"Bucket": self.bucket, "Key": source_key}, self.bucket, key)

    def _backup(self, key: str, backup_key: str) -> str | None:
        try:
            self._copy(key, backup_key)
        except Exception as exc:  # noqa: BLE001 - only a missing object is an answer; the rest is re-raised
            if is_missing(exc):
                return None
            raise
        return backup_key

    def _restore(self, backups: dict[str, str | None]) -> None:
        """Best effort: the earlier version back at each replaced key, or the new object gone where there was none."""
        for key, backup in backups.items():
            try:
                if backup is None:
                    self.client.delete_object(Bucket=self.bucket, Key=key)
                else:
                    self._copy(backup, key)
            except Exception:  # noqa: BLE001 - the store is failing; the error raised names the target
                continue

    def _delete(self, keys: list[str]) -> None:
        try:
            delete_keys(self.client, self.bucket, keys)
        except Exception:  # noqa: BLE001 - leftovers under .tmp/ are swept by `sweep_stale_temp_keys`
            pass


def sweep_stale_temp_keys(client, bucket: str, prefix: str, older_than_s: float) -> list[str]:
    """Delete the temp keys under `<prefix>.tmp/` not modified for `older_than_s` seconds (what killed publications
    left) and abort multipart uploads under it started that long ago. Returns the deleted keys."""
    cutoff = time.time() - older_than_s
    stale = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}{TEMP_PREFIX}"):
        stale += [o["Key"] for o in page.get("Contents", []) if o["LastModified"].timestamp() < cutoff]
    delete_keys(client, bucket, stale)
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=f"{prefix}{TEMP_PREFIX}").get("Uploads", [])
    for upload in uploads:
        if upload["Initiated"].timestamp() < cutoff:
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    return stale


def _same_device(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev
