"""Label stores behind one interface: a GeoPackage file (embedded default) or a PostGIS table.

Rows follow a labelling team's review flow: status `unlabeled` -> `test` -> `valid`, and only
`valid` labels train. Each row keeps its class, source (`manual`, `osm`, `auto`), annotator,
region, update time and an optional validity window (valid_from / valid_to dates). Imports are
all-or-nothing.
"""

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyogrio
import shapely
from dagster import Config, ConfigurableResource
from pydantic import Field, field_validator

from geoseg_assets.geo.classmap import CLASS_MAP_FILE, IGNORE_ID, ClassDef, ClassMap, DEFAULT_CLASS_MAP, read_class_map
from geoseg_assets.geo.errors import LabelError
from geoseg_assets.geo.labels import LabelReport, prepare_labels, read_label_file
from geoseg_assets.geo.publish import atomic_file
from resources.data_store import check_partition_value

STATUSES = ("unlabeled", "test", "valid")
SOURCES = ("manual", "osm", "auto", "synthetic")
COLUMNS = ["label_id", "class_id", "class_name", "status", "source", "annotator", "region",
           "updated_at", "valid_from", "valid_to"]


class ClassSpec(Config):
    name: str
    id: int
    color: list[int] = Field(default_factory=lambda: [128, 128, 128])


class ClassMapResource(ConfigurableResource):
    """The project's class map (names, ids, colours, ignore id), with optional per-region maps.

    Class maps are project data: files (`geo/classmap.py` format) read each time a map is resolved, so every
    run (imports, masks, dataset, predictions, reports) uses the current file without run config. Lookup for
    a region: `region_classes` config, else `<folder>/<region>/classes.json`, else the project map; the project
    map: the `path` file, else `<folder>/classes.json`, else `classes` config (default: built-in classes).
    """

    path: str | None = Field(default=None, description="Project class-map file (JSON). Set, it must exist and "
                             "replaces `classes` and `ignore_id`; None: `<folder>/classes.json` if present, else `classes`.")
    folder: str | None = Field(default=None, description="Folder of optional class-map files: `<folder>/classes.json` "
                               "(the project's) and `<folder>/<region>/classes.json` (a region's, next to its region.json), "
                               "each used when present. The default code location sets the landing folder.")
    classes: list[ClassSpec] = Field(
        default_factory=lambda: [ClassSpec(name=c.name, id=c.id, color=list(c.color)) for c in DEFAULT_CLASS_MAP.classes],
        description="Classes when there is no class-map file (default: the built-in land-cover classes).",
    )
    ignore_id: int = Field(default=IGNORE_ID, description="Ignore id of `classes` (unlabelled and nodata pixels).")
    region_classes: dict[str, list[ClassSpec]] = Field(default_factory=dict, description="Per-region class maps "
                                                       "(config; win over the region's class-map file).")

    def _from_config(self, specs: list[ClassSpec], source: str) -> ClassMap:
        """A class map from config specs, `source` naming the field it came from (recorded in mask metadata)."""
        return ClassMap(tuple(ClassDef(s.name, s.id, tuple(s.color)) for s in specs), self.ignore_id, source=source)

    def project_map(self) -> ClassMap:
        """The project's class map: the `path` file, else `<folder>/classes.json` if present, else `classes`.
        A bad file raises ClassMapError naming it and the fix."""
        if self.path:
            return read_class_map(self.path)
        if self.folder and (Path(self.folder) / CLASS_MAP_FILE).is_file():
            return read_class_map(Path(self.folder) / CLASS_MAP_FILE)
        return self._from_config(self.classes, "ClassMapResource.classes")

    def for_region(self, region: str) -> ClassMap:
        """A region's class map: `region_classes` config, else `<folder>/<region>/classes.json` if present, else
        the project's. A bad file raises ClassMapError naming it and the fix."""
        if region in self.region_classes:
            return self._from_config(self.region_classes[region], f"ClassMapResource.region_classes[{region!r}]")
        if self.folder:
            region_file = Path(self.folder) / check_partition_value(region, "region") / CLASS_MAP_FILE
            if region_file.is_file():
                return read_class_map(region_file)
        return self.project_map()


