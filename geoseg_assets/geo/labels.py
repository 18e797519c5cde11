"""Label files -> clean label polygons on a scene's CRS, and rasterized masks on the scene grid.

Import refuses anything that would silently produce a wrong mask: unreadable or empty files, no
CRS, coordinates that contradict the declared CRS, unknown classes, non-polygon geometries, and
label sets that do not touch the scene. Invalid polygons are repaired (`make_valid`) and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS, Transformer

from .classmap import ClassMap
from .errors import LabelError

GEOGRAPHIC_LIMITS = (-180.0, -90.0, 180.0, 90.0)
AREA_OF_USE_MARGIN_DEG = 5.0


@dataclass
class LabelReport:
    """What import did to the file's features."""

    source_path: str
    features: int = 0
    repaired: int = 0
    dropped_empty: int = 0
    reprojected_from: str | None = None
    class_counts: dict[str, int] = field(default_factory=dict)
    overlaps: int = 0  # pairs of features of different classes that share area
    overlap_note: str = ""  # which pairs, how much area, and which class wins in the masks


# What a label file may be, by suffix: the bytes it must start with. An OGR VRT (XML) or any other format
# would make GDAL read the files and URLs it names, so the content is checked before GDAL opens it.
LABEL_SIGNATURES = {".geojson": (b"{",), ".json": (b"{",), ".gpkg": (b"SQLite format 3\0",),
                    ".shp": (b"\x00\x00\x27\x0a",)}


def check_label_file(path: str | Path) -> None:
    """Refuse a label path that is not a local GeoJSON / GeoPackage / Shapefile by its bytes (LabelError
    naming the file and the fix): virtual or remote paths, other suffixes, XML or other content."""
    fix = "export it as GeoJSON, GeoPackage or Shapefile (e.g. `ogr2ogr -f GPKG labels.gpkg <source>`)"
    name = str(path)
    if name.startswith("/vsi") or "://" in name:
        raise LabelError(name, "is a GDAL virtual or remote path; only local label files are read", "copy the file here")
    path = Path(path)
    if not path.exists():
        raise LabelError(path, "does not exist", "check the path of the label file")
    signatures = LABEL_SIGNATURES.get(path.suffix.lower())
    if signatures is None:
        raise LabelError(path, f"has the suffix {path.suffix!r}; label files are .geojson, .json, .gpkg or .shp", fix)
    try:
        with open(path, "rb") as fh:
            head = fh.read(64).removeprefix(b"\xef\xbb\xbf").lstrip()
    except OSError as exc:
        raise LabelError(path, f"cannot be read ({exc.strerror or exc})", "make the file readable") from exc
    if not head.startswith(signatures):
        raise LabelError(path, f"is not a {path.suffix} file (its bytes start with {head[:12]!r}); OGR VRT, XML and "
                               "other formats are refused because GDAL would follow the files and URLs they reference", fix)


def read_label_file(path: str | Path, layer: str | None = None) -> gpd.GeoDataFrame:
    """Read GeoJSON / GeoPackage / Shapefile labels and check the declared CRS against the coordinates."""
    check_label_file(path)
    path = Path(path)
    try:
        gdf = gpd.read_file(path, layer=layer)
    except Exception as exc:  # pyogrio raises DataSourceError and friends
        raise LabelError(path, f"cannot be read as vector data ({exc})", "export it as GeoJSON, GeoPackage or Shapefile") from exc
    if len(gdf) == 0:
        raise LabelError(path, "contains no features", "export the labels again; an empty file would erase nothing and teach nothing")
    if gdf.crs is None:
        raise LabelError(path, "declares no CRS", "write the CRS into the file (e.g. `ogr2ogr -a_srs EPSG:32633 out.gpkg in.shp`)")
    check_declared_crs(gdf, path)
    return gdf


def check_declared_crs(gdf: gpd.GeoDataFrame, path) -> None:
    """Refuse coordinates that cannot be in the declared CRS (e.g. metres in a file declaring EPSG:4326)."""
    crs = CRS.from_user_input(gdf.crs)
    geoms = gdf.geometry[~gdf.geometry.is_empty & gdf.geometry.notna()]
    if geoms.empty:
        return
    minx, miny, maxx, maxy = geoms.total_bounds
    fix = "declare the CRS the coordinates are really in (e.g. `ogr2ogr -a_srs <real CRS> out.gpkg in.geojson`)"
    if crs.is_geographic:
        lo_x, lo_y, hi_x, hi_y = GEOGRAPHIC_LIMITS
        if minx < lo_x or maxx > hi_x or miny < lo_y or maxy > hi_y:
            raise LabelError(
                path,
                f"declares {crs.to_string()} (longitude/latitude) but its coordinates span x {minx:.1f}..{maxx:.1f}, "
                f"y {miny:.1f}..{maxy:.1f}, which are not degrees (they look projected)",
                fix,
            )
        return
    area = crs.area_of_use
    if area is None:
        return
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon0, lat0, lon1, lat1 = to_lonlat.transform_bounds(minx, miny, maxx, maxy)
    m = AREA_OF_USE_MARGIN_DEG
    if not np.all(np.isfinite([lon0, lat0, lon1, lat1])) or (
        lon1 < area.west - m or lon0 > area.east + m or lat1 < area.south - m or lat0 > area.north + m
    ):
        raise LabelError(
            path,
            f"declares {crs.to_string()} but its coordinates fall outside that CRS's area of use ({area.name})",
            fix,
        )


