"""Sustained-operation reports: data quality, data drift and prediction drift per region x date, and
the champion's model quality across versions and on newly labelled partitions."""

import json

import dagster as dg
from pydantic import Field

from geoseg_assets import metadata as md
from geoseg_assets.assets.datasets import DVC_STAGE, dataset
from geoseg_assets.assets.masks import masks, resolve_class_map
from geoseg_assets.assets.models import CHAMPION_ASSET
from geoseg_assets.assets.predictions import predictions
from geoseg_assets.assets.scenes import scenes, upstream_scene
from geoseg_assets.markdown import markdown_table
from geoseg_assets.partitions import FOLLOW_UPSTREAM, region_date_partitions
from resources.catalog import (
    DATA_DRIFT_CHART,
    DATA_DRIFT_HTML,
    DATA_DRIFT_JSON,
    DATA_QUALITY_HTML,
    DATA_QUALITY_JSON,
    DRIFT_REFERENCE_CACHE,
    MASK,
    MODEL_QUALITY_HTML,
    MODEL_QUALITY_JSON,
    PREDICTED_CLASSES,
    PREDICTION_DRIFT_HTML,
    PREDICTION_DRIFT_JSON,
    PREDICTION_DRIFT_PREVIOUS_HTML,
    PREDICTION_RECORD,
    SCENE_COG,
    SCENE_RECORD,
)
from resources.class_map import ClassMapResource
from resources.data_store import DataStore
from resources.dvc_store import DvcStore
from resources.mlflow_tracking import CHAMPION, MlflowTracking
from resources.notifier import Notifier


def _drift_metadata(result, png: bytes, html_path) -> dict:
    top = sorted(result.column_scores.items(), key=lambda kv: -float(kv[1].get("score") or 0))
    table = markdown_table(("column", "score", "method", "threshold", "drifted"),
                           ((name, f"{float(v['score']):.4f}", v["method"], v["threshold"], "yes" if v["drifted"] else "no")
                            for name, v in top))
    return {
        "drift_share": dg.MetadataValue.float(round(float(result.drift_share), 6)),
        "dataset_drift": bool(result.dataset_drift),
        "drifted_columns": list(result.drifted_columns),
        "column_scores": dg.MetadataValue.md(table),
        "reference_rows": result.reference_rows,
        "current_rows": result.current_rows,
        "report_html": md.path(html_path),
        "chart": md.image(png, "drift per column"),
    }


class DriftReportConfig(dg.Config):
    """How scenes are summarized for drift tests."""

    feature_tile: int = Field(default=24, gt=7, description="Tile side (px) of the per-tile band/index statistics "
                              "(smaller tiles: more samples, more power to see drift).")
    drift_share: float = Field(default=0.5, gt=0, le=1, description="Share of drifted columns that makes the dataset drift.")
    method: str = Field(default="wasserstein", description="Evidently per-column drift method.")
    threshold: float = Field(default=0.4, gt=0, description="Per-column threshold of `method`: for `wasserstein`, the "
                             "distance in reference standard deviations. Evidently's 0.1 flags the ordinary spread "
                             "between one date and a multi-season training set; 0.4 does not, a 50 % re-calibration does.")
    previous_date_method: str | None = Field(default=None, description="Method against the region's previous date "
                                             "(same product, one date each): None = Evidently's choice (K-S up to "
                                             "1000 rows, else normed Wasserstein 0.1).")
    previous_date_threshold: float | None = Field(default=None, description="Threshold of `previous_date_method`.")


