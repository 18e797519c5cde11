"""Operations: `dagster-daemon` alone on the production instance (the repo's dagster.yaml, storage on a
throwaway PostgreSQL database, data under a temp GEOSEG_DATA_DIR), no webserver.

1. Full chain: an operator has imported the region's labels, built a training set and trained a champion
   (`Ops.train_champion`, in-process on the same instance before the daemon starts). A new scene dropped into
   the landing folder then goes through scenes -> tiles, masks, predictions, data_quality_report,
   data_drift_report, prediction_drift_report and model_quality_report with no human action beyond switching
   `new_scene_sensor` on (`dagster sensor start`, the CLI twin of the UI's switch): the sensor requests
   `scenes`, `geoseg_automation_sensor` (declarative automation) requests the rest as their inputs land. The
   latency from the copy to each materialization is printed. The training set and the model are not
   re-planned: only `drift_sensor` (off by default) requests training.

2. A label edit: with `label_change_sensor` switched on over finished work nothing runs; a reviewer sends 5
   labels back to `test` and the next tick re-runs the masks of exactly that region's partitions (with fewer
   labelled pixels), and automation refreshes the model quality report.

3. Drift: two dates land 50 % brighter; their drift reports (automation) pass the DriftPolicy, and `drift_sensor`,
   once switched on, requests one `retraining_job` run: the training set is rebuilt with those dates (new DVC
   version, in the throwaway git repository the code location gets as GEOSEG_DVC_REPO), a new model version is
   trained on it and evaluated; the run succeeds exactly when it clears the quality floor. The drift reports
   automation then refreshes against the new training set mark those dates as training data, and the sensor's
   next tick requests no second retraining.

4. SIGKILL of the daemon's process group while an imagery_job run executes kills the daemon, the code server
   it spawned and, as that server's children, the run worker and its step processes. With the repo's
   dagster.yaml unchanged (its `HealthCheckedRunLauncher`), the restarted daemon's run monitoring finds the
   worker process gone, fails the run saying which pid and code server, and run retries re-execute it to
   success: no run is lost.

5. SIGKILL of only the code server mid-run: the run worker survives it and finishes the run; run monitoring,
   asking the worker process rather than the dead server, must not fail it, and no retry is launched.
"""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from tests.support.paths import BIN, REPO
from tests.support.pipeline import import_truth, materialize_partition
from tests.support.postgres import PG, throwaway_database
from tests.support.processes import group_alive, start_group, stop_group, tail
from tests.support.project import QUICK
from tests.support.repos import copy_dataset_code, git


pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REGION = "alpha"
SETUP_DATE = "2024-04-15"
SENSOR_DATE = "2024-06-15"
KILL_DATE = "2024-08-15"
DRIFT_DATES = ["2024-07-01", "2024-07-15"]  # landed 50 % brighter than the training data: a re-calibrated sensor
DRIFT_SHIFT = 0.5
SCENE_SENSOR = "new_scene_sensor"
LABEL_SENSOR = "label_change_sensor"
DRIFT_SENSOR = "drift_sensor"
AUTOMATION_SENSOR = "geoseg_automation_sensor"
# What a new scene of a labelled region feeds, with a champion in place: all planned by automation.
FOLLOWERS = ["tiles", "masks", "data_quality_report", "predictions", "data_drift_report", "prediction_drift_report",
             "model_quality_report"]
NOT_REQUESTED = ["dataset", "model", "champion_model"]  # a new scene never retrains by itself
IMAGERY_STEPS = {"scenes", "scenes_scene_integrity", "tiles", "tiles_tile_stats_sanity", "masks",
                 "masks_label_geometries_valid"}  # imagery_job's steps
SENSOR_TIMEOUT = 10 * 60
# The code location's sensor intervals (GEOSEG_SENSOR_INTERVALS): seconds instead of the deployment's 30-300 s, so
# the tests wait for work, not for ticks.
INTERVALS = {"new_scene_sensor": 5, "label_change_sensor": 5, "drift_sensor": 10, "geoseg_automation_sensor": 10}
# The drift test's retraining_job trains with the champion's recipe (tests.support.project.QUICK): a few minutes here,
# the dataset rebuild and the checks included; generous, as a slow machine must not fail it.
RETRAINING_TIMEOUT = 25 * 60
POOL_STEPS = {"model", "model_evaluation", "predictions"}  # the steps of the model_compute pool (geoseg_assets/pools.py)
RECOVERY_TIMEOUT = 5 * 60


def _cli(args: list[str], env: dict, timeout: float = 180) -> str:
    """A short-lived dagster CLI command in its own session; its process group is always stopped."""
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        stop_group(proc, timeout=10)
    assert proc.returncode == 0, f"{' '.join(args)} -> {proc.returncode}:\n{out}"
    return out


