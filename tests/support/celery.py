"""A real `dagster-celery` worker for tests: started in its own session with the repository importable, stopped with
its whole process group; a PostgreSQL Dagster home and a flushed Redis database for the broker."""

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import redis

from tests.support.paths import REPO
from tests.support.postgres import PG, throwaway_database

VENV_BIN = Path(sys.executable).parent


def start_worker(home: Path, folder: Path, name: str, broker: str,
                 env_extra: dict | None = None) -> tuple[subprocess.Popen, Path]:
    """`dagster-celery worker start` in its own session (so its Celery pool children share its process
    group), the repository importable, DAGSTER_HOME `home` (its dagster.yaml names the shared instance), its config
    and log in `folder`, `env_extra` over this process's environment; waits until Celery says it is ready."""
    config = folder / "celery.yaml"
    config.write_text(f"execution:\n  config:\n    broker: {broker}\n    backend: {broker}\n")
    log = folder / "worker.log"
    env = {**os.environ, **(env_extra or {})}
    env.update(DAGSTER_HOME=str(home), PYTHONPATH=str(REPO),
               PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")  # the CLI runs `celery` from PATH
    cmd = [str(VENV_BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(config),
           "-n", name, "--loglevel", "INFO",
           "--", "--concurrency=2", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    with open(log, "wb") as out:
        worker = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    deadline = time.monotonic() + 120
    while " ready." not in log.read_text(errors="replace"):
        if worker.poll() is not None or time.monotonic() > deadline:
            stop_worker(worker)
            pytest.fail(f"the Celery worker did not start (exit {worker.returncode}):\n{log.read_text(errors='replace')}")
        time.sleep(0.5)
    return worker, log


def stop_worker(worker: subprocess.Popen) -> None:
    """SIGTERM (Celery's warm shutdown) to the worker's whole process group, SIGKILL to whatever is
    left after 30 s; returns once no process of the group is alive."""
    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(worker.pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            worker.poll()  # reap the CLI itself
            if not worker_group_pids(worker):
                return
            time.sleep(0.2)


def worker_group_pids(worker: subprocess.Popen) -> set[int]:
    """Live (not zombie) pids of the worker's process group: CLI, Celery main process, pool children."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # /proc/<pid>/stat: "pid (comm) state ppid pgrp ..."; comm may contain spaces.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == worker.pid:
            pids.add(int(entry.name))
    return pids


@contextmanager
def postgres_dagster_home(folder: Path) -> Iterator[Path]:
    """A DAGSTER_HOME under `folder` whose dagster.yaml stores runs, events and schedules in a throwaway database."""
    with throwaway_database() as db:
        home = folder / "dagster_home"
        home.mkdir()
        url = f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{db}"
        (home / "dagster.yaml").write_text(
            f"storage:\n  postgres:\n    postgres_url: {url}\ntelemetry:\n  enabled: false\nnux:\n  enabled: false\n"
        )
        yield home


@contextmanager
def flushed_redis(url: str) -> Iterator[str]:
    """The Redis database at `url`, flushed before and after (stale tasks of other runs never interfere)."""
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable at {url} ({exc}); start it or set GEOSEG_TEST_CELERY_BROKER")
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
