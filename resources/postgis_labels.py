"""The production label store: a PostGIS table with GiST and region indexes, one transaction per change.

The table name goes into SQL text, so it is checked against `SQL_IDENTIFIER` and `SQL_RESERVED`.
"""

import hashlib
import re
from contextlib import contextmanager

import geopandas as gpd
import pandas as pd
import shapely
from pydantic import Field, PrivateAttr, field_validator

from geoseg_assets.geo.errors import LabelError
from resources.data_store import check_partition_value
from resources.label_store import COLUMNS, SOURCES, STATUSES, LabelStore

SQL_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,52}")  # 63-byte limit minus the longest index suffix (_geom_gist)
SQL_RESERVED = {"ALL", "ANALYSE", "ANALYZE", "AND", "ANY", "ARRAY", "AS", "ASC", "CASE", "CAST", "CHECK", "COLUMN",
                "CONSTRAINT", "CREATE", "DEFAULT", "DESC", "DISTINCT", "DO", "ELSE", "END", "FALSE", "FOR", "FOREIGN",
                "FROM", "GRANT", "GROUP", "HAVING", "IN", "INTO", "LIMIT", "NOT", "NULL", "OFFSET", "ON", "OR", "ORDER",
                "PRIMARY", "REFERENCES", "SELECT", "TABLE", "THEN", "TO", "TRUE", "UNION", "UNIQUE", "USER", "USING",
                "WHEN", "WHERE", "WITH"}


