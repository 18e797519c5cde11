"""Throwaway databases on the local PostgreSQL server."""

import uuid
from contextlib import contextmanager


PG = dict(host="127.0.0.1", port=5432, user="postgres")


@contextmanager
def throwaway_database():
    """A fresh database on the local PostgreSQL server, dropped afterwards."""
    import psycopg2

    name = f"geoseg_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(dbname="postgres", **PG)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def dagster_pg_env(db: str) -> dict[str, str]:
    """The DAGSTER_PG_* variables the repo's dagster.yaml reads, pointing its storage at database `db` here."""
    return {"DAGSTER_PG_HOST": PG["host"], "DAGSTER_PG_PORT": str(PG["port"]), "DAGSTER_PG_USER": PG["user"],
            "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": db}
