"""Polygons of a class raster, block by block, with the pieces that block edges cut stitched back into whole
regions, so memory follows the block size while the result equals a whole-raster polygonization.

Each block is polygonized on its own with 4-connectivity, in *pixel* coordinates of the whole
raster (integers, exact in float), so edge tests and unions across block borders are exact.
Polygons clear of every interior block edge are complete and are yielded at once. Polygons
touching one are pieces of a region that may continue in the next block: they are held, linked
to their neighbours across the seam by the pixels on both sides, and once no piece of a region
can grow any more (after each row of blocks) the region is unioned once and yielded. The result
equals polygonizing the whole raster at once: one polygon per 4-connected region of a class.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby

import numpy as np
import shapely
from rasterio.features import shapes
from rasterio.transform import Affine
from rasterio.windows import Window

from .union_find import UnionFind
from .windows import iter_blocks


def polygonize(src, block: int, ignore_id: int) -> Iterator[Polygons]:
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
class Polygons:
    """Polygons in pixel coordinates with their class ids (parallel arrays)."""

    geoms: np.ndarray
    ids: np.ndarray

    @classmethod
    def empty(cls) -> Polygons:
        return cls(np.empty(0, dtype=object), np.empty(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, keep: np.ndarray) -> Polygons:
        return Polygons(self.geoms[keep], self.ids[keep])

    @staticmethod
    def concat_all(parts: list[Polygons]) -> Polygons:
        return Polygons(np.concatenate([p.geoms for p in parts]), np.concatenate([p.ids for p in parts]))


def _block_polygons(data: np.ndarray, win: Window, ignore_id: int) -> Polygons:
    """Polygons of one block in whole-raster pixel coordinates, built with one vectorized shapely call.

    4-connectivity: regions touching only at a corner stay apart, which is what a union across block
    borders also yields (so blocked and whole-raster results agree) and keeps every polygon OGC-valid.
    """
    valid = data != ignore_id
    if not valid.any():
        return Polygons.empty()
    offset = Affine.translation(win.col_off, win.row_off)
    rings, ring_polygon, ids = [], [], []
    for i, (geom, value) in enumerate(shapes(data, mask=valid, connectivity=4, transform=offset)):
        rings.extend(np.asarray(ring) for ring in geom["coordinates"])
        ring_polygon.extend([i] * len(geom["coordinates"]))
        ids.append(value)
    lengths = np.fromiter(map(len, rings), dtype=np.int64, count=len(rings))
    linear_rings = shapely.linearrings(np.concatenate(rings), indices=np.repeat(np.arange(len(rings)), lengths))
    geoms = shapely.polygons(linear_rings, indices=np.asarray(ring_polygon))  # first ring shell, the rest holes
    return Polygons(geoms, np.asarray(ids, dtype=np.int64))


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

    def add(self, pieces: Polygons, data: np.ndarray, win: Window) -> None:
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

    def finish_row(self, row_end: int | None) -> Polygons:
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
        return Polygons(np.concatenate([np.asarray(single, dtype=object), _merge_regions(regions)]),
                         np.asarray(single_ids + region_ids, dtype=np.int64))


class _PieceLocator:
    """Ids of the pieces under runs of pixels along a block edge, by point-in-polygon on one pixel per run."""

    def __init__(self, pieces: Polygons, gids: np.ndarray):
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
