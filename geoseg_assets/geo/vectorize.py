"""Class raster -> GeoPackage polygons, streamed by block so memory follows the block size, not the scene.

Each block is polygonized on its own with 4-connectivity, in *pixel* coordinates of the whole
raster (integers, exact in float), so edge tests and unions across block borders are exact.
Polygons clear of every interior block edge are complete and are written in batches. Polygons
touching one are pieces of a region that may continue in the next block: they are held, linked
to their neighbours across the seam by the pixels on both sides, and once no piece of a region
can grow any more (after each row of blocks) the region is unioned once and written. The result
equals polygonizing the whole raster at once: one polygon per 4-connected region of a class.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyogrio
import rasterio
import shapely
from pyproj import CRS, Transformer
from rasterio.errors import RasterioIOError
from rasterio.features import shapes
from rasterio.transform import Affine
from rasterio.windows import Window

from .classmap import IGNORE_ID
from .errors import InputError
from .publish import atomic_file
from .scene_io import raster_env
from .union_find import UnionFind
from .windows import iter_blocks

EQUAL_AREA_CRS = "EPSG:6933"  # cylindrical equal-area: parallels/meridians stay straight, so pixel polygons are exact
BATCH_FEATURES = 50_000  # a record batch is written once it holds this many polygons ...
BATCH_VERTICES = 1_000_000  # ... or this many vertices (a few regions can be huge)
CLASS_DTYPES = ("uint8", "uint16", "int16", "int32")  # integer types rasterio.features.shapes accepts
SCHEMA = pa.schema([
    pa.field("class_id", pa.int32()),
    pa.field("class_name", pa.string()),
    pa.field("area_m2", pa.float64()),
    pa.field("geometry", pa.binary(), metadata={"ARROW:extension:name": "geoarrow.wkb"}),
])


@dataclass
class VectorSummary:
    """What was written: feature count, per class name {"count", "area_m2"}, and small polygons dropped."""

    path: str
    features: int
    per_class: dict[str, dict] = field(default_factory=dict)
    dropped_small: int = 0


def vectorize_classes(
    class_raster: str,
    dst_gpkg: str,
    class_names: Mapping[int, str],
    *,
    ignore_id: int = IGNORE_ID,
    simplify_tolerance: float | None = None,
    min_area_m2: float = 0.0,
    block: int = 1024,
    layer: str = "predictions",
    tmp_dir: str | None = None,
) -> VectorSummary:
    """Polygonize `class_raster` (one polygon per 4-connected region of a class) into layer `layer` of `dst_gpkg`.

    Columns: class_id, class_name (ids missing from `class_names` become "class_<id>"), area_m2 (of the
    pixels, in an equal-area CRS if the raster's is geographic), geometry in the raster CRS, simplified
    after merging if `simplify_tolerance` (CRS units) is given. Polygons under `min_area_m2` are dropped.
    The destination is replaced only by a complete file, so a failure leaves an earlier one untouched.
    """
    dst = Path(dst_gpkg)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(dst) as near:  # next to dst: the final rename is atomic
        stage = Path(tmp_dir) / f".{dst.name}.{os.getpid()}.stage.gpkg" if tmp_dir else near
        stage.parent.mkdir(parents=True, exist_ok=True)
        try:
            _remove_gpkg(stage)
            with raster_env(), _open_classes(class_raster) as src:
                crs = CRS.from_wkt(src.crs.to_wkt())
                output = _Output(src.transform, crs, class_names, ignore_id, simplify_tolerance, min_area_m2)
                _write_layer(output.batches(_polygonize(src, block, ignore_id)), str(stage), layer, crs)
            if stage != near:
                shutil.copyfile(stage, near)
        finally:
            if stage != near:
                _remove_gpkg(stage)
            _remove_gpkg(near, SQLITE_SIDECARS)  # the GeoPackage itself is renamed or removed by atomic_file
    return output.summary(str(dst))


SQLITE_SIDECARS = ("-journal", "-wal", "-shm")


def _remove_gpkg(path: Path, suffixes: tuple[str, ...] = ("", *SQLITE_SIDECARS)) -> None:
    """Delete a GeoPackage and any SQLite sidecar files it may have left behind (only the sidecars when
    `suffixes` is SQLITE_SIDECARS)."""
    for suffix in suffixes:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _open_classes(path: str):
    """Open a class raster, raising InputError unless it is one integer band with a CRS."""
    try:
        src = rasterio.open(path)
    except RasterioIOError as exc:
        raise InputError(path, f"cannot be opened as a raster ({exc})",
                         "pass the path of an existing class raster (GeoTIFF/COG)") from exc
    problem = None
    if src.crs is None:
        problem, fix = "has no CRS", "write the class raster with the scene's CRS"
    elif src.count != 1 or src.dtypes[0] not in CLASS_DTYPES:
        problem = f"has {src.count} band(s) of {src.dtypes[0]}, expected one band of {'/'.join(CLASS_DTYPES)}"
        fix = "pass the single-band class-id raster, not the scene or a probability raster"
    if problem:
        src.close()
        raise InputError(path, problem, fix)
    return src


def _polygonize(src, block: int, ignore_id: int) -> Iterator[_Polygons]:
    """Walk the raster one row of blocks at a time, yielding polygons as soon as they are complete."""
    width, height = src.width, src.height
    stitcher = _Stitcher(width)
    for _, row in groupby(iter_blocks(width, height, block), key=lambda w: w.row_off):
        for win in row:
            data = src.read(1, window=win)
            polys = _block_polygons(data, win, ignore_id)
            at_edge = _touches_interior_edge(polys.geoms, win, width, height)
            yield polys.take(~at_edge)
            stitcher.add(polys.take(at_edge), data, win)
        row_end = int(win.row_off + win.height)  # the same for every window of the row
        yield stitcher.finish_row(row_end if row_end < height else None)


@dataclass
class _Polygons:
    """Polygons in pixel coordinates with their class ids (parallel arrays)."""

    geoms: np.ndarray
    ids: np.ndarray

    @classmethod
    def empty(cls) -> _Polygons:
        return cls(np.empty(0, dtype=object), np.empty(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, keep: np.ndarray) -> _Polygons:
        return _Polygons(self.geoms[keep], self.ids[keep])

    @staticmethod
    def concat_all(parts: list[_Polygons]) -> _Polygons:
        return _Polygons(np.concatenate([p.geoms for p in parts]), np.concatenate([p.ids for p in parts]))


def _block_polygons(data: np.ndarray, win: Window, ignore_id: int) -> _Polygons:
    """Polygons of one block in whole-raster pixel coordinates, built with one vectorized shapely call.

    4-connectivity: regions touching only at a corner stay apart, which is what a union across block
    borders also yields (so blocked and whole-raster results agree) and keeps every polygon OGC-valid.
    """
    valid = data != ignore_id
    if not valid.any():
        return _Polygons.empty()
    offset = Affine.translation(win.col_off, win.row_off)
    rings, ring_polygon, ids = [], [], []
    for i, (geom, value) in enumerate(shapes(data, mask=valid, connectivity=4, transform=offset)):
        rings.extend(np.asarray(ring) for ring in geom["coordinates"])
        ring_polygon.extend([i] * len(geom["coordinates"]))
        ids.append(value)
    lengths = np.fromiter(map(len, rings), dtype=np.int64, count=len(rings))
    linear_rings = shapely.linearrings(np.concatenate(rings), indices=np.repeat(np.arange(len(rings)), lengths))
    geoms = shapely.polygons(linear_rings, indices=np.asarray(ring_polygon))  # first ring shell, the rest holes
    return _Polygons(geoms, np.asarray(ids, dtype=np.int64))


def _touches_interior_edge(geoms: np.ndarray, win: Window, width: int, height: int) -> np.ndarray:
    """True for polygons reaching a block edge that has another block behind it (they may continue there)."""
    if not len(geoms):
        return np.zeros(0, dtype=bool)
    minx, miny, maxx, maxy = shapely.bounds(geoms).T
    col0, row0 = win.col_off, win.row_off
    col1, row1 = col0 + win.width, row0 + win.height
    return ((col0 > 0) & (minx == col0)) | ((col1 < width) & (maxx == col1)) | \
           ((row0 > 0) & (miny == row0)) | ((row1 < height) & (maxy == row1))


class _Stitcher:
    """Pieces of regions cut by block edges, grouped (union-find) into the regions they belong to.

    Which pieces join is read off the pixels on both sides of each seam (same class, 4-adjacent), so
    geometry is only touched once per region: a single union when it is complete. Only pieces of
    regions that may still grow are held, plus the piece ids along the last seam row.
    """

    def __init__(self, width: int):
        self.geoms: dict[int, shapely.Polygon] = {}
        self.classes: dict[int, int] = {}
        self.bottoms: dict[int, float] = {}
        self.sets = UnionFind()  # pieces of one region
        self.next_id = 0
        self.above = np.full(width, -1, dtype=np.int64)  # piece ids along the previous row's bottom edge
        self.below = np.full(width, -1, dtype=np.int64)  # ... along this row's bottom edge, filled block by block
        self.left = None  # piece ids along the right edge of the previous block in this row

    def add(self, pieces: _Polygons, data: np.ndarray, win: Window) -> None:
        """Hold the edge-touching pieces of one block and link them to pieces already held across its seams."""
        gids = np.arange(self.next_id, self.next_id + len(pieces))
        self.next_id += len(pieces)
        for gid, geom, cid, bottom in zip(gids.tolist(), pieces.geoms, pieces.ids.tolist(),
                                          shapely.bounds(pieces.geoms)[:, 3].tolist()):
            self.geoms[gid], self.classes[gid], self.bottoms[gid] = geom, cid, bottom
            self.sets.add(gid)
        col0, row0 = int(win.col_off), int(win.row_off)
        col1, row1 = col0 + int(win.width), row0 + int(win.height)
        cols, rows = np.arange(col0, col1) + 0.5, np.arange(row0, row1) + 0.5  # pixel centres
        locate = _PieceLocator(pieces, gids)
        if col0 > 0:
            self._link(self.left, locate(data[:, 0], np.full_like(rows, col0 + 0.5), rows))
        if row0 > 0:
            self._link(self.above[col0:col1], locate(data[0, :], cols, np.full_like(cols, row0 + 0.5)))
        self.left = locate(data[:, -1], np.full_like(rows, col1 - 0.5), rows)
        self.below[col0:col1] = locate(data[-1, :], cols, np.full_like(cols, row1 - 0.5))
        locate.close()

    def _link(self, outside: np.ndarray, inside: np.ndarray) -> None:
        """Join the pieces of facing pixels across a seam that belong to the same class."""
        both = (outside >= 0) & (inside >= 0)
        for a, b in np.unique(np.stack([outside[both], inside[both]], axis=1), axis=0).tolist():
            if self.classes[a] == self.classes[b]:
                self.sets.union(a, b)

    def finish_row(self, row_end: int | None) -> _Polygons:
        """Regions that can no longer grow (none of their pieces reaches `row_end`; None = last row), merged."""
        groups: dict[int, list[int]] = {}
        for gid in self.geoms:
            groups.setdefault(self.sets.find(gid), []).append(gid)
        open_roots = {self.sets.find(g) for g, bottom in self.bottoms.items() if bottom == row_end}
        single, single_ids, regions, region_ids = [], [], [], []
        for root, members in groups.items():
            if root in open_roots:
                continue
            if len(members) == 1:
                single.append(self.geoms[members[0]])
                single_ids.append(self.classes[root])
            else:
                regions.append([self.geoms[g] for g in members])
                region_ids.append(self.classes[root])
            for g in members:
                del self.geoms[g], self.classes[g], self.bottoms[g]
                self.sets.discard(g)
        self.above, self.below = self.below, np.full_like(self.below, -1)
        self.left = None
        return _Polygons(np.concatenate([np.asarray(single, dtype=object), _merge_regions(regions)]),
                         np.asarray(single_ids + region_ids, dtype=np.int64))


class _PieceLocator:
    """Ids of the pieces under runs of pixels along a block edge, by point-in-polygon on one pixel per run."""

    def __init__(self, pieces: _Polygons, gids: np.ndarray):
        self.pieces, self.gids = pieces, gids
        self.tree = shapely.STRtree(pieces.geoms)
        shapely.prepare(pieces.geoms)

    def __call__(self, values: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Piece id (-1 for none) of each pixel centre (xs, ys) along an edge whose classes are `values`."""
        starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])  # a run of one class is in one piece
        run_x, run_y, run_class = xs[starts], ys[starts], values[starts]
        run_ids = np.full(len(starts), -1, dtype=np.int64)
        point, piece = self.tree.query(shapely.points(run_x, run_y))
        same = self.pieces.ids[piece] == run_class[point]
        point, piece = point[same], piece[same]
        inside = shapely.contains_xy(self.pieces.geoms[piece], run_x[point], run_y[point])
        run_ids[point[inside]] = self.gids[piece[inside]]
        return np.repeat(run_ids, np.diff(np.r_[starts, len(values)]))

    def close(self) -> None:
        shapely.destroy_prepared(self.pieces.geoms)


