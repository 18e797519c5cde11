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
5. `training_job` trains a Unet on CPU (2-3 minutes on 2 cores), logs it to the local MLflow store,
   evaluates it on the test split and promotes it to `champion` if it passes the gate;
6. the new champion makes every `predictions` partition stale (with the daemon, the automation
   sensor requests them); the demo runs `prediction_job` per partition (class COG, polygons).
   Partitions the champion cannot predict (the real Landsat pair: other bands, dtype and CRS) are
   skipped by the asset with the integrity problem recorded, and their runs succeed;
7. `monitoring_job` writes the data quality, data drift and prediction drift reports of every
   partition (HTML + JSON), and `model_quality_report` the champion's history and live quality;
8. `catalog_job` writes the STAC catalog of every scene, mask, prediction and model version.
Every run is made against the code location of `workspace.yaml` (`WorkspaceRuns`), so the UI lists it on its job's
page and can re-execute it; the two sensors' cursors and ticks are stored, so switching them on later requests
nothing the demo did. It prints one line per run and where the outputs are; Dagster's log lines go to
`<data>/demo.log` and to each run's log in the UI.
"""

import argparse
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import dagster as dg
from dagster._core.definitions.assets.job.asset_job import IMPLICIT_ASSET_JOB_NAME  # the UI's "Materialize" job

from geoseg_assets.definitions import REPO_ROOT, default_data_dir, defs
from geoseg_assets.assets.monitoring import model_quality_report
from geoseg_assets.partitions import region_date_partitions, region_partitions
from geoseg_assets.assets.masks import ImportLabelsConfig, import_labels_job, masks
from geoseg_assets.sensors import label_change_sensor, new_scene_sensor
from geoseg_assets.workspace_runs import WorkspaceRuns, workspace_runs
from resources.catalog import PREDICTED_CLASSES, STAC_CATALOG
from resources.data_store import DataStore
from resources.landing_source import REGION_SPEC_FILE
from resources.synthetic_source import SyntheticSource

LOCATION = "geoseg"  # the code location's name in workspace.yaml
# The demo's runs are small: each runs in its run process (no step processes to start): the demo took 203 s so,
# 271 s with the default multiprocess executor, on 2 cores. A re-execution from the UI keeps this config.
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}

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


class DemoRuns:
    """The demo's runs: made against the workspace (re-executable from the UI, listed on their job's page),
    executed here, one line printed per run (Dagster's own log lines go to each run's log and to demo.log)."""

    def __init__(self, runs: WorkspaceRuns):
        self.runs = runs
        self.failed: list[str] = []

    def run(self, job_name: str, what: str, label: str = "", run_config: dict | None = None,
            progress: str | None = None, **kwargs) -> dg.DagsterRun:
        """Make and execute one run; print its outcome, and meanwhile the run's log messages that start with
        `progress` (e.g. the training epochs)."""
        started = time.time()
        run = self.runs.create_run(job_name, run_config={**IN_PROCESS, **(run_config or {})}, **kwargs)
        with self.printing_messages(run.run_id, progress) if progress else nullcontext():
            run = self.runs.execute(run)
        status = "ok" if run.is_success else "FAILED"
        detail = self.outcome(run)
        print(f"  {status:6} {what:18} {label:22} {time.time() - started:5.1f}s  run {run.run_id[:8]}"
              f"{'  ' + detail if detail else ''}", flush=True)
        if not run.is_success:
            self.failed.append(f"{what} {label}".strip())
        return run

    @contextmanager
    def printing_messages(self, run_id: str, prefix: str, every_s: float = 2.0) -> Iterator[None]:
        """While the block runs, print the run's log messages that start with `prefix` as they are stored."""
        done, printed = threading.Event(), 0

        def watch() -> None:
            nonlocal printed
            while True:
                stop = done.wait(every_s)
                messages = [e.user_message for e in self.runs.instance.all_logs(run_id)
                            if not e.is_dagster_event and e.user_message.startswith(prefix)]
                for message in messages[printed:]:  # the first few figures: the run's log has them all
                    print(f"         {', '.join(message.split(', ')[:4])}", flush=True)
                printed = len(messages)
                if stop:
                    return

        watcher = threading.Thread(target=watch, name="demo-progress", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join(timeout=30)

    def run_sensor_requests(self, sensor_name: str, result: dg.SensorResult, job_name: str, what: str,
                            asset_selection=None) -> None:
        """One run per request of a sensor evaluated here, tagged and recorded as the daemon would."""
        started = time.time()
        ids = [self.run(job_name, what, str(r.partition_key), partition_key=r.partition_key,
                        tags=self.runs.sensor_run_tags(sensor_name, r), asset_selection=asset_selection).run_id
               for r in result.run_requests or []]
        self.runs.record_sensor_tick(sensor_name, started, result, ids)

    def outcome(self, run: dg.DagsterRun) -> str:
        """Why a run failed (first step failure), or what a successful run skipped and why."""
        instance = self.runs.instance
        if not run.is_success:
            for record in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records:
                error = record.event_log_entry.dagster_event.step_failure_data.error
                return (error.message if error else "").strip().splitlines()[0][:160]
            return "see the run in the UI"
        for record in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_OBSERVATION).records:
            observation = record.event_log_entry.asset_observation
            if "skipped" in observation.metadata:
                issue = observation.metadata["integrity_issues"].value[0]
                return f"skipped: [{issue['check']}] {issue['problem']}"[:140]
        return ""

    def materialization(self, run: dg.DagsterRun, asset: str) -> dict:
        """The metadata values of `asset`'s materialization in `run` ({} if none)."""
        records = self.runs.instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
        for record in records:
            materialization = record.event_log_entry.asset_materialization
            if materialization.asset_key == dg.AssetKey(asset):
                return {k: v.value for k, v in materialization.metadata.items()}
        return {}


