"""ObjectDataStore: the DataStore over an S3-compatible bucket, for deployments where the machines that run steps
share no disk (Celery workers, containers).

Same layout and interface as `DataStore` (`<prefix><asset>/<dim>=<value>/.../<file>`), with objects in place of files:
- a file's path is its GDAL path `/vsis3/<bucket>/<key>`: rasters are read in place by HTTP range requests (COGs
  are made for it) under the GDAL configuration the resource enters for each step (`raster_env`);
- records and tables (`read_json`, `tile_table`, `exists`) are read through the S3 API, and listings
  (`partitions_with`, `dates_with`) are object listings;
- a step's outputs are written to local temp files and published atomically (`geo/object_publish.py`: temp keys,
  then server-side copies), so a reader never sees a partial object and a failed step leaves the earlier outputs;
- the training set is downloaded into a local cache for the steps that read all of it (training, evaluation, drift).

`root` holds only scratch files and caches, safe to delete between runs. The endpoint comes from the resource
(`AWS_ENDPOINT_URL_S3` in the production profile), credentials from AWS's standard chain (AWS_ACCESS_KEY_ID +
AWS_SECRET_ACCESS_KEY, a profile or an instance role), read by boto3 and GDAL themselves: never in config or metadata.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

from dagster import Failure, InitResourceContext
from pydantic import Field, PrivateAttr

from geoseg_assets.geo.object_publish import (
    ObjectPublication,
    delete_keys,
    is_missing,
    object_key,
    object_url,
    sweep_stale_temp_keys,
)
from geoseg_assets.geo.object_store import s3_raster_env, vsis3_path
from resources.catalog import DATASET, DATASET_MANIFEST, TILE_TABLE, OutputFile
from resources.data_store import DataStore, check_partition_value, committed_on_success, partition_folder
from resources.s3_object_cache import S3ObjectCache

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_RANGE = re.compile(r"^bytes=(\d+-\d*|-\d+)$")
DATASET_ATTEMPTS = 3


@dataclass(frozen=True)
class ObjectRange:
    """What a ranged GET returned: the body in chunks, its length, the object's size and the (first, last) byte
    served (None: the whole object)."""

    chunks: Iterator[bytes]
    length: int
    size: int
    served: tuple[int, int] | None


class ObjectStoreError(OSError):
    """The object store could not be read or written: the message names the object and the fix."""


class ObjectDataStore(DataStore):
    """Asset outputs as objects under `url` (s3://<bucket>/<prefix>) on AWS S3 or any S3-compatible store (MinIO, Ceph,
    moto); the local `root` holds only scratch files and caches."""

    url: str = Field(description="Where the outputs live: s3://<bucket>/<prefix> (the prefix may be empty).")
    endpoint_url: str | None = Field(
        default=None, description="The store's S3 endpoint, e.g. http://127.0.0.1:9000 for MinIO; None: AWS.")
    root: str = Field(description="Local folder for scratch files and caches only (the training set's copy); safe to "
                                  "delete between runs.")
    max_attempts: int = Field(default=4, ge=1, description="Attempts per S3 request (botocore's standard retry "
                              "mode: throttling, 5xx and connection errors retried with backoff).")
    _client: Any = PrivateAttr(default=None)

    # ---- where things are ----

    @property
    def remote(self) -> bool:
        return True

    def bucket_and_prefix(self) -> tuple[str, str]:
        """(bucket, prefix ending in '/' or ''); ValueError naming the setting for anything but s3://bucket[/prefix]."""
        bucket, _, prefix = self.url[5:].partition("/") if self.url.startswith("s3://") else ("", "", "")
        if not _BUCKET.match(bucket) or ".." in prefix or "//" in prefix:
            raise ValueError(f"ObjectDataStore url {self.url!r} is not s3://<bucket>/<prefix>; e.g. s3://geoseg/outputs")
        prefix = prefix.strip("/")
        return bucket, f"{prefix}/" if prefix else ""

    def partition_dir(self, asset: str, partition: Mapping[str, str] | str | None = None) -> PurePosixPath:
        bucket, prefix = self.bucket_and_prefix()
        return PurePosixPath(vsis3_path(bucket, f"{prefix}{partition_folder(asset, partition)}"))

    def key_of(self, path: str | os.PathLike) -> str:
        """The object key of one of this store's paths; ValueError for a path elsewhere."""
        return object_key(path, *self.bucket_and_prefix())

    def location(self) -> str:
        """s3://<bucket>/<prefix>, without a trailing slash."""
        bucket, prefix = self.bucket_and_prefix()
        return object_url(bucket, prefix).rstrip("/")

    def display(self, path: str | os.PathLike) -> str:
        """The s3:// URL of a path of this store (what `aws s3 cp`, QGIS and boto take)."""
        return object_url(self.bucket_and_prefix()[0], self.key_of(path))

    # ---- reading ----

    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client("s3", endpoint_url=self.endpoint_url or None, config=Config(
                retries={"mode": "standard", "max_attempts": self.max_attempts}, connect_timeout=10))
        return self._client

    def _errors(self, url: str, exc: Exception) -> OSError:
        """FileNotFoundError for a missing object, else ObjectStoreError naming the URL and the fix."""
        if is_missing(exc):
            return FileNotFoundError(2, "no such object", url)
        return ObjectStoreError(f"{url}: cannot be read ({exc}). Fix: check that the object store "
                                f"{self.endpoint_url or 'AWS S3'} is reachable and the AWS_* credentials may read it")

    def read_bytes(self, path: str | os.PathLike) -> bytes:
        bucket, key = self.bucket_and_prefix()[0], self.key_of(path)
        try:
            return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:  # noqa: BLE001 - mapped to the OSError callers handle
            raise self._errors(object_url(bucket, key), exc) from exc

    def open_range(self, path: str | os.PathLike, byte_range: str | None) -> ObjectRange:
        """The object, or the one range an HTTP `Range: bytes=...` header asks for, as a ranged GET whose body is read
        in chunks (`ObjectRange.chunks`), so serving a large COG holds no more than a chunk in memory; ValueError for
        a range that is malformed or outside the object."""
        bucket, key = self.bucket_and_prefix()[0], self.key_of(path)
        if byte_range is not None and not _RANGE.match(byte_range.strip()):
            raise ValueError(f"unsupported Range {byte_range!r}: ask for one range, bytes=<first>-[<last>] or bytes=-<n>")
        try:
            found = self.client().get_object(Bucket=bucket, Key=key, **({"Range": byte_range.strip()} if byte_range else {}))
        except Exception as exc:  # noqa: BLE001
            from botocore.exceptions import ClientError

            if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == "InvalidRange":
                raise ValueError(f"Range {byte_range!r} is outside {object_url(bucket, key)}") from exc
            raise self._errors(object_url(bucket, key), exc) from exc
        length, body = int(found["ContentLength"]), found["Body"]
        chunks = iter(lambda: body.read(1 << 20), b"")
        served = found.get("ContentRange") if byte_range else None
        if not served:
            return ObjectRange(chunks, length, length, None)
        span, _, size = served.removeprefix("bytes ").partition("/")
        first, _, last = span.partition("-")
        return ObjectRange(chunks, length, int(size), (int(first), int(last)))

    @contextmanager
    def local_copy(self, path: str | os.PathLike) -> Iterator[Path]:
        """The object downloaded into a temp file under `root` (same name), deleted after the block."""
        folder = Path(tempfile.mkdtemp(prefix="object-", dir=self.tmp_dir()))
        try:
            local = folder / PurePosixPath(path).name
            local.write_bytes(self.read_bytes(path))
            yield local
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def sha256(self, path: str | os.PathLike) -> str:
        bucket, key = self.bucket_and_prefix()[0], self.key_of(path)
        digest = hashlib.sha256()
        try:
            body = self.client().get_object(Bucket=bucket, Key=key)["Body"]
            for chunk in iter(lambda: body.read(4 << 20), b""):
                digest.update(chunk)
        except Exception as exc:  # noqa: BLE001
            raise self._errors(object_url(bucket, key), exc) from exc
        return digest.hexdigest()

    def version_of(self, path: str | os.PathLike) -> str:
        """An object's ETag (a new one for every upload)."""
        bucket, key = self.bucket_and_prefix()[0], self.key_of(path)
        try:
            return self.client().head_object(Bucket=bucket, Key=key)["ETag"]
        except Exception as exc:  # noqa: BLE001
            raise self._errors(object_url(bucket, key), exc) from exc

    def path_exists(self, path: str | os.PathLike) -> bool:
        bucket, key = self.bucket_and_prefix()[0], self.key_of(path)
        try:
            self.client().head_object(Bucket=bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            error = self._errors(object_url(bucket, key), exc)
            if isinstance(error, FileNotFoundError):
                return False
            raise error from exc
        return True

    def exists(self, output: OutputFile, partition: Mapping[str, str] | str | None = None) -> bool:
        return self.path_exists(self.file(output, partition))

    def discard(self, output: OutputFile, partition: Mapping[str, str] | str | None = None) -> None:
        bucket, key = self.bucket_and_prefix()[0], self.key_of(self.file(output, partition))
        self.client().delete_object(Bucket=bucket, Key=key)

    def tile_table(self, partition: Mapping[str, str]):
        import geopandas as gpd

        return gpd.read_parquet(io.BytesIO(self.read_bytes(self.file(TILE_TABLE, partition))))

    def objects(self, under: str | os.PathLike) -> list[dict]:
        """Every object (Key, Size, ETag) under a folder path of this store, in key order."""
        bucket, prefix = self.bucket_and_prefix()[0], self.key_of(under).rstrip("/") + "/"
        try:
            pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            return [obj for page in pages for obj in page.get("Contents", [])]
        except Exception as exc:  # noqa: BLE001
            raise self._errors(object_url(bucket, prefix), exc) from exc

    def dates_with(self, output: OutputFile, region: str) -> list[str]:
        folder = self.partition_dir(output.asset, {"region": region})
        return sorted(d for r, d in self._partitions(folder, output.name, depth=1) if r is None)

    def partitions_with(self, output: OutputFile) -> list[dict[str, str]]:
        folder = self.partition_dir(output.asset)
        return [{"region": r, "date": d} for r, d in self._partitions(folder, output.name, depth=2)]

    def _partitions(self, folder: PurePosixPath, name: str, depth: int) -> list[tuple[str | None, str]]:
        """(region or None, date) of the objects `<folder>/[region=<r>/]date=<d>/<name>`, in key order."""
        start = len(self.key_of(folder).rstrip("/")) + 1
        found = []
        for obj in self.objects(folder):
            parts = obj["Key"][start:].split("/")
            if len(parts) != depth + 1 or parts[-1] != name or not parts[-2].startswith("date="):
                continue
            if depth == 2 and not parts[0].startswith("region="):
                continue
            found.append((parts[0].removeprefix("region=") if depth == 2 else None, parts[-2].removeprefix("date=")))
        return found

    def catalog_files(self) -> "ObjectFiles":
        return ObjectFiles(self)

    # ---- GDAL ----

    @contextmanager
    def raster_env(self) -> Iterator[None]:
        """GDAL reads `/vsis3/` paths from this store: endpoint, path-style addressing, range merging and cache."""
        with s3_raster_env(self.endpoint_url):  # credentials: boto3's chain, handed to GDAL by rasterio's session
            yield

    @contextmanager
    def yield_for_execution(self, context: InitResourceContext) -> Iterator["ObjectDataStore"]:
        """Each step runs inside `raster_env`, so every raster path the store hands out opens."""
        self.bucket_and_prefix()
        with self.raster_env():
            yield self

    # ---- writing ----

    @contextmanager
    def publishing(self) -> Iterator[ObjectPublication]:
        """Stage every output of a step locally; they become objects only when the whole block succeeds (temp keys,
        then copies over the final keys), so a failure leaves every earlier output as it was."""
        bucket, prefix = self.bucket_and_prefix()
        client = self.client()
        try:
            sweep_stale_temp_keys(client, bucket, prefix, self.stale_temp_seconds)
        except Exception as exc:  # noqa: BLE001 - an unreachable store fails here, before any work
            raise Failure(str(self._errors(object_url(bucket, prefix), exc)), allow_retries=False) from exc
        with committed_on_success(ObjectPublication(client, bucket, prefix, self.tmp_dir())) as publication:
            yield publication

    def delete_paths(self, paths: Iterable[str | os.PathLike]) -> None:
        """Delete objects of this store given by their paths (1000 per request)."""
        delete_keys(self.client(), self.bucket_and_prefix()[0], [self.key_of(p) for p in paths])

    def publish_folder(self, asset: str, folder: str | os.PathLike) -> list[str]:
        """Replace the objects of an unpartitioned folder asset (the training set) with the files of the local
        `folder`: the new objects are published together, then keys the new version no longer has are deleted.
        Returns the object keys of the new version."""
        with self.publishing() as outputs:
            new = {self.key_of(p) for p in outputs.add_folder(self.partition_dir(asset), folder)}
        gone = [o["Key"] for o in self.objects(self.partition_dir(asset)) if o["Key"] not in new]
        delete_keys(self.client(), self.bucket_and_prefix()[0], gone)
        return sorted(new)

    # ---- the training set, local ----

    def dataset_dir(self) -> Path | None:
        """A local copy of the current training set (downloaded into `<root>/cache/` once per object version; files
        of earlier versions removed), or None when `dataset` was never built. Training reads every tile of it many
        times: over the network each epoch would cost far more than one download."""
        if not self.exists(DATASET_MANIFEST):
            return None
        bucket = self.bucket_and_prefix()[0]
        folder = self.partition_dir(DATASET)
        cache = S3ObjectCache(str(Path(self.root) / "cache"), self.endpoint_url)
        local_root = cache.cached(bucket, self.key_of(folder))
        listing = self.objects(folder)
        for _ in range(DATASET_ATTEMPTS):  # a new version published meanwhile: download what changed, list again
            wanted = {cache.fetch(bucket, obj["Key"], int(obj["Size"]), obj["ETag"]) for obj in listing}
            before, listing = listing, self.objects(folder)
            if [(o["Key"], o["ETag"]) for o in before] == [(o["Key"], o["ETag"]) for o in listing]:
                break
        else:
            raise ObjectStoreError(f"{self.display(folder)}: the training set changed during each of {DATASET_ATTEMPTS} "
                                   "downloads. Fix: re-run once `dataset` is no longer being materialized")
        for path in [p for p in local_root.rglob("*") if p.is_file() and not p.name.startswith(".")]:
            if path not in wanted:
                path.unlink()
                cache.etag_file(path).unlink(missing_ok=True)
        return local_root

    def scratch_dir(self, asset: str, name: str) -> Path:
        """Under the local `root`: a retry on this machine resumes from it, one on another starts over."""
        return Path(self.root) / partition_folder(asset) / check_partition_value(name, "folder name")


class ObjectFiles:
    """The STAC catalog's files as objects of an `ObjectDataStore` (geo/catalog_files.py's `CatalogFiles`): the changed
    files published together, stale ones deleted after."""

    def __init__(self, store: ObjectDataStore) -> None:
        self.store = store

    def read_bytes(self, path: PurePath) -> bytes:
        return self.store.read_bytes(path)

    def exists(self, path: PurePath) -> bool:
        return self.store.path_exists(path)

    def json_files(self, folder: PurePath) -> list[PurePath]:
        bucket = self.store.bucket_and_prefix()[0]
        return [PurePosixPath(vsis3_path(bucket, o["Key"])) for o in self.store.objects(folder) if o["Key"].endswith(".json")]

    def write(self, changed: Mapping[PurePath, bytes]) -> None:
        if changed:
            with self.store.publishing() as outputs:
                for path, data in changed.items():
                    outputs.write_bytes(path, data)

    def delete(self, paths: Iterable[PurePath]) -> None:
        self.store.delete_paths(paths)