def _merge_regions(regions: list[list]) -> np.ndarray:
    """One polygon per region from its pieces (linked across seams by shared edges, so they form one polygon).

    A piece's holes lie strictly inside its block, where no other piece of the region can reach: only the
    shells are unioned (GEOS is several times faster without the holes) and the pieces' holes added back.
    """
    if not regions:
        return np.empty(0, dtype=object)
    sizes = [len(r) for r in regions]
    pieces = np.array([g for r in regions for g in r], dtype=object)
    region_of_piece = np.repeat(np.arange(len(regions)), sizes)
    shells = shapely.polygons(shapely.get_exterior_ring(pieces))
    unions = np.array([shapely.union_all(s) for s in np.split(shells, np.cumsum(sizes)[:-1])], dtype=object)
    assert (shapely.get_type_id(unions) == shapely.GeometryType.POLYGON).all(), "a region fell apart"
    outer, outer_region = shapely.get_rings(_drop_straight_vertices(unions), return_index=True)
    rings, piece = shapely.get_rings(pieces, return_index=True)
    hole = np.r_[False, piece[1:] == piece[:-1]]  # every ring but the first (exterior) of each piece
    all_rings = np.concatenate([outer, rings[hole]])
    region = np.concatenate([outer_region, region_of_piece[piece[hole]]])
    order = np.argsort(region, kind="stable")  # per region: the union's exterior first, then all holes
    return shapely.polygons(all_rings[order], indices=region[order])


