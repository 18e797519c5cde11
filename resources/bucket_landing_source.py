"""The object-store landing source: scenes dropped as `s3://<bucket>/<prefix>/<region>/<YYYY-MM-DD>/*.tif` (the
landing folder's layout in a bucket on AWS or any S3-compatible store), a `region.json` per region as in the folder.

Each object version is downloaded once into a local cache (`cache_dir`, safe to delete; resources/s3_object_cache.py:
the GeoTIFF signature checked on the first 4 bytes before the rest is fetched, the listed ETag asked for, so an
object replaced meanwhile waits for the next tick); the scan lists the bucket and re-downloads only objects whose
ETag or size changed. Credentials and endpoint come from AWS's standard variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY or AWS_PROFILE, AWS_ENDPOINT_URL_S3), never from config.
"""

from pathlib import Path, PurePosixPath

from pydantic import Field

from geoseg_assets.geo.errors import SceneError
from geoseg_assets.geo.scene_checks import SceneSpec
from geoseg_assets.geo.scene_io import sha256_file
from resources.data_store import UnsafePartitionKeyError, check_partition_value
from resources.landing_source import REGION_SPEC_FILE, read_region_json
from resources.s3_object_cache import S3ObjectCache
from resources.scene_sources import (RASTER_SUFFIXES, ScanResult, SceneRef, SceneSource, check_date,
                                     combined_fingerprint)


