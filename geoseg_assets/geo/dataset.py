"""Tiles + masks -> a leakage-free training dataset: spatial splits, large .npy shards, a manifest.

Leakage control: tiles are grouped into spatial blocks (grid cells of `block_size_m` in the
scene CRS, per region, shared by all dates) and blocks that hold overlapping tiles are merged, so
a place - at any date, and any pixel shared by two tiles - lives in exactly one split. Blocks,
not tiles, are shuffled into train/val/test.

Storage: per split a few shard pairs `images-<split>-NNNNN.npy` (N, C, H, W, scene dtype) and
`masks-<split>-NNNNN.npy` (N, H, W, uint8), written tile by tile through memory maps, so memory
is bounded by one tile and DVC tracks a handful of large files instead of one file per tile. The
build writes into a temporary folder next to the output and renames it into place at the end;
equal inputs give byte-identical files, so DVC gives the dataset the same hash.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from numpy.lib.format import open_memmap
from rasterio.windows import Window

from .classmap import IGNORE_ID, usable_class_ids
from .dataset_layout import MANIFEST_FILE, SPLITS
from .publish import atomic_dir
from .scene_io import raster_env, sha256_file
from .union_find import UnionFind
from .validity import pixel_validity

FORMAT_VERSION = 1
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
DEFAULT_BLOCK_SIZE_M = 5120.0  # 2 x 2 tiles of 256 px at 10 m
TILE_COLUMNS = ("tile_id", "region", "date", "row", "col", "width", "height")
FLOAT_DIGITS = 12  # significant digits of floats in the manifest (hides last-ulp noise)


class DatasetError(ValueError):
    """Inputs that cannot make a dataset: says what is wrong and how to fix it."""

    def __init__(self, problem: str, fix: str):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}. Fix: {fix}")


@dataclass(frozen=True, eq=False)
class PartitionInput:
    """One region/date: its scene COG, the mask COG on the same grid, its tile table and scene hash."""

    region: str
    date: str
    scene_path: str
    mask_path: str
    tiles: gpd.GeoDataFrame
    scene_sha256: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.region, self.date)


@dataclass(frozen=True)
class TileRef:
    """A selected tile: where its pixels are (partition + window) and which block it belongs to."""

    region: str
    date: str
    tile_id: str
    row: int
    col: int
    width: int
    height: int
    labelled_fraction: float
    block: str = ""

    @property
    def partition(self) -> tuple[str, str]:
        return (self.region, self.date)

    @property
    def window(self) -> Window:
        return Window(self.col, self.row, self.width, self.height)


@dataclass
class NormStats:
    """Per-band mean and (population) std over valid, labelled pixels, and how many there were."""

    mean: list[float]
    std: list[float]
    pixels: int


@dataclass
class ShardReport:
    """What `write_shards` wrote: shard files, where each tile went, class pixel counts, norm stats."""

    shards: dict[str, list[dict]]
    placements: dict[str, list[tuple[int, int]]]
    class_pixels: dict[str, np.ndarray]  # split -> (256,) int64 bincount of everything written
    norm: NormStats | None


@dataclass
class DatasetSummary:
    """The result of `build_dataset`: where it is and what went into each split."""

    out_dir: str
    manifest_path: str
    tile_counts: dict[str, int]
    block_counts: dict[str, int]
    class_pixels: dict[str, dict[str, int]]
    class_share: dict[str, dict[str, float]]
    norm_mean: list[float]
    norm_std: list[float]
    dropped_tiles: int
    shard_files: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Spatial blocks and splits
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Input checks and tile selection
# --------------------------------------------------------------------------------------------


def _same_grid(a, b) -> bool:
    """Same CRS, size and transform (to a millionth of a pixel)."""
    if a.crs != b.crs or (a.width, a.height) != (b.width, b.height):
        return False
    tol = 1e-6 * max(abs(a.transform.a), abs(a.transform.e))
    return all(abs(x - y) <= tol for x, y in zip(tuple(a.transform)[:6], tuple(b.transform)[:6]))


def check_partition(part: PartitionInput, band_names: Sequence[str]) -> dict:
    """Refuse a partition whose mask is not on its scene's grid, is not one uint8 band, whose scene
    has the wrong band count, or whose tile table is malformed. Returns the scene's dtype and size."""
    scene, mask = str(part.scene_path), str(part.mask_path)
    for path, what in ((scene, "scene"), (mask, "mask")):
        if not Path(path).exists():
            raise DatasetError(f"{what} file {path} of {part.region}/{part.date} does not exist",
                               f"materialize the {what} of this partition first")
    with raster_env(), rasterio.open(scene) as src, rasterio.open(mask) as msk:
        if not _same_grid(src, msk):
            raise DatasetError(
                f"mask {mask} is not on the grid of scene {scene} "
                f"(mask: {msk.crs}, {msk.width}x{msk.height}, {tuple(msk.transform)[:6]}; "
                f"scene: {src.crs}, {src.width}x{src.height}, {tuple(src.transform)[:6]})",
                "rasterize the labels onto the scene's own grid (same CRS, transform and size) and rebuild the mask",
            )
        if msk.count != 1 or msk.dtypes[0] != "uint8":
            raise DatasetError(f"mask {mask} has {msk.count} band(s) of {msk.dtypes[0]}, expected 1 band of uint8",
                               "write masks as single-band uint8 class ids")
        if src.count != len(band_names):
            raise DatasetError(
                f"scene {scene} has {src.count} band(s) but band_names lists {len(band_names)}: {list(band_names)}",
                "pass the scene's band names",
            )
        if len(set(src.dtypes)) != 1:
            raise DatasetError(f"scene {scene} mixes dtypes {sorted(set(src.dtypes))}", "convert all bands to one dtype")
        info = {"dtype": src.dtypes[0], "width": src.width, "height": src.height}
    _check_tiles(part, info)
    return info