@dg.asset(
    partitions_def=region_date_partitions,
    deps=[scenes, dataset],
    kinds={"evidently", "html"},
    group_name="monitoring",
    automation_condition=FOLLOW_UPSTREAM,
    description="Evidently data-drift report of the partition's per-tile band and spectral-index statistics against "
    "the training set (or, for a product the training set does not cover, the region's previous date); "
    "`in_training_set` marks a partition the training set holds, which the drift sensor does not count.",
)
def data_drift_report(context: dg.AssetExecutionContext, config: DriftReportConfig, data_store: DataStore,
                      dvc: DvcStore) -> dg.MaterializeResult:
    from geoseg_assets.monitoring.drift import data_drift, drift_chart_png
    from geoseg_assets.monitoring.features import feature_columns, scene_tile_features
    from geoseg_assets.monitoring.reference import (
        baseline_note,
        compares_with_training_set,
        previous_date_against,
        training_features,
        training_reference,
    )

    dims, scene_path, scene = upstream_scene(context, data_store)
    current = scene_tile_features(str(scene_path), scene["band_names"], tile=config.feature_tile)
    manifest = data_store.dataset_manifest()
    method, threshold = config.method, config.threshold
    in_training_set = False  # a partition the training set holds is data the model has seen: no drift signal
    if compares_with_training_set(manifest, scene["band_names"]):
        ref = training_reference(manifest, dims["region"], dims["date"], dvc.version(DVC_STAGE) or "unversioned",
                                 config.feature_tile)
        in_training_set = ref.in_training_set
        cache = data_store.path(DRIFT_REFERENCE_CACHE, None, ref.cache_name)
        reference = training_features(ref, data_store.dataset_dir, cache, data_store.atomic_path,
                                      data_store.read_bytes)
        against = ref.against
    else:
        before = data_store.previous_date(SCENE_RECORD, dims["region"], dims["date"])
        if before is None:  # the first date of a product the training set does not cover is the baseline
            note = baseline_note(manifest, dims["region"])
            context.log.warning(f"{scene_path}: {note}")
            data_store.write_bytes(data_store.file(DATA_DRIFT_JSON, dims),
                                   json.dumps({"reference": None, "note": note}).encode())
            return dg.MaterializeResult(metadata={"reference": "none", "note": note, "current_rows": len(current)})
        reference = scene_tile_features(str(data_store.file(SCENE_COG, {**dims, "date": before})),
                                        scene["band_names"], tile=config.feature_tile)
        against = previous_date_against(before, dims["region"])
        method, threshold = config.previous_date_method, config.previous_date_threshold
    columns = [c for c in feature_columns(current) if c in reference.columns]
    html_path = data_store.file(DATA_DRIFT_HTML, dims)
    try:
        result = data_drift(reference, current, columns, drift_share=config.drift_share, html_path=str(html_path),
                            method=method, threshold=threshold)
    except ValueError as exc:
        raise dg.Failure(f"{scene_path}: {exc}", allow_retries=False) from exc
    png = drift_chart_png(result, f"data drift {dims['region']} {dims['date']} vs {against}")
    data_store.write_bytes(data_store.file(DATA_DRIFT_CHART, dims), png)
    record = {"reference": against, "in_training_set": in_training_set, "drift_share": result.drift_share,
              "dataset_drift": result.dataset_drift, "drifted_columns": result.drifted_columns,
              "column_scores": result.column_scores}
    data_store.write_bytes(data_store.file(DATA_DRIFT_JSON, dims), json.dumps(record, indent=2).encode())
    context.log.info(f"{dims['region']}/{dims['date']}: drift share {result.drift_share:.2f} vs {against}")
    return dg.MaterializeResult(metadata={"reference": against, "in_training_set": in_training_set,
                                          **_drift_metadata(result, png, html_path),
                                          "report": md.viewer_report(data_store.viewer_url, "data_drift", dims)})


