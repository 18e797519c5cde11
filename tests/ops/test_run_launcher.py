"""HealthCheckedRunLauncher (geoseg_assets/run_launcher.py) on a real SQLite Dagster instance configured with the
repo's `run_launcher` block, against real processes: the runs are recorded as a code server's run worker
records them (the `.dagster/grpc_info` tag DefaultRunLauncher writes, the worker's "Started process for run
(pid: N)." ENGINE_EVENT), the "workers" are real processes: a `multiprocessing` spawn child (how Dagster's code
server starts a run worker), a plain `sleep`, exited and zombie processes. The end-to-end behaviour (the daemon
failing and retrying an orphaned run, a run surviving its code server) is in tests/ops/test_daemon.py.
"""

import json
import multiprocessing
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml

from geoseg_assets.run_launcher import HealthCheckedRunLauncher
from tests.support.paths import REPO

GRPC_INFO_TAG = ".dagster/grpc_info"  # dagster._core.storage.tags.GRPC_INFO_TAG, as the launcher imports it
LOCAL_SOCKET = "/tmp/geoseg-no-such-code-server.sock"


@pytest.fixture
def instance(tmp_path):
    """A SQLite instance whose run launcher is configured exactly as in the repo's dagster.yaml."""
    run_launcher = yaml.safe_load((REPO / "dagster.yaml").read_text())["run_launcher"]
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides={"run_launcher": run_launcher}) as instance:
        assert isinstance(instance.run_launcher, HealthCheckedRunLauncher)
        assert instance.run_launcher.supports_check_run_worker_health
        yield instance