def _check_tiles(part: PartitionInput, scene: dict) -> None:
    """The tile table has the expected columns, unique ids, this partition's region/date and windows
    inside the scene."""
    t = part.tiles
    where = f"tiles of {part.region}/{part.date}"
    missing = [c for c in (*TILE_COLUMNS, "geometry") if c not in t.columns]
    if missing:
        raise DatasetError(f"{where} lack column(s) {missing}", "pass the `tiles` GeoParquet of this partition")
    if t.crs is None:
        raise DatasetError(f"{where} have no CRS", "pass the `tiles` GeoParquet (geometries in the scene CRS)")
    if t["tile_id"].duplicated().any():
        raise DatasetError(f"{where} repeat tile ids {sorted(t.loc[t['tile_id'].duplicated(), 'tile_id'])[:5]}",
                           "rebuild the tile table")
    if ((t["region"] != part.region) | (t["date"].astype(str) != part.date)).any():
        raise DatasetError(f"{where} contain rows of another region/date", "pass each partition's own tile table")
    r, c, w, h = (t[k].to_numpy() for k in ("row", "col", "width", "height"))
    outside = (r < 0) | (c < 0) | (w <= 0) | (h <= 0) | (r + h > scene["height"]) | (c + w > scene["width"])
    if outside.any():
        raise DatasetError(
            f"{where}: {int(outside.sum())} window(s) fall outside scene {part.scene_path} "
            f"({scene['width']}x{scene['height']})",
            "rebuild the tile table from this scene",
        )


def select_tiles(
    part: PartitionInput, min_labelled_fraction: float, class_ids: Iterable[int], ignore_id: int = IGNORE_ID
) -> tuple[list[TileRef], np.ndarray]:
    """Tiles whose labelled fraction (mask != ignore over the window) is >= `min_labelled_fraction`,
    read window by window from the mask, plus the class pixel counts (256,) of the kept tiles.

    Refuses masks holding ids that are neither classes nor the ignore id (a wrong class map)."""
    allowed = np.zeros(256, dtype=bool)
    allowed[list(class_ids)] = True
    allowed[ignore_id] = True
    kept: list[TileRef] = []
    counts = np.zeros(256, dtype=np.int64)
    rows = part.tiles.sort_values("tile_id", kind="stable")
    with raster_env(), rasterio.open(part.mask_path) as msk:
        for t in rows.itertuples(index=False):
            win = Window(int(t.col), int(t.row), int(t.width), int(t.height))
            tile_counts = np.bincount(msk.read(1, window=win).ravel(), minlength=256)
            unknown = np.flatnonzero((tile_counts > 0) & ~allowed)
            if unknown.size:
                raise DatasetError(
                    f"mask {part.mask_path} holds class id(s) {unknown.tolist()} (tile {t.tile_id}) that are neither in the "
                    f"class map nor the ignore id {ignore_id}",
                    "rasterize the labels with the same class map, or add these classes to it",
                )
            labelled = 1.0 - tile_counts[ignore_id] / float(win.width * win.height)
            if labelled >= min_labelled_fraction:
                kept.append(TileRef(part.region, part.date, str(t.tile_id), int(t.row), int(t.col), int(t.width),
                                    int(t.height), float(labelled)))
                counts += tile_counts
    return kept, counts