@contextmanager
def dagster_logs_to(log_file: Path) -> Iterator[None]:
    """Send everything written to stderr (Dagster's console log of every run and step process) to `log_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_file, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def run_pipeline(demo: DemoRuns, synthetic: SyntheticSource, training_config: dict, data_store: DataStore) -> dict:
    """Sensors, labels, dataset, training (`training_config`: op name -> config over its defaults), predictions and
    reports, as in the module docstring; `data_store` is the code location's, built (its settings resolved)."""
    instance, resources = demo.runs.instance, defs.resources
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        scene_tick = new_scene_sensor(context)
    for request in scene_tick.dynamic_partitions_requests:
        instance.add_dynamic_partitions(region_partitions.name, list(request.partition_keys))
    demo.run_sensor_requests(new_scene_sensor.name, scene_tick, "imagery_job", "scenes+tiles+masks")

    for region in synthetic.regions:
        config = ImportLabelsConfig(path=str(synthetic.labels_path(region)), region=region, class_column="class_name",
                                    source="synthetic", annotator="geoseg.synthetic", replace=True)
        demo.run(import_labels_job.name, "import labels", region,
                 run_config={"ops": {"import_labels": {"config": config.model_dump()}}})
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        label_tick = label_change_sensor(context)
    demo.run_sensor_requests(label_change_sensor.name, label_tick, "imagery_job", "masks", asset_selection=[masks.key])

    built = demo.run("dataset_job", "dataset")
    meta = demo.materialization(built, "dataset")
    version = meta.get("dataset_version", "-")
    if meta:
        print(f"         train/val/test {meta['tiles_train']}/{meta['tiles_val']}/{meta['tiles_test']} tiles, "
              f"DVC version {version}")
    print("  training on CPU (2-3 minutes on 2 cores):", flush=True)
    ops_config = {op: {"config": config} for op, config in training_config.items()}
    trained = demo.run("training_job", "model", run_config={"ops": ops_config} if ops_config else None,
                       progress="epoch ")
    model_meta, evaluation = demo.materialization(trained, "model"), demo.materialization(trained, "model_evaluation")
    if model_meta and evaluation:
        print(f"         v{model_meta['model_version']}: best val mIoU {model_meta['best_val_miou']:.3f}, test mIoU "
              f"{evaluation['test_miou']:.3f} (present classes; all classes "
              f"{evaluation['test_miou_all_classes']:.3f}), "
              f"{'promoted to champion' if evaluation['promoted'] else 'not promoted'} "
              f"({evaluation['promotion_reason']})")

    partitions = sorted(instance.get_materialized_partitions(dg.AssetKey("scenes")), key=str)
    for key in partitions:
        demo.run("prediction_job", "predictions", str(key), partition_key=key)
    for key in partitions:
        dims = region_date_partitions.get_partition_key_from_str(str(key)).keys_by_dimension
        selection = [dg.AssetKey("data_quality_report"), dg.AssetKey("data_drift_report")]
        if data_store.exists(PREDICTED_CLASSES, dims):
            selection.append(dg.AssetKey("prediction_drift_report"))
        demo.run("monitoring_job", f"{len(selection)} reports", str(key), partition_key=key, asset_selection=selection)
    quality = demo.run(IMPLICIT_ASSET_JOB_NAME, "model quality", asset_selection=[model_quality_report.key])
    quality_meta = demo.materialization(quality, "model_quality_report")
    if quality_meta:
        print(f"         champion v{quality_meta['champion_version']}, live mIoU {quality_meta['live_miou']} on "
              "labelled partitions")
    catalog = demo.materialization(demo.run("catalog_job", "STAC catalog"), "stac_catalog")
    if catalog:
        print(f"         {catalog['items_total']} items {catalog['items']} in {catalog['catalog_path']}")
    return {"partitions": len(scene_tick.run_requests), "mask_updates": len(label_tick.run_requests),
            "dataset_version": version}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the geoseg pipeline on demo scenes (see the module docstring).")
    parser.add_argument("--training-config", type=json.loads, default={}, metavar="JSON",
                        help="training_job's config over its defaults, by op, e.g. a quick run: "
                        '\'{"model": {"epochs": 1, "max_steps_per_epoch": 2}, "model_evaluation": {"min_miou": 0}}\'')
    args = parser.parse_args(argv)
    data_dir = default_data_dir()
    landing = data_dir / "landing"
    log_file = data_dir / "demo.log"
    started = time.time()
    synthetic = stage_landing(landing)
    instance = dg.DagsterInstance.get()
    print(f"geoseg demo: Dagster's log lines of every run go to {log_file}", flush=True)
    # the resources as a run builds them (EnvVar settings of the production profile resolved)
    wanted = {name: defs.resources[name] for name in ("data_store", "dvc", "mlflow_tracking")}
    with dagster_logs_to(log_file), workspace_runs(instance, REPO_ROOT / "workspace.yaml", LOCATION, defs) as runs, \
            dg.build_resources(wanted) as built:
        demo = DemoRuns(runs)
        summary = run_pipeline(demo, synthetic, args.training_config, built.data_store)
        store, dvc, tracking = built.data_store, built.dvc, built.mlflow_tracking
        remote = dvc.remote_location()

    version = summary["dataset_version"]
    labels = defs.resources["label_store"]
    print(f"\nDemo finished in {time.time() - started:.0f}s: {summary['partitions']} partitions, "
          f"{summary['mask_updates']} mask updates, {len(demo.failed)} failed{': ' if demo.failed else '.'}"
          f"{', '.join(demo.failed)}")
    print(f"  landing folder : {landing}")
    print(f"  labels         : {getattr(labels, 'path', None) or 'PostGIS (GEOSEG_PG_* settings)'}")
    print(f"  outputs        : {store.location()}  (scenes/, tiles/, masks/, "
          "predictions/, *_report/ by region=/date=; dataset/)")
    print(f"  STAC catalog   : {store.display(store.file(STAC_CATALOG))}  (scenes, masks, predictions, models; "
          "pystac, QGIS)")
    print(f"  dataset        : version {version} in dvc.lock, pushed to {remote}, "
          f"recorded as refs/geoseg/datasets/{version.removesuffix('.dir')} "
          f"(`python -m geoseg_assets.reproduce --dataset {version}` restores it)")
    print(f"  MLflow         : {tracking.tracking_uri}  (make ui serves it on {tracking.ui_url or 'your MLflow server'})")
    print(f"  Dagster home   : {instance.root_directory}  (Dagster's log: {log_file})")
    print("  open the UI    : make ui   -> http://127.0.0.1:3000  (every run above can be opened and re-executed; "
          "new_scene_sensor and label_change_sensor resume from the demo's cursors)")
    print(f"  viewer         : {store.viewer_url}  (make ui starts it: maps, legends, reports)")
    return 1 if demo.failed else 0


if __name__ == "__main__":
    sys.exit(main())