@pytest.fixture(scope="module")
def worker():
    """A live process that looks like a run worker: a child of the `spawn` multiprocessing context, the context
    Dagster's code server starts run workers with (`python -B -c "from multiprocessing.spawn import spawn_main;
    ..." --multiprocessing-fork`)."""
    proc = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(120,), daemon=True)
    proc.start()
    deadline = time.time() + 30
    while "--multiprocessing-fork" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace"):
        assert time.time() < deadline, "the spawn child never showed its command line"
        time.sleep(0.05)
    yield proc
    proc.kill()
    proc.join(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(instance, grpc_info: dict | None, pid: int | None = None, *, status=dg.DagsterRunStatus.STARTED,
         recorded_at: float | None = None) -> dg.DagsterRun:
    """A run as a code server's worker leaves it: launched through `grpc_info`, worker pid in its event log."""
    from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData

    tags = {GRPC_INFO_TAG: json.dumps(grpc_info)} if grpc_info is not None else {}
    run = instance.add_run(dg.DagsterRun(job_name="imagery_job", run_id=str(uuid.uuid4()), status=status, tags=tags))
    if pid is not None:
        # Exactly what dagster/_grpc/impl.py's _run_in_subprocess reports from the worker process.
        event = DagsterEvent(event_type_value=DagsterEventType.ENGINE_EVENT.value, job_name=run.job_name,
                             message=f"Started process for run (pid: {pid}).",
                             event_specific_data=EngineEventData.in_process(pid))
        instance.report_dagster_event(event, run_id=run.run_id, timestamp=recorded_at)
    return run


def _check(instance, run):
    result = instance.run_launcher.check_run_worker_health(instance.get_run_by_id(run.run_id))
    print(f"  {result} (transient={result.transient})")
    return result


LOCAL = {"host": "localhost", "socket": LOCAL_SOCKET}


def test_live_worker_is_running_even_with_its_code_server_gone(instance, worker):
    from dagster._core.launcher import WorkerStatus

    # The code server's socket does not exist: the worker's own process decides, on every check.
    for grpc_info in (LOCAL, {"host": "127.0.0.1", "port": _free_port()}):
        run = _run(instance, grpc_info, worker.pid)
        for _ in range(3):
            result = _check(instance, run)
            assert result.status == WorkerStatus.RUNNING and not result.transient, result
            assert str(worker.pid) in result.msg


@pytest.mark.parametrize("kind", ["exited", "zombie", "not_a_worker", "reused_pid"])
def test_gone_worker_fails_the_run_naming_pid_and_code_server(instance, worker, kind):
    from dagster._core.launcher import WorkerStatus

    proc = None
    recorded_at = None
    if kind == "exited":  # exited and reaped: no such process
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()
        pid = proc.pid
    elif kind == "zombie":  # exited, not reaped by its parent (here: this test) yet
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        deadline = time.time() + 30
        while Path(f"/proc/{proc.pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
            assert time.time() < deadline
            time.sleep(0.05)
        pid = proc.pid
    elif kind == "not_a_worker":  # the pid now belongs to another program
        proc = subprocess.Popen(["sleep", "120"])
        pid = proc.pid
    else:  # a process that looks like a worker but started an hour after the worker recorded this pid
        pid, recorded_at = worker.pid, time.time() - 3600
    try:
        run = _run(instance, LOCAL, pid, recorded_at=recorded_at)
        result = _check(instance, run)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
    assert result.status == WorkerStatus.FAILED, result
    assert f"run worker process (pid {pid})" in result.msg and f"unix:{LOCAL_SOCKET}" in result.msg, result.msg
    assert "is gone" in result.msg


def test_dagster_run_monitoring_fails_the_run_with_that_message(instance):
    """Dagster's own run-monitoring step for a STARTED run (what the daemon runs every poll interval)."""
    import logging

    from dagster._daemon.monitoring.run_monitoring import monitor_started_run

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    run = _run(instance, LOCAL, proc.pid)
    monitor_started_run(instance, None, instance.get_run_record_by_id(run.run_id), logging.getLogger("test"))
    run = instance.get_run_by_id(run.run_id)
    (failure,) = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    print(f"  {run.status.value}: {failure.message}")
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert "Detected run worker status FAILED" in failure.message and f"(pid {proc.pid})" in failure.message


@pytest.mark.parametrize("where", ["remote", "unknown_pid"])
def test_unreachable_code_server_fails_the_run_on_the_second_check(instance, worker, where):
    from dagster._core.launcher import WorkerStatus

    if where == "remote":
        # Not one of the local names, so the worker's pid (here even a live worker-like process on this host)
        # says nothing; nothing listens on the port: connection refused, gRPC UNAVAILABLE.
        grpc_info, pid, server = {"host": "127.0.0.2", "port": (port := _free_port())}, worker.pid, f"127.0.0.2:{port}"
    else:  # a local code server whose socket is gone, and no pid in the event log
        grpc_info, pid, server = LOCAL, None, f"unix:{LOCAL_SOCKET}"
    run, other = _run(instance, grpc_info, pid), _run(instance, grpc_info, pid)

    first = _check(instance, run)
    assert first.status == WorkerStatus.RUNNING and first.transient, first
    assert "UNAVAILABLE" in first.msg and server in first.msg
    # The count is per run: another run's first failed check does not fail it.
    other_first = _check(instance, other)
    assert other_first.status == WorkerStatus.RUNNING and other_first.transient, other_first

    second = _check(instance, run)
    assert second.status == WorkerStatus.FAILED and not second.transient, second
    assert "UNAVAILABLE" in second.msg and server in second.msg and "2 consecutive checks" in second.msg
    assert ("pid" in second.msg and str(pid) in second.msg) if pid else "pid is not in the event log" in second.msg
    # After a FAILED verdict the count starts over (monitoring has failed the run by then).
    assert _check(instance, run).transient


@pytest.mark.parametrize("status", [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE,
                                    dg.DagsterRunStatus.CANCELED])
def test_finished_run_is_not_failed(instance, status):
    from dagster._core.launcher import WorkerStatus

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    for grpc_info, pid in ((LOCAL, proc.pid), (LOCAL, None), ({"host": "127.0.0.2", "port": _free_port()}, None)):
        run = _run(instance, grpc_info, pid, status=status)
        for _ in range(2):
            result = _check(instance, run)
            assert result.status == WorkerStatus.SUCCESS, result
            assert status.value in result.msg


def test_run_not_launched_through_a_code_server_is_left_alone(instance):
    """E.g. `dagster asset materialize` executing in process against the production instance: no code server
    to ask, no pid worth trusting; monitoring must not fail it (it fails a run on any answer but RUNNING and
    SUCCESS, UNKNOWN included)."""
    from dagster._core.launcher import WorkerStatus

    run = _run(instance, None)
    for _ in range(3):
        assert _check(instance, run).status == WorkerStatus.RUNNING


def test_the_embedded_instance_of_make_demo_and_make_ui_fails_a_run_whose_worker_was_killed(tmp_path):
    """The DAGSTER_HOME the Makefile writes (SQLite, `dagster dev`) has the health-checked launcher and run
    monitoring on, so its daemon fails a STARTED run whose worker is gone instead of leaving it STARTED."""
    import logging

    from dagster._daemon.monitoring.run_monitoring import monitor_started_run

    subprocess.run(["make", "-s", f"{tmp_path}/dagster_home/dagster.yaml", f"DATA={tmp_path}"], cwd=REPO, check=True)
    config = yaml.safe_load((tmp_path / "dagster_home" / "dagster.yaml").read_text())
    assert config["run_monitoring"]["enabled"] is True and "storage" not in config  # embedded SQLite storage
    (tmp_path / "instance").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance"), overrides=config) as embedded:
        assert isinstance(embedded.run_launcher, HealthCheckedRunLauncher)
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()  # the killed worker: gone
        run = _run(embedded, LOCAL, proc.pid)
        monitor_started_run(embedded, None, embedded.get_run_record_by_id(run.run_id), logging.getLogger("test"))
        assert embedded.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
