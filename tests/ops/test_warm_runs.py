"""Warm run workers (geoseg_assets/warm_runs.py) behind HealthCheckedRunLauncher(warm_run_workers=True), on a real
SQLite instance, a real code server (Dagster's workspace process context) and real forked processes. The code location
is a small file written per test, so that a test can edit it or make it unfit to fork; the whole pipeline on warm
workers is exercised by the daemon tests (tests/ops/test_daemon_*.py), whose dagster.yaml turns them on."""

import os
import signal
import tempfile
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from geoseg_assets.run_coordinator import PrewarmingRunCoordinator
from geoseg_assets.run_launcher import RUN_WORKER_TAG, WARM, WARM_ORIGINS_KEY, HealthCheckedRunLauncher
from geoseg_assets.warm_runs import MODULE
from tests.support.paths import REPO

CODE = '''
import os
import time

import dagster as dg

VALUE = {value}
{extra}

@dg.asset
def tiny() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={{"value": VALUE, "pid": os.getpid(), "ppid": os.getppid()}})


@dg.asset
def sleepy() -> None:
    time.sleep(300)


@dg.asset
def slow() -> dg.MaterializeResult:
    time.sleep(4)
    return dg.MaterializeResult(metadata={{"ppid": os.getppid()}})


defs = dg.Definitions(assets=[tiny, sleepy, slow], jobs=[dg.define_asset_job("tiny_job", [tiny]),
                                                         dg.define_asset_job("sleepy_job", [sleepy]),
                                                         dg.define_asset_job("slow_job", [slow])],
                      executor=dg.in_process_executor)  # the steps run in the run worker, as geoseg's light runs do
'''
# A module that starts a thread when imported: a warm worker must not fork it.
THREAD = "import threading\nthreading.Thread(target=time.sleep, args=(600,), daemon=True).start()"
RUN_TIMEOUT_S = 120


def write_code(folder: Path, value: int, extra: str = "") -> Path:
    path = folder / "tiny_defs.py"
    path.write_text(textwrap.dedent(CODE.format(value=value, extra=extra)))
    return path


@pytest.fixture
def instance(tmp_path):
    """A SQLite instance whose run launcher and run coordinator are the repo's dagster.yaml's, warm run workers on."""
    production = yaml.safe_load((REPO / "dagster.yaml").read_text())
    run_launcher = production["run_launcher"]
    run_launcher["config"] = {**(run_launcher.get("config") or {}), "warm_run_workers": True}
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home"), overrides={
            "run_launcher": run_launcher, "run_coordinator": production["run_coordinator"]}) as instance:
        assert isinstance(instance.run_launcher, HealthCheckedRunLauncher)
        assert isinstance(instance.run_coordinator, PrewarmingRunCoordinator)
        yield instance


class Location:
    """The code location of `tiny_defs.py` served by a real code server, and runs launched through the instance."""

    def __init__(self, instance, folder: Path):
        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster._core.workspace.load_target import PythonFileTarget

        self.instance, self.folder = instance, folder
        self._context = WorkspaceProcessContext(instance, PythonFileTarget(
            python_file=str(folder / "tiny_defs.py"), attribute="defs", working_directory=str(folder),
            location_name="tiny"))

    def close(self):
        self._context.__exit__(None, None, None)

    def create(self, job_name: str, instance=None, reload: bool = False):
        """A new run of `job_name` in `instance` (default: the location's) and the workspace to launch it from;
        `reload` first makes the code server load the edited code."""
        from dagster._core.test_utils import create_run_for_test

        if reload:
            self._context.reload_code_location("tiny")
        workspace = self._context.create_request_context()
        job = workspace.get_code_location("tiny").get_repository("__repository__").get_full_job(job_name)
        run = create_run_for_test(instance or self.instance, job_name=job_name, remote_job_origin=job.get_remote_origin(),
                                  job_code_origin=job.get_python_origin(), job_snapshot=job.job_snapshot)
        return run, workspace

    def launch(self, job_name: str, reload: bool = False) -> str:
        """Launches a run of `job_name` as the UI does."""
        run, workspace = self.create(job_name, reload=reload)
        self.instance.launch_run(run.run_id, workspace)
        return run.run_id

    def wait(self, run_id: str) -> dg.DagsterRun:
        deadline = time.time() + RUN_TIMEOUT_S
        while not (run := self.instance.get_run_by_id(run_id)).is_finished:
            assert time.time() < deadline, f"run {run_id} still {run.status} after {RUN_TIMEOUT_S} s"
            time.sleep(0.1)
        return run

    def worker_pid(self, run_id: str) -> int:
        deadline = time.time() + RUN_TIMEOUT_S
        while (pid := self.instance.run_launcher._worker_pid(run_id)[0]) is None:
            assert time.time() < deadline, "the run worker never recorded its pid"
            time.sleep(0.1)
        return pid

    def materialized(self, run_id: str) -> dict:
        events = self.instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
        assert len(events) == 1, events
        return {k: v.value for k, v in events[0].asset_materialization.metadata.items()}

    def engine_messages(self, run_id: str) -> list[str]:
        records = self.instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records
        return [r.event_log_entry.dagster_event.message or "" for r in records]