@dg.asset(
    partitions_def=region_date_partitions,
    deps=[predictions, dataset],
    kinds={"evidently", "html"},
    group_name="monitoring",
    automation_condition=FOLLOW_UPSTREAM,
    description="Evidently drift of the predicted class shares against the training set's labels (of the same "
    "region when it has some: all splits, the region's whole labelled area), and against the region's previous "
    "predicted date when there is one.",
)
def prediction_drift_report(context: dg.AssetExecutionContext, data_store: DataStore,
                            class_map: ClassMapResource) -> dg.MaterializeResult:
    from geoseg_assets.monitoring.drift import class_share_drift, drift_chart_png
    from geoseg_assets.monitoring.features import class_samples, dataset_class_samples, dataset_regions

    dims, _, _ = upstream_scene(context, data_store)
    classes_path = data_store.file(PREDICTED_CLASSES, dims)
    if not data_store.exists(PREDICTED_CLASSES, dims):
        raise dg.Failure(f"{classes_path}: no prediction; materialize `predictions` for this partition first",
                         allow_retries=False)
    dataset_dir = data_store.dataset_dir()
    if dataset_dir is None:
        raise dg.Failure("no training set to compare with: materialize `dataset` first", allow_retries=False)
    names = {c.id: c.name for c in resolve_class_map(class_map, dims["region"]).classes}
    current = class_samples(str(classes_path))
    html_path = data_store.file(PREDICTION_DRIFT_HTML, dims)
    regions = [dims["region"]] if dims["region"] in dataset_regions(data_store.dataset_manifest()) else None
    labels = dataset_class_samples(dataset_dir, ("train", "val", "test"), regions=regions)
    vs_training = class_share_drift(labels, current, names, html_path=str(html_path))
    png = drift_chart_png(vs_training, f"predicted class shares {dims['region']} {dims['date']} vs training labels")
    metadata = {**_drift_metadata(vs_training, png, html_path),
                "report": md.viewer_report(data_store.viewer_url, "prediction_drift", dims),
                "reference": f"labels of the training set ({'region ' + dims['region'] if regions else 'all regions'}, "
                             "all splits)",
                "training_shares": vs_training.reference_shares, "predicted_shares": vs_training.current_shares}
    record = {"vs_training": {"drift_share": vs_training.drift_share, "reference_shares": vs_training.reference_shares,
                              "current_shares": vs_training.current_shares, "column_scores": vs_training.column_scores}}
    before = data_store.previous_date(PREDICTED_CLASSES, dims["region"], dims["date"])
    if before is not None:
        previous_html = data_store.file(PREDICTION_DRIFT_PREVIOUS_HTML, dims)
        previous = class_share_drift(class_samples(str(data_store.file(PREDICTED_CLASSES, {**dims, "date": before}))),
                                     current, names, html_path=str(previous_html))
        record["vs_previous_date"] = {"date": before, "drift_share": previous.drift_share,
                                      "reference_shares": previous.reference_shares,
                                      "column_scores": previous.column_scores}
        metadata.update(previous_date=before, previous_date_drift=bool(previous.dataset_drift),
                        previous_date_shares=previous.reference_shares, previous_date_html=md.path(previous_html))
    data_store.write_bytes(data_store.file(PREDICTION_DRIFT_JSON, dims), json.dumps(record, indent=2).encode())
    return dg.MaterializeResult(metadata=metadata)


class QualityConfig(dg.Config):
    """Per-rule thresholds live in monitoring/quality.py; this picks the tile size of the per-tile table."""

    tile: int = Field(default=256, gt=15, description="Tile side (px) of the per-tile quality table.")


@dg.asset(
    partitions_def=region_date_partitions,
    deps=[scenes],
    kinds={"html"},
    group_name="monitoring",
    automation_condition=FOLLOW_UPSTREAM,
    check_specs=[dg.AssetCheckSpec("data_quality_passes", asset="data_quality_report",
                                   description="No data-quality rule fails (warnings pass with severity WARN).")],
    description="Data quality of the scene per rule (nodata, saturation, values outside the training range, "
    "cloud/shadow proxy) with pass/warn/fail, a per-tile table, JSON and an HTML page; failures notify.",
)
def data_quality_report(context: dg.AssetExecutionContext, config: QualityConfig, data_store: DataStore,
                        notifier: Notifier):
    from geoseg_assets.monitoring.quality import quality_html, reference_ranges, scene_quality
    from geoseg_assets.monitoring.reference import compares_with_training_set

    dims, scene_path, scene = upstream_scene(context, data_store)
    reference = None
    if compares_with_training_set(data_store.dataset_manifest(), scene["band_names"]):
        reference = reference_ranges(data_store.dataset_dir(), "train")
    report = scene_quality(str(scene_path), scene["band_names"], reference=reference, tile=config.tile)
    html_path = data_store.file(DATA_QUALITY_HTML, dims)
    data_store.write_bytes(html_path, quality_html(report, f"data quality {dims['region']} {dims['date']}").encode())
    data_store.write_bytes(data_store.file(DATA_QUALITY_JSON, dims),
                           json.dumps(report.to_dict(), indent=2, default=str).encode())
    table = markdown_table(("rule", "status", "value", "warn", "fail", "message"),
                           ((r.rule, r.status, f"{r.value:.4f}", r.warn, r.fail, r.message) for r in report.rules))
    failed = [r.rule for r in report.rules if r.status == "fail"]
    if failed:
        notifier.notify(f"data quality FAILED for {dims['region']}/{dims['date']}: {', '.join(failed)} ({scene_path})",
                        asset="data_quality_report", partition=f"{dims['region']}/{dims['date']}", report=str(html_path))
    yield dg.MaterializeResult(metadata={
        "status": report.status,
        "rules": dg.MetadataValue.md(table),
        "failed_rules": failed,
        "warned_rules": [r.rule for r in report.rules if r.status == "warn"],
        "reference": "training set" if reference else "none (no training set with these bands)",
        "report_html": md.path(html_path),
        "report": md.viewer_report(data_store.viewer_url, "data_quality", dims),
    })
    yield dg.AssetCheckResult(
        check_name="data_quality_passes", passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR if failed else dg.AssetCheckSeverity.WARN,
        metadata={"status": report.status, "failed_rules": failed})


