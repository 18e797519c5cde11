"""The STAC catalog scene source: scenes listed as items of a local static catalog, with the nodata they declare. An
item's GeoTIFF may be a local file or an object in a bucket (`s3://` href): objects are copied into `cache_dir`
(resources/s3_object_cache.py: GeoTIFF signature checked on the first bytes, one copy per object version), and only
from the buckets named in `allowed_buckets`, so a catalog cannot make the pipeline read what its operator did not
allow."""

from dataclasses import replace
from pathlib import Path

from pydantic import Field

from geoseg_assets.geo.errors import SceneError
from geoseg_assets.geo.scene_checks import check_landed_file
from resources.data_store import check_partition_value
from resources.s3_object_cache import S3ObjectCache, split_s3_url
from resources.scene_sources import RASTER_SUFFIXES, ScanResult, SceneSource, scene_ref


class StacCatalogSource(SceneSource):
    """Scenes listed in a local static STAC catalog: one item per scene with a datetime, a region
    property and a GeoTIFF asset."""

    catalog_path: str = Field(description="Path of the catalog.json.")
    region_property: str = Field(default="region", description="Item property holding the region name.")
    asset_key: str | None = Field(default=None, description="Asset to read; default: the first GeoTIFF asset.")
    allowed_buckets: list[str] = Field(default_factory=list, description=(
        "Buckets whose objects item assets may name as s3://<bucket>/<key> (credentials and endpoint from AWS_* "
        "variables); an asset in any other bucket is skipped with a warning."))
    cache_dir: str | None = Field(default=None, description="Local folder for the copies of s3:// item assets (a "
                                  "cache, safe to delete); required when the catalog has such assets.")

    def location(self) -> str:
        return self.catalog_path

    def _declared_nodata(self, item, href: str | None):
        """The nodata an item declares for its GeoTIFF: the asset's `raster:bands` (STAC raster extension,
        first band that has one), else an item property `nodata`; None when it declares none."""
        for asset in item.assets.values():
            if href is not None and asset.get_absolute_href() == href:
                for band in asset.extra_fields.get("raster:bands") or []:
                    if isinstance(band, dict) and band.get("nodata") is not None:
                        return band["nodata"]
        return item.properties.get("nodata")

    def _href(self, item) -> str | None:
        if self.asset_key is not None:
            asset = item.assets.get(self.asset_key)
            return asset.get_absolute_href() if asset else None
        for asset in item.assets.values():
            if "tiff" in (asset.media_type or "") or asset.href.lower().endswith(RASTER_SUFFIXES):
                return asset.get_absolute_href()
        return None

    def _object_copy(self, href: str) -> str:
        """The local copy of an s3:// asset (downloaded unless the cache holds this version); ValueError (SceneError
        included) naming the href and the fix: not an object URL, a bucket not allowed, no cache_dir, missing,
        unreadable or not a GeoTIFF."""
        bucket, key = split_s3_url(href)
        if bucket not in self.allowed_buckets:
            raise ValueError(f"its asset {href} is in bucket {bucket!r}, which allowed_buckets "
                             f"({', '.join(self.allowed_buckets) or 'empty'}) does not name; add it there if this "
                             "catalog may read it")
        if not self.cache_dir:
            raise ValueError(f"its asset {href} is in a bucket and no cache_dir is set; set cache_dir to a local "
                             "folder for the copies")
        cache = S3ObjectCache(self.cache_dir)
        size, etag = cache.head(bucket, key)
        return str(cache.fetch(bucket, key, size, etag, check_tiff=True))

    def scan(self, digest_cache: dict[str, list] | None = None) -> ScanResult:
        import pystac

        result = ScanResult()
        try:
            catalog = pystac.Catalog.from_file(self.catalog_path)
        except Exception as exc:  # pystac raises several types for missing/invalid JSON
            result.problems.append(f"{self.catalog_path}: cannot read STAC catalog ({exc}); check the path and JSON")
            return result
        grouped: dict[tuple[str, str], list[str]] = {}
        declared: dict[str, tuple[object, str]] = {}  # href -> (nodata, where the item declares it)
        for item in catalog.get_items(recursive=True):
            where = f"{self.catalog_path} item {item.id!r}"
            region = item.properties.get(self.region_property)
            when = item.datetime or item.common_metadata.start_datetime
            href = self._href(item)
            try:
                if region is None:
                    raise ValueError(f"has no {self.region_property!r} property")
                check_partition_value(str(region), "region")
                if when is None:
                    raise ValueError("has no datetime")
                local = self._object_copy(href) if href is not None and href.startswith("s3://") else href
                if local is None or not Path(local).is_file():
                    raise ValueError(f"has no readable local GeoTIFF asset (href {href!r})")
                check_landed_file(local)  # SceneError (a ValueError) for a VRT or other non-TIFF content
            except ValueError as exc:
                result.problems.append(f"{where}: skipped, {exc}")
                continue
            grouped.setdefault((str(region), when.date().isoformat()), []).append(local)
            nodata = self._declared_nodata(item, href)
            if nodata is not None:
                declared[local] = (nodata, f"{self.catalog_path} item {item.id!r}")
        for (region, date), files in sorted(grouped.items()):
            try:
                ref = scene_ref(region, date, files, digest_cache)
            except (OSError, SceneError) as exc:  # removed, unreadable or changing: this scene waits, the rest go on
                result.problems.append(f"{self.catalog_path} scene {region}/{date}: skipped, {exc}")
                continue
            first = next((declared[f] for f in ref.paths if f in declared), None)
            result.refs.append(ref if first is None else replace(ref, nodata=first[0], nodata_declared_in=first[1]))
        return result
