"""`HealthCheckedRunLauncher`: Dagster's DefaultRunLauncher plus a run-worker health check for run monitoring.

DefaultRunLauncher has no such check, so the daemon's run monitoring never fails a STARTED run: when the run
worker dies with the code server that spawned it (the daemon's process group SIGKILLed, a service manager
killing the daemon's cgroup), nothing reports the run and it stays STARTED forever, holding a run-queue slot
(and the `geoseg/heavy` slot) and keeping automation away from its partition. With this launcher
(`run_launcher` in dagster.yaml), monitoring fails such a run with a message saying why, and run retries
re-execute it.

The check looks at the run worker itself when it can: the worker records its pid in the run's event log
(the ENGINE_EVENT "Started process for run (pid: N)."). If the code server is on this host, that process
alive (and still the worker: a dagster run-worker command line, started before that event, so not a reused
pid) means RUNNING even when the code server is gone, because a worker outlives a SIGKILLed code server;
the process gone means FAILED. Otherwise (pid unknown, code server on another host, no /proc) the code
server is asked for the runs it executes, and only two consecutive negative answers (unreachable, or not
executing the run) fail the run: one failed check may be a server restart. A slow server never fails a run.

With `warm_run_workers: true` (dagster.yaml) a run is not started by the code server but forked from a warm worker
that has the code location loaded (geoseg_assets/warm_runs.py): the same `dagster api execute_run` body without an
interpreter start and code import per run, which is most of a small partition's cost. The run carries the
`geoseg/run_worker` tag; its worker is checked by pid like a code server's, and terminating the run interrupts that
process (SIGTERM, which the worker turns into Dagster's interrupt: the run ends CANCELED). When no warm worker can
take a run (it cannot start, or it retired itself because the code changed or it had threads), the run is launched
through the code server as before, and an engine event on the run says why. The launcher remembers (instance KVS)
the code locations whose runs it forked, so that the process that launches runs can start their warm workers before
the first run asks (`prewarm`, `prewarm_remembered`; geoseg_assets/run_coordinator.py calls them in the daemon).
"""

import json
import os
import signal
import threading
import time
from pathlib import Path

import grpc
from dagster import (DagsterEventType, DagsterRun, DagsterRunStatus, DefaultRunLauncher, Field, deserialize_value,
                     serialize_value)

# Private Dagster APIs, checked against dagster 1.13.27 (pinned by requirements.lock); re-check on upgrade.
# The health-check result types run monitoring expects, the run tag in which DefaultRunLauncher records the
# code server's address, the gRPC client for that server, the error it raises when the server cannot be
# reached (the grpc.RpcError is its __cause__) and the type of the server's GetCurrentRuns answer; the error a
# launch failure raises and the arguments `dagster api execute_run` takes (a warm worker's run); the type of a run's
# code location origin (what a warm worker loads).
from dagster._core.errors import DagsterLaunchFailedError, DagsterUserCodeUnreachableError
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.origin import RepositoryPythonOrigin
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._grpc.client import DagsterGrpcClient
from dagster._grpc.types import ExecuteRunArgs, GetCurrentRunsResult

from geoseg_assets.warm_runs import MODULE as WARM_WORKER_MODULE
from geoseg_assets.warm_runs import WarmLaunchError, WarmLaunchLost, WarmWorkers

# Tag of a run forked by a warm worker (value "warm"): no code server knows it, its worker is checked by pid only.
RUN_WORKER_TAG = "geoseg/run_worker"
WARM = "warm"
# What geoseg's run workers import lazily (PNG previews, COG writing, GeoParquet), with the code location: a warm
# worker imports it once instead of every run.
WARM_PRELOAD_MODULES = ("geoseg_assets.forkserver_preload",)

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
# Consecutive negative answers of a code server before a run whose worker cannot be looked at is failed.
FAILED_CHECKS_TO_FAIL = 2
# A process with the worker's pid that started more than this after the worker recorded its pid is another
# process (pid reuse, e.g. after a reboot). The slack absorbs the 1 s resolution of the boot time and clock
# adjustments: wrongly failing a live run is worse than missing a pid reused within a minute.
PID_REUSE_SLACK_S = 60.0
# Instance KVS key of the code locations (serialized repository origins, most recent first) whose runs were forked
# from warm workers, and how many are kept: a restarted daemon starts their warm workers ahead of their runs.
WARM_ORIGINS_KEY = "geoseg/warm_run_origins"
MAX_REMEMBERED_ORIGINS = 4
# How long terminating a warm run waits for its worker to write RUN_START before it marks the run CANCELING.
START_WAIT_S = 30.0
# The run's ENGINE_EVENTs read to find the worker's pid: it is the first one the worker emits.
PID_EVENTS_LIMIT = 100


class HealthCheckedRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher whose runs the daemon's run monitoring can fail when their worker is gone."""

    def __init__(self, inst_data=None, warm_run_workers: bool = False,
                 warm_preload_modules: list[str] | tuple[str, ...] = WARM_PRELOAD_MODULES):
        super().__init__(inst_data=inst_data)
        self._failed_checks: dict[str, int] = {}  # run id -> consecutive negative code-server answers
        self._lock = threading.Lock()
        self._warm_run_workers, self._warm_preload = warm_run_workers, tuple(warm_preload_modules)
        self._warm: WarmWorkers | None = None  # made on first use: the instance is registered by then
        self._remembered: set[str] = set()  # origins this process has written to WARM_ORIGINS_KEY

    @classmethod
    def config_type(cls):
        return {
            "warm_run_workers": Field(bool, is_required=False, default_value=False, description=(
                "Fork each run from a warm worker that has the code location loaded (geoseg_assets/warm_runs.py) "
                "instead of having the code server start a new interpreter per run.")),
            "warm_preload_modules": Field([str], is_required=False, default_value=list(WARM_PRELOAD_MODULES),
                                          description="Modules a warm worker imports once after the code location: "
                                                      "what the runs would otherwise import lazily."),
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, **config_value)

    def launch_run(self, context) -> None:
        run = context.dagster_run
        if not self._warm_run_workers or run.job_code_origin is None:
            super().launch_run(context)
            return
        origin = run.job_code_origin.repository_origin
        origin_json = serialize_value(origin)
        args = ExecuteRunArgs(job_origin=run.job_code_origin, run_id=run.run_id, instance_ref=self._instance.get_ref())
        try:
            pid = self._warm_workers().launch(origin_json, origin.executable_path, _working_directory(origin),
                                              serialize_value(args))
        except WarmLaunchLost as exc:
            raise DagsterLaunchFailedError(str(exc)) from exc
        except WarmLaunchError as exc:
            self._instance.report_engine_event(f"No warm run worker ({exc}): launched through the code server.", run,
                                               cls=self.__class__)
            super().launch_run(context)
            return
        self._instance.add_run_tags(run.run_id, {RUN_WORKER_TAG: WARM})
        self._run_ids.add(run.run_id)
        self._instance.report_engine_event(f"Forked the run worker (pid {pid}) from a warm worker.", run,
                                           cls=self.__class__)
        if origin_json not in self._remembered:
            self._remember(origin_json)

    def prewarm(self, origin: RepositoryPythonOrigin | None) -> None:
        """Starts the warm worker of `origin`'s code location in the background (no-op without warm run workers or
        when it runs), so that the code location's next run is forked at once instead of waiting for its import."""
        if self._warm_run_workers and origin is not None:
            self._warm_workers().prewarm(serialize_value(origin), origin.executable_path, _working_directory(origin))

    def prewarm_remembered(self) -> None:
        """Starts the warm workers of the code locations whose runs this instance forked last (WARM_ORIGINS_KEY): what
        a restarted daemon's first runs would otherwise wait for. One that cannot start is forgotten."""
        if not self._warm_run_workers:
            return
        for origin_json in self._remembered_origins():
            try:
                origin = deserialize_value(origin_json, RepositoryPythonOrigin)
            except Exception:  # noqa: BLE001 (written by another Dagster version: forget it, a run will remember it)
                self._forget_origin(origin_json)
                continue
            self._warm_workers().prewarm(origin_json, origin.executable_path, _working_directory(origin),
                                         on_failure=lambda _why, key=origin_json: self._forget_origin(key))

    def _warm_workers(self) -> WarmWorkers:
        with self._lock:
            if self._warm is None:
                self._warm = WarmWorkers(instance_ref_json=serialize_value(self._instance.get_ref()),
                                         preload_modules=self._warm_preload)
            return self._warm

    def _remembered_origins(self) -> list[str]:
        raw = self._instance.run_storage.get_cursor_values({WARM_ORIGINS_KEY}).get(WARM_ORIGINS_KEY)
        try:
            origins = json.loads(raw) if raw else []
        except ValueError:
            return []
        return [o for o in origins if isinstance(o, str)][:MAX_REMEMBERED_ORIGINS] if isinstance(origins, list) else []

    def _remember(self, origin_json: str) -> None:
        origins = [origin_json, *(o for o in self._remembered_origins() if o != origin_json)]
        self._instance.run_storage.set_cursor_values(
            {WARM_ORIGINS_KEY: json.dumps(origins[:MAX_REMEMBERED_ORIGINS])})
        self._remembered.add(origin_json)

    def _forget_origin(self, origin_json: str) -> None:
        origins = [o for o in self._remembered_origins() if o != origin_json]
        self._instance.run_storage.set_cursor_values({WARM_ORIGINS_KEY: json.dumps(origins)})
        self._remembered.discard(origin_json)

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.tags.get(RUN_WORKER_TAG) != WARM:
            return super().terminate(run_id)
        run = self._started(run)
        if run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        pid, recorded_at = self._worker_pid(run_id)
        if pid is None or _why_not_the_worker(pid, recorded_at) is not None:
            self._instance.report_engine_event("The run's warm run worker is not running: nothing to interrupt.", run,
                                               cls=self.__class__)
            return False
        os.kill(pid, signal.SIGTERM)
        return True

    def _started(self, run: DagsterRun) -> DagsterRun:
        """The run once its worker has written RUN_START (or ended), waiting up to START_WAIT_S: a CANCELING status
        written before RUN_START would be overwritten by it, and the interrupted worker would then report a failure
        instead of the cancellation."""
        deadline = time.monotonic() + START_WAIT_S
        while run.status in (DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING) and time.monotonic() < deadline:
            time.sleep(0.1)
            run = self._instance.get_run_by_id(run.run_id) or run
        return run

    def dispose(self) -> None:
        if self._warm is not None:
            self._warm.stop()
        super().dispose()

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        run = self._instance.get_run_by_id(run.run_id) or run
        if run.is_finished:
            return self._ended(run)
        if run.tags.get(RUN_WORKER_TAG) == WARM:
            return self._check_warm_worker(run)
        if GRPC_INFO_TAG not in run.tags:
            # Not launched through a code server (e.g. executed in process by `dagster asset materialize`
            # against this instance): there is nothing to ask, and not knowing must not fail a run.
            return CheckRunHealthResult(WorkerStatus.RUNNING, "not launched through a code server: not checked")
        grpc_info = json.loads(run.tags[GRPC_INFO_TAG])
        server = _address(grpc_info)
        pid, recorded_at = self._worker_pid(run.run_id)
        if pid is None:
            why = "the run worker's pid is not in the event log"
        elif not _is_local(grpc_info):
            why = f"the run worker (pid {pid}) is on the code server's host, not this one"
        else:
            try:
                return self._local_worker_verdict(run, pid, recorded_at, f"that the code server at {server} started")
            except _CannotTell as exc:
                why = f"the run worker (pid {pid}) cannot be looked at on this host ({exc})"
        return self._ask_code_server(run, grpc_info, server, why)

    # ---------------------------------------------------------------------------------------------- helpers

    def _check_warm_worker(self, run: DagsterRun) -> CheckRunHealthResult:
        """A warm worker's run: its process, forked on this host, is the only thing to look at."""
        pid, recorded_at = self._worker_pid(run.run_id)
        if pid is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "the warm run worker has not recorded its pid yet")
        try:
            return self._local_worker_verdict(run, pid, recorded_at, "forked from a warm worker")
        except _CannotTell as exc:
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"the run worker (pid {pid}) cannot be looked at on "
                                        f"this host ({exc})", run_worker_id=str(pid))

    def _local_worker_verdict(self, run: DagsterRun, pid: int, recorded_at: float | None,
                              started: str) -> CheckRunHealthResult:
        """RUNNING while the run worker process `pid` on this host lives, else FAILED (or the run's end, if it ended
        meanwhile); `started` says how the worker came to be, for the message. Raises `_CannotTell`."""
        gone = _why_not_the_worker(pid, recorded_at)
        self._forget(run.run_id)
        if gone is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker process {pid} is alive",
                                        run_worker_id=str(pid))
        fresh = self._instance.get_run_by_id(run.run_id)
        if fresh is not None and fresh.is_finished:
            return self._ended(fresh)
        return CheckRunHealthResult(WorkerStatus.FAILED, f"the run worker process (pid {pid}) {started} for the run "
                                    f"is gone ({gone})", run_worker_id=str(pid))

    def _ask_code_server(self, run: DagsterRun, grpc_info: dict, server: str, why: str) -> CheckRunHealthResult:
        client = DagsterGrpcClient(port=grpc_info.get("port"), socket=grpc_info.get("socket"),
                                   host=grpc_info.get("host", "localhost"), use_ssl=bool(grpc_info.get("use_ssl")))
        try:
            current = deserialize_value(client.get_current_runs(), GetCurrentRunsResult).current_runs
        except DagsterUserCodeUnreachableError as exc:
            cause = exc.__cause__
            if isinstance(cause, grpc.RpcError) and cause.code() == grpc.StatusCode.UNAVAILABLE:
                return self._failed_check(run, f"the code server at {server} is unreachable (gRPC UNAVAILABLE)", why)
            # Deadline exceeded or another error of a live server: load must never fail a run.
            self._forget(run.run_id)
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"code server at {server} did not answer: {exc}",
                                        transient=True)
        if run.run_id in current:
            self._forget(run.run_id)
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        fresh = self._instance.get_run_by_id(run.run_id)
        if fresh is not None and fresh.is_finished:
            return self._ended(fresh)
        return self._failed_check(run, f"the code server at {server} does not execute the run", why)

    def _failed_check(self, run: DagsterRun, what: str, why: str) -> CheckRunHealthResult:
        with self._lock:
            count = self._failed_checks.get(run.run_id, 0) + 1
            if count >= FAILED_CHECKS_TO_FAIL:
                self._failed_checks.pop(run.run_id, None)
            else:
                self._failed_checks[run.run_id] = count
        if count < FAILED_CHECKS_TO_FAIL:
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, f"{what} ({count} of {FAILED_CHECKS_TO_FAIL} consecutive checks before the "
                f"run is failed; {why})", transient=True)
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"{what} on {count} consecutive checks ({why}): the run worker is presumed gone")

    def _ended(self, run: DagsterRun) -> CheckRunHealthResult:
        self._forget(run.run_id)
        return CheckRunHealthResult(WorkerStatus.SUCCESS, f"run ended ({run.status.value})")

    def _forget(self, run_id: str) -> None:
        with self._lock:
            self._failed_checks.pop(run_id, None)

    def _worker_pid(self, run_id: str) -> tuple[int | None, float | None]:
        """The pid the run worker recorded and when: the first run-level ENGINE_EVENT with a `pid` in its metadata,
        "Started process for run (pid: N)." from the process the code server spawned for the run (the
        executor's "... parent process (pid: N)" that follows names the same process)."""
        records = self._instance.get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT,
                                                     limit=PID_EVENTS_LIMIT).records
        for record in records:
            entry = record.event_log_entry
            event = entry.dagster_event
            if event is None or event.step_key is not None:
                continue
            value = (getattr(event.event_specific_data, "metadata", None) or {}).get("pid")
            text = str(getattr(value, "value", value) or "")
            if text.isdigit():
                return int(text), entry.timestamp
        return None, None


