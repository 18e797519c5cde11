"""`scenes` [region x date]: the partition's source scene(s), validated and written as a COG."""


import json
from dataclasses import asdict, replace

import dagster as dg
from pydantic import Field

from geoseg_assets import metadata as md
from geoseg_assets.geo.errors import InputError, SceneError
from geoseg_assets.geo.preview import png_bytes, quicklook_image
from geoseg_assets.geo.scene_io import write_scene_cog
from geoseg_assets.partitions import partition_dims, region_date_partitions
from resources.catalog import QUICKLOOK, SCENE_COG, SCENE_RECORD
from resources.data_store import DataStore, UnsafePartitionKeyError
from resources.scene_sources import SceneSource

SCENE_FILE = SCENE_COG.name  # benchmarks/bench_model_quality.py imports it from here


class ScenesConfig(dg.Config):
    """How scenes are normalised on the way in."""

    target_crs: str | None = Field(default=None, description="Reproject to this CRS (e.g. EPSG:32633); None keeps the source CRS.")
    target_resolution: float | None = Field(default=None, description="Output pixel size in target CRS units.")
    resampling: str = Field(default="bilinear", description="Resampling for reprojection (rasterio Resampling name).")


def fail_on_bad_input(exc: Exception, **extra) -> dg.Failure:
    """A non-retryable run failure that names the input and the fix."""
    meta = {"error": str(exc), **extra}
    if isinstance(exc, InputError):
        meta.update(file=exc.path, problem=exc.problem, fix=exc.fix)
    return dg.Failure(description=str(exc), metadata=meta, allow_retries=False)


def upstream_scene(context, data_store: DataStore):
    """(dims, COG path, scene record) of the partition's materialized scene, for downstream assets;
    fails the run with the fix when the key is unsafe or the scene is missing."""
    try:
        dims = partition_dims(context)
        cog_path = data_store.file(SCENE_COG, dims)
    except UnsafePartitionKeyError as exc:
        raise fail_on_bad_input(exc, partition_key=str(context.partition_key)) from exc
    if not data_store.exists(SCENE_COG, dims) or not data_store.exists(SCENE_RECORD, dims):
        raise dg.Failure(f"{cog_path}: scene COG missing; materialize `scenes` for this partition first", allow_retries=False)
    return dims, cog_path, data_store.scene_record(dims)


@dg.asset(
    partitions_def=region_date_partitions,
    kinds={"raster", "cog"},
    group_name="imagery",
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5),
    description="The partition's scene, validated (CRS, bands, dtype, size, transform, data present) and "
    "written as a Cloud Optimized GeoTIFF with a quicklook.",
)
def scenes(
    context: dg.AssetExecutionContext, config: ScenesConfig, data_store: DataStore, scene_source: SceneSource
) -> dg.MaterializeResult:
    try:
        dims = partition_dims(context)
        cog_path = data_store.file(SCENE_COG, dims)
    except UnsafePartitionKeyError as exc:
        raise fail_on_bad_input(exc, partition_key=str(context.partition_key)) from exc
    try:
        ref = scene_source.fetch(dims["region"], dims["date"])
    except (FileNotFoundError, SceneError) as exc:
        raise fail_on_bad_input(exc) from exc
    context.log.info(f"reading {len(ref.paths)} file(s): {', '.join(ref.paths)}")
    with data_store.publishing() as outputs:  # COG, quicklook and record replace the old ones together, or none
        try:
            summary = write_scene_cog(
                list(ref.paths),
                str(outputs.path(cog_path)),
                scene_source.scene_spec(ref),
                target_crs=config.target_crs,
                target_resolution=config.target_resolution,
                resampling=config.resampling,
                tmp_dir=str(data_store.tmp_dir()),
            )
        except SceneError as exc:
            raise fail_on_bad_input(exc) from exc
        summary = replace(summary, path=str(cog_path))
        image, _ = quicklook_image(str(outputs.path(cog_path)), summary.band_names, max_side=512)
        png = png_bytes(image)
        quicklook_path = outputs.write_bytes(data_store.file(QUICKLOOK, dims), png)
        record = {**asdict(summary), "source_paths": list(ref.paths), "source_sha256": list(ref.sha256),
                  "fingerprint": ref.fingerprint}
        outputs.write_bytes(data_store.file(SCENE_RECORD, dims), json.dumps(record, indent=2).encode())
    context.log.info(f"wrote {cog_path} ({summary.width} x {summary.height}, {summary.crs})")
    return dg.MaterializeResult(
        metadata={
            "path": md.path(cog_path),
            "source_paths": list(ref.paths),
            "source_sha256": list(ref.sha256),
            "crs": summary.crs,
            "bounds": list(summary.bounds),
            "bounds_wgs84": list(summary.bounds_wgs84),
            "resolution": list(summary.resolution),
            "width": summary.width,
            "height": summary.height,
            "bands": summary.band_names,
            "dtype": summary.dtype,
            "nodata_value": summary.nodata if summary.nodata is not None else "none",
            "nodata_source": summary.nodata_source,
            "nodata_note": summary.nodata_note,
            "nodata_fraction": dg.MetadataValue.float(round(summary.nodata_fraction, 6)),
            "quicklook": md.image(png, "quicklook"),
            "quicklook_path": md.path(quicklook_path),
            "viewer": md.viewer_map(data_store.viewer_url, dims),
        },
        data_version=dg.DataVersion(ref.fingerprint),
    )
