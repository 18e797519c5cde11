"""Spatial blocks and the train/val/test split of blocks: the leakage control of the dataset build.

Tiles are grouped into spatial blocks (grid cells of `block_size_m` in the scene CRS, per region, shared
by all dates) and blocks that hold overlapping tiles are merged, so a place - at any date, and any pixel
shared by two tiles - lives in exactly one split. Blocks, not tiles, are shuffled into train/val/test.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from .dataset_inputs import PartitionInput, TileRef
from .dataset_layout import SPLITS
from .union_find import UnionFind

DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
DEFAULT_BLOCK_SIZE_M = 5120.0  # 2 x 2 tiles of 256 px at 10 m


def block_cells(tiles: gpd.GeoDataFrame, block_size_m: float) -> list[str]:
    """`<region>:<ix>:<iy>`: the grid cell (size `block_size_m`, CRS units) of each tile's centroid.

    The grid is anchored at the CRS origin, so every date of a region uses the same cells.
    """
    if not block_size_m > 0:
        raise ValueError(f"block_size_m must be positive, got {block_size_m}")
    centroids = shapely.centroid(np.asarray(tiles.geometry.values))
    ix = np.floor(shapely.get_x(centroids) / block_size_m).astype(np.int64)
    iy = np.floor(shapely.get_y(centroids) / block_size_m).astype(np.int64)
    return [f"{region}:{x}:{y}" for region, x, y in zip(tiles["region"], ix, iy)]


def overlapping_pairs(tiles: gpd.GeoDataFrame) -> list[tuple[int, int]]:
    """Positional index pairs (i < j) of tiles of one region that share pixels.

    "Share pixels" means the footprints intersect by at least half a pixel's area: touching edges
    do not count, and neither does float noise between two grids that are meant to coincide.
    """
    geoms = np.asarray(tiles.geometry.values)
    if len(geoms) < 2:
        return []
    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    keep = left < right
    left, right = left[keep], right[keep]
    regions = tiles["region"].to_numpy()
    same = regions[left] == regions[right]
    left, right = left[same], right[same]
    if len(left) == 0:
        return []
    pixel_area = shapely.area(geoms) / (tiles["width"].to_numpy(float) * tiles["height"].to_numpy(float))
    shared = shapely.area(shapely.intersection(geoms[left], geoms[right]))
    real = shared >= 0.5 * np.minimum(pixel_area[left], pixel_area[right])
    return sorted(zip(left[real].tolist(), right[real].tolist()))


def assign_blocks(tiles: gpd.GeoDataFrame, block_size_m: float) -> pd.Series:
    """Spatial block id of every tile: its region's grid cell, merged (union-find) with the cells
    of every tile it overlaps, so overlapping tiles never straddle splits.

    Blocks are spatial only (dates ignored), so one place at several dates is one block. All
    tiles must be in one CRS (that of `tiles`); `block_size_m` is in its units. Note that a grid
    with overlap > 0 chains every tile to its neighbours, which merges a whole region into one
    block. Returns a Series named "block" aligned with `tiles.index`.
    """
    missing = [c for c in ("region", "width", "height") if c not in tiles.columns]
    if missing:
        raise ValueError(f"tiles lack column(s) {missing}")
    cells = block_cells(tiles, block_size_m)
    sets = UnionFind(cells)
    for i, j in overlapping_pairs(tiles):
        sets.union(cells[i], cells[j])
    return pd.Series([sets.find(c) for c in cells], index=tiles.index, name="block", dtype=object)


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """(train, val, test) fractions: three non-negative numbers summing to 1 with train > 0."""
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(not math.isfinite(f) or f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-9 or fr[0] <= 0:
        raise ValueError(
            f"fractions must be three non-negative numbers (train, val, test) summing to 1 with train > 0, got {fractions}"
        )
    return fr


def split_blocks(
    block_tile_counts: Mapping[str, int], fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0
) -> dict[str, str]:
    """Block id -> "train" | "val" | "test", deterministic given `seed`.

    The sorted block ids are shuffled with `numpy.random.default_rng(seed)`; each block in turn
    goes to the split furthest below its target tile count (fraction x total). When only as many
    blocks remain as there are splits still empty, they go to those splits, so with at least
    three blocks every split with a positive fraction gets one.
    """
    fr = check_fractions(fractions)
    ids = sorted(block_tile_counts)
    counts = {b: int(block_tile_counts[b]) for b in ids}
    total = sum(counts.values())
    targets = [f * total for f in fr]
    filled = [0, 0, 0]
    blocks = [0, 0, 0]
    active = [i for i in range(3) if fr[i] > 0]
    out: dict[str, str] = {}
    order = np.random.default_rng(seed).permutation(len(ids))
    for k, idx in enumerate(order):
        block = ids[int(idx)]
        empty = [i for i in active if blocks[i] == 0]
        candidates = empty if len(ids) - k <= len(empty) else active
        choice = max(candidates, key=lambda i: (targets[i] - filled[i], -i))
        filled[choice] += counts[block]
        blocks[choice] += 1
        out[block] = SPLITS[choice]
    return out


def region_blocks(parts: Sequence[PartitionInput], kept: Mapping[tuple[str, str], list[TileRef]],
                  block_size_m: float) -> dict[tuple[str, str, str], str]:
    """(region, date, tile_id) -> block id for the kept tiles, computed region by region in the CRS
    of the region's first partition (other dates are reprojected to it if their CRS differs)."""
    out: dict[tuple[str, str, str], str] = {}
    for region, group in itertools.groupby(parts, key=lambda p: p.region):
        frames = []
        crs = None
        for part in group:
            ids = {t.tile_id for t in kept[part.key]}
            frame = part.tiles[part.tiles["tile_id"].isin(ids)][["tile_id", "region", "date", "width", "height", "geometry"]]
            crs = crs or frame.crs
            frames.append(frame if frame.crs == crs else frame.to_crs(crs))
        tiles = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=crs)
        tiles["date"] = tiles["date"].astype(str)
        for t, block in zip(tiles.itertuples(index=False), assign_blocks(tiles, block_size_m)):
            out[(t.region, t.date, t.tile_id)] = block
    return out