# --------------------------------------------------------------------------------------------
# Shards and statistics
# --------------------------------------------------------------------------------------------


class RunningMoments:
    """Per-band count, mean and sum of squared deviations, merged chunk by chunk in float64
    (Chan et al.), so the std stays exact however many pixels stream through."""

    def __init__(self, bands: int):
        self.n = 0
        self.mean = np.zeros(bands, dtype=np.float64)
        self.m2 = np.zeros(bands, dtype=np.float64)

    def add(self, values: np.ndarray) -> None:
        """Merge a (bands, n) chunk of pixel values."""
        nb = values.shape[1]
        if nb == 0:
            return
        chunk = values.astype(np.float64)
        mean_b = chunk.mean(axis=1)
        m2_b = ((chunk - mean_b[:, None]) ** 2).sum(axis=1)
        n = self.n + nb
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * nb / n)
        self.n = n

    def result(self) -> NormStats:
        std = np.sqrt(self.m2 / self.n) if self.n else np.full_like(self.m2, np.nan)
        return NormStats(mean=[float(v) for v in self.mean], std=[float(v) for v in std], pixels=int(self.n))


class _ShardWriter:
    """Appends tiles to `images-<split>-NNNNN.npy` / `masks-<split>-NNNNN.npy` memory maps, opening
    the next pair when one holds `tiles_per_shard` tiles (the last one is sized to what is left)."""

    def __init__(self, out_dir: Path, split: str, total: int, per_shard: int, bands: int, shape, dtype):
        self.out_dir, self.split, self.total, self.per_shard = out_dir, split, total, per_shard
        self.bands, self.shape, self.dtype = bands, tuple(shape), np.dtype(dtype)
        self.written = 0
        self.images = self.masks = None
        self.shards: list[dict] = []

    def add(self, image: np.ndarray, mask: np.ndarray) -> tuple[int, int]:
        shard, offset = divmod(self.written, self.per_shard)
        if offset == 0:
            self._open(shard)
        self.images[offset] = image
        self.masks[offset] = mask
        self.written += 1
        if offset + 1 == self.images.shape[0]:
            self._close()
        return shard, offset

    def _open(self, shard: int) -> None:
        n = min(self.per_shard, self.total - self.written)
        names = {k: f"{k}-{self.split}-{shard:05d}.npy" for k in ("images", "masks")}
        self.images = open_memmap(self.out_dir / names["images"], mode="w+", dtype=self.dtype,
                                  shape=(n, self.bands, *self.shape))
        self.masks = open_memmap(self.out_dir / names["masks"], mode="w+", dtype=np.uint8, shape=(n, *self.shape))
        self.shards.append({"images": names["images"], "masks": names["masks"], "count": n})

    def _close(self) -> None:
        for arr in (self.images, self.masks):
            arr.flush()
        self.images = self.masks = None


def read_tile(scene, mask, tile: TileRef, shape, ignore_id: int = IGNORE_ID):
    """Pixels, mask and validity of one tile from open datasets, padded to `shape` (images with 0,
    masks with the ignore id, validity with False) so tiles at scene edges fit the shard."""
    win = tile.window
    data = scene.read(window=win)
    labels = mask.read(1, window=win)
    valid = pixel_validity(scene, data, win)
    h, w = tile.height, tile.width
    image = np.zeros((data.shape[0], *shape), dtype=data.dtype)
    image[:, :h, :w] = data
    padded_mask = np.full(shape, ignore_id, dtype=np.uint8)
    padded_mask[:h, :w] = labels
    padded_valid = np.zeros(shape, dtype=bool)
    padded_valid[:h, :w] = valid
    return image, padded_mask, padded_valid