def _drop_straight_vertices(polygons: np.ndarray) -> np.ndarray:
    """Pixel polygons without the vertices in the middle of straight edges that a union leaves at block seams.

    Every edge of a pixel polygon is axis-parallel, so a vertex is redundant when it shares x (or y) with
    both neighbours; removing them gives exactly the vertices a whole-raster polygonization has.
    """
    if not len(polygons):
        return polygons
    rings, polygon_of_ring = shapely.get_rings(polygons, return_index=True)  # exterior first, then holes
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    last = np.r_[ring[1:] != ring[:-1], True]
    xy, ring = xy[~last], ring[~last]  # drop each ring's closing vertex
    first = np.r_[True, ring[1:] != ring[:-1]]
    last = np.r_[ring[1:] != ring[:-1], True]
    prev = np.arange(len(xy)) - 1
    prev[first] = np.flatnonzero(last)
    after = np.arange(len(xy)) + 1
    after[last] = np.flatnonzero(first)
    x, y = xy[:, 0], xy[:, 1]
    straight = ((x[prev] == x) & (x == x[after])) | ((y[prev] == y) & (y == y[after]))
    rings = shapely.linearrings(xy[~straight], indices=ring[~straight])  # linearrings closes each ring again
    return shapely.polygons(rings, indices=polygon_of_ring)