# ------------------------------------------------------------------------------------------ process checks

class _CannotTell(Exception):
    """This host cannot show whether the worker process lives (no /proc, or no right to read it)."""


def _working_directory(origin: RepositoryPythonOrigin) -> str | None:
    return getattr(origin.code_pointer, "working_directory", None)


def _is_local(grpc_info: dict) -> bool:
    return bool(grpc_info.get("socket")) or grpc_info.get("host", "localhost") in LOCAL_HOSTS


def _address(grpc_info: dict) -> str:
    if grpc_info.get("socket"):
        return f"unix:{grpc_info['socket']}"
    return f"{grpc_info.get('host', 'localhost')}:{grpc_info.get('port')}"


def _looks_like_run_worker(argv: list[str]) -> bool:
    """A code server's run worker is a `multiprocessing` spawn child (`python -B -c "from multiprocessing.spawn
    import spawn_main; spawn_main(...)" --multiprocessing-fork`, measured with dagster 1.13.27); other launch
    paths run `dagster api execute_run` / `resume_run`; a warm worker's run worker is a fork of
    `python -m geoseg_assets.warm_runs`."""
    if WARM_WORKER_MODULE in argv:
        return True
    if "--multiprocessing-fork" in argv and any("multiprocessing.spawn" in arg for arg in argv):
        return True
    return any(a == "api" and b in ("execute_run", "resume_run") for a, b in zip(argv, argv[1:]))


