"""`dagster-daemon` alone on the production instance (the repo's dagster.yaml, storage on a throwaway PostgreSQL
database, data under a temp GEOSEG_DATA_DIR), no webserver: the `Ops` harness of tests/ops/test_daemon_*.py
(an operator's earlier work, then the daemon) and the queries those tests ask of the instance."""

import json
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from geoseg_assets.run_launcher import RUN_WORKER_TAG, WARM, WARM_WORKER_MODULE, _looks_like_run_worker
from tests.support.paths import BIN, REPO
from tests.support.pipeline import import_truth, materialize_partition
from tests.support.postgres import dagster_pg_env, throwaway_database
from tests.support.processes import group_alive, start_group, stop_group, tail
from tests.support.project import QUICK
from tests.support.repos import new_project_repo

REGION = "alpha"

SETUP_DATE = "2024-04-15"

SCENE_SENSOR = "new_scene_sensor"

LABEL_SENSOR = "label_change_sensor"

DRIFT_SENSOR = "drift_sensor"

AUTOMATION_SENSOR = "geoseg_automation_sensor"

SENSOR_TIMEOUT = 10 * 60

# The code location's sensor intervals (GEOSEG_SENSOR_INTERVALS): seconds instead of the deployment's 30-300 s, so
# the tests wait for work, not for ticks. An automation tick costs a few hundredths of a second of CPU since
# FOLLOW_UPSTREAM stopped scanning every region x date for missing partitions (geoseg_assets/partitions.py).
INTERVALS = {"new_scene_sensor": 5, "label_change_sensor": 5, "drift_sensor": 10, "geoseg_automation_sensor": 10}

RECOVERY_TIMEOUT = 5 * 60


def cli(args: list[str], env: dict, timeout: float = 180) -> str:
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
        self.pg_env = dagster_pg_env(db)
        # The code location the daemon serves keeps its data under `<tmp>/data` and versions datasets in the
        # throwaway git repository `<tmp>` (train_champion makes it), never in this checkout's dvc.lock.
        self.env = {**os.environ, **self.pg_env, "DAGSTER_HOME": str(self.home), "GEOSEG_DATA_DIR": str(self.data),
                    "GEOSEG_DVC_REPO": str(tmp), "PYTHONUNBUFFERED": "1",
                    "GEOSEG_SENSOR_INTERVALS": ",".join(f"{k}={v}" for k, v in INTERVALS.items())}
        self.daemon: subprocess.Popen | None = None
        self.daemon_logs: list[Path] = []
        self.background: list[subprocess.Popen] = []  # CLI commands left running (cli_in_background)
        self.instance: DagsterInstance | None = None

    def cli(self, *args: str, timeout: float = 180) -> str:
        return cli([str(BIN / "dagster"), *args], self.env, timeout)

    def cli_in_background(self, *args: str) -> tuple[subprocess.Popen, Path]:
        """A dagster CLI command left running in its own session, and its output file; stopped at the module's end
        if still there."""
        log = self.tmp / f"cli{len(self.background) + 1}.log"
        proc = start_group([str(BIN / "dagster"), *args], self.env, log)
        self.background.append(proc)
        return proc, log

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
        new_project_repo(self.tmp, ignore="/data/\n/dagster_home/\n/staging/\n/dvc-remote/\n*.log\n")
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


@contextmanager
def running_ops(tmp: Path):
    """A throwaway database with the schema, the operator's earlier work (`Ops.train_champion`) and a running
    daemon; the daemon's process group is stopped and the instance disposed afterwards."""
    from dagster import DagsterInstance

    from geoseg_assets.pools import create_pools

    started = time.time()
    with throwaway_database() as db, pytest.MonkeyPatch.context() as mp:
        ops = Ops(tmp, db)
        for var, value in ops.pg_env.items():
            mp.setenv(var, value)
        ops.cli("instance", "migrate")  # the schema, before the daemon's threads race to create it
        ops.instance = DagsterInstance.from_config(str(ops.home))
        create_pools(ops.instance)  # as `make ui-prod` does: before two runs race to create the pool
        print(f"\nschema created in {time.time() - started:.1f} s")
        try:
            ops.train_champion()
            ops.start_daemon()
            yield ops
        finally:
            for proc in ops.background:
                stop_group(proc, timeout=30)
            if ops.daemon is not None:
                stop_group(ops.daemon)
                assert not group_alive(ops.daemon.pid), "daemon processes left behind"
            ops.instance.dispose()


def all_runs(instance, **filters):
    from dagster import RunsFilter

    return list(instance.get_runs(filters=RunsFilter(**filters)) if filters else instance.get_runs())

UNPARTITIONED = {"dataset", "model", "model_evaluation", "champion_model", "model_quality_report"}

