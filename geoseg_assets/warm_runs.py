"""Warm run workers: a run forked from a process that has the code location imported, instead of a fresh interpreter.

Dagster's code server starts every run worker with `multiprocessing`'s spawn: a new interpreter that imports dagster
and the code location again (about 2.3 s of CPU here, benchmarks/bench_backfill.py) before the run's first step. For a
backfill of small scenes that start is most of each partition's cost. A *warm worker* is one process per code location
(started by the run launcher, `HealthCheckedRunLauncher(warm_run_workers=True)`) that imports the code location once,
builds its definitions, loads the instance's storage code and the modules runs import lazily, then waits on a Unix
socket; for each run it forks a child that executes the run exactly as `dagster api execute_run` does (same instance
ref, same origin, same events).

Fork safety and freshness, checked before every fork:
- the warm process stays single-threaded (a fork copies only the calling thread; one holding a lock would deadlock
  the child): if a Python thread exists, it refuses the run and exits, and the launcher sends that code location's
  runs through the code server for UNFIT_RETRY_S;
- a project source file it imported changed since it loaded them (an edit, a `git pull`) means its modules are
  stale: it refuses the run and exits, and the launcher starts a new one that imports the new code.
It exits when its parent (the launcher's process) is gone; the runs it forked go on, as a code server's workers do.

    python -m geoseg_assets.warm_runs --socket PATH --origin SERIALIZED_REPOSITORY_ORIGIN \
        [--instance-ref FILE] [--preload MODULE ...]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

MODULE = "geoseg_assets.warm_runs"  # what a warm worker's command line runs (the health check looks for it)
READY_TIMEOUT_S = 120.0  # a warm worker that has not loaded the code location by then is abandoned
REPLY_TIMEOUT_S = 30.0  # a fork and a stat of the project's sources: milliseconds, unless the machine stalls
POLL_S = 0.5  # how often an idle warm worker reaps its children and looks for its parent
# A code location a warm worker could not load or fork (threads at import) is not tried again for this long: each try
# costs an interpreter start and a code import on top of the code server's own.
UNFIT_RETRY_S = 300.0
MAX_REQUEST_BYTES = 16 * 1024 * 1024
# Modules a run worker imports when its run starts (dagster 1.13.27): `dagster api execute_run`'s body with the CLI
# package around it, the executors, the run's cancellation and metrics threads' modules, config resolution.
DAGSTER_RUN_MODULES = ("dagster._cli.api", "dagster._utils.interrupts", "dagster._core.executor.in_process",
                       "dagster._core.executor.multiprocess", "dagster._core.execution.plan.active",
                       "dagster._core.execution.run_cancellation_thread", "dagster._core.execution.run_metrics_thread",
                       "dagster._core.system_config.composite_descent", "dagster._core.secrets.env_file")


class WarmLaunchError(Exception):
    """The run was not handed to a warm worker (none could start, or it refused the run before forking): launching
    it another way is safe."""


class WarmLaunchLost(Exception):
    """The request reached a warm worker but no answer came back: it may have forked the run's worker, so the run
    must not be launched a second time."""


# ----------------------------------------------------------------------------------------------- launcher side

@dataclass
class _Worker:
    process: subprocess.Popen
    socket_path: str
    folder: str


@dataclass
class WarmWorkers:
    """The launcher's warm workers, one per code location origin, started on first use and restarted when one
    exits (stale code, a crash). Thread-safe: the run queue launches runs from a thread pool."""

    instance_ref_json: str = ""  # the serialized InstanceRef runs use: a warm worker loads its storage code
    preload_modules: tuple[str, ...] = ()  # imported by each warm worker once, after the code location
    ready_timeout_s: float = READY_TIMEOUT_S
    _workers: dict[str, _Worker] = field(default_factory=dict)
    _unfit: dict[str, tuple[float, str]] = field(default_factory=dict)  # origin -> (retry after, why)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def launch(self, repository_origin_json: str, executable: str, cwd: str | None, execute_run_args_json: str) -> int:
        """The pid of the run worker forked for `execute_run_args_json` (a serialized `ExecuteRunArgs`). Raises
        WarmLaunchError when nothing was forked, WarmLaunchLost when that is not known."""
        key = repository_origin_json
        with self._lock:
            retry_after, why = self._unfit.get(key, (0.0, ""))
        if time.monotonic() < retry_after:
            raise WarmLaunchError(why)
        for attempt in range(2):  # a warm worker that exited or answers "stale": the second attempt starts a new one
            try:
                worker = self._worker(key, executable, cwd)
            except WarmLaunchError as exc:
                self._mark_unfit(key, str(exc))
                raise
            try:
                reply = _request(worker.socket_path, {"execute_run_args": execute_run_args_json})
            except WarmLaunchError:  # gone meanwhile (retired by another launch, killed): nothing was forked
                self._retire(key, worker)
                if attempt:
                    raise
                continue
            if "pid" in reply:
                return int(reply["pid"])
            self._retire(key, worker)
            why = reply.get("error", "the warm worker refused the run")
            if reply.get("unfit"):
                self._mark_unfit(key, why)
            if not reply.get("restart") or attempt:
                raise WarmLaunchError(why)
        raise AssertionError("unreachable")

    def prewarm(self, repository_origin_json: str, executable: str, cwd: str | None,
                on_failure=None) -> threading.Thread | None:
        """Starts the warm worker of an origin in a background thread, so that its first run does not wait for the
        code import; None when one is running or the origin is unfit. `on_failure(why)` is called if it cannot
        start. A launch meanwhile waits for this start instead of starting a second worker. Never blocks: while
        another start holds the lock (up to a code import's time) it returns None, as the caller may be the backfill
        daemon creating runs."""
        key = repository_origin_json
        if not self._lock.acquire(blocking=False):
            return None
        try:
            worker = self._workers.get(key)
            if (worker is not None and worker.process.poll() is None) or time.monotonic() < self._unfit.get(key, (0,))[0]:
                return None
        finally:
            self._lock.release()

        def start() -> None:
            try:
                self._worker(key, executable, cwd)
            except WarmLaunchError as exc:
                self._mark_unfit(key, str(exc))
                if on_failure is not None:
                    on_failure(str(exc))

        thread = threading.Thread(target=start, name="geoseg-warm-prewarm", daemon=True)
        thread.start()
        return thread

    def _mark_unfit(self, key: str, why: str) -> None:
        with self._lock:
            self._unfit[key] = (time.monotonic() + UNFIT_RETRY_S, f"{why}; not tried again for {UNFIT_RETRY_S:.0f} s")

    def stop(self) -> None:
        """Stops the warm workers (not the runs they forked: those finish on their own)."""
        with self._lock:
            workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            _stop(worker)

    def _worker(self, key: str, executable: str, cwd: str | None) -> _Worker:
        with self._lock:
            worker = self._workers.get(key)
            if worker is not None and worker.process.poll() is None:
                return worker
            if worker is not None:
                _stop(worker)
            worker = _start(key, executable, cwd, self.ready_timeout_s, self.instance_ref_json, self.preload_modules)
            self._workers[key] = worker
            return worker

    def _retire(self, key: str, worker: _Worker) -> None:
        with self._lock:
            if self._workers.get(key) is worker:
                del self._workers[key]
        _stop(worker)


def _start(origin_json: str, executable: str, cwd: str | None, ready_timeout_s: float, instance_ref_json: str,
           preload_modules: tuple[str, ...]) -> _Worker:
    """Starts a warm worker and waits until it listens (it binds its socket only once the code location is loaded).
    The instance ref goes through a file in the worker's private folder, not its command line: a dagster.yaml may
    hold a password."""
    folder = tempfile.mkdtemp(prefix="geoseg-warm-")  # mode 0700
    socket_path = os.path.join(folder, "worker.sock")
    ref_path = os.path.join(folder, "instance_ref.json")
    Path(ref_path).write_text(instance_ref_json)
    command = [executable, "-m", MODULE, "--socket", socket_path, "--origin", origin_json, "--instance-ref", ref_path,
               *(arg for module in preload_modules for arg in ("--preload", module))]
    try:
        process = subprocess.Popen(command, cwd=cwd or None, stdin=subprocess.DEVNULL)
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise WarmLaunchError(f"cannot start a warm worker with {executable}: {exc}") from exc
    worker = _Worker(process, socket_path, folder)
    deadline = time.monotonic() + ready_timeout_s
    while not os.path.exists(socket_path):
        if process.poll() is not None:
            _stop(worker)
            raise WarmLaunchError(f"the warm worker exited with code {process.returncode} while loading the code "
                                  "location (its error is in the launcher's log)")
        if time.monotonic() > deadline:
            _stop(worker)
            raise WarmLaunchError(f"the warm worker did not load the code location within {ready_timeout_s:.0f} s")
        time.sleep(0.05)
    return worker


def _stop(worker: _Worker) -> None:
    if worker.process.poll() is None:
        worker.process.terminate()
        try:
            worker.process.wait(10)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
    shutil.rmtree(worker.folder, ignore_errors=True)


def _request(socket_path: str, message: dict) -> dict:
    """One request and its answer. Failing before the request is sent is a WarmLaunchError (nothing forked);
    failing after it, WarmLaunchLost."""
    payload = json.dumps(message).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(REPLY_TIMEOUT_S)
        try:
            conn.connect(socket_path)
        except OSError as exc:
            raise WarmLaunchError(f"cannot reach the warm worker at {socket_path}: {exc}") from exc
        try:
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
        except OSError as exc:
            # The worker reads the whole request before it acts: a request it did not get whole is never run.
            raise WarmLaunchError(f"the warm worker at {socket_path} did not take the request: {exc}") from exc
        try:
            answer = _read_all(conn)
            return json.loads(answer)
        except (OSError, ValueError) as exc:
            raise WarmLaunchLost(f"the warm worker at {socket_path} took the run but gave no answer ({exc}); its "
                                 "worker may be running, so the run is not launched again") from exc


def _read_all(conn: socket.socket) -> bytes:
    chunks, size = [], 0
    while chunk := conn.recv(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            raise ValueError(f"message over {MAX_REQUEST_BYTES} bytes")
    return b"".join(chunks)


# -------------------------------------------------------------------------------------------- warm worker side

def _project_sources(root: Path) -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every imported module file under the code location's folder, installed packages
    excepted: what a code edit changes."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    root_real = os.path.realpath(root)
    sources = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path:
            continue
        real = os.path.realpath(path)
        if not real.startswith(root_real + os.sep) or any(real.startswith(p + os.sep) for p in prefixes):
            continue
        if "site-packages" in Path(real).parts:
            continue
        try:
            st = os.stat(real)
        except OSError:
            continue
        sources[real] = (st.st_mtime_ns, st.st_size)
    return sources


def _changed(sources: dict[str, tuple[int, int]]) -> str | None:
    for path, signature in sources.items():
        try:
            st = os.stat(path)
        except OSError:
            return f"{path} is gone"
        if (st.st_mtime_ns, st.st_size) != signature:
            return f"{path} changed"
    return None


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _execute_in_child(execute_run_args_json: str) -> None:
    """The forked run worker: what `dagster api execute_run` does, then exit without returning to the loop."""
    code = 1
    try:
        # Private Dagster API (dagster 1.13.27, pinned by requirements.lock): the body of `dagster api execute_run`,
        # and the CLI's signal setup (SIGTERM interrupts the run like SIGINT, so termination cancels it).
        from dagster._cli.api import execute_run_command
        from dagster._utils.interrupts import setup_interrupt_handlers

        signal.signal(signal.SIGINT, signal.default_int_handler)
        setup_interrupt_handlers()
        execute_run_command.callback(input_json=execute_run_args_json, compressed_input_json=None)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # the run's own failures are in its event log; this is the worker's own crash
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _answer(conn: socket.socket, message: dict) -> None:
    try:
        conn.sendall(json.dumps(message).encode())
    except OSError:
        pass


def _preload(instance_ref_json: str, modules: list[str]) -> None:
    """What every run worker would import again: the instance's storage code (an instance is made from the ref and
    disposed, so no connection stays open), the CLI body the worker runs, the modules Dagster imports when a run
    starts (private names: one that moved in an upgrade is skipped) and the code location's own `modules`."""
    from dagster import DagsterInstance, deserialize_value
    from dagster._core.instance.ref import InstanceRef

    if instance_ref_json:
        with DagsterInstance.from_ref(deserialize_value(instance_ref_json, InstanceRef)):
            pass
    for name in (*DAGSTER_RUN_MODULES, *modules):
        try:
            importlib.import_module(name)
        except Exception as exc:  # a preload is an optimisation: the run worker imports what it needs anyway
            print(f"geoseg warm worker: preloading {name} failed ({exc}); runs import it themselves", file=sys.stderr)


