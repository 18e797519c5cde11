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

2. SIGKILL of the daemon's process group while an imagery_job run executes kills the daemon, the code server
   it spawned and, as that server's children, the run worker and its step processes. With the repo's
   dagster.yaml the restarted daemon's run monitoring leaves the run STARTED for good: DefaultRunLauncher
   has no worker health check, and the code server that would fail a run whose process died died with it.
   The test asserts that gap (part A), then restarts the daemon with a run launcher that checks the run's
   code server (tests/ops_run_launcher.py, the proposed fix) and asserts that no run is lost (part B):
   monitoring fails the run with a clear message, run retries re-execute it and the retry succeeds.
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

from geoseg_assets.sensors import NEW_SCENE_INTERVAL_S
from tests.conftest import PG, throwaway_database
from tests.processes import group_alive, start_group, stop_group, tail
from tests.test_operations_webserver import BIN, REPO

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REGION = "alpha"
SETUP_DATE = "2024-04-15"
SENSOR_DATE = "2024-06-15"
KILL_DATE = "2024-08-15"
SCENE_SENSOR = "new_scene_sensor"
AUTOMATION_SENSOR = "geoseg_automation_sensor"
# What a new scene of a labelled region feeds, with a champion in place: all planned by automation.
FOLLOWERS = ["tiles", "masks", "data_quality_report", "predictions", "data_drift_report", "prediction_drift_report",
             "model_quality_report"]
NOT_REQUESTED = ["dataset", "model", "champion_model"]  # a new scene never retrains by itself
SENSOR_TIMEOUT = 10 * 60
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
        self.env = {**os.environ, **self.pg_env, "DAGSTER_HOME": str(self.home), "GEOSEG_DATA_DIR": str(self.data),
                    "PYTHONUNBUFFERED": "1"}
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
        from resources.scene_sources import SyntheticSource
        from tests.conftest import materialize_partition
        from tests.test_dataset_asset import git
        from tests.test_masks import import_truth
        from tests.test_models import QUICK

        t0 = time.time()
        git(self.tmp, "init", "-q")
        (self.tmp / ".gitignore").write_text("/data/\n/dagster_home/\n/staging/\n/dvc-remote/\n*.log\n")
        shutil.copy(REPO / "dvc.yaml", self.tmp / "dvc.yaml")
        (self.tmp / "geoseg_assets" / "geo").mkdir(parents=True)
        shutil.copy(REPO / "geoseg_assets/geo/dataset.py", self.tmp / "geoseg_assets/geo/dataset.py")
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

    def land(self, date: str) -> float:
        """Generate a 256x256 synthetic scene aside, then rename it into `<landing>/<region>/<date>/scene.tif`
        (the scan ignores dot files, and a rename is atomic: the sensor never sees half a file)."""
        from resources.scene_sources import SyntheticSource

        source = SyntheticSource(cache_dir=str(self.staging), regions=[REGION], dates=[date], width=256, height=256)
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


UNPARTITIONED = {"model_quality_report"}  # one report over every labelled partition


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
    print(ops.cli("sensor", "start", SCENE_SENSOR, "-w", str(REPO / "workspace.yaml")).strip().splitlines()[-1])

    # The operator switched the sensor on; its first tick finds an empty landing folder.
    deadline = time.time() + 120
    while not [t for t in _sensor_ticks(instance, SCENE_SENSOR) if t.status.value in ("SKIPPED", "SUCCESS")]:
        ops.check_daemon()
        assert time.time() < deadline, f"no {SCENE_SENSOR} tick within 120 s:\n{ops.tail()}"
        time.sleep(1)
    first_tick = _sensor_ticks(instance, SCENE_SENSOR)[-1]  # ticks come newest first
    print(f"{SCENE_SENSOR} on, first tick {first_tick.status.value} {time.time() - t_start:.1f} s after start")

    t_copy = ops.land(SENSOR_DATE)
    print(f"scene landed {t_copy - first_tick.timestamp:.1f} s after the first tick "
          f"(minimum_interval_seconds={NEW_SCENE_INTERVAL_S})")
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
    while not all(r.is_finished for r in _runs(instance)):
        ops.check_daemon()
        assert time.time() - t_copy < SENSOR_TIMEOUT, f"runs still going:\n{_describe_runs(instance)}\n{ops.tail()}"
        time.sleep(1)
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