class Ops:
    """The instance, its environment and the running daemon of the module."""

    def __init__(self, tmp: Path, db: str):
        from dagster import DagsterInstance

        self.tmp, self.db = tmp, db
        self.home, self.data = tmp / "dagster_home", tmp / "data"
        self.landing, self.staging = self.data / "landing", tmp / "staging"
        self.home.mkdir()
        self.landing.mkdir(parents=True)
        # The repo's dagster.yaml unchanged: storage from DAGSTER_PG_* (pointed at the throwaway DB).
        shutil.copy(REPO / "dagster.yaml", self.home / "dagster.yaml")
        self.config = yaml.safe_load((REPO / "dagster.yaml").read_text())
        self.pg_env = {"DAGSTER_PG_HOST": PG["host"], "DAGSTER_PG_PORT": str(PG["port"]),
                       "DAGSTER_PG_USER": PG["user"], "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": db}
        # The code location the daemon serves keeps its data under `<tmp>/data` and versions datasets in the
        # throwaway git repository `<tmp>` (train_champion makes it), never in this checkout's dvc.lock.
        self.env = {**os.environ, **self.pg_env, "DAGSTER_HOME": str(self.home), "GEOSEG_DATA_DIR": str(self.data),
                    "GEOSEG_DVC_REPO": str(tmp), "PYTHONUNBUFFERED": "1",
                    "GEOSEG_SENSOR_INTERVALS": ",".join(f"{k}={v}" for k, v in INTERVALS.items())}
        self.daemon: subprocess.Popen | None = None
        self.daemon_logs: list[Path] = []
        self.instance: DagsterInstance | None = None

    def cli(self, *args: str, timeout: float = 180) -> str:
        return _cli([str(BIN / "dagster"), *args], self.env, timeout)

    def start_daemon(self) -> None:
        log = self.tmp / f"daemon{len(self.daemon_logs) + 1}.log"
        self.daemon_logs.append(log)
        self.daemon = start_group([str(BIN / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")], self.env, log)

    def check_daemon(self) -> None:
        assert self.daemon.poll() is None, f"daemon exited with {self.daemon.returncode}:\n{self.tail()}"

    def tail(self, lines: int = 60) -> str:
        return tail(self.daemon_logs[-1], lines) if self.daemon_logs else "(no daemon log)"

    def train_champion(self) -> None:
        """Before the daemon starts, as an operator's earlier work: region REGION's labels, one labelled
        partition (SETUP_DATE, 1024^2, generated straight from the synthetic source, so the landing folder and
        the new-scene sensor never see it), the training set (versioned by DVC in a throwaway git repo at the
        test's root, whose `data/` is the data root) and a quick champion in the MLflow store the code location
        uses (`<data>/mlflow`). All recorded in the Postgres instance the daemon then serves; the automation
        sensor's first tick does not re-request what is already materialized."""
        import dagster as dg

        from geoseg_assets.definitions import build_defs, default_resources
        from resources.compute import ComputeDevice
        from resources.dvc_store import DvcStore
        from resources.mlflow_tracking import CHAMPION
        from resources.synthetic_source import SyntheticSource

        t0 = time.time()
        git(self.tmp, "init", "-q")
        (self.tmp / ".gitignore").write_text("/data/\n/dagster_home/\n/staging/\n/dvc-remote/\n*.log\n")
        shutil.copy(REPO / "dvc.yaml", self.tmp / "dvc.yaml")
        copy_dataset_code(self.tmp, REPO)
        git(self.tmp, "add", "-A")
        git(self.tmp, "-c", "user.name=geoseg tests", "-c", "user.email=tests@geoseg.invalid", "commit", "-qm", "init")
        source = SyntheticSource(cache_dir=str(self.staging), regions=[REGION], dates=[SETUP_DATE], width=1024,
                                 height=1024)
        resources = {**default_resources(self.data), "scene_source": source, "compute": ComputeDevice(device="cpu"),
                     "dvc": DvcStore(repo_dir=str(self.tmp), remote_url=str(self.tmp / "dvc-remote"))}
        assert materialize_partition(self.instance, resources, REGION, SETUP_DATE).success  # scene grid first
        import_truth(REGION, source, resources)
        assert materialize_partition(self.instance, resources, REGION, SETUP_DATE).success  # now with masks
        defs = build_defs(resources)
        assert defs.resolve_job_def("dataset_job").execute_in_process(instance=self.instance).success
        trained = defs.resolve_job_def("training_job").execute_in_process(instance=self.instance, run_config=dg.RunConfig(
            ops={"model": {"config": QUICK}, "model_evaluation": {"config": {"min_miou": 0.0}}}))
        assert trained.success
        champion = resources["mlflow_tracking"].alias_version(CHAMPION)
        assert champion is not None
        print(f"labels, {SETUP_DATE} imagery, dataset and champion v{champion.version} set up in "
              f"{time.time() - t0:.1f} s")

    def land(self, date: str, brightness_shift: float = 0.0, size: int = 256) -> float:
        """Generate a `size`² synthetic scene aside (optionally `brightness_shift` brighter: a re-calibrated
        sensor), then rename it into `<landing>/<region>/<date>/scene.tif` (the scan ignores dot files, and a
        rename is atomic: the sensor never sees half a file)."""
        from resources.synthetic_source import SyntheticSource

        source = SyntheticSource(cache_dir=str(self.staging), regions=[REGION], dates=[date], width=size, height=size,
                                 brightness_shifts={date: brightness_shift} if brightness_shift else {})
        ref = source.fetch(REGION, date)
        folder = self.landing / REGION / date
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / ".scene.tif.part"
        shutil.copy(ref.paths[0], part)
        os.rename(part, folder / "scene.tif")
        return time.time()


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    from dagster import DagsterInstance

    started = time.time()
    with throwaway_database() as db, pytest.MonkeyPatch.context() as mp:
        ops = Ops(tmp_path_factory.mktemp("ops_daemon"), db)
        for var, value in ops.pg_env.items():
            mp.setenv(var, value)
        ops.cli("instance", "migrate")  # the schema, before the daemon's threads race to create it
        ops.instance = DagsterInstance.from_config(str(ops.home))
        print(f"\nschema created in {time.time() - started:.1f} s")
        try:
            ops.train_champion()
            ops.start_daemon()
            yield ops
        finally:
            if ops.daemon is not None:
                stop_group(ops.daemon)
                assert not group_alive(ops.daemon.pid), "daemon processes left behind"
            ops.instance.dispose()


# --------------------------------------------------------------------------------------------- queries

def _runs(instance, **filters):
    from dagster import RunsFilter

    return list(instance.get_runs(filters=RunsFilter(**filters)) if filters else instance.get_runs())


UNPARTITIONED = {"dataset", "model", "model_evaluation", "champion_model", "model_quality_report"}


def _materialization(instance, asset: str, partition: str):
    from dagster import AssetKey, AssetRecordsFilter

    partitions = None if asset in UNPARTITIONED else [partition]
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=partitions), limit=1).records
    return records[0] if records else None


def _sensor_state(instance, name: str):
    from dagster._core.scheduler.instigation import InstigatorType

    states = [s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
              if s.instigator_name == name]
    assert len(states) <= 1, states
    return states[0] if states else None


def _sensor_ticks(instance, name: str):
    state = _sensor_state(instance, name)
    return instance.get_ticks(state.instigator_origin_id, state.selector_id)


def _wait_all_finished(ops: Ops, t0: float, timeout: float) -> None:
    """Poll until every run of the instance has ended, at most `timeout` seconds after `t0`."""
    while not all(r.is_finished for r in _runs(ops.instance)):
        ops.check_daemon()
        assert time.time() - t0 < timeout, f"runs still going:\n{_describe_runs(ops.instance)}\n{ops.tail()}"
        time.sleep(1)


def _wait_for_new(ops: Ops, asset: str, partitions: list[str], is_new, t0: float, since: str) -> dict:
    """Poll until each partition's latest `asset` materialization passes `is_new(partition, record)`; the records by
    partition, each printed with its latency from `t0`."""
    found: dict[str, object] = {}
    while len(found) < len(partitions):
        ops.check_daemon()
        assert time.time() - t0 < SENSOR_TIMEOUT, (
            f"{asset} of {sorted(set(partitions) - set(found))} not materialized:\n{_describe_runs(ops.instance)}\n"
            f"{ops.tail()}")
        for p in partitions:
            record = None if p in found else _materialization(ops.instance, asset, p)
            if record is not None and is_new(p, record):
                found[p] = record
                print(f"  {asset} {p} materialized {record.timestamp - t0:6.1f} s after {since} (run {record.run_id[:8]})")
        time.sleep(1)
    return found


def _switch_on(ops: Ops, sensor: str):
    """`dagster sensor start` (the CLI twin of the UI's switch), then the sensor's first finished tick."""
    t_switch = time.time()
    print(ops.cli("sensor", "start", sensor, "-w", str(REPO / "workspace.yaml")).strip().splitlines()[-1])
    return _next_tick(ops, sensor, t_switch, timeout=120 + time.time() - t_switch)  # 120 s once the switch is on


def _next_tick(ops: Ops, sensor: str, after: float, timeout: float = 120):
    """The sensor's first finished tick that started after `after` (every sensor ticks within INTERVALS)."""
    while not (done := [t for t in _sensor_ticks(ops.instance, sensor)
                        if t.timestamp > after and t.status.value in ("SKIPPED", "SUCCESS")]):
        ops.check_daemon()
        assert time.time() - after < timeout, f"no {sensor} tick within {timeout} s:\n{ops.tail()}"
        time.sleep(1)
    return done[-1]  # ticks come newest first


def _describe_runs(instance) -> str:
    return "\n".join(f"  {r.run_id[:8]} {r.job_name} {r.status.value} assets={sorted(k.to_user_string() for k in r.asset_selection or [])} "
                     f"partition={r.tags.get('dagster/partition')} sensor={r.tags.get('dagster/sensor_name')} "
                     f"parent={(r.parent_run_id or '')[:8]}" for r in reversed(_runs(instance)))


# ------------------------------------------------------------------------------------------------ tests

def test_new_scene_flows_through_sensors_with_no_human_action(ops):
    from dagster import AssetKey, DagsterRunStatus

    from geoseg_assets.partitions import partition_key

    instance, partition = ops.instance, str(partition_key(REGION, SENSOR_DATE))
    t_start = time.time()
    # The operator switches the sensor on; its first tick finds an empty landing folder.
    first_tick = _switch_on(ops, SCENE_SENSOR)
    print(f"{SCENE_SENSOR} on, first tick {first_tick.status.value} {time.time() - t_start:.1f} s after start")

    t_copy = ops.land(SENSOR_DATE)
    print(f"scene landed {t_copy - first_tick.timestamp:.1f} s after the first tick "
          f"(minimum_interval_seconds={INTERVALS[SCENE_SENSOR]})")
    wanted = ["scenes", *FOLLOWERS]
    done: dict[str, object] = {}
    last = None
    while len(done) < len(wanted):
        ops.check_daemon()
        assert time.time() - t_copy < SENSOR_TIMEOUT, (
            f"after {SENSOR_TIMEOUT} s only {sorted(done)} of {wanted}:\n{_describe_runs(instance)}\n{ops.tail()}")
        for asset in wanted:
            record = None if asset in done else _materialization(instance, asset, partition)
            if record is not None and record.timestamp >= t_copy:
                done[asset] = record
                print(f"  {asset:20s} materialized {record.timestamp - t_copy:6.1f} s after the copy "
                      f"(run {record.run_id[:8]})")
        state = sorted((r.run_id[:8], r.status.value) for r in _runs(instance))
        if state != last:
            last = state
            print(f"  {time.time() - t_copy:6.1f} s runs {state}")
        failed = [r for r in _runs(instance) if r.status == DagsterRunStatus.FAILURE]
        assert not failed, f"failed runs:\n{_describe_runs(instance)}"
        time.sleep(1)

    # The runs end (their asset checks run after the materializations) and each of them succeeds.
    _wait_all_finished(ops, t_copy, SENSOR_TIMEOUT)
    print(f"all runs finished {time.time() - t_copy:.1f} s after the copy:\n{_describe_runs(instance)}")
    print("latency copy -> materialization:", {a: round(r.timestamp - t_copy, 1) for a, r in done.items()})
    runs = {r.run_id: r for r in _runs(instance)}
    assert all(r.status == DagsterRunStatus.SUCCESS for r in runs.values()), _describe_runs(instance)

    # Who launched what: `scenes` by the new-scene sensor (one run per file content), the rest by automation.
    scene_run = runs[done["scenes"].run_id]
    assert scene_run.tags.get("dagster/sensor_name") == SCENE_SENSOR, scene_run.tags
    assert scene_run.tags.get("dagster/run_key", "").startswith(f"{partition}:"), scene_run.tags
    assert scene_run.tags.get("geoseg/scene_fingerprint"), scene_run.tags
    for asset in FOLLOWERS:
        run = runs[done[asset].run_id]
        assert run.tags.get("dagster/sensor_name") == AUTOMATION_SENSOR, (asset, run.tags)
        assert run.tags.get("dagster/from_automation_condition") == "true", (asset, run.tags)
    assert sorted(instance.get_dynamic_partitions("region")) == [REGION]  # no partition from elsewhere

    # Everything downstream of the scene was planned by exactly the runs that materialized it; the training
    # set and the model are not (drift_sensor, off by default, is what would request training).
    planned = {asset: getattr(instance.get_latest_planned_materialization_info(AssetKey(asset)), "run_id", None)
               for asset in ["scenes", *FOLLOWERS, *NOT_REQUESTED]}
    print("latest planned materialization (run) per asset:", {a: r and r[:8] for a, r in planned.items()})
    # Before test 2, the runs no sensor launched are ops.train_champion's in-process runs.
    setup_runs = {r.run_id for r in _runs(instance) if r.tags.get("dagster/sensor_name") is None}
    assert {a: planned[a] for a in ["scenes", *FOLLOWERS]} == {a: done[a].run_id for a in ["scenes", *FOLLOWERS]}
    assert all(planned[a] in setup_runs for a in NOT_REQUESTED), (planned, setup_runs)
    print(f"test 1 wall time {time.time() - t_start:.1f} s")


def test_a_label_edit_reruns_exactly_that_regions_masks(ops):
    """The operator switches `label_change_sensor` on over finished work (nothing runs: every mask was made from
    the current labels), then a reviewer sends labels back: the next tick re-runs the masks of exactly the
    region's scene partitions, with fewer labelled pixels, and automation refreshes the model quality report."""
    from dagster import DagsterRunStatus

    import rasterio
    from shapely.geometry import box

    from geoseg_assets.assets.masks import LABEL_FINGERPRINT_TAG
    from resources.data_store import DataStore
    from resources.geopackage_labels import GeoPackageLabelStore

    instance, t_start = ops.instance, time.time()
    partitions = [f"{SETUP_DATE}|{REGION}", f"{SENSOR_DATE}|{REGION}"]
    before = {p: _materialization(instance, "masks", p) for p in partitions}
    assert all(before.values()), before
    runs_before = {r.run_id for r in _runs(instance)}
    first = _switch_on(ops, LABEL_SENSOR)
    assert first.status.value == "SKIPPED" and not first.run_ids, (first.status, first.run_ids)
    print(f"{LABEL_SENSOR} on: first tick {first.status.value} (every mask already made from the current labels)")

    store = GeoPackageLabelStore(path=str(ops.data / "labels.gpkg"))  # the code location's label store
    scene = DataStore(root=str(ops.data / "store")).path("scenes", {"region": REGION, "date": SENSOR_DATE}, "scene.tif")
    with rasterio.open(scene) as src:
        footprint = box(*src.bounds)  # the smaller scene: both partitions cover it
    labels = store.labels(REGION)
    ids = labels.loc[labels.geometry.intersection(footprint).area.sort_values(ascending=False).index[:5], "label_id"]
    assert store.set_status(REGION, [int(i) for i in ids], "test") == 5  # a reviewer sends 5 labels back
    t_edit = time.time()
    fingerprint = store.fingerprint(REGION)
    after = _wait_for_new(ops, "masks", partitions, lambda p, r: r.storage_id != before[p].storage_id, t_edit,
                          "the edit")
    # Automation's next tick (30 s) sees the new masks and refreshes the model quality report (live mIoU).
    last_mask = max(r.timestamp for r in after.values())
    while (quality := _materialization(instance, "model_quality_report", "")).timestamp <= last_mask:
        ops.check_daemon()
        assert time.time() - t_edit < SENSOR_TIMEOUT, f"model quality report not refreshed:\n{_describe_runs(instance)}"
        time.sleep(1)
    print(f"  model_quality_report re-materialized {quality.timestamp - t_edit:6.1f} s after the edit "
          f"(run {quality.run_id[:8]})")
    _wait_all_finished(ops, t_edit, SENSOR_TIMEOUT)
    new_runs = [r for r in _runs(instance) if r.run_id not in runs_before]
    print("runs after the edit:\n" + "\n".join(f"  {r.run_id[:8]} {r.status.value} {r.tags.get('dagster/sensor_name')} "
                                             f"{r.tags.get('dagster/partition')}" for r in new_runs))
    assert all(r.status == DagsterRunStatus.SUCCESS for r in new_runs), _describe_runs(instance)
    label_runs = [r for r in new_runs if r.tags.get("dagster/sensor_name") == LABEL_SENSOR]
    assert sorted(r.tags["dagster/partition"] for r in label_runs) == sorted(partitions)
    assert all(r.tags.get(LABEL_FINGERPRINT_TAG) == fingerprint for r in label_runs)
    for p in partitions:
        old, new = (rec.asset_materialization.metadata for rec in (before[p], after[p]))
        assert new["label_fingerprint"].value == fingerprint != old["label_fingerprint"].value
        assert new["labelled_fraction"].value < old["labelled_fraction"].value, (p, old["labelled_fraction"],
                                                                                  new["labelled_fraction"])
    assert instance.get_run_by_id(quality.run_id).tags.get("dagster/sensor_name") == AUTOMATION_SENSOR
    state = _sensor_state(instance, LABEL_SENSOR)
    instance.stop_sensor(state.instigator_origin_id, state.selector_id, None)
    print(f"label edit test wall time {time.time() - t_start:.1f} s")


@pytest.mark.timeout(45 * 60)
def test_drift_requests_retraining_on_the_new_data(ops):
    """Two dates land 50 % brighter than the training data (a re-calibrated sensor). Automation makes their drift
    reports; the operator switches `drift_sensor` on, and its tick requests exactly one `retraining_job` run for the
    drift event: it rebuilds the training set from every labelled partition, the drifted dates included (a new
    DVC version), trains a new model version on it (MLflow lineage names that version and those partitions) and
    evaluates it: promoted if it clears the quality floor and beats the champion, else the run fails on the floor and
    the champion stays. No human action beyond the switch, and no second run: the refreshed reports of dates the
    new training set holds are no drift signal."""
    import mlflow
    from dagster import DagsterEventType, DagsterRunStatus

    from geoseg_assets.assets.models import EvaluationConfig
    from geoseg_assets.sensors.drift import DRIFT_EVENT_TAG, RECIPE_TAG
    from resources.drift_policy import DriftPolicy
    from resources.mlflow_tracking import CHAMPION, MlflowTracking

    instance, t_start = ops.instance, time.time()
    partitions = [f"{d}|{REGION}" for d in DRIFT_DATES]
    dataset_before = _materialization(instance, "dataset", "")
    model_before = _materialization(instance, "model", "")
    runs_before = {r.run_id for r in _runs(instance)}
    state = _sensor_state(instance, SCENE_SENSOR)
    if state is None or state.status.value != "RUNNING":  # whatever ran before: the scenes must come in by themselves
        _switch_on(ops, SCENE_SENSOR)
    for day in DRIFT_DATES:
        ops.land(day, brightness_shift=DRIFT_SHIFT)
    t_land = time.time()

    # new_scene_sensor -> scenes; automation -> tiles, masks, data_drift_report (and the other followers).
    reports = _wait_for_new(ops, "data_drift_report", partitions, lambda p, r: r.timestamp >= t_land, t_land,
                            "the landing")
    threshold = DriftPolicy().threshold
    shares = {p: float(r.asset_materialization.metadata["drift_share"].value) for p, r in reports.items()}
    print(f"drift share of the landed dates: {shares} (DriftPolicy threshold {threshold})")
    assert all(share >= threshold for share in shares.values()), (shares, threshold)
    _wait_until_quiet(ops)  # the drifted dates' masks (labels cover them) are in before the training set is rebuilt
    masks = {p: _materialization(instance, "masks", p) for p in partitions}
    assert all(m is not None and m.timestamp >= t_land for m in masks.values()), masks

    first = _switch_on(ops, DRIFT_SENSOR)
    t_tick = first.timestamp
    print(f"{DRIFT_SENSOR} on: first tick {first.status.value}, runs {first.run_ids}, "
          f"{t_tick - max(r.timestamp for r in reports.values()):.1f} s after the last drift report")
    assert first.status.value == "SUCCESS" and len(first.run_ids) == 1, (first.status, first.run_ids, first.skip_reason)
    (run_id,) = first.run_ids
    # At the same moment an operator backfills predictions of two dates with the current champion (`dagster job
    # backfill`, the CLI twin of the UI's backfill dialog). Its runs start beside the retraining run, and their
    # `predictions` steps take turns with its `model` and `model_evaluation` steps in the model_compute pool.
    backfill_keys = [f"{SENSOR_DATE}|{REGION}", partitions[0]]
    ops.cli("job", "backfill", "-j", "prediction_job", "--partitions", ",".join(backfill_keys), "--noprompt",
            "-w", str(REPO / "workspace.yaml"))
    while not (run := instance.get_run_by_id(run_id)).is_finished:
        ops.check_daemon()
        assert time.time() - t_tick < RETRAINING_TIMEOUT, f"retraining still going:\n{_describe_runs(instance)}\n{ops.tail()}"
        time.sleep(1)
    print(f"retraining run {run_id[:8]} {run.job_name} {run.status.value} {time.time() - t_tick:.1f} s after the tick")
    _assert_heavy_steps_took_turns(ops, run_id, backfill_keys, t_tick)
    assert run.job_name == "retraining_job" and run.tags.get(DRIFT_EVENT_TAG), run.tags
    assert run.tags.get("geoseg/heavy") == "true", run.tags  # one heavy run at a time (dagster.yaml)
    # It trains with the recipe that made the champion (ops.train_champion's config), not the launchpad defaults.
    assert run.tags[RECIPE_TAG].startswith("champion v1's recipe"), run.tags
    assert run.run_config["ops"]["model"]["config"] == QUICK, run.run_config

    # The training set was rebuilt with the drifted dates, and the new model version was trained on exactly it.
    dataset = _materialization(instance, "dataset", "")
    model = _materialization(instance, "model", "")
    assert dataset.run_id == run_id and model.run_id == run_id, (dataset.run_id, model.run_id, _failures(instance, run_id))
    meta, old = dataset.asset_materialization.metadata, dataset_before.asset_materialization.metadata
    assert meta["dataset_version"].value != old["dataset_version"].value, meta["dataset_version"]
    version = int(model.asset_materialization.metadata["model_version"].value)
    assert version == int(model_before.asset_materialization.metadata["model_version"].value) + 1
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{ops.data / 'mlflow' / 'mlflow.db'}")
    mlflow.set_tracking_uri(tracking.tracking_uri)
    tags = mlflow.get_run(model.asset_materialization.metadata["mlflow_run_id"].value).data.tags
    print(f"dataset {old['dataset_version'].value} -> {meta['dataset_version'].value}; model v{version} trained on "
          f"{tags['geoseg.partitions']}")
    assert tags["geoseg.dataset_version"] == meta["dataset_version"].value
    assert all(f"{REGION}/{d}" in tags["geoseg.partitions"].split(",") for d in DRIFT_DATES), tags["geoseg.partitions"]

    # The evaluation decides. The run succeeds exactly when the retrained model clears the quality floor; below it
    # nothing is promoted and the run fails on that check alone, naming the score (the failure notifier says so).
    evaluation = _materialization(instance, "model_evaluation", "")
    assert evaluation.run_id == run_id
    emeta = evaluation.asset_materialization.metadata
    floor = run.run_config["ops"]["model_evaluation"]["config"].get("min_miou", EvaluationConfig().min_miou)
    test_miou = float(emeta["test_miou"].value)
    failures = _failures(instance, run_id)
    print(f"evaluation of v{version}: test mIoU {test_miou:.3f} (floor {floor}), promoted {emeta['promoted'].value} "
          f"({emeta['promotion_reason'].value}); run {run.status.value}\n{failures}")
    champion = tracking.alias_version(CHAMPION)
    if test_miou >= floor:
        assert run.status == DagsterRunStatus.SUCCESS, f"{failures}\n{_describe_runs(instance)}"
        assert (int(champion.version) == version) == emeta["promoted"].value
    else:
        assert run.status == DagsterRunStatus.FAILURE and not emeta["promoted"].value
        assert int(champion.version) == version - 1, champion  # production keeps the champion it had
        checks = [e.dagster_event.event_specific_data
                  for e in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)]
        assert [c.check_name for c in checks if not c.passed] == ["min_test_miou"], failures
        assert f"{test_miou:.4f}" in emeta["promotion_reason"].value and str(floor) in emeta["promotion_reason"].value
        failed_steps = {e.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)}
        assert failed_steps == {"model_evaluation"}, failures

    # The new training set holds the drifted dates, so automation refreshes the region's drift reports against it.
    # The brightened dates still differ from the others, but they are training data now: the sensor's next tick
    # after the refresh finds no drift event and requests no second retraining (a retraining loop, otherwise).
    _wait_until_quiet(ops)  # whatever the new training set or a new champion re-plans (reports, predictions) ends
    t_quiet = time.time()
    refreshed = {p: r for p in (f"{d}|{REGION}" for d in (SENSOR_DATE, *DRIFT_DATES))
                 if (r := _materialization(instance, "data_drift_report", p)) and r.timestamp >= dataset.timestamp}
    print("drift reports against the new training set: " + ", ".join(
        f"{p} share {r.asset_materialization.metadata['drift_share'].value} in training set "
        f"{r.asset_materialization.metadata['in_training_set'].value}" for p, r in refreshed.items()))
    assert set(partitions) <= set(refreshed), sorted(refreshed)
    assert all(r.asset_materialization.metadata["in_training_set"].value for r in refreshed.values())
    tick = _next_tick(ops, DRIFT_SENSOR, t_quiet)
    pending = json.loads(_sensor_state(instance, DRIFT_SENSOR).instigator_data.cursor)["pending"]
    print(f"{DRIFT_SENSOR} tick {tick.timestamp - t_quiet:.1f} s after the refresh: {tick.status.value} "
          f"({tick.skip_reason}), runs {tick.run_ids}, pending {pending}")
    assert tick.status.value == "SKIPPED" and not tick.run_ids and pending == {}, (tick.status, tick.run_ids, pending)
    assert all(r.tags.get("dagster/sensor_name") != DRIFT_SENSOR for r in _runs(instance)
               if r.run_id not in runs_before and r.run_id != run_id), "more than one retraining run"
    _assert_no_run_lost(instance)
    state = _sensor_state(instance, DRIFT_SENSOR)
    instance.stop_sensor(state.instigator_origin_id, state.selector_id, None)
    print(f"drift test wall time {time.time() - t_start:.1f} s")