class BucketLandingSource(SceneSource):
    """Scenes landed in an object-store bucket under `prefix`, laid out like the landing folder."""

    url: str = Field(description="Landing area as `s3://<bucket>/<prefix>` (the prefix may be empty).")
    cache_dir: str = Field(description="Local folder for the downloaded copies (one per object version; a cache "
                           "that may be deleted at any time).")

    def location(self) -> str:
        return self.url.rstrip("/") + "/"

    @property
    def bucket(self) -> str:
        return self._split()[0]

    def _prefix(self) -> str:
        return self._split()[1]

    def _split(self) -> tuple[str, str]:
        """(bucket, prefix ending in '/' or ''); ValueError naming the setting for anything but s3://bucket/..."""
        if not self.url.startswith("s3://") or not self.url[5:].split("/", 1)[0]:
            raise ValueError(f"BucketLandingSource url {self.url!r} is not s3://<bucket>/<prefix>; "
                             "e.g. s3://imagery/landing")
        bucket, _, prefix = self.url[5:].partition("/")
        prefix = prefix.strip("/")
        return bucket, f"{prefix}/" if prefix else ""

    def _client(self):
        return S3ObjectCache.client()

    def _objects(self, under: str = "") -> dict[str, tuple[int, str]]:
        """key -> (size, ETag) of every object under the landing prefix + `under`."""
        pages = self._client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                         Prefix=self._prefix() + under)
        return {o["Key"]: (int(o["Size"]), o["ETag"]) for page in pages for o in page.get("Contents", [])}

    def region_spec(self, region: str) -> SceneSpec | None:
        if region not in self.region_specs:
            key = f"{self._prefix()}{check_partition_value(region, 'region')}/{REGION_SPEC_FILE}"
            found = self._objects(f"{region}/{REGION_SPEC_FILE}").get(key)
            if found is not None:
                local = self._cached(key)
                try:
                    return read_region_json(local if self._holds(local, *found) else self._download(key, *found))
                except SceneError as exc:  # name the object, not its cached copy
                    raise SceneError(f"s3://{self.bucket}/{key}", exc.problem, exc.fix) from exc
        return super().region_spec(region)

    def scan(self, digest_cache: dict[str, list] | None = None) -> ScanResult:
        result = ScanResult()
        try:
            objects = self._objects()
        except Exception as exc:  # botocore raises many types: unreachable endpoint, credentials, missing bucket
            result.problems.append(f"{self.location()}: cannot list the landing bucket ({exc}); check that the store "
                                   "is reachable, the bucket exists and AWS_* credentials may list it")
            return result
        grouped: dict[tuple[str, str], list[str]] = {}
        for key in sorted(objects):
            place = self._scene_of(key)
            if isinstance(place, str):
                result.problems.append(f"s3://{self.bucket}/{key}: skipped, {place}")
            elif place is not None:
                grouped.setdefault(place, []).append(key)
        for (region, date), keys in sorted(grouped.items()):
            try:
                result.refs.append(self._ref(region, date, {k: objects[k] for k in keys}, digest_cache))
            except SceneError as exc:  # one bad object: its date waits until it is fixed (a mosaic needs all)
                result.problems.append(f"s3://{self.bucket}/{self._prefix()}{region}/{date}/: skipped, {exc}")
            except OSError as exc:  # the local cache: full or unwritable; the other scenes may still fit
                result.problems.append(f"s3://{self.bucket}/{self._prefix()}{region}/{date}/: skipped, cannot keep "
                                       f"its copy in {self.cache_dir} ({exc}); free space there or move cache_dir")
        return result

    def _scene_of(self, key: str) -> tuple[str, str] | str | None:
        """(region, date) of a scene file's key; None for any other object (region.json, notes, other depths); a
        problem naming the fix for a scene file laid out wrongly."""
        parts = PurePosixPath(key[len(self._prefix()):]).parts
        if len(parts) != 3 or parts[2].startswith(".") or not parts[2].lower().endswith(RASTER_SUFFIXES):
            return None
        if key != self._prefix() + "/".join(parts):  # `a//b`, `a/./b`: two keys would share one cached copy
            return (f"the key has an empty or '.' segment; land it as "
                    f"{self._prefix()}<region>/<YYYY-MM-DD>/<name>.tif")
        region, date, _ = parts
        try:
            check_partition_value(region, "region")
        except UnsafePartitionKeyError as exc:
            return str(exc)
        try:
            check_date(date)
        except ValueError as exc:
            return f"{exc}; name date prefixes like 2024-06-01"
        return region, date

    def fetch(self, region: str, date: str) -> SceneRef:
        under = f"{check_partition_value(region, 'region')}/{check_date(date)}/"
        objects = {k: v for k, v in self._objects(under).items() if self._scene_of(k) == (region, date)}
        if not objects:
            raise FileNotFoundError(f"{self.location()}{under}: no .tif scene for region={region!r} date={date!r}; "
                                    "land one there")
        return self._ref(region, date, objects, None)

    def _ref(self, region: str, date: str, objects: dict[str, tuple[int, str]],
             digest_cache: dict[str, list] | None) -> SceneRef:
        """The scene of one region/date from its objects: local copies (downloaded unless the cache holds this
        version), each checked as a landed file; fingerprint as the landing folder's (file names and content)."""
        paths, shas = [], []
        for key in sorted(objects):
            size, etag = objects[key]
            local = self._cached(key)  # the digest cache is keyed by the path read, as the sensor prunes it
            hit = digest_cache.get(str(local)) if digest_cache is not None else None
            if not self._holds(local, size, etag):
                local, hit = self._download(key, size, etag, check_tiff=True), None
            sha = hit[2] if hit and hit[:2] == [size, etag] else sha256_file(local)
            if digest_cache is not None:
                digest_cache[str(local)] = [size, etag, sha]
            paths.append(str(local))
            shas.append(sha)
        fingerprint = combined_fingerprint([(Path(p).name, s) for p, s in zip(paths, shas)])
        return SceneRef(region, date, tuple(paths), fingerprint, tuple(shas))

    def _cache(self) -> S3ObjectCache:
        return S3ObjectCache(self.cache_dir)

    def _cached(self, key: str) -> Path:
        return self._cache().cached(self.bucket, key)

    def _holds(self, local: Path, size: int, etag: str) -> bool:
        return self._cache().holds(local, size, etag)

    def _download(self, key: str, size: int, etag: str, check_tiff: bool = False) -> Path:
        """The object's listed version as a complete local copy (`S3ObjectCache.download`)."""
        return self._cache().download(self.bucket, key, size, etag, check_tiff)
