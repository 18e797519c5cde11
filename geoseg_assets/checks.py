"""Asset checks: scene integrity blocks bad scenes from flowing on; tile statistics must be sane."""


import json

import dagster as dg
import geopandas as gpd
import numpy as np

from geoseg_assets.assets.scenes import SCENE_FILE, SUMMARY_FILE, scenes
from geoseg_assets.assets.tiles import TILES_FILE, tiles
from geoseg_assets.geo.audit import audit_scene_cog, audit_tile_stats
from geoseg_assets.partitions import partition_dims, region_date_partitions
from resources.data_store import DataStore
from resources.scene_sources import SceneSource


def _result(problems: list[str], **metadata) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"problems": problems or ["none"], **metadata},
    )


def _output_and_scene_record(data_store: DataStore, asset: str, filename: str, dims: dict):
    """Path of the checked output and the scene's JSON record, or None when either is missing."""
    path = data_store.path(asset, dims, filename)
    summary_path = data_store.path("scenes", dims, SUMMARY_FILE)
    if not path.exists() or not summary_path.exists():
        return path, None
    return path, json.loads(summary_path.read_text())


@dg.asset_check(asset=scenes, blocking=True, partitions_def=region_date_partitions,
                description="The scene COG is a valid COG whose CRS, size, bands and dtype match the record and the source spec.")
def scene_integrity(context: dg.AssetCheckExecutionContext, data_store: DataStore, scene_source: SceneSource) -> dg.AssetCheckResult:
    dims = partition_dims(context)
    path, summary = _output_and_scene_record(data_store, "scenes", SCENE_FILE, dims)
    if summary is None:
        return _result([f"{path} is missing; materialize scenes for {dims}"])
    problems = audit_scene_cog(str(path), scene_source.spec_for(dims["region"]), summary)
    return _result(problems, path=str(path), nodata_fraction=1 - summary["valid_pixels"] / (summary["width"] * summary["height"]))


@dg.asset_check(asset=tiles, partitions_def=region_date_partitions,
                description="Tiles exist, ids are unique, fractions lie in [0, 1], band stats are ordered and in the dtype range, tiles lie inside the scene.")
def tile_stats_sanity(context: dg.AssetCheckExecutionContext, data_store: DataStore) -> dg.AssetCheckResult:
    dims = partition_dims(context)
    path, summary = _output_and_scene_record(data_store, "tiles", TILES_FILE, dims)
    if summary is None:
        return _result([f"{path} is missing; materialize tiles for {dims}"])
    frame = gpd.read_parquet(path)
    dtype = np.dtype(summary["dtype"])
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(dtype)
    problems = audit_tile_stats(frame, summary["band_names"], summary["bounds"], (float(info.min), float(info.max)))
    return _result(problems, tile_count=len(frame))
