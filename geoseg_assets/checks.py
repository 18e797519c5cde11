"""Asset checks: bad scenes, invalid labels and leaking datasets must not flow on; tile stats must be sane."""


import warnings

import dagster as dg
import numpy as np

from geoseg_assets.assets.datasets import dataset
from geoseg_assets.assets.masks import masks
from geoseg_assets.assets.scenes import scenes
from geoseg_assets.assets.tiles import tiles
from geoseg_assets.geo.audit import audit_scene_cog, audit_split_leakage, audit_tile_stats
from geoseg_assets.partitions import partition_dims, region_date_partitions
from resources.catalog import SCENE_COG, SCENE_RECORD, TILE_TABLE, OutputFile
from resources.data_store import DataStore
from resources.label_store import LabelStore
from resources.scene_sources import SceneSource


MISSING_MANIFEST = "manifest.json is missing; materialize the dataset"

# The checks of scenes, tiles and masks are partitioned like their assets (a preview API in dagster 1.13): each
# partition gets its own result, so one bad scene blocks only its own tiles. Chosen knowingly (README, install notes);
# its PreviewWarning, printed by every process that loads the code location (50 times in an afternoon of `make ui`),
# is silenced for exactly that message. Re-check on a Dagster upgrade.
warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec is currently in preview",
                        category=dg.PreviewWarning)


def _result(problems: list[str], **metadata) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"problems": problems or ["none"], **metadata},
    )


def _output_and_scene_record(data_store: DataStore, output: OutputFile, dims: dict):
    """Path of the checked output and the scene's JSON record, or None when either is missing."""
    path = data_store.file(output, dims)
    if not data_store.exists(output, dims) or not data_store.exists(SCENE_RECORD, dims):
        return path, None
    return path, data_store.scene_record(dims)


@dg.asset_check(asset=scenes, blocking=True, partitions_def=region_date_partitions,
                description="The scene COG is a valid COG whose CRS, size, bands and dtype match the record and the source spec.")
def scene_integrity(context: dg.AssetCheckExecutionContext, data_store: DataStore, scene_source: SceneSource) -> dg.AssetCheckResult:
    dims = partition_dims(context)
    path, summary = _output_and_scene_record(data_store, SCENE_COG, dims)
    if summary is None:
        return _result([f"{data_store.display(path)} is missing; materialize scenes for {dims}"])
    problems = audit_scene_cog(str(path), scene_source.spec_for(dims["region"]), summary)
    return _result(problems, path=data_store.display(path), nodata_fraction=1 - summary["valid_pixels"] / (summary["width"] * summary["height"]))


@dg.asset_check(asset=tiles, partitions_def=region_date_partitions,
                description="Tiles exist, ids are unique, fractions lie in [0, 1], band stats are ordered and in the dtype range, tiles lie inside the scene.")
def tile_stats_sanity(context: dg.AssetCheckExecutionContext, data_store: DataStore) -> dg.AssetCheckResult:
    dims = partition_dims(context)
    path, summary = _output_and_scene_record(data_store, TILE_TABLE, dims)
    if summary is None:
        return _result([f"{data_store.display(path)} is missing; materialize tiles for {dims}"])
    frame = data_store.tile_table(dims)
    dtype = np.dtype(summary["dtype"])
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(dtype)
    problems = audit_tile_stats(frame, summary["band_names"], summary["bounds"], (float(info.min), float(info.max)))
    return _result(problems, tile_count=len(frame))


@dg.asset_check(asset=dataset, blocking=True,
                description="No tile id, spatial block or place (region + window) appears in two splits.")
def dataset_no_leakage(data_store: DataStore) -> dg.AssetCheckResult:
    manifest = data_store.dataset_manifest()
    if manifest is None:
        return _result([MISSING_MANIFEST])
    counts = {s: c["tile_count"] for s, c in manifest["splits"].items()}
    return _result(audit_split_leakage(manifest)[:20], tile_counts=counts)


@dg.asset_check(asset=dataset, description="Every class has pixels in the train split (warns otherwise).")
def dataset_class_coverage(data_store: DataStore) -> dg.AssetCheckResult:
    manifest = data_store.dataset_manifest()
    if manifest is None:
        return _result([MISSING_MANIFEST])
    train = manifest["class_distribution"]["train"]["pixels"]
    missing = sorted(name for name in manifest["class_map"]["classes"] if train.get(name, 0) == 0)
    return dg.AssetCheckResult(
        passed=not missing,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"classes_without_train_pixels": missing or ["none"], "train_pixels": train},
    )


@dg.asset_check(asset=masks, blocking=True, partitions_def=region_date_partitions,
                description="The region's valid labels are valid polygons in the scene CRS after import repair.")
def label_geometries_valid(context: dg.AssetCheckExecutionContext, label_store: LabelStore) -> dg.AssetCheckResult:
    dims = partition_dims(context)
    labels = label_store.labels(dims["region"], date=dims["date"])
    invalid = int((~labels.geometry.is_valid).sum()) if len(labels) else 0
    non_polygon = int((~labels.geometry.geom_type.isin(["Polygon", "MultiPolygon"])).sum()) if len(labels) else 0
    problems = ([f"{invalid} invalid geometries"] if invalid else []) + ([f"{non_polygon} non-polygons"] if non_polygon else [])
    return _result(problems, label_count=len(labels))
