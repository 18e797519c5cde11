"""Local copies of S3 objects for the scene sources that read from object storage (`BucketLandingSource`, and
`StacCatalogSource` for `s3://` item assets): one copy per object version, its ETag noted beside it, downloaded whole
through a temp file and a rename, after its first 4 bytes (a ranged read) pass the GeoTIFF signature check when asked,
so a VRT or other referencing format is refused before a byte more is fetched. A download asks for the listed ETag
(`IfMatch`): an object replaced between listing and reading is an error for this tick, never two versions mixed.
Credentials and endpoint come from AWS's standard variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or AWS_PROFILE,
AWS_ENDPOINT_URL_S3), never from config. Not a resource: the sources hold it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from geoseg_assets.geo.errors import SceneError
from geoseg_assets.geo.object_publish import is_missing
from geoseg_assets.geo.scene_checks import check_tiff_signature


def split_s3_url(url: str) -> tuple[str, str]:
    """(bucket, key) of `s3://bucket/key`; ValueError naming the URL for anything else."""
    bucket, _, key = url[5:].partition("/") if url.startswith("s3://") else ("", "", "")
    if not bucket or not key or key.endswith("/"):
        raise ValueError(f"{url!r} is not an object URL s3://<bucket>/<key>")
    return bucket, key


@dataclass(frozen=True)
class S3ObjectCache:
    """Downloaded copies of S3 objects under `cache_dir/<bucket>/<key>` (a cache: safe to delete at any time)."""

    cache_dir: str
    endpoint_url: str | None = None  # None: AWS_ENDPOINT_URL_S3 if set, else AWS

    @staticmethod
    def client(endpoint_url: str | None = None):
        import boto3

        return boto3.client("s3", endpoint_url=endpoint_url)  # the standard chain: AWS_* variables, profiles, roles

    def _s3(self):
        return self.client(self.endpoint_url)

    def cached(self, bucket: str, key: str) -> Path:
        return Path(self.cache_dir) / bucket / key

    @staticmethod
    def etag_file(local: Path) -> Path:
        return local.with_name(f".{local.name}.etag")

    def holds(self, local: Path, size: int, etag: str) -> bool:
        """Whether the cache holds this version of the object (its ETag noted beside a copy of its size)."""
        try:
            return local.stat().st_size == size and self.etag_file(local).read_text() == etag
        except OSError:
            return False

    def head(self, bucket: str, key: str) -> tuple[int, str]:
        """(size, ETag) of an object, or SceneError naming its URL and the fix."""
        from botocore.exceptions import BotoCoreError, ClientError

        url = f"s3://{bucket}/{key}"
        try:
            found = self._s3().head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if is_missing(exc):
                raise SceneError(url, "does not exist", "check the href, or upload the object") from exc
            raise SceneError(url, f"cannot be read ({exc})", "check that AWS_* credentials may read the bucket") from exc
        except BotoCoreError as exc:
            raise SceneError(url, f"cannot be read ({exc})", "check that the object store is reachable") from exc
        return int(found["ContentLength"]), found["ETag"]

    def fetch(self, bucket: str, key: str, size: int, etag: str, check_tiff: bool = False) -> Path:
        """The local copy of this version of the object: the cached one, else a download."""
        local = self.cached(bucket, key)
        return local if self.holds(local, size, etag) else self.download(bucket, key, size, etag, check_tiff)

    def download(self, bucket: str, key: str, size: int, etag: str, check_tiff: bool = False) -> Path:
        """The object's listed version as a complete local copy (temp file + rename), or SceneError naming the URL:
        not a TIFF (with `check_tiff`, its first 4 bytes checked before the download), replaced meanwhile, or
        unreadable."""
        from botocore.exceptions import BotoCoreError, ClientError

        url = f"s3://{bucket}/{key}"
        client, local = self._s3(), self.cached(bucket, key)
        try:
            if check_tiff:
                head = client.get_object(Bucket=bucket, Key=key, IfMatch=etag, Range="bytes=0-3")["Body"].read()
                check_tiff_signature(url, head)  # the same bytes are downloaded next (IfMatch): no second check
            local.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", dir=local.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    body = client.get_object(Bucket=bucket, Key=key, IfMatch=etag)["Body"]
                    for chunk in iter(lambda: body.read(1 << 20), b""):
                        out.write(chunk)
                if os.path.getsize(tmp) != size:
                    raise SceneError(url, f"arrived with {os.path.getsize(tmp)} of its {size} bytes",
                                     "nothing to do: it is read again by the next tick")
                self.etag_file(local).unlink(missing_ok=True)  # no stale note beside new bytes
                os.replace(tmp, local)
                self.etag_file(local).write_text(etag)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "412", "NoSuchKey"):
                raise SceneError(url, "was replaced or removed while it was being read",
                                 "nothing to do: the next tick reads the object as it is then") from exc
            raise SceneError(url, f"cannot be read ({exc})", "check that AWS_* credentials may read the bucket") from exc
        except BotoCoreError as exc:
            raise SceneError(url, f"cannot be read ({exc})", "check that the object store is reachable") from exc
        return local
