"""`make demo`: stage a demo landing folder and run the pipeline the way the sensors would.

Stages 2 synthetic regions x 3 dates (with ground-truth labels) and the bundled real Landsat pair
of Pucallpa, then against the instance in $DAGSTER_HOME (SQLite by default):
1. `new_scene_sensor` adds the region partitions and requests every scene; each request runs
   `imagery_job` (scenes -> tiles, masks, with their checks);
2. `import_labels_job` imports the synthetic ground truth of each synthetic region;
3. `label_change_sensor` sees the new labels and re-runs only those regions' masks;
4. `dataset_job` builds the spatially split training set and versions it with DVC (commit to
   dvc.lock + push to the local remote `data/dvc-remote`, recorded in git as
   `refs/geoseg/datasets/<md5>`);
5. `training_job` trains a Unet on CPU (about 4-5 minutes), logs it to the local MLflow store,
   evaluates it on the test split and promotes it to `champion` if it passes the gate;
6. the new champion makes every `predictions` partition stale (with the daemon, the automation
   sensor requests them); the demo runs `prediction_job` per partition (class COG, polygons).
   Partitions the champion cannot predict (the real Landsat pair: other bands, dtype and CRS) are
   reported with the integrity problem, not run;
7. `monitoring_job` writes the data quality, data drift and prediction drift reports of every
   partition (HTML + JSON), and `model_quality_report` the champion's history and live quality.
It prints where the outputs are and how to open the UI.
"""

import json
import shutil
import sys
import time
from pathlib import Path

import dagster as dg

from geoseg_assets.definitions import REPO_ROOT, default_data_dir, defs
from geoseg_assets.assets.monitoring import model_quality_report
from geoseg_assets.partitions import region_date_partitions, region_partitions
from geoseg_assets.assets.masks import ImportLabelsConfig, import_labels_job, masks
from geoseg_assets.sensors import label_change_sensor, new_scene_sensor
from resources.landing_source import REGION_SPEC_FILE
from resources.synthetic_source import SyntheticSource

REAL_SCENES = {  # region -> {date: bundled file}
    "pucallpa": {
        "2010-07-01": REPO_ROOT / "tests/data/landsat_drift/pucallpa_2010.tif",
        "2020-07-01": REPO_ROOT / "tests/data/landsat_drift/pucallpa_2020.tif",
    }
}
REAL_SPECS = {"pucallpa": {"band_names": ["SWIR1", "NIR", "R", "G"], "dtype": "uint8"}}


def stage_landing(landing: Path) -> SyntheticSource:
    """Fill the landing folder: synthetic scenes + labels, and the bundled real scenes."""
    synthetic = SyntheticSource(cache_dir=str(landing), nodata_margin=0.03)
    for ref in synthetic.scan().refs:
        synthetic.fetch(ref.region, ref.date)
    for region, by_date in REAL_SCENES.items():
        for date, src in by_date.items():
            dst = landing / region / date / src.name
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        (landing / region / REGION_SPEC_FILE).write_text(json.dumps(REAL_SPECS[region]))
    return synthetic


def run_requests(job, instance, requests, what: str, asset_selection=None) -> list:
    """Execute each run request in-process (recorded in the instance); return the failed keys."""
    failures = []
    for request in requests:
        run = job.execute_in_process(partition_key=request.partition_key, instance=instance, tags=request.tags,
                                     asset_selection=asset_selection, raise_on_error=False)
        print(f"  {'ok' if run.success else 'FAILED':6} {what:16} {request.partition_key}  run {run.run_id[:8]}")
        if not run.success:
            failures.append(request.partition_key)
    return failures


def predict_partitions(instance, resources, keys) -> list:
    """Run `prediction_job` for each partition (what automation requests once a new champion lands),
    skipping partitions the champion cannot predict (integrity issues, e.g. another sensor's bands);
    return the failed keys."""
    from geoseg_assets.monitoring.integrity import input_integrity
    from resources.mlflow_tracking import CHAMPION, PREPROCESSING_FILE

    tracking = resources["mlflow_tracking"]
    champion = tracking.alias_version(CHAMPION)
    if champion is None:
        print(f"  skip   {'predictions':16} no champion")
        return []
    preprocessing = tracking.read_json_artifact(champion.run_id, PREPROCESSING_FILE)
    job = defs.resolve_job_def("prediction_job")
    failures = []
    for key in keys:
        scene = resources["data_store"].scene_record(key.keys_by_dimension)
        issues = [i for i in input_integrity(scene, preprocessing) if i.blocking]
        if issues:  # the asset would refuse it with this message: say so instead of failing the demo
            print(f"  skip   {'predictions':16} {key}  [{issues[0].check}] {issues[0].problem}")
            continue
        failures += run_requests(job, instance, [dg.RunRequest(partition_key=key)], "predictions")
    return failures


