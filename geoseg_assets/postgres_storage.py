"""Postgres instance storage whose processes keep a few connections open and read the schema once.

dagster-postgres gives its run, event-log and schedule storages a NullPool outside the webserver: every statement
opens a new connection (a backend fork on the server), and every new instance and many calls ask Postgres's catalog
whether a table or column exists. One small partition's run of `scenes` + `tiles` opened 93 connections (0.18 s of
its 0.9 s) and sent 22 catalog queries among its 113 statements (benchmarks/bench_backfill.py).
`PooledPostgresStorage` is `DagsterPostgresStorage` (same config, tables, migrations, `dagster instance migrate`) with
- one pooled engine per process shared by the three storages: `pool_size` connections stay open, bursts open up to
  `max_overflow` more that close when returned;
- a connection idle for `ping_after_idle_seconds` pinged before use (a Postgres restart costs a reconnect, not a
  failed call; SQLAlchemy's `pool_pre_ping` would ping on every checkout, ~90 round trips a run);
- a forked child that never reuses its parent's sockets;
- schema facts remembered per process and database once true (tables and columns only get added by migrations; a
  database dropped and re-created under a running process needs that process restarted).

Enable it in dagster.yaml with `storage: {custom: {module: geoseg_assets.postgres_storage, class:
PooledPostgresStorage, config: <the postgres block>}}`. The webserver still swaps in its own pool
(`optimize_for_webserver`), as with the stock storage.
"""

from __future__ import annotations

import functools
import os
import time
import weakref

import dagster as dg
import sqlalchemy
import sqlalchemy.event
import sqlalchemy.exc
from dagster._core.storage.base_storage import DagsterStorage
from dagster._core.storage.config import pg_config
from dagster_postgres import DagsterPostgresStorage, PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config

DEFAULT_POOL_SIZE = 2
DEFAULT_MAX_OVERFLOW = 8
POOL_RECYCLE_S = 3600
DEFAULT_PING_AFTER_IDLE_S = 5.0

_POOLED_ENGINES: weakref.WeakSet[sqlalchemy.engine.Engine] = weakref.WeakSet()
# Schema facts this process has seen true, per database URL: tables and columns, once there, stay (migrations only add).
# The stock storages ask Postgres's catalog again for every new instance and several times per run (22 catalog queries
# of a run's 113 statements); a forked run worker inherits the set from its warm worker.
_SCHEMA_SEEN: set[tuple[str, str]] = set()


def _seen_true(url: str, fact: str, probe) -> bool:
    """`probe()`, asked once per process and database while it is false, never again once it was true."""
    if (url, fact) in _SCHEMA_SEEN:
        return True
    found = bool(probe())
    if found:
        _SCHEMA_SEEN.add((url, fact))
    return found


def _forget_inherited_connections() -> None:
    """In a forked child: drop the parent's pooled connections without closing them (they are the parent's sockets);
    the child opens its own on first use."""
    for engine in list(_POOLED_ENGINES):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_inherited_connections)


def _ping_when_idle(engine: sqlalchemy.engine.Engine, idle_seconds: float) -> None:
    """Check a pooled connection before use when it sat idle for `idle_seconds`; a dead one is replaced by a new
    connection (SQLAlchemy retries a checkout that raises DisconnectionError)."""

    @sqlalchemy.event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection, record):
        record.info["idle_since"] = time.monotonic()

    @sqlalchemy.event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection, record, proxy):
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return
        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except Exception as exc:  # psycopg2.OperationalError / InterfaceError on a dropped connection
            raise sqlalchemy.exc.DisconnectionError(f"pooled Postgres connection is gone: {exc}") from exc


def _remember_schema(*probes: str):
    """Class decorator: the storage's zero-argument schema probes (`has_<table or column>`, methods or cached
    properties, asked by the stock code on run creation, materializations and concurrency claims) answer from
    _SCHEMA_SEEN once they were true."""

    def decorate(cls):
        for name in probes:
            stock = getattr(cls, name)
            is_property = isinstance(stock, functools.cached_property)
            ask = stock.func if is_property else stock

            def probe(self, _ask=ask, _name=name) -> bool:
                return _seen_true(self.postgres_url, _name, lambda: _ask(self))

            probe.__name__ = name
            setattr(cls, name, property(probe) if is_property else probe)
        cls.SCHEMA_PROBES = probes
        return cls

    return decorate


