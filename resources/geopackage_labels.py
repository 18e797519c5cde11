"""The embedded label store: one GeoPackage file, a layer per region, rewritten atomically on every change.

Holds `geopackage_layers` too, which reads (and, before writes, verifies) the file so a damaged store is
never overwritten.
"""

import datetime as dt
import hashlib
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyogrio
import shapely
from pydantic import Field

from geoseg_assets.geo.errors import LabelError
from geoseg_assets.geo.publish import atomic_file
from resources.data_store import check_partition_value
from resources.label_store import COLUMNS, STATUSES, LabelStore, filter_valid_on


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