def write_shards(
    out_dir: str | os.PathLike,
    split_tiles: Mapping[str, Sequence[TileRef]],
    partitions: Mapping[tuple[str, str], PartitionInput],
    *,
    tile_shape: tuple[int, int],
    band_count: int,
    dtype: str,
    tiles_per_shard: int = 1024,
    ignore_id: int = IGNORE_ID,
    stats_split: str = "train",
) -> ShardReport:
    """Write each split's tiles, in the given order, into shard pairs under `out_dir`.

    Pixels are read by window from the scene/mask COGs, one tile at a time, and written into
    memory-mapped .npy files, so memory stays at one tile. Along the way: class pixel counts per
    split (of exactly what is written, padding counted as ignore) and, for `stats_split`, per-band
    mean/std over pixels that are labelled and valid in the image.
    """
    if tiles_per_shard <= 0:
        raise ValueError(f"tiles_per_shard must be positive, got {tiles_per_shard}")
    out = Path(out_dir)
    shards: dict[str, list[dict]] = {}
    placements: dict[str, list[tuple[int, int]]] = {}
    class_pixels: dict[str, np.ndarray] = {}
    moments = RunningMoments(band_count)
    with raster_env():
        for split, tiles in split_tiles.items():
            writer = _ShardWriter(out, split, len(tiles), tiles_per_shard, band_count, tile_shape, dtype)
            counts = np.zeros(256, dtype=np.int64)
            placed: list[tuple[int, int]] = []
            for key, group in itertools.groupby(tiles, key=lambda t: t.partition):
                part = partitions[key]
                with rasterio.open(part.scene_path) as scene, rasterio.open(part.mask_path) as mask:
                    for tile in group:
                        image, labels, valid = read_tile(scene, mask, tile, tile_shape, ignore_id)
                        placed.append(writer.add(image, labels))
                        counts += np.bincount(labels.ravel(), minlength=256)
                        if split == stats_split:
                            moments.add(image[:, valid & (labels != ignore_id)])
            shards[split], placements[split], class_pixels[split] = writer.shards, placed, counts
    norm = moments.result() if stats_split in split_tiles else None
    return ShardReport(shards=shards, placements=placements, class_pixels=class_pixels, norm=norm)


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