class _Output:
    """Turns complete pixel-space polygons into GeoPackage record batches (measured, filtered, simplified),
    keeping the per-class tallies for the summary."""

    def __init__(self, transform: Affine, crs: CRS, class_names: Mapping[int, str], ignore_id: int,
                 simplify_tolerance: float | None, min_area_m2: float):
        self.transform = transform
        self.names = {int(k): str(v) for k, v in class_names.items() if int(k) != ignore_id}
        self.simplify_tolerance = simplify_tolerance
        self.min_area_m2 = min_area_m2
        self.area_m2 = _area_function(crs, transform)
        self.features = 0
        self.dropped_small = 0
        self.counts: dict[int, int] = {}
        self.areas: dict[int, float] = {}

    def batches(self, polygons: Iterator[_Polygons]) -> Iterator[pa.RecordBatch]:
        """Record batches of bounded size (polygons and vertices), so memory does not follow the output size."""
        buffer, features, vertices = [], 0, 0
        for polys in polygons:
            buffer.append(polys)
            features += len(polys)
            vertices += int(shapely.get_num_coordinates(polys.geoms).sum())
            if features >= BATCH_FEATURES or vertices >= BATCH_VERTICES:
                yield self.record_batch(_Polygons.concat_all(buffer))
                buffer, features, vertices = [], 0, 0
        if features:
            yield self.record_batch(_Polygons.concat_all(buffer))

    def record_batch(self, polys: _Polygons) -> pa.RecordBatch:
        """One batch of rows: small polygons dropped, areas from the pixels, geometry in the raster CRS."""
        areas = self.area_m2(polys.geoms)
        keep = areas >= self.min_area_m2
        self.dropped_small += int((~keep).sum())
        polys, areas = polys.take(keep), areas[keep]
        uniq, inverse = np.unique(polys.ids, return_inverse=True)
        self._tally(uniq, np.bincount(inverse, minlength=len(uniq)), np.bincount(inverse, areas, len(uniq)))
        geoms = _to_map(polys.geoms, self.transform)
        if self.simplify_tolerance:
            geoms = shapely.simplify(geoms, self.simplify_tolerance, preserve_topology=True)
        names = np.array([self.name(c) for c in uniq], dtype=object)[inverse]
        return pa.record_batch([pa.array(polys.ids.astype(np.int32)), pa.array(names, pa.string()),
                                pa.array(areas, pa.float64()), pa.array(shapely.to_wkb(geoms), pa.binary())],
                               schema=SCHEMA)

    def _tally(self, ids: np.ndarray, counts: np.ndarray, areas: np.ndarray) -> None:
        for cid, n, area in zip(ids.tolist(), counts.tolist(), areas.tolist()):
            self.counts[cid] = self.counts.get(cid, 0) + n
            self.areas[cid] = self.areas.get(cid, 0.0) + area
            self.features += n

    def name(self, cid: int) -> str:
        return self.names.get(int(cid), f"class_{int(cid)}")

    def summary(self, path: str) -> VectorSummary:
        ids = sorted(set(self.names) | set(self.counts))
        per_class = {self.name(c): {"count": self.counts.get(c, 0), "area_m2": self.areas.get(c, 0.0)} for c in ids}
        return VectorSummary(path=path, features=self.features, per_class=per_class, dropped_small=self.dropped_small)


