"""Tiles + masks -> a leakage-free training dataset: spatial splits, large .npy shards, a manifest.

This module checks the inputs, selects labelled tiles and runs the steps: spatial blocks and splits
(`splits.py`, the leakage control), shards and train statistics (`shards.py`), the manifest
(`manifest.py`). The build writes into a temporary folder next to the output and renames it into
place at the end; equal inputs give byte-identical files, so DVC gives the dataset the same hash.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
from rasterio.windows import Window

from .classmap import IGNORE_ID, usable_class_ids
from .dataset_inputs import PartitionInput, TileRef
from .dataset_layout import MANIFEST_FILE, SPLITS
from .manifest import build_manifest, class_distribution, write_manifest
from .publish import atomic_dir
from .scene_io import raster_env
from .shards import write_shards
from .splits import DEFAULT_BLOCK_SIZE_M, DEFAULT_FRACTIONS, check_fractions, region_blocks, split_blocks

TILE_COLUMNS = ("tile_id", "region", "date", "row", "col", "width", "height")


class DatasetError(ValueError):
    """Inputs that cannot make a dataset: says what is wrong and how to fix it."""

    def __init__(self, problem: str, fix: str):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}. Fix: {fix}")


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
# Input checks and tile selection
# --------------------------------------------------------------------------------------------


def _same_grid(a, b) -> bool:
    """Same CRS, size and transform (to a millionth of a pixel)."""
    if a.crs != b.crs or (a.width, a.height) != (b.width, b.height):
        return False
    tol = 1e-6 * max(abs(a.transform.a), abs(a.transform.e))
    return all(abs(x - y) <= tol for x, y in zip(tuple(a.transform)[:6], tuple(b.transform)[:6]))


@contextmanager
def _opened(path: str, part: PartitionInput, what: str):
    """The raster at `path`, or DatasetError naming it (an object of the store that is missing or unreadable)."""
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise DatasetError(f"{what} file {path} of {part.region}/{part.date} cannot be opened ({exc})",
                           f"materialize the {what} of this partition first") from exc
    with src:
        yield src


def check_partition(part: PartitionInput, band_names: Sequence[str]) -> dict:
    """Refuse a partition whose mask is not on its scene's grid, is not one uint8 band, whose scene
    has the wrong band count, or whose tile table is malformed. Returns the scene's dtype and size."""
    scene, mask = str(part.scene_path), str(part.mask_path)
    for path, what in ((scene, "scene"), (mask, "mask")):
        if not path.startswith("/vsi") and not Path(path).exists():  # an object is checked by opening it, below
            raise DatasetError(f"{what} file {path} of {part.region}/{part.date} does not exist",
                               f"materialize the {what} of this partition first")
    with raster_env(), _opened(scene, part, "scene") as src, _opened(mask, part, "mask") as msk:
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

    blocks = region_blocks(parts, kept, block_size_m)
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
        manifest = build_manifest(
            parts=parts, infos=infos, kept=kept, split_tiles=split_tiles, report=report, distribution=distribution,
            class_map=cm, band_names=band_names, seed=seed, fractions=fr, block_size_m=block_size_m,
            min_labelled_fraction=min_labelled_fraction, tiles_per_shard=tiles_per_shard, ignore_id=ignore_id,
            tile_shape=tile_shape, dtype=dtypes[0])
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