def _assert_heavy_steps_took_turns(ops: Ops, sensor_run_id: str, backfill_keys: list[str], t0: float) -> None:
    """The backfill's prediction runs ran while the sensor's retraining run did, yet no two steps of the
    model_compute pool (training, evaluation, inference) overlapped: one network at a time, whoever launched it."""
    from tests.support.runs import step_spans

    instance = ops.instance
    while not (backfill := [r for r in _runs(instance, job_name="prediction_job") if r.tags.get("dagster/backfill")]) \
            or len(backfill) < len(backfill_keys) or not all(r.is_finished for r in backfill):
        ops.check_daemon()
        assert time.time() - t0 < RETRAINING_TIMEOUT, f"backfill still going:\n{_describe_runs(instance)}\n{ops.tail()}"
        time.sleep(1)
    assert sorted(r.tags["dagster/partition"] for r in backfill) == sorted(backfill_keys), _describe_runs(instance)
    assert all(r.status.value == "SUCCESS" for r in backfill), _describe_runs(instance)
    sensor_run = instance.get_run_record_by_id(sensor_run_id)
    assert any(instance.get_run_record_by_id(r.run_id).start_time < sensor_run.end_time for r in backfill), \
        "the backfill's runs did not start while the retraining ran: the test shows nothing"
    spans = step_spans(instance, [sensor_run_id, *(r.run_id for r in backfill)], POOL_STEPS)
    print("model_compute pool steps: " + ", ".join(f"{step} of {run[:8]} {start - t0:.1f}-{end - t0:.1f} s"
                                                   for start, end, step, run in spans))
    assert {step for _, _, step, _ in spans} == POOL_STEPS, spans
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # never two at once