@dataclass(frozen=True)
class ImportOptions:
    """How imported features enter the store."""

    status: str = "valid"
    source: str = "manual"
    annotator: str | None = None
    valid_from: str | None = None
    valid_to: str | None = None
    class_column: str = "class"
    default_class: str | None = None
    replace: bool = False  # replace the region's labels instead of adding to them

    def check(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")
        if self.source not in SOURCES:
            raise ValueError(f"source {self.source!r} is not one of {SOURCES}")
        dates = {}
        for key in ("valid_from", "valid_to"):
            value = getattr(self, key)
            if value is None:
                continue
            try:
                if not isinstance(value, str) or len(value) != 10:
                    raise ValueError
                dates[key] = dt.date.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{key} {value!r} is not a date written YYYY-MM-DD (e.g. 2024-06-01)") from None
        if len(dates) == 2 and dates["valid_from"] > dates["valid_to"]:
            raise ValueError(f"valid_from {self.valid_from} is after valid_to {self.valid_to}: the labels would "
                             "never be valid on any date; swap the two dates")


class LabelStore(ConfigurableResource):
    """Interface of label stores."""

    def import_file(self, path: str, region: str, crs, class_map: ClassMap, options: ImportOptions = ImportOptions(),
                    footprint=None) -> LabelReport:
        """Read, check, repair and reproject a label file, then add it to `region` in one transaction.

        `crs` is the region's scene CRS; `footprint` (bounds in that CRS), when given, must be
        touched by at least one label, which catches files with a wrong CRS declaration.
        """
        from geoseg_assets.geo.labels import require_overlap

        options.check()
        check_partition_value(region, "region")
        prepared, report = prepare_labels(read_label_file(path), path, class_map, crs,
                                          class_column=options.class_column, default_class=options.default_class)
        if footprint is not None:
            require_overlap(prepared, footprint, path, f"the scene footprint of region {region!r}")
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        rows = prepared.assign(status=options.status, source=options.source, annotator=options.annotator,
                               region=region, updated_at=now, valid_from=options.valid_from, valid_to=options.valid_to)
        self._write(region, rows, replace=options.replace)
        return report

    def labels(self, region: str, date: str | None = None, statuses=("valid",)) -> gpd.GeoDataFrame:
        """Labels of a region with one of `statuses`, valid on `date` when given."""
        raise NotImplementedError

    def regions(self) -> list[str]:
        raise NotImplementedError

    def fingerprint(self, region: str) -> str:
        """Changes whenever any label row of the region changes (geometry, class, status, dates)."""
        raise NotImplementedError

    def set_status(self, region: str, label_ids: list[int], status: str) -> int:
        """Move labels through the review flow; returns how many rows changed."""
        raise NotImplementedError

    def _write(self, region: str, rows: gpd.GeoDataFrame, replace: bool) -> None:
        raise NotImplementedError


def filter_valid_on(frame: gpd.GeoDataFrame, date: str | None, statuses) -> gpd.GeoDataFrame:
    """Rows with a status in `statuses` whose validity window contains `date`."""
    keep = frame["status"].isin(list(statuses))
    if date is not None:
        vf = frame["valid_from"].fillna("0000-00-00").astype(str)
        vt = frame["valid_to"].fillna("9999-99-99").astype(str)
        keep &= (vf <= date) & (vt >= date)
    return frame[keep].reset_index(drop=True)


def geopackage_layers(path: Path, verify: bool = False) -> list[str]:
    """The layers of a GeoPackage; LabelError naming the file and the fix when it is not one or (with
    `verify`, SQLite's integrity check, run before every write) it is damaged, so no write replaces it."""
    import sqlite3

    fix = (f"restore {path.name} from a backup (or re-import every region into a new file); the damaged file "
           "was left as it is")
    if not verify:
        try:
            return [str(name) for name, _ in pyogrio.list_layers(path)]
        except Exception as exc:  # pyogrio raises DataSourceError and friends
            raise LabelError(path, f"cannot be read as a GeoPackage ({exc})", fix) from exc
    try:
        with open(path, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\0":
                raise LabelError(path, "is not a GeoPackage (no SQLite header)", fix)
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            check = con.execute("PRAGMA quick_check").fetchone()[0]
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except (OSError, sqlite3.Error) as exc:
        raise LabelError(path, f"cannot be read as a GeoPackage ({exc})", fix) from exc
    if check != "ok":
        raise LabelError(path, f"is damaged (SQLite integrity check: {check})", fix)
    if "gpkg_contents" not in tables:
        raise LabelError(path, "is an SQLite file without GeoPackage tables", fix)
    return geopackage_layers(path)


class GeoPackageLabelStore(LabelStore):
    """Labels in one GeoPackage file, a layer per region (in that region's scene CRS).

    Every change rewrites a copy of the file and renames it over the original, so a failed import
    leaves the store exactly as it was.
    """

    path: str = Field(description="The GeoPackage file.")

    def _layers(self) -> list[str]:
        if not Path(self.path).exists():
            return []
        return geopackage_layers(Path(self.path))

    def regions(self) -> list[str]:
        return sorted(self._layers())

    def _read(self, region: str) -> gpd.GeoDataFrame | None:
        if region not in self._layers():
            return None
        frame = gpd.read_file(self.path, layer=region)
        frame["label_id"] = frame["label_id"].astype(int)
        return frame

    def labels(self, region: str, date: str | None = None, statuses=("valid",)) -> gpd.GeoDataFrame:
        frame = self._read(check_partition_value(region, "region"))
        if frame is None:
            return gpd.GeoDataFrame({c: [] for c in COLUMNS}, geometry=gpd.GeoSeries([]))
        return filter_valid_on(frame, date, statuses)

    def fingerprint(self, region: str) -> str:
        frame = self._read(region)
        digest = hashlib.sha256()
        if frame is not None:
            frame = frame.sort_values("label_id")
            digest.update(str(frame.crs).encode())
            for row, wkb in zip(frame[COLUMNS].astype(str).itertuples(index=False), shapely.to_wkb(frame.geometry.values)):
                digest.update("|".join(row).encode())
                digest.update(wkb)
        return digest.hexdigest()

    def set_status(self, region: str, label_ids: list[int], status: str) -> int:
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        frame = self._read(region)
        if frame is None:
            return 0
        hit = frame["label_id"].isin(label_ids) & (frame["status"] != status)
        frame.loc[hit, "status"] = status
        frame.loc[hit, "updated_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self._replace_layer(region, frame)
        return int(hit.sum())

    def _write(self, region: str, rows: gpd.GeoDataFrame, replace: bool) -> None:
        existing = None if replace else self._read(region)
        start = 1 if existing is None or existing.empty else int(existing["label_id"].max()) + 1
        rows = rows.assign(label_id=range(start, start + len(rows)))[COLUMNS + ["geometry"]]
        if existing is not None and not existing.empty:
            if existing.crs != rows.crs:
                rows = rows.to_crs(existing.crs)
            rows = pd.concat([existing[COLUMNS + ["geometry"]], rows], ignore_index=True)
        self._replace_layer(region, gpd.GeoDataFrame(rows, geometry="geometry", crs=rows.crs))

    def _replace_layer(self, region: str, frame: gpd.GeoDataFrame) -> None:
        target = Path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(target) as tmp:
            # LabelError if the store is damaged: never rewrite what cannot be read whole
            before = set(geopackage_layers(target, verify=True)) if target.exists() else set()
            if target.exists():
                import shutil

                shutil.copy2(target, tmp)
            frame.to_file(tmp, layer=region, driver="GPKG", SPATIAL_INDEX="YES")
            lost = before - set(geopackage_layers(tmp))
            if lost:
                raise LabelError(target, f"writing region {region!r} would drop the regions {sorted(lost)}",
                                 "nothing was changed; check the GeoPackage with `ogrinfo` and report this")


SQL_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,52}")  # 63-byte limit minus the longest index suffix (_geom_gist)
SQL_RESERVED = {"ALL", "ANALYSE", "ANALYZE", "AND", "ANY", "ARRAY", "AS", "ASC", "CASE", "CAST", "CHECK", "COLUMN",
                "CONSTRAINT", "CREATE", "DEFAULT", "DESC", "DISTINCT", "DO", "ELSE", "END", "FALSE", "FOR", "FOREIGN",
                "FROM", "GRANT", "GROUP", "HAVING", "IN", "INTO", "LIMIT", "NOT", "NULL", "OFFSET", "ON", "OR", "ORDER",
                "PRIMARY", "REFERENCES", "SELECT", "TABLE", "THEN", "TO", "TRUE", "UNION", "UNIQUE", "USER", "USING",
                "WHEN", "WHERE", "WITH"}


class PostgisLabelStore(LabelStore):
    """Labels in a PostGIS table (production default): one row per polygon, a GiST index on the
    geometry and a region index; every import or status change is one transaction."""

    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: str = ""
    dbname: str = Field(default="geoseg", description="Database holding the labels table (with the PostGIS extension).")
    table: str = Field(default="labels", description="Table name: a plain SQL identifier (a-z, 0-9, _; at most 53: 63 bytes minus the index suffix).")

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

    def _connect(self):
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password, dbname=self.dbname)

    def _engine(self):
        from sqlalchemy import create_engine
        from sqlalchemy.engine import URL

        return create_engine(URL.create("postgresql+psycopg2", username=self.user, password=self.password or None,
                                        host=self.host, port=self.port, database=self.dbname))

    def ensure_schema(self) -> None:
        """Create the PostGIS extension, the table and its indexes if missing (idempotent)."""
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
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:  # one transaction: all rows or none
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
        finally:
            conn.close()