def materializations(instance, asset: str, partition: str, limit: int = 100) -> list:
    """The materialization records of `asset` (of `partition` when the asset is partitioned), newest first."""
    from dagster import AssetKey, AssetRecordsFilter

    partitions = None if asset in UNPARTITIONED else [partition]
    return list(instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=partitions), limit=limit).records)

def latest_materialization(instance, asset: str, partition: str):
    records = materializations(instance, asset, partition, limit=1)
    return records[0] if records else None

def sensor_state(instance, name: str):
    from dagster._core.scheduler.instigation import InstigatorType

    states = [s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
              if s.instigator_name == name]
    assert len(states) <= 1, states
    return states[0] if states else None

def sensor_ticks(instance, name: str):
    """The sensor's ticks, newest first; none before the daemon's first evaluation of it stored its state."""
    state = sensor_state(instance, name)
    return instance.get_ticks(state.instigator_origin_id, state.selector_id) if state is not None else []

def wait_all_finished(ops: Ops, t0: float, timeout: float) -> None:
    """Poll until every run of the instance has ended, at most `timeout` seconds after `t0`."""
    while not all(r.is_finished for r in all_runs(ops.instance)):
        ops.check_daemon()
        assert time.time() - t0 < timeout, f"runs still going:\n{describe_runs(ops.instance)}\n{ops.tail()}"
        time.sleep(1)

def wait_for_new(ops: Ops, asset: str, partitions: list[str], is_new, t0: float, since: str) -> dict:
    """Poll until each partition's latest `asset` materialization passes `is_new(partition, record)`; the records by
    partition, each printed with its latency from `t0`."""
    found: dict[str, object] = {}
    while len(found) < len(partitions):
        ops.check_daemon()
        assert time.time() - t0 < SENSOR_TIMEOUT, (
            f"{asset} of {sorted(set(partitions) - set(found))} not materialized:\n{describe_runs(ops.instance)}\n"
            f"{ops.tail()}")
        for p in partitions:
            record = None if p in found else latest_materialization(ops.instance, asset, p)
            if record is not None and is_new(p, record):
                found[p] = record
                print(f"  {asset} {p} materialized {record.timestamp - t0:6.1f} s after {since} (run {record.run_id[:8]})")
        time.sleep(1)
    return found

def switch_on(ops: Ops, sensor: str):
    """`dagster sensor start` (the CLI twin of the UI's switch), then the sensor's first finished tick."""
    t_switch = time.time()
    print(ops.cli("sensor", "start", sensor, "-w", str(REPO / "workspace.yaml")).strip().splitlines()[-1])
    return next_tick(ops, sensor, t_switch, timeout=120 + time.time() - t_switch)  # 120 s once the switch is on

def next_tick(ops: Ops, sensor: str, after: float, timeout: float = 120):
    """The sensor's first finished tick that started after `after` (every sensor ticks within INTERVALS)."""
    while not (done := [t for t in sensor_ticks(ops.instance, sensor)
                        if t.timestamp > after and t.status.value in ("SKIPPED", "SUCCESS")]):
        ops.check_daemon()
        assert time.time() - after < timeout, f"no {sensor} tick within {timeout} s:\n{ops.tail()}"
        time.sleep(1)
    return done[-1]  # ticks come newest first

def describe_runs(instance) -> str:
    """One line per run (oldest first), with why it failed for a failed run."""
    return "\n".join(f"  {r.run_id[:8]} {r.job_name} {r.status.value} assets={sorted(k.to_user_string() for k in r.asset_selection or [])} "
                     f"partition={r.tags.get('dagster/partition')} sensor={r.tags.get('dagster/sensor_name')} "
                     f"parent={(r.parent_run_id or '')[:8]}" + (f"\n    {run_failure_reason(instance, r.run_id)}" if
                                                                 r.status.value == "FAILURE" else "")
                     for r in reversed(all_runs(instance)))


def run_failure_reason(instance, run_id: str) -> str:
    """The messages of a run's step and run failure events (the first 500 characters of each)."""
    from dagster import DagsterEventType

    events = [*instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE),
              *instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)]

    def why(entry) -> str:
        error = getattr(entry.dagster_event.event_specific_data, "error", None)
        return (error.message if error is not None else entry.dagster_event.message or "").strip()[:500]

    return " | ".join(f"{e.step_key or 'run'}: {why(e)}" for e in events) or "no failure event"

