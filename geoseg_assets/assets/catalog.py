"""`stac_catalog`: a static STAC catalog of every materialized scene, mask and prediction and of the model versions
behind the predictions (geoseg_assets/geo/stac_catalog.py builds and validates it), under `<data root>/stac/`."""

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import dagster as dg

from geoseg_assets import metadata as md
from geoseg_assets.assets.masks import masks, resolve_class_map
from geoseg_assets.assets.predictions import predictions
from geoseg_assets.assets.scenes import scenes
from geoseg_assets.geo.catalog_files import CatalogFiles
from geoseg_assets.geo.classmap import ClassDef, ClassMap
from geoseg_assets.geo.stac_catalog import ModelVersion, PartitionOutputs, StacCatalogError, read_record
from geoseg_assets.viewer.links import catalog_url
from resources.catalog import (
    MASK,
    MASK_OVERLAY,
    PREDICTED_CLASSES,
    PREDICTED_POLYGONS,
    PREDICTED_PROBABILITIES,
    PREDICTION_OVERLAY,
    PREDICTION_RECORD,
    QUICKLOOK,
    SCENE_COG,
    SCENE_RECORD,
    STAC_CATALOG,
)
from resources.class_map import ClassMapResource
from resources.data_store import DataStore
from resources.mlflow_tracking import SHA_TAG, MlflowTracking

SCENE_ASSETS = {"data": SCENE_COG, "thumbnail": QUICKLOOK, "metadata": SCENE_RECORD}
MASK_ASSETS = {"data": MASK, "overlay": MASK_OVERLAY}
PREDICTION_ASSETS = {"data": PREDICTED_CLASSES, "probabilities": PREDICTED_PROBABILITIES,
                     "polygons": PREDICTED_POLYGONS, "overlay": PREDICTION_OVERLAY}


def prediction_classes(record: dict, region_map: ClassMap) -> ClassMap | None:
    """The classes of a prediction: its record's (what the model predicted), or for a record written before they were
    recorded, the region's classes the record names."""
    if record.get("classes"):
        return ClassMap(tuple(ClassDef(str(c["name"]), int(c["id"]), tuple(c["color"])) for c in record["classes"]))
    named = set(record.get("class_pixels") or {})
    classes = tuple(c for c in region_map.classes if c.name in named)
    return ClassMap(classes) if classes else None


def partition_outputs(data_store: DataStore, class_map: ClassMapResource) -> Iterator[PartitionOutputs]:
    """Every partition with a scene record, and the files of its outputs that exist."""
    for dims in data_store.partitions_with(SCENE_RECORD):
        region_map = resolve_class_map(class_map, dims["region"])

        def files(outputs: dict) -> dict:
            return {key: data_store.file(output, dims) for key, output in outputs.items() if data_store.exists(output, dims)}

        prediction_files = files(PREDICTION_ASSETS)
        prediction_record, classes = None, None
        if "data" in prediction_files and data_store.exists(PREDICTION_RECORD, dims):
            prediction_record = data_store.file(PREDICTION_RECORD, dims)
            try:
                classes = prediction_classes(read_record(prediction_record, data_store.catalog_files()), region_map)
            except (StacCatalogError, KeyError, TypeError, ValueError):
                classes = None  # the catalog reports the record as unreadable
        mask_files = files(MASK_ASSETS)
        yield PartitionOutputs(
            region=dims["region"], date=dims["date"], scene_record=data_store.file(SCENE_RECORD, dims),
            scene_files=files(SCENE_ASSETS), mask_files=mask_files if "data" in mask_files else {},
            mask_classes=region_map, prediction_record=prediction_record,
            prediction_files=prediction_files if prediction_record else {}, prediction_classes=classes)