def test_killing_the_daemon_mid_run_loses_no_run(ops):
    """SIGKILL of the daemon's process group mid-run: with the repo's dagster.yaml unchanged (its
    HealthCheckedRunLauncher), the restarted daemon's run monitoring finds the run's worker process gone,
    fails the run saying so, and run retries re-execute it to success."""
    from dagster import DagsterEventType, DagsterRunStatus

    from geoseg_assets.partitions import partition_key

    instance, partition = ops.instance, str(partition_key(REGION, KILL_DATE))
    assert ops.config["run_launcher"] == {"module": "geoseg_assets.run_launcher", "class": "HealthCheckedRunLauncher"}
    assert (ops.home / "dagster.yaml").read_text() == (REPO / "dagster.yaml").read_text()
    t_start = time.time()
    # Only this test's run: the new-scene sensor off (stored state, as the UI's switch does), the scene landed,
    # imagery_job submitted to the run queue as the launchpad does; the daemon dequeues it and launches it
    # through its code server.
    state = _sensor_state(instance, SCENE_SENSOR)
    if state is not None:
        instance.stop_sensor(state.instigator_origin_id, state.selector_id, None)
    if REGION not in instance.get_dynamic_partitions("region"):  # this test alone: the sensor never ran
        instance.add_dynamic_partitions("region", [REGION])
    run_id = _launch_imagery_run(ops, KILL_DATE)
    print(f"\nimagery_job {run_id[:8]} submitted for {partition} in {time.time() - t_start:.1f} s")

    # Wait until it executes (a step started), then SIGKILL the daemon's whole process group: the daemon, the
    # code server it spawned and, as children of that code server, the run worker and its step processes.
    run, worker = _wait_for_a_step(ops, run_id)
    pgid = ops.daemon.pid
    print(f"SIGKILL to daemon group {pgid}: run {run.status.value}, worker pid {worker}, steps started "
          f"{[e.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)]}, processes:\n"
          + _describe_group(pgid))
    t_kill = time.time()
    os.killpg(pgid, signal.SIGKILL)
    ops.daemon.wait(timeout=30)
    while group_alive(pgid) and time.time() - t_kill < 30:
        time.sleep(0.2)
    assert not group_alive(pgid), "processes of the killed group survived"
    assert not Path(f"/proc/{worker}").exists(), f"run worker {worker} survived the kill"

    # The same instance, configuration untouched: the restarted daemon's first run-monitoring pass (at start, then
    # every poll_interval_seconds) finds the recorded worker process gone and fails the run; run retries
    # re-execute it from failure.
    ops.start_daemon()
    t_restart = time.time()
    print(f"daemon restarted {t_restart - t_kill:.1f} s after the kill")
    last = None
    while True:
        ops.check_daemon()
        runs = _runs(instance)
        group = [r for r in runs if r.run_id == run_id or r.tags.get("dagster/root_run_id") == run_id]
        state = [(r.run_id[:8], r.status.value) for r in group]
        if state != last:
            last = state
            print(f"  {time.time() - t_restart:6.1f} s after the restart: {state}")
        if any(r.status == DagsterRunStatus.SUCCESS for r in group) and all(r.is_finished for r in runs):
            break
        assert time.time() - t_restart < RECOVERY_TIMEOUT, (
            f"no successful run for {partition} {RECOVERY_TIMEOUT} s after the restart:\n{_describe_runs(instance)}\n"
            f"{ops.tail()}")
        time.sleep(1)
    t_recovered = time.time()

    killed = instance.get_run_by_id(run_id)
    failure = instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
    failure_message = failure[-1].message if failure else None
    server = json.loads(killed.tags[".dagster/grpc_info"])
    where = f"unix:{server['socket']}" if "socket" in server else f"{server['host']}:{server['port']}"
    print(f"killed run {run_id[:8]}: {killed.status.value}: {failure_message!r}")
    for r in group:
        if r.run_id != run_id:
            print(f"  retry {r.run_id} ({r.tags.get('dagster/retry_number')}. retry, parent {r.parent_run_id[:8]}): "
                  f"{r.status.value}, steps {sorted(e.step_key for e in instance.all_logs(r.run_id, of_type=DagsterEventType.STEP_SUCCESS))}")
    assert killed.status == DagsterRunStatus.FAILURE, killed.status
    assert len(failure) == 1, [e.message for e in failure]
    assert failure_message and "Detected run worker status FAILED" in failure_message, failure_message
    assert f"run worker process (pid {worker})" in failure_message and "is gone" in failure_message, failure_message
    assert f"code server at {where}" in failure_message, (where, failure_message)
    assert killed.tags.get("dagster/will_retry") == "true", killed.tags
    successes = [r for r in group if r.status == DagsterRunStatus.SUCCESS]
    assert len(successes) == 1 and successes[0].parent_run_id == run_id, _describe_runs(instance)
    assert successes[0].tags.get("dagster/retry_number") == "1"
    # The retry re-executes from failure: exactly the steps the killed run had not finished (a step that ended
    # before the kill, e.g. `scenes`, is not run twice), and each asset's latest materialization is the run's
    # that finished it.
    retry_id = successes[0].run_id
    finished = {e.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_SUCCESS)}
    retried = {e.step_key for e in instance.all_logs(retry_id, of_type=DagsterEventType.STEP_START)}
    print(f"steps finished before the kill {sorted(finished)}, run by the retry {sorted(retried)}")
    assert retried and not finished & retried and finished | retried == IMAGERY_STEPS, (finished, retried)
    for asset in ("scenes", "tiles", "masks"):
        record = _materialization(instance, asset, partition)
        assert record is not None and record.run_id == (run_id if asset in finished else retry_id), (asset, record)

    # No run lost anywhere in the instance: every run ended, and each failure has a successful retry.
    print(_describe_runs(instance))
    _assert_no_run_lost(instance)
    t_failed = failure[-1].timestamp
    print(f"recovery: run failed {t_failed - t_restart:.1f} s after the restart ({t_failed - t_kill:.1f} s after the "
          f"kill), retry succeeded and all runs ended {t_recovered - t_restart:.1f} s after the restart; "
          f"test wall time {time.time() - t_start:.1f} s")