def launch_imagery_run(ops, date: str, size: int = 256) -> str:
    """Land a `size`² scene for `date` and submit imagery_job for it to the run queue; the new run's id, as soon as
    the run exists: the CLI may take seconds more to exit (it stops the code server it started), in which the daemon
    may run the whole small run. The CLI is stopped at the module's end (`Ops.background`)."""
    from geoseg_assets.partitions import partition_key

    partition = str(partition_key(REGION, date))
    ops.land(date, size=size)
    before = {r.run_id for r in all_runs(ops.instance)}
    proc, log = ops.cli_in_background("job", "launch", "-w", str(REPO / "workspace.yaml"), "-j", "imagery_job",
                                      "--tags", json.dumps({"dagster/partition": partition}))
    deadline = time.time() + 180
    while True:
        # Automation may have launched a run meanwhile (e.g. the previous test's partition's follow-up): not this one.
        new = {r.run_id for r in all_runs(ops.instance, job_name="imagery_job", tags={"dagster/partition": partition})
               if r.run_id not in before and "dagster/sensor_name" not in r.tags}
        if new:
            (run_id,) = new
            return run_id
        exited = proc.poll()
        assert exited in (None, 0), f"dagster job launch -> {exited}:\n{tail(log)}"
        assert time.time() < deadline, f"dagster job launch made no run within 180 s:\n{tail(log)}"
        time.sleep(0.1)

def wait_for_a_step(ops, run_id: str, pool: str | None = None):
    """Wait until the run executes (a step started or, with `pool`, a step of it waits for a slot of that pool);
    the run and the pid its worker recorded ("Started process for run (pid: N)." from the process the code server
    spawned or a warm run worker forked), which must be alive then."""
    from dagster import DagsterEventType, DagsterRunStatus

    deadline = time.time() + 180
    while True:
        ops.check_daemon()
        run = ops.instance.get_run_by_id(run_id)
        assert not run.is_finished, f"run ended before it could be killed: {run.status}"
        executing = (ops.instance.all_logs(run_id, of_type=DagsterEventType.STEP_START) if pool is None
                     else run_id in ops.instance.event_log_storage.get_concurrency_info(pool).pending_run_ids)
        if run.status == DagsterRunStatus.STARTED and executing:
            break
        assert time.time() < deadline, f"run still {run.status.value} after 180 s:\n{ops.tail()}"
        time.sleep(0.2)
    started = [e for e in ops.instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT)
               if e.message.startswith("Started process for run")]
    assert len(started) == 1, [e.message for e in started]
    worker = int(started[0].dagster_event.event_specific_data.metadata["pid"].value)
    argv = [a.decode(errors="replace") for a in Path(f"/proc/{worker}/cmdline").read_bytes().split(b"\0") if a]
    # A code server's spawn child, or a fork of a warm run worker (`python -m geoseg_assets.warm_runs`), as the
    # run's `geoseg/run_worker` tag says: what the launcher takes for a run worker.
    expected = WARM_WORKER_MODULE if run.tags.get(RUN_WORKER_TAG) == WARM else "--multiprocessing-fork"
    assert expected in argv and _looks_like_run_worker(argv), argv
    return run, worker

def wait_until_quiet(ops) -> None:
    """Until every run has ended and an automation tick that started after the last one ended requested nothing:
    the daemon has planned on the final state and found no follow-up (an earlier test's materializations may
    still have some coming). Asks the ticks, so it waits for no fixed number of seconds."""
    t0 = time.time()
    while True:
        ops.check_daemon()
        records = ops.instance.get_run_records()
        if all(r.dagster_run.is_finished for r in records):
            last_end = max((r.end_time or 0.0 for r in records), default=0.0)
            if any(t.timestamp > last_end and t.status.value == "SKIPPED"
                   for t in sensor_ticks(ops.instance, AUTOMATION_SENSOR)):
                return
        assert time.time() - t0 < RECOVERY_TIMEOUT, f"runs still coming:\n{describe_runs(ops.instance)}\n{ops.tail()}"
        time.sleep(1)

def group_processes(pgid: int) -> dict[int, list[str]]:
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

def describe_group(pgid: int) -> str:
    return "\n".join(f"  {pid} (parent {parent_pid(pid)}) {' '.join(argv)[:110]}"
                     for pid, argv in sorted(group_processes(pgid).items()))

def parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])

def run_failures(instance, run_id: str) -> str:
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

def assert_no_run_lost(instance) -> None:
    """Every run ended, and each run that failed without a step failing (its worker was lost) has a successful
    retry. A run failed by its own steps or blocking checks (bad input, a model under the quality floor) is a
    verdict, not a lost run; run retries deliberately leave those alone (dagster.yaml)."""
    from dagster import DagsterEventType, DagsterRunStatus

    runs = all_runs(instance)
    for r in runs:
        assert r.is_finished, r
        if r.status == DagsterRunStatus.SUCCESS:
            continue
        if instance.all_logs(r.run_id, of_type=DagsterEventType.STEP_FAILURE):
            continue
        root = r.tags.get("dagster/root_run_id", r.run_id)
        assert any(x.status == DagsterRunStatus.SUCCESS and x.tags.get("dagster/root_run_id") == root
                   for x in runs), f"run {r.run_id} {r.status.value} was never retried successfully"