def _process_start_time(stat: str) -> float:
    """Wall-clock start of a process from its /proc/<pid>/stat (field 22, clock ticks since boot)."""
    fields = stat[stat.rindex(")") + 2:].split()  # the command name in parentheses may hold spaces
    boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime "))
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _why_not_the_worker(pid: int, recorded_at: float | None) -> str | None:
    """None if process `pid` is alive and is the run worker that recorded its pid at `recorded_at`, else why not;
    raises `_CannotTell` when this host cannot show it."""
    if not Path("/proc/self/stat").exists():
        raise _CannotTell("no /proc")
    proc = Path("/proc") / str(pid)
    try:
        stat = (proc / "stat").read_text()
        argv = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
    except (FileNotFoundError, ProcessLookupError):  # the worker runs as the daemon's user: hidepid cannot hide it
        return f"no process {pid}"
    except PermissionError as exc:
        raise _CannotTell(f"/proc/{pid}: {exc.strerror}") from None
    state = stat[stat.rindex(")") + 2:].split()[0]
    if state in ("Z", "X"):
        return f"process {pid} has exited"
    if not _looks_like_run_worker(argv):
        return f"pid {pid} is now another program: {' '.join(argv)[:200]!r}"
    started = _process_start_time(stat)
    if recorded_at is not None and started > recorded_at + PID_REUSE_SLACK_S:
        return f"pid {pid} is now another process, started {started - recorded_at:.0f} s after the worker's"
    return None