def prepare_labels(
    gdf: gpd.GeoDataFrame,
    path,
    class_map: ClassMap,
    target_crs,
    *,
    class_column: str = "class",
    default_class: str | None = None,
) -> tuple[gpd.GeoDataFrame, LabelReport]:
    """Map classes to ids, repair geometries, keep polygons, reproject to `target_crs`.

    Returns a frame with `class_id`, `class_name` and `geometry` only (plus a report); raises
    LabelError naming the file, what is wrong and the fix for anything it cannot use.
    """
    report = LabelReport(source_path=str(path))
    gdf = gdf.copy()
    if class_column in gdf.columns:
        raw = gdf[class_column]
    elif default_class is not None:
        raw = pd.Series([default_class] * len(gdf), index=gdf.index)
    else:
        raise LabelError(
            path,
            f"has no {class_column!r} column (columns: {', '.join(c for c in gdf.columns if c != 'geometry')})",
            "name the class column with class_column=..., or give default_class= when every feature is one class",
        )
    by_name = {c.name: c.id for c in class_map.classes}
    by_id = {str(c.id): c.id for c in class_map.classes}
    text = raw.astype(str).str.strip()
    ids = text.map(lambda v: by_name.get(v, by_id.get(v.split(".")[0] if v.endswith(".0") else v)))
    unknown = sorted(set(text[ids.isna()]))
    if unknown:
        raise LabelError(
            path,
            f"has {int(ids.isna().sum())} feature(s) with unknown classes {unknown[:10]}; the class map knows {class_map.names}",
            "rename them to known classes, or extend the class map",
        )
    gdf["class_id"] = ids.astype(int)
    gdf["class_name"] = gdf["class_id"].map(class_map.name_of)

    empty = gdf.geometry.isna() | gdf.geometry.is_empty
    report.dropped_empty = int(empty.sum())
    gdf = gdf[~empty]
    if gdf.empty:
        raise LabelError(path, "has only empty geometries", "export the labels again with their geometries")
    invalid = ~gdf.geometry.is_valid
    report.repaired = int(invalid.sum())
    if report.repaired:
        gdf.loc[invalid, "geometry"] = shapely.make_valid(gdf.geometry[invalid].values)
    gdf["geometry"] = [_polygonal_part(g) for g in gdf.geometry.values]
    non_polygon = gdf.geometry.isna()
    if non_polygon.any():
        kinds = sorted(set(gdf.loc[non_polygon].index.map(lambda i: str(i))))[:5]
        raise LabelError(
            path,
            f"has {int(non_polygon.sum())} non-polygon feature(s) (rows {kinds}...); segmentation labels must be areas",
            "buffer points/lines into polygons (e.g. roads by their width) before importing",
        )
    target = CRS.from_user_input(target_crs)
    if not CRS.from_user_input(gdf.crs).equals(target):
        report.reprojected_from = CRS.from_user_input(gdf.crs).to_string()
        gdf = gdf.to_crs(target)
    out = gpd.GeoDataFrame(gdf[["class_id", "class_name"]].reset_index(drop=True), geometry=gdf.geometry.values, crs=target)
    report.features = len(out)
    report.class_counts = {k: int(v) for k, v in out["class_name"].value_counts().sort_index().items()}
    report.overlaps, report.overlap_note = class_overlaps(out, path)
    return out, report


def class_overlaps(labels: gpd.GeoDataFrame, path) -> tuple[int, str]:
    """Pairs of labels of different classes sharing area (touching edges do not count), and a note
    saying where and which wins: masks burn labels in order, so the later feature's class is kept."""
    geoms = labels.geometry.values
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    pairs = [(i, j) for i, j in zip(left, right) if i < j and labels["class_id"].iat[i] != labels["class_id"].iat[j]]
    shared = [(i, j, shapely.intersection(geoms[i], geoms[j]).area) for i, j in pairs]
    shared = [x for x in shared if x[2] > 0]
    if not shared:
        return 0, ""
    i, j, area = max(shared, key=lambda x: x[2])
    name = labels["class_name"]
    return len(shared), (
        f"{path}: {len(shared)} pair(s) of features of different classes overlap ({sum(a for *_, a in shared):.1f} "
        f"square CRS units in all; largest: feature {i} {name.iat[i]!r} and feature {j} {name.iat[j]!r}, {area:.1f}); "
        f"in the masks the later feature wins (here {name.iat[j]!r}), as labels are burnt in file order. "
        "Cut the overlaps out if that is not what you meant")


def _polygonal_part(geom):
    """The polygonal part of a geometry (make_valid may return collections); None if there is none."""
    if geom is None:
        return None
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    if geom.geom_type == "GeometryCollection":
        parts = [g for g in geom.geoms if g.geom_type in ("Polygon", "MultiPolygon") and not g.is_empty]
        return shapely.union_all(parts) if parts else None
    return None


def require_overlap(labels: gpd.GeoDataFrame, footprint_bounds, path, what: str) -> None:
    """Refuse a label set that does not touch the scene footprint (a wrong CRS or region)."""
    footprint = shapely.box(*footprint_bounds)
    if not labels.geometry.intersects(footprint).any():
        lb = labels.total_bounds
        raise LabelError(
            path,
            f"none of its {len(labels)} label(s) overlaps {what} (labels span {lb.round(1).tolist()}, "
            f"scene spans {[round(v, 1) for v in footprint_bounds]} in {labels.crs.to_string()})",
            "check the file's declared CRS and that it belongs to this region",
        )