CODE_SERVER_KILL_DATE = "2024-10-15"
# A run-monitoring pass every 5 s instead of the repo's 30 s in this test's copy of dagster.yaml, so that
# monitoring looks at the run several times while its worker runs on without the code server; with 30 s it might
# look once or never, and the test would not show that monitoring leaves it alone.
CODE_SERVER_TEST_POLL_S = 5
# The run must outlive the kill by several passes. With steps forked from a preloaded forkserver, a 256² run ended
# about 1 s after the kill (the worker was gone before the test looked, monitoring never checked it); a 4096² scene
# keeps `scenes`, `tiles` and `masks` busy for several seconds more.
CODE_SERVER_KILL_SIZE = 4096


def test_killing_the_code_server_mid_run_fails_no_run(ops):
    """SIGKILL of only the code server (`dagster api grpc`, the daemon's child) while a run executes: the run
    worker, a child of that server, survives it (measured: it is re-parented and runs on), writes its events
    straight to the instance and ends the run SUCCESS. Run monitoring, asking the worker process rather than the
    dead code server, must not fail it, and no retry is launched."""
    from dagster import DagsterEventType, DagsterRunStatus

    from geoseg_assets.partitions import partition_key

    instance, partition = ops.instance, str(partition_key(REGION, CODE_SERVER_KILL_DATE))
    t_start = time.time()
    config = {**ops.config, "run_monitoring": {**ops.config["run_monitoring"],
                                               "poll_interval_seconds": CODE_SERVER_TEST_POLL_S}}
    _wait_until_quiet(ops)  # restart the daemon between runs, not during one (it would kill it)
    stop_group(ops.daemon)
    (ops.home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        ops.start_daemon()
        state = _sensor_state(instance, SCENE_SENSOR)
        if state is not None:
            instance.stop_sensor(state.instigator_origin_id, state.selector_id, None)
        if REGION not in instance.get_dynamic_partitions("region"):
            instance.add_dynamic_partitions("region", [REGION])
        before = {r.run_id for r in _runs(instance)}
        run_id = _launch_imagery_run(ops, CODE_SERVER_KILL_DATE, size=CODE_SERVER_KILL_SIZE)
        print(f"\nimagery_job {run_id[:8]} submitted for {partition} in {time.time() - t_start:.1f} s")
        run, worker = _wait_for_a_step(ops, run_id)

        # The code server that launched the run: the daemon's `dagster api grpc` child listening where the run's
        # `.dagster/grpc_info` tag says.
        server = json.loads(run.tags[".dagster/grpc_info"])
        listen = ["--socket", server["socket"]] if "socket" in server else ["--port", str(server["port"])]
        servers = [pid for pid, argv in _group_processes(ops.daemon.pid).items()
                   if "api" in argv and "grpc" in argv and any(argv[i:i + 2] == listen for i in range(len(argv)))]
        print(f"code server(s) of run {run_id[:8]} ({server}): {servers}, worker pid {worker}, processes:\n"
              + _describe_group(ops.daemon.pid))
        assert len(servers) == 1, servers
        assert _parent(worker) == servers[0], "the run worker is not the code server's child"
        log = ops.daemon_logs[-1]
        offset = len(log.read_bytes())
        t_kill = time.time()
        os.kill(servers[0], signal.SIGKILL)
        while Path(f"/proc/{servers[0]}").exists() and time.time() - t_kill < 30:
            time.sleep(0.1)
        time.sleep(1)
        alive = Path(f"/proc/{worker}").exists()
        print(f"SIGKILL to code server {servers[0]}: worker {worker} "
              f"{f'alive, parent now {_parent(worker)}' if alive else 'gone'}")

        last = None
        while not instance.get_run_by_id(run_id).is_finished:
            ops.check_daemon()
            state = (instance.get_run_by_id(run_id).status.value, Path(f"/proc/{worker}").exists())
            if state != last:
                last = state
                print(f"  {time.time() - t_kill:6.1f} s after the kill: run {state[0]}, worker alive {state[1]}")
            assert time.time() - t_kill < RECOVERY_TIMEOUT, f"run not ended:\n{_describe_runs(instance)}\n{ops.tail()}"
            time.sleep(0.5)
        t_end = time.time()
        time.sleep(CODE_SERVER_TEST_POLL_S + 2)  # a monitoring pass after the end, should one still act on it
        ops.check_daemon()
    finally:
        (ops.home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())  # the repo's, as before

    run = instance.get_run_by_id(run_id)
    after_kill = log.read_bytes()[offset:].decode(errors="replace")
    checks = after_kill.count(f"Checking run {run_id}")
    verdicts = [line for line in after_kill.splitlines() if "Detected run worker status" in line and run_id in line]
    failures = [e.message for e in instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)]
    retries = [r.run_id for r in _runs(instance) if r.tags.get("dagster/root_run_id") == run_id]
    print(f"run {run_id[:8]} {run.status.value} {t_end - t_kill:.1f} s after the code server's kill; run monitoring "
          f"checked it {checks} times meanwhile (every {CODE_SERVER_TEST_POLL_S} s), verdicts {verdicts}, "
          f"failures {failures}, retries {retries}")
    assert alive, f"the run worker {worker} died with its code server"
    assert run.status == DagsterRunStatus.SUCCESS, (run.status, failures, _describe_runs(instance))
    assert not failures and not retries and not verdicts, (failures, retries, verdicts)
    assert checks >= 1, f"run monitoring looked at the run {checks} times after the kill:\n{after_kill[-3000:]}"
    for asset in ("scenes", "tiles", "masks"):
        record = _materialization(instance, asset, partition)
        assert record is not None and record.run_id == run_id, (asset, record)

    # The daemon carries on without the code server it had: its workspace refresh (every 60 s) starts a new one,
    # through which automation launches the partition's follow-up run (reports, predictions), and nothing is lost.
    while not (follow_ups := [r for r in _runs(instance) if r.run_id not in before and r.run_id != run_id
                              and r.tags.get("dagster/sensor_name") == AUTOMATION_SENSOR
                              and r.tags.get("dagster/partition") == partition and r.is_finished]):
        ops.check_daemon()
        assert time.time() - t_end < RECOVERY_TIMEOUT, (
            f"no follow-up run for {partition}:\n{_describe_runs(instance)}\n{ops.tail()}")
        time.sleep(1)
    follow_up_server = json.loads(follow_ups[0].tags.get(".dagster/grpc_info", "{}"))
    print(f"automation's follow-up run {follow_ups[0].run_id[:8]} {follow_ups[0].status.value} "
          f"{time.time() - t_end:.1f} s after the run's end, launched through code server {follow_up_server}")
    assert all(r.status == DagsterRunStatus.SUCCESS for r in follow_ups), _describe_runs(instance)
    assert follow_up_server and follow_up_server != server, (follow_up_server, server)  # a new code server
    _wait_all_finished(ops, t_end, RECOVERY_TIMEOUT)
    new_runs = [r for r in _runs(instance) if r.run_id not in before]
    print("runs since the launch:\n" + "\n".join(f"  {r.run_id[:8]} {r.status.value} {r.tags.get('dagster/partition')}"
                                                 for r in new_runs))
    print("daemon process group now:\n" + _describe_group(ops.daemon.pid))
    _assert_no_run_lost(instance)
    print(f"code server kill test wall time {time.time() - t_start:.1f} s")