def registered_models(tracking: MlflowTracking, partitions: list[PartitionOutputs],
                      files: CatalogFiles) -> dict[tuple[str, str], ModelVersion]:
    """The registry's record of every model version the partitions' predictions name (those it lacks are left out:
    the catalog skips their predictions, saying why)."""
    wanted = set()
    for p in partitions:
        if p.prediction_record is not None:
            try:
                record = read_record(p.prediction_record, files)
                wanted.add((str(record["model_name"]), str(record["model_version"])))
            except (StacCatalogError, KeyError):
                continue
    models = {}
    for name, version in sorted(wanted):
        found = tracking.model_version(version, name)
        if found is not None:
            models[(name, version)] = ModelVersion(
                name=name, version=version, run_id=found.run_id or "", source=found.source or "",
                created=datetime.fromtimestamp(found.creation_timestamp / 1000, tz=UTC),
                weights_sha256=(found.tags or {}).get(SHA_TAG, ""))
    return models


@dg.asset(
    deps=[scenes, masks, predictions],
    kinds={"stac"},
    group_name="catalog",
    description="A static STAC catalog (`stac/catalog.json` under the data root) of every materialized scene, mask "
    "and prediction, with the projection, raster and classification extensions, and of the model version each "
    "prediction came from. Validated offline before it is written; items that did not change are not rewritten. "
    "QGIS, pystac or any STAC client opens it; hrefs are relative, so the data root can be synced as a whole.",
)
def stac_catalog(context: dg.AssetExecutionContext, data_store: DataStore, mlflow_tracking: MlflowTracking,
                 class_map: ClassMapResource) -> dg.MaterializeResult:
    from geoseg_assets.geo.stac_catalog import write_catalog

    started = time.perf_counter()
    partitions = list(partition_outputs(data_store, class_map))
    files = data_store.catalog_files()
    models = registered_models(mlflow_tracking, partitions, files)
    summary = write_catalog(data_store.file(STAC_CATALOG).parent, partitions, models, files=files)
    for key, why in summary.skipped.items():
        context.log.warning(f"partition {key} is not in the catalog: {why}")
    return dg.MaterializeResult(metadata={
        "catalog_path": md.path(data_store.file(STAC_CATALOG)),
        "catalog_url": dg.MetadataValue.url(catalog_url(data_store.viewer_url)),
        "items": summary.items,
        "items_total": sum(summary.items.values()),
        "files_written": summary.written,
        "files_unchanged": summary.unchanged,
        "files_deleted": summary.deleted,
        "skipped_partitions": summary.skipped,
        "seconds": round(time.perf_counter() - started, 3),
    })


@dg.asset_check(asset=stac_catalog, description="The catalog, crawled from catalog.json as a STAC client would, "
                "validates against the STAC and extension schemas (offline), every link and local asset resolves, "
                "and every scene with a record is in it.")
def stac_catalog_valid(data_store: DataStore) -> dg.AssetCheckResult:
    from geoseg_assets.geo.stac_validation import validate_catalog

    root = data_store.file(STAC_CATALOG).parent
    if not data_store.exists(STAC_CATALOG):
        return dg.AssetCheckResult(passed=False, metadata={"problems": [f"{data_store.display(root / 'catalog.json')} is missing; "
                                                                        "materialize stac_catalog"]})
    files = data_store.catalog_files()
    problems = validate_catalog(root, files)
    scene_items = {p.parent.parent.name + "|" + p.parent.name for p in files.json_files(root / "scenes")
                   if p.name.startswith("scene-") and len(p.relative_to(root / "scenes").parts) == 3}
    missing = sorted(f"{d['region']}|{d['date']}" for d in data_store.partitions_with(SCENE_RECORD)
                     if f"{d['region']}|{d['date']}" not in scene_items)
    severity = dg.AssetCheckSeverity.ERROR if problems else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(passed=not problems and not missing, severity=severity, metadata={
        "problems": problems[:50], "problem_count": len(problems), "scenes_not_in_catalog": missing[:50],
        "scene_items": len(scene_items)})


catalog_job = dg.define_asset_job(
    "catalog_job", selection=dg.AssetSelection.assets(stac_catalog),
    tags={"dagster/max_runtime": str(2 * 3600)},
    description="Bring the STAC catalog of scenes, masks, predictions and models up to date.")

# Hourly refresh of the catalog; off until switched on in the UI (or materialize stac_catalog / run catalog_job after
# a backfill).
catalog_schedule = dg.ScheduleDefinition(name="stac_catalog_hourly", job=catalog_job, cron_schedule="0 * * * *",
                                         default_status=dg.DefaultScheduleStatus.STOPPED)