def _write_layer(batches: Iterator[pa.RecordBatch], path: str, layer: str, crs: CRS) -> None:
    """Stream `batches` into a new GeoPackage layer through one open dataset (GDAL then builds the spatial
    index once at the end instead of updating it per row); an error while producing them is re-raised as is."""
    failure: list[BaseException] = []

    def guarded() -> Iterator[pa.RecordBatch]:
        try:
            yield from batches
        except BaseException as exc:
            failure.append(exc)
            raise

    reader = pa.RecordBatchReader.from_batches(SCHEMA, guarded())
    try:
        pyogrio.write_arrow(reader, path, layer=layer, driver="GPKG", geometry_type="Polygon", crs=crs.to_wkt())
    except Exception:
        if failure:
            raise failure[0] from None
        raise


def _to_map(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """Pixel-space polygons in map coordinates (vectorized over all their vertices at once)."""
    a, b, c, d, e, f = tuple(transform)[:6]

    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([a * x + b * y + c, d * x + e * y + f])

    return shapely.transform(geoms, apply)


def _area_function(crs: CRS, transform: Affine):
    """Area in m² of pixel-space polygons: pixel area times the raster's cell area, or, for a
    geographic CRS, the map polygon measured in an equal-area CRS."""
    if crs.is_geographic:
        to_equal_area = Transformer.from_crs(crs, EQUAL_AREA_CRS, always_xy=True)

        def project(xy: np.ndarray) -> np.ndarray:
            return np.column_stack(to_equal_area.transform(xy[:, 0], xy[:, 1]))

        return lambda geoms: shapely.area(shapely.transform(_to_map(geoms, transform), project))
    unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    cell = abs(transform.determinant) * unit * unit
    return lambda geoms: shapely.area(geoms) * cell