# ------------------------------------------------------------------------------ helpers of the kill tests

def _launch_imagery_run(ops, date: str, size: int = 256) -> str:
    """Land a `size`² scene for `date` and submit imagery_job for it to the run queue; the new run's id."""
    from geoseg_assets.partitions import partition_key

    partition = str(partition_key(REGION, date))
    ops.land(date, size=size)
    before = {r.run_id for r in _runs(ops.instance)}
    ops.cli("job", "launch", "-w", str(REPO / "workspace.yaml"), "-j", "imagery_job",
            "--tags", json.dumps({"dagster/partition": partition}))
    # Automation may have launched a run meanwhile (e.g. the previous test's partition's follow-up): not this one.
    (run_id,) = {r.run_id for r in _runs(ops.instance, job_name="imagery_job", tags={"dagster/partition": partition})
                 if r.run_id not in before and "dagster/sensor_name" not in r.tags}
    return run_id


def _wait_for_a_step(ops, run_id: str):
    """Wait until the run executes (a step started); the run and the pid its worker recorded ("Started process for
    run (pid: N)." from the process the code server spawned), which must be alive then."""
    from dagster import DagsterEventType, DagsterRunStatus

    deadline = time.time() + 180
    while True:
        ops.check_daemon()
        run = ops.instance.get_run_by_id(run_id)
        assert not run.is_finished, f"run ended before it could be killed: {run.status}"
        if run.status == DagsterRunStatus.STARTED and ops.instance.all_logs(run_id, of_type=DagsterEventType.STEP_START):
            break
        assert time.time() < deadline, f"run still {run.status.value} after 180 s:\n{ops.tail()}"
        time.sleep(0.2)
    started = [e for e in ops.instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT)
               if e.message.startswith("Started process for run")]
    assert len(started) == 1, [e.message for e in started]
    worker = int(started[0].dagster_event.event_specific_data.metadata["pid"].value)
    argv = Path(f"/proc/{worker}/cmdline").read_bytes().split(b"\0")
    assert b"--multiprocessing-fork" in argv, argv  # what the launcher takes for a run worker
    return run, worker