# Unpartitioned over partitioned inputs: re-run after any new champion, prediction or mask (eager() would
# wait for every date partition of its inputs to exist, which never happens), once there is a champion.
MODEL_QUALITY_AUTOMATION = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_match(dg.AutomationCondition.missing()).allow(
        dg.AssetSelection.assets(CHAMPION_ASSET))
    & ~dg.AutomationCondition.any_deps_in_progress() & ~dg.AutomationCondition.in_progress()
)


@dg.asset(
    deps=[dg.AssetKey(CHAMPION_ASSET), predictions, masks],
    automation_condition=MODEL_QUALITY_AUTOMATION,
    kinds={"mlflow", "html"},
    group_name="monitoring",
    description="The champion and its history: test mIoU and per-class IoU of every registered version, and live "
    "quality of the champion's predictions on every partition that has labels.",
)
def model_quality_report(context: dg.AssetExecutionContext, data_store: DataStore,
                         mlflow_tracking: MlflowTracking, class_map: ClassMapResource) -> dg.MaterializeResult:
    from geoseg_assets.monitoring.model_quality import live_quality, model_quality_html, version_history, history_png

    champion = mlflow_tracking.alias_version(CHAMPION)
    if champion is None:
        raise mlflow_tracking.no_alias_failure(CHAMPION, "run training_job first")
    history = version_history(mlflow_tracking.client(), mlflow_tracking.model_name, str(champion.version))
    pairs = []
    for dims in data_store.partitions_with(PREDICTED_CLASSES):
        record = data_store.prediction_record(dims) if data_store.exists(PREDICTION_RECORD, dims) else {}
        if data_store.exists(MASK, dims) and record.get("model_version") == str(champion.version):
            pairs.append((f"{dims['region']}/{dims['date']}", str(data_store.file(PREDICTED_CLASSES, dims)),
                          str(data_store.file(MASK, dims))))
    classes_of = resolve_class_map(class_map).classes
    live = live_quality(pairs, [c.id for c in classes_of], [c.name for c in classes_of])
    png = history_png(history)
    html_path = data_store.file(MODEL_QUALITY_HTML)
    data_store.write_bytes(html_path, model_quality_html(history, live, png, mlflow_tracking.model_name).encode())
    data_store.write_bytes(data_store.file(MODEL_QUALITY_JSON),
                           json.dumps({"history": history, "live": live}, indent=2).encode())
    live_table = markdown_table(
        ("partition", "mIoU (present classes)", "mIoU (all classes)", "pixel acc", "labelled px"),
        ((p["partition"], f"{p['miou']:.4f}", f"{p['miou_all_classes']:.4f}", f"{p['pixel_accuracy']:.4f}",
          p["labelled_pixels"]) for p in live["partitions"]))
    return dg.MaterializeResult(metadata={
        "champion_version": str(champion.version),
        "versions": len(history),
        "champion_test_miou": next((h["test_miou"] for h in history if h["version"] == str(champion.version)), None),
        "live_miou": dg.MetadataValue.float(round(float(live["miou"]), 4)) if live["partitions"] else "no labelled partition",
        "live_partitions": dg.MetadataValue.md(live_table),
        "history": md.image(png, "mIoU per model version"),
        "report_html": md.path(html_path),
        "report": md.viewer_report(data_store.viewer_url, "model_quality"),
    })