def stable_json(obj) -> object:
    """`obj` with numpy scalars made plain and floats rounded to FLOAT_DIGITS significant digits,
    so last-ulp differences in summation never change the manifest's bytes."""
    if isinstance(obj, Mapping):
        return {str(k): stable_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [stable_json(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        if not math.isfinite(value):
            raise ValueError(f"non-finite number {value} cannot go into the manifest")
        return float(f"{value:.{FLOAT_DIGITS}g}") + 0.0  # + 0.0 turns -0.0 into 0.0
    return obj


def write_manifest(path: str | os.PathLike, manifest: Mapping) -> Path:
    """Write the manifest as sorted-key, indented JSON with stable floats (byte-reproducible)."""
    path = Path(path)
    text = json.dumps(stable_json(manifest), sort_keys=True, indent=2, allow_nan=False, ensure_ascii=True)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def class_distribution(counts: np.ndarray, class_map: Mapping[str, int], ignore_id: int) -> dict:
    """Pixel count and share (of labelled pixels) per class name, plus ignored pixels (incl. padding)."""
    pixels = {name: int(counts[cid]) for name, cid in class_map.items()}
    labelled = sum(pixels.values())
    return {
        "pixels": pixels,
        "share": {name: (n / labelled if labelled else 0.0) for name, n in pixels.items()},
        "labelled_pixels": labelled,
        "ignored_pixels": int(counts[ignore_id]),
    }


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------


def _check_class_map(class_map: Mapping[str, int], ignore_id: int) -> dict[str, int]:
    """A non-empty name -> id map with unique ids in 1..254, none equal to the ignore id."""
    cm = {str(k): int(v) for k, v in class_map.items()}
    ids = list(cm.values())
    if not 0 <= ignore_id <= 255:
        raise ValueError(f"ignore_id must be a uint8 value, got {ignore_id}")
    if not cm or len(set(ids)) != len(ids) or not usable_class_ids(ids, ignore_id):
        raise ValueError(f"class_map needs unique ids in 1..254 other than the ignore id {ignore_id}, got {cm}")
    return cm


def _region_blocks(parts: Sequence[PartitionInput], kept: Mapping[tuple[str, str], list[TileRef]],
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


def _partition_order(parts: Iterable[PartitionInput]) -> list[PartitionInput]:
    """Partitions sorted by (region, date); refuses duplicates."""
    ordered = sorted(parts, key=lambda p: p.key)
    keys = [p.key for p in ordered]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise DatasetError(f"partitions given more than once: {dupes}", "pass each region/date once")
    if not ordered:
        raise DatasetError("no partitions given", "materialize scenes, tiles and masks for at least one partition")
    return ordered


def _tile_shape(parts: Sequence[PartitionInput]) -> tuple[int, int]:
    """(H, W) of every shard slot: the largest tile of the grid; smaller edge tiles get padded."""
    heights = [int(p.tiles["height"].max()) for p in parts if len(p.tiles)]
    widths = [int(p.tiles["width"].max()) for p in parts if len(p.tiles)]
    return (max(heights, default=0), max(widths, default=0))


def build_dataset(
    partitions: Iterable[PartitionInput],
    out_dir: str | os.PathLike,
    class_map: Mapping[str, int],
    band_names: Sequence[str],
    *,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    block_size_m: float = DEFAULT_BLOCK_SIZE_M,
    min_labelled_fraction: float = 0.5,
    tiles_per_shard: int = 1024,
    ignore_id: int = IGNORE_ID,
) -> DatasetSummary:
    """Select labelled tiles, split them by spatial block, write shards + `manifest.json` to `out_dir`.

    Everything is checked before anything is written, then written into a temporary folder next
    to `out_dir` that replaces it only when complete: a failed build leaves an earlier dataset as
    it was. Equal inputs give byte-identical files.
    """
    cm = _check_class_map(class_map, ignore_id)
    fr = check_fractions(fractions)
    if not 0.0 <= min_labelled_fraction <= 1.0:
        raise ValueError(f"min_labelled_fraction must lie in [0, 1], got {min_labelled_fraction}")
    if tiles_per_shard <= 0:
        raise ValueError(f"tiles_per_shard must be positive, got {tiles_per_shard}")
    parts = _partition_order(partitions)
    by_key = {p.key: p for p in parts}

    infos = {p.key: check_partition(p, band_names) for p in parts}
    dtypes = sorted({i["dtype"] for i in infos.values()})
    if len(dtypes) != 1:
        raise DatasetError(f"scenes have different dtypes {dtypes}",
                           "build one dataset per product (one dtype) or convert the scenes")
    tile_shape = _tile_shape(parts)

    kept: dict[tuple[str, str], list[TileRef]] = {}
    totals = np.zeros(256, dtype=np.int64)
    for p in parts:
        kept[p.key], counts = select_tiles(p, min_labelled_fraction, cm.values(), ignore_id)
        totals += counts
    n_kept = sum(len(v) for v in kept.values())
    n_offered = sum(len(p.tiles) for p in parts)
    if n_kept == 0:
        raise DatasetError(
            f"no tile has a labelled fraction >= {min_labelled_fraction} ({n_offered} tile(s) checked in masks "
            f"{', '.join(str(p.mask_path) for p in parts)})",
            "label more of the scenes, check the masks are not all ignore (255), or lower min_labelled_fraction",
        )
    absent = [name for name, cid in sorted(cm.items(), key=lambda kv: kv[1]) if totals[cid] == 0]
    if absent:
        raise DatasetError(
            f"class(es) {absent} have no labelled pixel in any selected tile",
            "add labels of these classes, or drop them from the class map",
        )

    blocks = _region_blocks(parts, kept, block_size_m)
    tiles = [replace(t, block=blocks[(t.region, t.date, t.tile_id)]) for v in kept.values() for t in v]
    block_tiles: dict[str, int] = {}
    for t in tiles:
        block_tiles[t.block] = block_tiles.get(t.block, 0) + 1
    wanted = sum(1 for f in fr if f > 0)
    if len(block_tiles) < wanted:
        raise DatasetError(
            f"only {len(block_tiles)} spatial block(s) for {wanted} splits (block_size_m={block_size_m}; overlapping "
            "tiles merge blocks, and a tile grid with overlap > 0 makes each region one block)",
            "lower block_size_m, tile with overlap 0, or add regions",
        )
    split_of = split_blocks(block_tiles, fr, seed)
    split_tiles = {
        s: sorted((t for t in tiles if split_of[t.block] == s), key=lambda t: (t.region, t.date, t.tile_id)) for s in SPLITS
    }

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        report = write_shards(tmp, split_tiles, by_key, tile_shape=tile_shape, band_count=len(band_names),
                              dtype=dtypes[0], tiles_per_shard=tiles_per_shard, ignore_id=ignore_id)
        if report.norm is None or report.norm.pixels == 0:
            raise DatasetError("the train split holds no valid labelled pixel to compute normalization statistics from",
                               "raise min_labelled_fraction or check the masks and scene nodata")
        distribution = {s: class_distribution(report.class_pixels[s], cm, ignore_id) for s in SPLITS}
        manifest = _manifest(parts, infos, kept, split_tiles, report, distribution, cm, band_names, seed, fr,
                             block_size_m, min_labelled_fraction, tiles_per_shard, ignore_id, tile_shape, dtypes[0])
        write_manifest(tmp / MANIFEST_FILE, manifest)
    return DatasetSummary(
        out_dir=str(out),
        manifest_path=str(out / MANIFEST_FILE),
        tile_counts={s: len(split_tiles[s]) for s in SPLITS},
        block_counts={s: len({t.block for t in split_tiles[s]}) for s in SPLITS},
        class_pixels={s: distribution[s]["pixels"] for s in SPLITS},
        class_share={s: distribution[s]["share"] for s in SPLITS},
        norm_mean=report.norm.mean,
        norm_std=report.norm.std,
        dropped_tiles=n_offered - n_kept,
        shard_files=sorted(f[k] for s in SPLITS for f in report.shards[s] for k in ("images", "masks")),
    )


def _manifest(parts, infos, kept, split_tiles, report, distribution, class_map, band_names, seed, fractions,
              block_size_m, min_labelled_fraction, tiles_per_shard, ignore_id, tile_shape, dtype) -> dict:
    """Everything a training run needs to load the dataset and to know exactly what went into it.

    Holds no paths outside the dataset, times or host names, so equal inputs give equal bytes."""
    splits = {}
    for s in SPLITS:
        splits[s] = {
            "tile_count": len(split_tiles[s]),
            "block_count": len({t.block for t in split_tiles[s]}),
            "shards": report.shards[s],
            "tiles": [
                {"tile_id": t.tile_id, "region": t.region, "date": t.date, "block": t.block, "shard": shard,
                 "offset": offset, "row": t.row, "col": t.col, "width": t.width, "height": t.height,
                 "labelled_fraction": t.labelled_fraction}
                for t, (shard, offset) in zip(split_tiles[s], report.placements[s])
            ],
        }
    return {
        "format_version": FORMAT_VERSION,
        "layout": {"images": "N, C, H, W", "masks": "N, H, W", "image_pad_value": 0, "mask_pad_value": ignore_id},
        "dtype": dtype,
        "tile_shape": list(tile_shape),
        "band_names": list(band_names),
        "class_map": {"classes": dict(class_map), "ignore_id": ignore_id},
        "seed": int(seed),
        "fractions": dict(zip(SPLITS, fractions)),
        "block_size_m": float(block_size_m),
        "min_labelled_fraction": float(min_labelled_fraction),
        "tiles_per_shard": int(tiles_per_shard),
        "partitions": [
            {"region": p.region, "date": p.date, "scene_sha256": p.scene_sha256, "mask_sha256": sha256_file(p.mask_path),
             "width": infos[p.key]["width"], "height": infos[p.key]["height"], "tiles_offered": len(p.tiles),
             "tiles_selected": len(kept[p.key])}
            for p in parts
        ],
        "norm": {"split": "train", "mean": report.norm.mean, "std": report.norm.std, "pixels": report.norm.pixels,
                 "pixels_used": "mask != ignore_id and every band valid in the scene"},
        "class_distribution": distribution,
        "tile_counts": {s: len(split_tiles[s]) for s in SPLITS},
        "splits": splits,
    }