def _wait_until_quiet(ops, quiet_s: float = 3 * INTERVALS[AUTOMATION_SENSOR]) -> None:
    """Until every run has ended and none was created for `quiet_s` (several automation sensor ticks: an earlier
    test's materializations may still have follow-ups coming)."""
    t0, seen, since = time.time(), None, time.time()
    while True:
        ops.check_daemon()
        runs = _runs(ops.instance)
        ids = {r.run_id for r in runs}
        if ids != seen or not all(r.is_finished for r in runs):
            seen, since = ids, time.time()
        elif time.time() - since >= quiet_s:
            return
        assert time.time() - t0 < RECOVERY_TIMEOUT, f"runs still coming:\n{_describe_runs(ops.instance)}\n{ops.tail()}"
        time.sleep(1)


def _group_processes(pgid: int) -> dict[int, list[str]]:
    """pid -> argv of the live processes of process group `pgid` (from /proc: `ps` may cut long command lines)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[2]) == pgid:
                found[int(proc.name)] = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return found


def _describe_group(pgid: int) -> str:
    return "\n".join(f"  {pid} (parent {_parent(pid)}) {' '.join(argv)[:110]}"
                     for pid, argv in sorted(_group_processes(pgid).items()))


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _failures(instance, run_id: str) -> str:
    """The run's step failures and failed check evaluations, as the run page shows them."""
    from dagster import DagsterEventType

    lines = []
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.STEP_FAILURE:
            lines.append(f"{event.step_key}: {event.event_specific_data.error.message.strip()[:1500]}")
        elif event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION and not event.event_specific_data.passed:
            data = event.event_specific_data
            lines.append(f"check {data.check_name} failed: {dict(data.metadata)}")
    return "\n".join(lines) or "(no step failure recorded)"


def _assert_no_run_lost(instance) -> None:
    """Every run ended, and each run that failed without a step failing (its worker was lost) has a successful
    retry. A run failed by its own steps or blocking checks (bad input, a model under the quality floor) is a
    verdict, not a lost run; run retries deliberately leave those alone (dagster.yaml)."""
    from dagster import DagsterEventType, DagsterRunStatus

    runs = _runs(instance)
    for r in runs:
        assert r.is_finished, r
        if r.status == DagsterRunStatus.SUCCESS:
            continue
        if instance.all_logs(r.run_id, of_type=DagsterEventType.STEP_FAILURE):
            continue
        root = r.tags.get("dagster/root_run_id", r.run_id)
        assert any(x.status == DagsterRunStatus.SUCCESS and x.tags.get("dagster/root_run_id") == root
                   for x in runs), f"run {r.run_id} {r.status.value} was never retried successfully"