class PostgisLabelStore(LabelStore):
    """Labels in a PostGIS table (production default): one row per polygon, a GiST index on the
    geometry and a region index; every import or status change is one transaction."""

    host: str = Field(default="127.0.0.1", description="PostgreSQL host.")
    port: int = Field(default=5432, description="PostgreSQL port.")
    user: str = Field(default="postgres", description="PostgreSQL role.")
    password: str = Field(default="", description="Password of the role (from an EnvVar in production; the UI shows the variable, never the value).")
    dbname: str = Field(default="geoseg", description="Database holding the labels table (with the PostGIS extension).")
    table: str = Field(default="labels", description="Table name: a plain SQL identifier (a-z, 0-9, _; at most 53: 63 bytes minus the index suffix).")
    _schema_ready: bool = PrivateAttr(default=False)  # ensure_schema ran on this instance

    @field_validator("table")
    @classmethod
    def _plain_sql_identifier(cls, value: str) -> str:
        """The table name goes into SQL text (and index names), so it must be an identifier PostgreSQL reads
        as written: no quoting, no case folding, no schema dots, no reserved first character."""
        if not SQL_IDENTIFIER.fullmatch(value) or value.upper() in SQL_RESERVED:
            raise ValueError(f"table {value!r} is not a plain SQL identifier: use lower-case letters, digits and '_', "
                             "starting with a letter or '_', at most 53 characters (room for the index names), and "
                             "no reserved word; e.g. labels or geoseg_labels")
        return value

    @contextmanager
    def _connect(self):
        """A connection holding one transaction (committed when the block ends cleanly, rolled back otherwise), closed
        afterwards: psycopg2's own `with conn` ends the transaction but leaves the connection open."""
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password, dbname=self.dbname)
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    def ensure_schema(self) -> None:
        """Create the PostGIS extension, the table and its indexes if missing (idempotent), once per store
        instance: every query calls it, and only the first runs the DDL (a run builds its own instance)."""
        if self._schema_ready:
            return
        t = self.table
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS postgis")
            cur.execute(f"""
                CREATE TABLE IF NOT EXISTS {t} (
                    label_id bigserial PRIMARY KEY,
                    region text NOT NULL,
                    class_id integer NOT NULL,
                    class_name text NOT NULL,
                    status text NOT NULL CHECK (status IN {STATUSES}),
                    source text NOT NULL CHECK (source IN {SOURCES}),
                    annotator text,
                    updated_at timestamptz NOT NULL DEFAULT now(),
                    valid_from date,
                    valid_to date,
                    geom geometry NOT NULL
                )""")
            cur.execute(f"CREATE INDEX IF NOT EXISTS {t}_geom_gist ON {t} USING GIST (geom)")
            cur.execute(f"CREATE INDEX IF NOT EXISTS {t}_region ON {t} (region)")
        self._schema_ready = True

    def regions(self) -> list[str]:
        self.ensure_schema()
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute(f"SELECT DISTINCT region FROM {self.table} ORDER BY region")
            return [r[0] for r in cur.fetchall()]

    def _srid(self, cur, region: str) -> int | None:
        cur.execute(f"SELECT ST_SRID(geom) FROM {self.table} WHERE region = %s LIMIT 1", (region,))
        row = cur.fetchone()
        return row[0] if row else None

    def labels(self, region: str, date: str | None = None, statuses=("valid",)) -> gpd.GeoDataFrame:
        self.ensure_schema()
        check_partition_value(region, "region")
        sql = (f"SELECT label_id, class_id, class_name, status, source, annotator, region, "
               f"to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS+00:00') AS updated_at, "
               f"valid_from::text AS valid_from, valid_to::text AS valid_to, geom FROM {self.table} "
               f"WHERE region = %(region)s AND status = ANY(%(statuses)s)")
        params = {"region": region, "statuses": list(statuses)}
        if date is not None:
            sql += " AND (valid_from IS NULL OR valid_from <= %(date)s) AND (valid_to IS NULL OR valid_to >= %(date)s)"
            params["date"] = date
        sql += " ORDER BY label_id"
        with self._connect() as conn, conn.cursor() as cur:
            srid = self._srid(cur, region)
            cur.execute(sql.replace("geom FROM", "ST_AsBinary(geom) FROM"), params)
            rows = cur.fetchall()
        columns = COLUMNS
        frame = pd.DataFrame([r[:-1] for r in rows], columns=columns)
        geoms = shapely.from_wkb([bytes(r[-1]) for r in rows]) if rows else []
        return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(geoms), crs=f"EPSG:{srid}" if srid else None)

    def fingerprint(self, region: str) -> str:
        self.ensure_schema()
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute(
                f"SELECT count(*), coalesce(md5(string_agg(concat_ws('|', label_id, class_id, status, source, annotator, "
                f"valid_from, valid_to, updated_at, md5(ST_AsEWKB(geom))), ',' ORDER BY label_id)), '') "
                f"FROM {self.table} WHERE region = %s", (region,))
            count, digest = cur.fetchone()
        return hashlib.sha256(f"{count}:{digest}".encode()).hexdigest()

    def set_status(self, region: str, label_ids: list[int], status: str) -> int:
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        self.ensure_schema()
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute(f"UPDATE {self.table} SET status = %s, updated_at = now() "
                        f"WHERE region = %s AND label_id = ANY(%s) AND status <> %s",
                        (status, region, [int(i) for i in label_ids], status))
            return cur.rowcount

    def _write(self, region: str, rows: gpd.GeoDataFrame, replace: bool) -> None:
        from psycopg2.extras import execute_values

        epsg = rows.crs.to_epsg() if rows.crs is not None else None
        if epsg is None:
            raise LabelError(region, f"labels are in a CRS without an EPSG code ({rows.crs})",
                             "PostGIS stores labels by SRID: reproject the scenes of this region to an EPSG CRS")
        self.ensure_schema()
        with self._connect() as conn, conn.cursor() as cur:  # one transaction: all rows or none
            if replace:
                cur.execute(f"DELETE FROM {self.table} WHERE region = %s", (region,))
            target = self._srid(cur, region) or epsg
            values = [
                (region, int(r.class_id), r.class_name, r.status, r.source, r.annotator, r.updated_at,
                 r.valid_from, r.valid_to, shapely.to_wkb(r.geometry))
                for r in rows.itertuples(index=False)
            ]
            execute_values(
                cur,
                f"INSERT INTO {self.table} (region, class_id, class_name, status, source, annotator, updated_at, "
                f"valid_from, valid_to, geom) VALUES %s",
                values,
                template=f"(%s, %s, %s, %s, %s, %s, %s, %s, %s, ST_Transform(ST_GeomFromWKB(%s, {epsg}), {target}))",
            )
