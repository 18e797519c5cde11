"""The production instance's Postgres storage (geoseg_assets/postgres_storage.py, named by dagster.yaml): runs reuse a
few open connections, a dead connection is replaced without a failed call, a forked child never shares its parent's
connection, `dispose` closes them all, and the schema is read once per process and database."""

import os
import time
import uuid
from contextlib import closing
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import sqlalchemy
import sqlalchemy.event
import yaml

from geoseg_assets.postgres_storage import PooledPostgresStorage
from tests.support.postgres import PG

pytestmark = pytest.mark.postgres


@dg.asset
def numbers() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"count": 3})


@pytest.fixture
def pg_home(postgres_home):
    """The production instance on a throwaway database (`postgres_home`), its connections tagged with an
    application_name so the server's pg_stat_activity shows which are this test's."""
    app = f"geoseg_pool_{uuid.uuid4().hex[:8]}"
    home = Path(os.environ["DAGSTER_HOME"])
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    config["storage"]["custom"]["config"]["postgres_db"]["params"] = {"application_name": app}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home, postgres_home, app


def open_connections(db: str, app: str) -> list[int]:
    """Backend pids of this test's connections to `db`, as the server sees them."""
    with closing(psycopg2.connect(dbname="postgres", **PG)) as conn, conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s", (db, app))
        return [row[0] for row in cur.fetchall()]


def closed_within(db: str, app: str, seconds: float) -> bool:
    """Whether the server shows none of this test's connections within `seconds` (a backend exits shortly after its
    client closed the socket)."""
    deadline = time.monotonic() + seconds
    while open_connections(db, app):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def terminate(pids: list[int]) -> None:
    with closing(psycopg2.connect(dbname="postgres", **PG)) as conn, conn.cursor() as cur:
        for pid in pids:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))


class Counter:
    """Counts new DBAPI connections and statements of this process (SQLAlchemy's own events)."""

    def __init__(self):
        self.connects, self.statements = 0, []

    def __enter__(self):
        sqlalchemy.event.listen(sqlalchemy.pool.Pool, "connect", self._connect)
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", self._statement)
        return self

    def __exit__(self, *exc):
        sqlalchemy.event.remove(sqlalchemy.pool.Pool, "connect", self._connect)
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", self._statement)

    def _connect(self, *args):
        self.connects += 1

    def _statement(self, conn, cursor, statement, *args):
        self.statements.append(statement)


def test_runs_reuse_a_few_open_connections(pg_home):
    home, db, app = pg_home
    instance = dg.DagsterInstance.get()
    try:
        assert instance.get_ref().storage_data.class_name == PooledPostgresStorage.__name__
        assert dg.materialize([numbers], instance=instance).success  # warm: the pool's first connections
        with Counter() as counted:
            for _ in range(3):
                assert dg.materialize([numbers], instance=instance).success
        statements = len(counted.statements)
        # The stock storage (NullPool) opens one connection per statement: ~40 for each of these runs.
        assert statements > 60 and counted.connects <= 2, (counted.connects, statements)
        assert 1 <= len(open_connections(db, app)) <= 2  # pool_size in dagster.yaml
        assert instance.get_latest_materialization_event(numbers.key).asset_materialization.metadata["count"].value == 3
    finally:
        instance.dispose()
    assert closed_within(db, app, seconds=10)  # DagsterInstance.dispose closed the pool


def test_a_dead_pooled_connection_is_replaced_without_a_failed_call(pg_home):
    home, db, app = pg_home
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    config["storage"]["custom"]["config"]["ping_after_idle_seconds"] = 0.0  # ping on every checkout
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    instance = dg.DagsterInstance.get()
    try:
        assert dg.materialize([numbers], instance=instance).success
        before = open_connections(db, app)
        assert before
        terminate(before)  # what a Postgres restart or an idle-connection reaper does
        assert len(instance.get_runs()) == 1  # no OperationalError: the dead connection was swapped
        assert dg.materialize([numbers], instance=instance).success
        assert not set(open_connections(db, app)) & set(before)
    finally:
        instance.dispose()


def test_a_forked_child_opens_its_own_connection(pg_home):
    home, db, app = pg_home
    instance = dg.DagsterInstance.get()
    engine = instance.run_storage._engine  # the shared pooled engine (test-only look inside)
    try:
        with engine.connect() as conn:
            parent_backend = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: a run worker forked from a warm worker does this
            code = 1
            try:
                os.close(read)
                with engine.connect() as conn:
                    child_backend = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
                runs = len(instance.get_runs())
                os.write(write, f"{child_backend} {runs}".encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        answer = os.read(read, 100).decode()
        os.close(read)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        child_backend, runs = map(int, answer.split())
        assert child_backend != parent_backend and runs == 0
        with engine.connect() as conn:  # the parent's connection is intact and still its own
            assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() == parent_backend
        assert dg.materialize([numbers], instance=instance).success
    finally:
        instance.dispose()


def test_the_schema_is_read_once_per_process_and_database(pg_home):
    home, db, app = pg_home
    with Counter() as first:
        instance = dg.DagsterInstance.get()
        instance.dispose()
    assert any("pg_catalog" in s for s in first.statements)  # tables listed and created for a new database
    with Counter() as again:
        instance = dg.DagsterInstance.get()
        try:
            assert dg.materialize([numbers], instance=instance).success
        finally:
            instance.dispose()
    catalog = [s for s in again.statements if "pg_catalog" in s or "information_schema" in s]
    assert again.statements and catalog == [], catalog