@_remember_schema("has_asset_key_index_cols", "has_default_pool_limit_col", "has_concurrency_limits_table")
class _PooledEventLogStorage(PostgresEventLogStorage):
    """The event-log storage: its `dispose` (called by `DagsterInstance.dispose`) also closes the shared pool, and
    it remembers the tables and columns it found."""

    KNOWN_TABLES = ("dynamic_partitions", "asset_event_tags", "asset_check_executions")

    def dispose(self) -> None:
        super().dispose()
        self._engine.dispose()

    def has_table(self, table_name: str) -> bool:
        return _seen_true(self.postgres_url, f"table {table_name}",
                          lambda: super(_PooledEventLogStorage, self).has_table(table_name))

    def _has_asset_key_col_on_connection(self, conn, column_name: str) -> bool:  # asked on every materialization
        return _seen_true(self.postgres_url, f"asset_keys.{column_name}",
                          lambda: super(_PooledEventLogStorage, self)._has_asset_key_col_on_connection(conn, column_name))


@_remember_schema("has_run_stats_index_cols", "has_bulk_actions_selector_cols", "has_backfill_id_column",
                  "has_bulk_action_job_name_column", "has_backfill_tags_table")
class _PooledRunStorage(PostgresRunStorage):
    """The run storage, remembering the columns and tables it found."""


@_remember_schema("has_instigators_table", "has_secondary_index_table")
class _PooledScheduleStorage(PostgresScheduleStorage):
    """The schedule storage, remembering the tables it found."""


class PooledPostgresStorage(DagsterPostgresStorage):
    """`DagsterPostgresStorage` with one connection pool per process shared by its run, event-log and schedule
    storages (see the module docstring)."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True, inst_data=None, token_provider=None,
                 pool_size: int = DEFAULT_POOL_SIZE, max_overflow: int = DEFAULT_MAX_OVERFLOW,
                 ping_after_idle_seconds: float = DEFAULT_PING_AFTER_IDLE_S):
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self._inst_data = inst_data
        # Each storage lists the database's tables to create missing ones; once per process and database is enough.
        autocreate = should_autocreate_tables and (postgres_url, "tables created") not in _SCHEMA_SEEN
        self._run_storage = _PooledRunStorage(postgres_url, autocreate, token_provider=token_provider)
        self._event_log_storage = _PooledEventLogStorage(postgres_url, autocreate, token_provider=token_provider)
        self._schedule_storage = _PooledScheduleStorage(postgres_url, autocreate, token_provider=token_provider)
        DagsterStorage.__init__(self)
        self._engine = create_pg_engine(postgres_url, token_provider, isolation_level="AUTOCOMMIT",
                                        pool_size=pool_size, max_overflow=max_overflow, pool_recycle=POOL_RECYCLE_S)
        _ping_when_idle(self._engine, ping_after_idle_seconds)
        _POOLED_ENGINES.add(self._engine)
        for storage in (self._run_storage, self._event_log_storage, self._schedule_storage):
            # The stock storages connect through `_engine` (what `optimize_for_webserver` replaces too).
            if not isinstance(getattr(storage, "_engine", None), sqlalchemy.engine.Engine):
                raise dg.DagsterInvariantViolationError(
                    f"{type(storage).__name__} has no `_engine` to pool: this dagster-postgres is not the one "
                    "geoseg_assets/postgres_storage.py was written for; use `storage: postgres:` in dagster.yaml")
            storage._engine.dispose()
            storage._engine = self._engine
        if autocreate:
            self._learn_schema()
            _SCHEMA_SEEN.add((postgres_url, "tables created"))

    def _learn_schema(self) -> None:
        """Ask once per process what every run would ask again (a warm worker's forks inherit the answers)."""
        for storage in (self._run_storage, self._event_log_storage, self._schedule_storage):
            for probe in storage.SCHEMA_PROBES:
                answer = getattr(storage, probe)
                if callable(answer):
                    answer()
        for table in _PooledEventLogStorage.KNOWN_TABLES:
            self._event_log_storage.has_table(table)

    @classmethod
    def config_type(cls):
        return {
            **pg_config(),
            "pool_size": dg.Field(int, is_required=False, default_value=DEFAULT_POOL_SIZE,
                                  description="Connections each process keeps open."),
            "max_overflow": dg.Field(int, is_required=False, default_value=DEFAULT_MAX_OVERFLOW,
                                     description="Extra connections a burst may open; closed when returned."),
            "ping_after_idle_seconds": dg.Field(float, is_required=False, default_value=DEFAULT_PING_AFTER_IDLE_S,
                                                description="A pooled connection idle this long is checked before "
                                                            "use (0: always)."),
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            inst_data=inst_data,
            token_provider=get_token_provider_from_config(config_value),
            pool_size=config_value.get("pool_size", DEFAULT_POOL_SIZE),
            max_overflow=config_value.get("max_overflow", DEFAULT_MAX_OVERFLOW),
            ping_after_idle_seconds=config_value.get("ping_after_idle_seconds", DEFAULT_PING_AFTER_IDLE_S),
        )