def test_killing_the_daemon_mid_run_loses_no_run(ops):
    from dagster import DagsterEventType, DagsterRunStatus

    from geoseg_assets.partitions import partition_key

    instance, partition = ops.instance, str(partition_key(REGION, KILL_DATE))
    t_start = time.time()
    # Only this test's run: the new-scene sensor off (stored state, as the UI's switch does), the scene landed,
    # imagery_job submitted to the run queue as the launchpad does; the daemon dequeues it and launches it
    # through its code server.
    state = _sensor_state(instance, SCENE_SENSOR)
    if state is not None:
        instance.stop_sensor(state.instigator_origin_id, state.selector_id, None)
    if REGION not in instance.get_dynamic_partitions("region"):  # this test alone: the sensor never ran
        instance.add_dynamic_partitions("region", [REGION])
    ops.land(KILL_DATE)
    before = {r.run_id for r in _runs(instance)}
    ops.cli("job", "launch", "-w", str(REPO / "workspace.yaml"), "-j", "imagery_job",
            "--tags", json.dumps({"dagster/partition": partition}))
    (run_id,) = {r.run_id for r in _runs(instance)} - before
    print(f"\nimagery_job {run_id[:8]} submitted for {partition} in {time.time() - t_start:.1f} s")

    # Wait until it executes (a step started), then SIGKILL the daemon's whole process group: the daemon, the
    # code server it spawned and, as children of that code server, the run worker and its step processes.
    deadline = time.time() + 180
    while True:
        ops.check_daemon()
        run = instance.get_run_by_id(run_id)
        assert not run.is_finished, f"run ended before it could be killed: {run.status}"
        if run.status == DagsterRunStatus.STARTED and instance.all_logs(run_id, of_type=DagsterEventType.STEP_START):
            break
        assert time.time() < deadline, f"run still {run.status.value} after 180 s:\n{ops.tail()}"
        time.sleep(0.2)
    steps = [e.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)]
    pgid = ops.daemon.pid
    members = subprocess.run(["ps", "-o", "pid=,args=", "-g", str(pgid)], capture_output=True, text=True).stdout
    print(f"SIGKILL to daemon group {pgid}: run {run.status.value}, steps started {steps}, "
          f"{len(members.splitlines())} processes:\n" + "\n".join(f"  {line[:110]}" for line in members.splitlines()))
    t_kill = time.time()
    os.killpg(pgid, signal.SIGKILL)
    ops.daemon.wait(timeout=30)
    while group_alive(pgid) and time.time() - t_kill < 30:
        time.sleep(0.2)
    assert not group_alive(pgid), "processes of the killed group survived"

    # --- A. the repo's dagster.yaml as is: the restarted daemon's run monitoring passes over the run and leaves
    # it STARTED. DefaultRunLauncher has no worker health check (monitoring only times out STARTING runs and,
    # with max_runtime_seconds, long runs) and the code server that would fail a run whose process died was
    # killed with it. Nothing would ever end this run: a known gap, asserted so that this test says so the
    # day the instance configuration closes it (then drop part A's expectation and B's overlay).
    ops.start_daemon()
    checked = f"Checking run {run_id}"
    deadline = time.time() + ops.config["run_monitoring"]["poll_interval_seconds"] + 60
    while checked not in ops.daemon_logs[-1].read_text(errors="replace"):
        ops.check_daemon()
        assert time.time() < deadline, f"the restarted daemon never monitored {run_id}:\n{ops.tail()}"
        time.sleep(0.5)
    time.sleep(3)  # let that monitoring pass finish
    run = instance.get_run_by_id(run_id)
    retries = [r for r in _runs(instance) if r.tags.get("dagster/root_run_id") == run_id]
    print(f"A. repo dagster.yaml ({type(instance.run_launcher).__name__}, supports_check_run_worker_health="
          f"{instance.run_launcher.supports_check_run_worker_health}): {time.time() - t_kill:.1f} s after the kill "
          f"the restarted daemon monitored the run and left it {run.status.value}, {len(retries)} retries")
    assert run.status == DagsterRunStatus.STARTED and not retries, (
        f"the repo's instance now ends the orphaned run by itself ({run.status.value}, retries {retries}): "
        f"update this test (part A, and drop part B's launcher overlay)")
    stop_group(ops.daemon)

    # --- B. the same instance with the proposed fix, a run launcher with a worker health check
    # (tests/ops_run_launcher.py): monitoring fails the run at once, run retries re-execute it from failure.
    config = {**ops.config, "run_launcher": {"module": "tests.ops_run_launcher", "class": "HealthCheckedRunLauncher"}}
    (ops.home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    ops.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    ops.start_daemon()
    t_fix = time.time()
    print(f"B. daemon restarted with HealthCheckedRunLauncher {t_fix - t_kill:.1f} s after the kill")
    last = None
    while True:
        ops.check_daemon()
        runs = _runs(instance)
        group = [r for r in runs if r.run_id == run_id or r.tags.get("dagster/root_run_id") == run_id]
        state = [(r.run_id[:8], r.status.value) for r in group]
        if state != last:
            last = state
            print(f"  {time.time() - t_fix:6.1f} s: {state}")
        if any(r.status == DagsterRunStatus.SUCCESS for r in group) and all(r.is_finished for r in runs):
            break
        assert time.time() - t_fix < RECOVERY_TIMEOUT, (
            f"no successful run for {partition} {RECOVERY_TIMEOUT} s after the restart:\n{_describe_runs(instance)}\n"
            f"{ops.tail()}")
        time.sleep(1)

    killed = instance.get_run_by_id(run_id)
    failure = instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
    failure_message = failure[-1].message if failure else None
    print(f"killed run {run_id[:8]}: {killed.status.value}: {failure_message!r}")
    for r in group:
        if r.run_id != run_id:
            print(f"  retry {r.run_id} ({r.tags.get('dagster/retry_number')}. retry, parent {r.parent_run_id[:8]}): "
                  f"{r.status.value}, steps {sorted(e.step_key for e in instance.all_logs(r.run_id, of_type=DagsterEventType.STEP_SUCCESS))}")
    assert killed.status == DagsterRunStatus.FAILURE, killed.status
    assert failure_message and "Detected run worker status FAILED" in failure_message, failure_message
    assert "is gone" in failure_message, failure_message
    assert killed.tags.get("dagster/will_retry") == "true", killed.tags
    successes = [r for r in group if r.status == DagsterRunStatus.SUCCESS]
    assert len(successes) == 1 and successes[0].parent_run_id == run_id, _describe_runs(instance)
    assert successes[0].tags.get("dagster/retry_number") == "1"
    for asset in ("scenes", "tiles", "masks"):
        record = _materialization(instance, asset, partition)
        assert record is not None and record.run_id == successes[0].run_id, (asset, record)

    # No run lost anywhere in the instance: every run ended, and each failure has a successful retry.
    print(_describe_runs(instance))
    for r in _runs(instance):
        assert r.is_finished, r
        if r.status != DagsterRunStatus.SUCCESS:
            root = r.tags.get("dagster/root_run_id", r.run_id)
            assert any(x.status == DagsterRunStatus.SUCCESS and x.tags.get("dagster/root_run_id") == root
                       for x in _runs(instance)), f"run {r.run_id} {r.status.value} was never retried successfully"
    print(f"test 2 wall time {time.time() - t_start:.1f} s, recovery {time.time() - t_fix:.1f} s after the restart")