def serve(socket_path: str, origin_json: str, instance_ref_json: str = "", preload: list[str] = ()) -> None:
    """Loads the code location of `origin_json` (a serialized RepositoryPythonOrigin), then forks a run worker per
    request until its parent is gone, its sources change or it is told to stop."""
    from dagster import deserialize_value
    from dagster._core.origin import RepositoryPythonOrigin
    from dagster._utils.hosted_user_process import recon_repository_from_origin

    origin = deserialize_value(origin_json, RepositoryPythonOrigin)
    recon_repository_from_origin(origin).get_definition()  # imports the code and builds the definitions once
    _preload(instance_ref_json, list(preload))
    # Children share the loaded heap copy-on-write. Objects the collector may traverse get written to (their GC
    # headers) and copied page by page in every child: moved to the permanent generation, they are left alone.
    gc.collect()
    gc.freeze()
    root = Path(getattr(origin.code_pointer, "working_directory", None) or os.getcwd())
    sources = _project_sources(root)
    parent = os.getppid()

    for stop in (signal.SIGTERM, signal.SIGINT):  # a stop (Ctrl-C of `make ui` reaches the whole group) is no error
        signal.signal(stop, lambda *_: sys.exit(0))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    partial = socket_path + ".binding"
    listener.bind(partial)
    listener.listen(64)
    os.rename(partial, socket_path)  # the socket appears only ready to accept
    listener.settimeout(POLL_S)
    try:
        while os.getppid() == parent:
            _reap()
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(REPLY_TIMEOUT_S)
                try:
                    request = json.loads(_read_all(conn))
                    args_json = request["execute_run_args"]
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    _answer(conn, {"error": f"unreadable request: {exc}"})
                    continue
                stale = _changed(sources)
                if stale:
                    _answer(conn, {"restart": True, "error": f"warm worker retired: code changed since it was loaded "
                                                             f"({stale})"})
                    return
                threads = threading.active_count()
                if threads > 1:
                    _answer(conn, {"unfit": True, "error": f"the code location runs {threads} threads once loaded, "
                                                           "and a fork copies only one: it cannot be forked safely"})
                    return
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    conn.close()
                    _execute_in_child(args_json)
                _answer(conn, {"pid": pid})
    finally:
        listener.close()
        shutil.rmtree(os.path.dirname(socket_path), ignore_errors=True)  # the socket's private folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--origin", required=True, help="a serialized RepositoryPythonOrigin")
    parser.add_argument("--instance-ref", help="a file holding the serialized InstanceRef of the runs")
    parser.add_argument("--preload", action="append", default=[], help="a module to import once (repeatable)")
    args = parser.parse_args(argv)
    instance_ref_json = ""
    if args.instance_ref:  # read once and removed: the file may hold a password from dagster.yaml
        instance_ref_json = Path(args.instance_ref).read_text()
        os.unlink(args.instance_ref)
    serve(args.socket, args.origin, instance_ref_json, args.preload)


if __name__ == "__main__":
    main()