@pytest.fixture
def location(instance, tmp_path):
    folder = tmp_path / "code"
    folder.mkdir()
    write_code(folder, 1)
    location = Location(instance, folder)
    yield location
    location.close()


def cmdline(pid: int) -> str:
    return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_runs_fork_from_one_warm_worker_and_a_code_edit_starts_a_new_one(instance, location):
    """Two runs are forked from the same warm worker (their parent runs `python -m geoseg_assets.warm_runs`),
    succeed and say so in their events and tags. After the code file is edited, the next run executes the new code,
    forked from a new warm worker: a warm worker never runs stale code."""
    first, second = location.launch("tiny_job"), location.launch("tiny_job")
    for run_id in (first, second):
        run = location.wait(run_id)
        assert run.status == dg.DagsterRunStatus.SUCCESS, location.engine_messages(run_id)
        assert run.tags[RUN_WORKER_TAG] == WARM
        assert any("Forked the run worker" in m for m in location.engine_messages(run_id)), \
            location.engine_messages(run_id)
    a, b = location.materialized(first), location.materialized(second)
    assert a["value"] == b["value"] == 1
    assert a["ppid"] == b["ppid"] and a["pid"] != b["pid"], (a, b)  # one warm worker, a process per run
    assert a["pid"] == instance.run_launcher._worker_pid(first)[0]  # the pid the health check looks at
    assert MODULE in cmdline(a["ppid"])

    time.sleep(0.01)  # a new mtime even on coarse clocks
    write_code(location.folder, 2)
    third = location.launch("tiny_job", reload=True)
    assert location.wait(third).status == dg.DagsterRunStatus.SUCCESS, location.engine_messages(third)
    c = location.materialized(third)
    assert c["value"] == 2 and c["ppid"] != a["ppid"], (a, c)
    with pytest.raises(ProcessLookupError):  # the retired warm worker is gone, not left behind
        for _ in range(50):
            os.kill(a["ppid"], 0)
            time.sleep(0.1)
    # Its private folder is gone with it, and the live worker's holds only its socket: the instance ref (which may
    # hold a password from dagster.yaml) is removed once read.
    folders = list(Path(tempfile.gettempdir()).glob("geoseg-warm-*"))
    live = [f for f in folders if any(f.iterdir()) and (f / "worker.sock").exists()]
    assert all(sorted(p.name for p in f.iterdir()) == ["worker.sock"] for f in live), folders