def report_partitions(instance, resources, keys) -> list:
    """Data quality and drift reports of every partition (prediction drift where there are predictions),
    then the model quality report; return what failed."""
    from resources.catalog import PREDICTED_CLASSES

    job = defs.resolve_job_def("monitoring_job")
    failures = []
    for key in keys:
        selection = [dg.AssetKey("data_quality_report"), dg.AssetKey("data_drift_report")]
        if resources["data_store"].exists(PREDICTED_CLASSES, key.keys_by_dimension):
            selection.append(dg.AssetKey("prediction_drift_report"))
        failures += run_requests(job, instance, [dg.RunRequest(partition_key=key)],
                                 f"{len(selection)} reports", asset_selection=selection)
    quality = dg.materialize([model_quality_report], instance=instance, resources=resources, raise_on_error=False)
    if quality.success:
        meta = quality.asset_materializations_for_node("model_quality_report")[0].metadata
        print(f"  ok     {'model quality':16} champion v{meta['champion_version'].value}, live mIoU "
              f"{meta['live_miou'].value} on labelled partitions  run {quality.run_id[:8]}")
    else:
        print(f"  FAILED {'model quality':16} run {quality.run_id[:8]}")
        failures.append("model_quality_report")
    return failures


def main() -> int:
    data_dir = default_data_dir()
    landing = data_dir / "landing"
    started = time.time()
    synthetic = stage_landing(landing)

    instance = dg.DagsterInstance.get()
    resources = defs.resources
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        scene_tick = new_scene_sensor(context)
    for request in scene_tick.dynamic_partitions_requests:
        instance.add_dynamic_partitions(region_partitions.name, list(request.partition_keys))
    job = defs.resolve_job_def("imagery_job")
    failures = run_requests(job, instance, scene_tick.run_requests, "scenes+tiles+masks")

    importer = defs.resolve_job_def(import_labels_job.name)
    for region in synthetic.regions:
        config = ImportLabelsConfig(path=str(synthetic.labels_path(region)), region=region, class_column="class_name",
                                    source="synthetic", annotator="geoseg.synthetic", replace=True)
        run = importer.execute_in_process(instance=instance, run_config=dg.RunConfig(ops={"import_labels": config}),
                                          raise_on_error=False)
        print(f"  {'ok' if run.success else 'FAILED':6} {'import labels':16} {region}  run {run.run_id[:8]}")
        if not run.success:
            failures.append(region)
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        label_tick = label_change_sensor(context)
    failures += run_requests(job, instance, label_tick.run_requests, "masks", asset_selection=[masks.key])

    built = defs.resolve_job_def("dataset_job").execute_in_process(instance=instance, raise_on_error=False)
    version = "-"
    if built.success:
        meta = built.asset_materializations_for_node("dataset")[0].metadata
        version = meta["dataset_version"].value
        print(f"  ok     {'dataset':16} train/val/test {meta['tiles_train'].value}/{meta['tiles_val'].value}/"
              f"{meta['tiles_test'].value} tiles, DVC version {version}  run {built.run_id[:8]}")
    else:
        print(f"  FAILED {'dataset':16} run {built.run_id[:8]}")
        failures.append("dataset")

    trained = defs.resolve_job_def("training_job").execute_in_process(instance=instance, raise_on_error=False)
    if trained.success:
        model_meta = trained.asset_materializations_for_node("model")[0].metadata
        evaluation = trained.asset_materializations_for_node("model_evaluation")[0].metadata
        print(f"  ok     {'model':16} v{model_meta['model_version'].value}: best val mIoU "
              f"{model_meta['best_val_miou'].value:.3f}, test mIoU {evaluation['test_miou'].value:.3f} (present "
              f"classes; all classes {evaluation['test_miou_all_classes'].value:.3f}), "
              f"{'promoted to champion' if evaluation['promoted'].value else 'not promoted'} "
              f"({evaluation['promotion_reason'].value})  run {trained.run_id[:8]}")
    else:
        print(f"  FAILED {'model':16} run {trained.run_id[:8]}")
        failures.append("model")

    partitions = sorted(instance.get_materialized_partitions(dg.AssetKey("scenes")), key=str)
    keys = [region_date_partitions.get_partition_key_from_str(str(k)) for k in partitions]
    failures += predict_partitions(instance, resources, keys)
    failures += report_partitions(instance, resources, keys)

    store = Path(resources["data_store"].root)
    print(f"\nDemo finished in {time.time() - started:.0f}s: {len(scene_tick.run_requests)} partitions, "
          f"{len(label_tick.run_requests)} mask updates, {len(failures)} failed.")
    print(f"  landing folder : {landing}")
    print(f"  labels         : {resources['label_store'].path}")
    print(f"  outputs        : {store}  (scenes/, tiles/, masks/, predictions/, *_report/ by region=/date=; dataset/)")
    print(f"  dataset        : version {version} in dvc.lock, pushed to {resources['dvc'].repo_dir}/data/dvc-remote, "
          f"recorded as refs/geoseg/datasets/{version.removesuffix('.dir')} "
          f"(`python -m geoseg_assets.reproduce --dataset {version}` restores it)")
    print(f"  MLflow         : {resources['mlflow_tracking'].tracking_uri}  "
          f"(`mlflow ui --backend-store-uri {resources['mlflow_tracking'].tracking_uri}`)")
    print(f"  Dagster home   : {instance.root_directory}")
    print("  open the UI    : make ui   -> http://127.0.0.1:3000")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