def test_a_code_location_with_threads_runs_through_the_code_server(instance, location):
    """A code location that starts a thread when imported cannot be forked safely: the warm worker refuses the run,
    and the run is launched through the code server instead, with an engine event saying why."""
    write_code(location.folder, 3, THREAD)
    run_id = location.launch("tiny_job", reload=True)
    run = location.wait(run_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS, location.engine_messages(run_id)
    assert RUN_WORKER_TAG not in run.tags
    reasons = [m for m in location.engine_messages(run_id) if "No warm run worker" in m]
    assert len(reasons) == 1 and "threads" in reasons[0], location.engine_messages(run_id)
    materialized = location.materialized(run_id)
    assert materialized["value"] == 3 and MODULE not in cmdline(materialized["ppid"])  # the code server's worker


def test_health_check_and_termination_of_a_warm_run(instance, location):
    """A forked run worker is checked by its pid: RUNNING while it lives, FAILED naming the pid once it is killed.
    Terminating a warm run interrupts its worker and the run ends CANCELED."""
    from dagster._core.launcher import WorkerStatus

    launcher = instance.run_launcher
    killed = location.launch("sleepy_job")
    pid = location.worker_pid(killed)
    assert launcher.check_run_worker_health(instance.get_run_by_id(killed)).status == WorkerStatus.RUNNING
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 30
    while (result := launcher.check_run_worker_health(instance.get_run_by_id(killed))).status != WorkerStatus.FAILED:
        assert time.time() < deadline, result
        time.sleep(0.2)
    assert f"pid {pid}" in result.msg and "warm worker" in result.msg, result.msg
    instance.report_run_failed(instance.get_run_by_id(killed))  # what run monitoring does with that answer

    canceled = location.launch("sleepy_job")
    location.worker_pid(canceled)
    assert launcher.terminate(canceled) is True
    assert location.wait(canceled).status == dg.DagsterRunStatus.CANCELED


def test_a_run_outlives_its_warm_worker(instance, location):
    """SIGKILL of the warm worker while a run it forked executes: the run worker runs on and ends the run SUCCESS
    (as a code server's worker outlives its code server), and the next run gets a new warm worker."""
    run_id = location.launch("slow_job")
    pid = location.worker_pid(run_id)
    warm = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # the run worker's parent
    assert MODULE in cmdline(warm)
    os.kill(warm, signal.SIGKILL)
    assert location.wait(run_id).status == dg.DagsterRunStatus.SUCCESS, location.engine_messages(run_id)
    assert location.materialized(run_id)["ppid"] != warm  # re-parented: its parent was gone before it ended
    after = location.launch("tiny_job")
    assert location.wait(after).status == dg.DagsterRunStatus.SUCCESS, location.engine_messages(after)
    assert location.materialized(after)["ppid"] not in (warm, pid)


def live_warm_workers(instance) -> list[int]:
    """Pids of the warm workers the instance's run launcher holds that are running."""
    warm = instance.run_launcher._warm
    return [] if warm is None else [w.process.pid for w in list(warm._workers.values()) if w.process.poll() is None]


def wait_for_warm_worker(instance) -> int:
    deadline = time.time() + RUN_TIMEOUT_S
    while not (pids := live_warm_workers(instance)):
        assert time.time() < deadline, "no warm worker started"
        time.sleep(0.05)
    assert len(pids) == 1 and MODULE in cmdline(pids[0]), pids
    return pids[0]


def test_the_launching_process_starts_warm_workers_before_the_runs_ask(instance, location):
    """In the process that launches runs (the one whose run queue reads `dequeue_use_threads`), a submitted run starts
    its code location's warm worker at once, and the run is then forked from it. The instance remembers the code
    location, so a restarted daemon starts its warm worker at its first queue pass, before any run. A process that
    only submits runs (the webserver) starts none."""
    submitter = dg.DagsterInstance.from_ref(instance.get_ref())  # a webserver: submits, never reads the queue
    try:
        run, workspace = location.create("tiny_job", instance=submitter)
        submitter.submit_run(run.run_id, workspace)
        assert submitter.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.QUEUED
        assert live_warm_workers(submitter) == []
    finally:
        submitter.dispose()

    assert instance.run_coordinator.dequeue_use_threads is True  # the daemon's queue pass: nothing remembered yet
    assert live_warm_workers(instance) == []
    run, workspace = location.create("tiny_job")
    instance.submit_run(run.run_id, workspace)
    warm = wait_for_warm_worker(instance)  # started by the submission, before any launch
    launched = location.launch("tiny_job")
    assert location.wait(launched).status == dg.DagsterRunStatus.SUCCESS, location.engine_messages(launched)
    assert location.materialized(launched)["ppid"] == warm  # the run was forked from the prewarmed worker
    assert instance.run_storage.get_cursor_values({WARM_ORIGINS_KEY})[WARM_ORIGINS_KEY].count("tiny_defs.py") == 1

    restarted = dg.DagsterInstance.from_ref(instance.get_ref())  # a daemon restart: a new process, same storage
    try:
        assert live_warm_workers(restarted) == []
        assert restarted.run_coordinator.dequeue_use_threads is True
        again = wait_for_warm_worker(restarted)
        assert again != warm
    finally:
        restarted.dispose()  # stops its warm worker
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(again, 0)
            time.sleep(0.1)
