"""Per-tile features of scenes and of the training dataset, and class-id samples, for drift tests.

A feature row describes one tile of `tile` pixels: per-band mean/std and mean spectral indices over
its valid pixels. The same features come from a scene COG (read block by block, each block split
into tiles, so memory is bounded by one block) and from the raw tiles of a dataset split, so the
two can be compared column by column. Class samples are uniform random samples (without
replacement, seeded) of labelled or predicted pixels, kept in a bounded reservoir.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import torch

from ..geo.classmap import IGNORE_ID
from ..geo.scene_io import raster_env
from ..geo.validity import pixel_validity
from ..geo.windows import iter_blocks
from ..ml.indices import INDICES, check_indices, compute_indices, index_names
from ..ml.normalize import class_table
from ..ml.shard_dataset import ShardDataset, load_manifest

ID_COLUMNS = ("tile_index", "tile_row", "tile_col", "valid_fraction")
READ_BLOCK = 1024  # pixels a side of the windows read from a raster


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The numeric feature columns of a feature frame (everything but tile ids and valid_fraction)."""
    return [c for c in frame.columns if c not in ID_COLUMNS and pd.api.types.is_numeric_dtype(frame[c])]


def available_indices(band_names: Sequence[str], indices: Sequence[str]) -> list[str]:
    """Canonical names of the requested indices these bands can give; an unknown index name is an error,
    an index whose bands are missing is skipped (a scene without SWIR simply has no MNDWI column)."""
    unknown = [name for name in indices if str(name).upper() not in INDICES]
    if unknown:
        check_indices(band_names, unknown)  # raises the standard "unknown spectral index" error
    possible = set(index_names(band_names))
    keys = [str(name).upper() for name in indices]
    return [k for i, k in enumerate(keys) if k in possible and k not in keys[:i]]


def _tile_row(data: np.ndarray, valid: np.ndarray, maps: np.ndarray, band_names: Sequence[str],
              index_keys: Sequence[str], area: int) -> dict[str, float] | None:
    """Features of one tile ((C, h, w) pixels, (h, w) validity, (K, h, w) indices), or None without valid pixels.
    `valid_fraction` is relative to the nominal tile `area`, so thin edge slivers count as mostly empty."""
    n = int(valid.sum())
    if n == 0:
        return None
    pixels = data[:, valid].astype(np.float64)
    row: dict[str, float] = {"valid_fraction": n / float(area)}
    for b, name in enumerate(band_names):
        row[f"{name}_mean"] = float(pixels[b].mean())
        row[f"{name}_std"] = float(pixels[b].std())
    for k, key in enumerate(index_keys):
        row[f"{key}_mean"] = float(maps[k][valid].astype(np.float64).mean())
    return row


def index_maps(data: np.ndarray, band_names: Sequence[str], index_keys: Sequence[str]) -> np.ndarray:
    """(K, h, w) float32 spectral indices of raw pixels (C, h, w), through the training code's compute_indices."""
    if not index_keys:
        return np.zeros((0, *data.shape[1:]), dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(data).astype(np.float32, copy=False))
    return compute_indices(tensor, list(band_names), list(index_keys)).numpy()


def _split_features(data: np.ndarray, valid: np.ndarray, band_names: Sequence[str], index_keys: Sequence[str],
                    tile: int, row0: int = 0, col0: int = 0) -> Iterator[dict[str, float]]:
    """Feature rows of the `tile`-px tiles of one block whose top-left pixel is (row0, col0) of a tile-aligned grid."""
    maps = index_maps(data, band_names, index_keys)
    for win in iter_blocks(data.shape[2], data.shape[1], tile):
        r, c, h, w = int(win.row_off), int(win.col_off), int(win.height), int(win.width)
        row = _tile_row(data[:, r:r + h, c:c + w], valid[r:r + h, c:c + w], maps[:, r:r + h, c:c + w],
                        band_names, index_keys, tile * tile)
        if row is not None:
            yield {"tile_row": (row0 + r) // tile, "tile_col": (col0 + c) // tile, **row}


def iter_scene_blocks(src, tile: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """(row_off, col_off, pixels (C, h, w), validity (h, w)) of blocks of about READ_BLOCK pixels that are
    whole multiples of `tile`, so every tile of the non-overlapping grid lies inside one block."""
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    block = tile * max(1, READ_BLOCK // tile)
    for win in iter_blocks(src.width, src.height, block):
        data = src.read(window=win)
        yield int(win.row_off), int(win.col_off), data, pixel_validity(src, data, win)


def check_band_count(src, band_names: Sequence[str]) -> None:
    """ValueError unless one band name is given per band of the open raster."""
    if len(band_names) != src.count:
        raise ValueError(f"{src.name} has {src.count} band(s) but {len(band_names)} band name(s) were given: "
                         f"{list(band_names)}; pass the scene's band names in band order")


def _frame(rows: list[dict], band_names: Sequence[str], index_keys: Sequence[str], ids: Sequence[str]) -> pd.DataFrame:
    columns = [*ids, "valid_fraction", *(f"{b}_{s}" for b in band_names for s in ("mean", "std")),
               *(f"{k}_mean" for k in index_keys)]
    return pd.DataFrame(rows, columns=columns)


def scene_tile_features(scene_path: str, band_names: Sequence[str], *, tile: int = 64,
                        indices: Sequence[str] = ("NDVI", "NDWI"), min_valid_fraction: float = 0.5) -> pd.DataFrame:
    """One row per `tile`-px tile of the scene's non-overlapping grid with at least `min_valid_fraction`
    valid pixels: tile_row/tile_col (grid position), valid_fraction, <band>_mean/_std, <INDEX>_mean."""
    keys = available_indices(band_names, indices)
    rows: list[dict] = []
    with raster_env(), rasterio.open(scene_path) as src:
        check_band_count(src, band_names)
        for row0, col0, data, valid in iter_scene_blocks(src, tile):
            rows.extend(_split_features(data, valid, band_names, keys, tile, row0, col0))
    frame = _frame(rows, band_names, keys, ("tile_row", "tile_col"))
    return frame[frame["valid_fraction"] >= min_valid_fraction].reset_index(drop=True)


def dataset_nodata(manifest: dict) -> float:
    """The value marking pixels without data in a dataset's images: the manifest's `nodata` if recorded,
    else its image padding value (0; the pipeline's scenes use nodata 0 too)."""
    if manifest.get("nodata") is not None:
        return float(manifest["nodata"])
    return float(manifest.get("layout", {}).get("image_pad_value", 0))


def dataset_validity(image: np.ndarray, nodata: float) -> np.ndarray:
    """(h, w) True where every band holds data: the rule `pixel_validity` applies to nodata-masked scenes."""
    if np.isnan(nodata):
        return ~np.isnan(image).any(axis=0)
    valid = (image != image.dtype.type(nodata)).all(axis=0)
    if np.issubdtype(image.dtype, np.floating):
        valid &= ~np.isnan(image).any(axis=0)
    return valid


def split_tiles_of(ds: ShardDataset, regions: Sequence[str] | None) -> list[int]:
    """Indices of a split's stored tiles, only those of `regions` when given."""
    if regions is None:
        return list(range(len(ds)))
    wanted = set(regions)
    return [i for i, t in enumerate(ds.tiles) if t.get("region") in wanted]


def dataset_regions(manifest: Mapping, split: str = "train") -> set[str]:
    """Regions with at least one stored tile in the split of the dataset `manifest` describes."""
    return {t["region"] for t in manifest["splits"][split]["tiles"]}


def dataset_partitions(manifest: Mapping) -> set[tuple[str, str]]:
    """(region, date) of every partition the dataset was built from: data a model trained on it has seen."""
    return {(p["region"], p["date"]) for p in manifest["partitions"]}


def dataset_reference_features(dataset_dir: str | os.PathLike, split: str = "train", *, tile: int = 64,
                               indices: Sequence[str] = ("NDVI", "NDWI"),
                               min_valid_fraction: float = 0.5, regions: Sequence[str] | None = None) -> pd.DataFrame:
    """The scene feature columns computed from the raw tiles of a dataset split (of `regions` only, when
    given), each stored tile cut into `tile`-px sub-tiles (`tile_index` says which stored tile); one
    stored tile in memory at a time."""
    manifest = load_manifest(dataset_dir)
    band_names = list(manifest["band_names"])
    keys = available_indices(band_names, indices)
    nodata = dataset_nodata(manifest)
    ds = ShardDataset(dataset_dir, split, manifest=manifest)
    rows: list[dict] = []
    for i in split_tiles_of(ds, regions):
        image, _ = ds.raw(i)
        for row in _split_features(image, dataset_validity(image, nodata), band_names, keys, tile):
            rows.append({"tile_index": i, **row})
    frame = _frame(rows, band_names, keys, ("tile_index", "tile_row", "tile_col"))
    return frame[frame["valid_fraction"] >= min_valid_fraction].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Class samples
# --------------------------------------------------------------------------------------------


class Reservoir:
    """A uniform random sample without replacement of at most `size` rows of a stream: every row gets a
    seeded random key and the rows with the smallest keys are kept, so memory is `size` rows + one chunk."""

    def __init__(self, size: int, seed: int = 0):
        if size <= 0:
            raise ValueError(f"sample size must be positive, got {size}")
        self.size = int(size)
        self.rng = np.random.default_rng(seed)
        self.keys = np.empty(0, dtype=np.float64)
        self.rows: np.ndarray | None = None

    def add(self, rows: np.ndarray) -> None:
        """Offer the rows of one chunk (n, ...) to the sample."""
        if len(rows) == 0:
            return
        keys = self.rng.random(len(rows))
        if self.rows is None:
            self.rows = rows[:0].copy()
        if len(self.keys) >= self.size:
            take = keys < self.keys.max()
            keys, rows = keys[take], rows[take]
        keys = np.concatenate([self.keys, keys])
        rows = np.concatenate([self.rows, rows])
        if len(keys) > self.size:
            keep = np.argpartition(keys, self.size - 1)[: self.size]
            keys, rows = keys[keep], rows[keep]
        self.keys, self.rows = keys, rows

    def sample(self) -> np.ndarray:
        """The kept rows in key order (a random order, the same for the same seed and stream)."""
        if self.rows is None:
            return np.empty(0)
        return self.rows[np.argsort(self.keys, kind="stable")]


def class_samples(class_raster_path: str, *, ignore_id: int = IGNORE_ID, max_samples: int = 20000,
                  seed: int = 0) -> np.ndarray:
    """Up to `max_samples` class ids (int64) drawn uniformly from the labelled pixels of a class raster
    (mask or prediction; the ignore id and the raster's nodata excluded), read window by window."""
    sample = Reservoir(max_samples, seed)
    with raster_env(), rasterio.open(class_raster_path) as src:
        nodata = src.nodata
        for win in iter_blocks(src.width, src.height, READ_BLOCK):
            ids = src.read(1, window=win).ravel()
            keep = ids != ignore_id
            if nodata is not None and not np.isnan(nodata):
                keep &= ids != nodata
            sample.add(ids[keep])
    return sample.sample().astype(np.int64)


def dataset_class_samples(dataset_dir: str | os.PathLike, split: str | Sequence[str] = "train", *,
                          max_samples: int = 20000, seed: int = 0, regions: Sequence[str] | None = None) -> np.ndarray:
    """Up to `max_samples` class ids (int64) drawn uniformly from the labelled mask pixels of one or more
    dataset splits (of `regions` only, when given; the manifest's ignore id excluded), one stored tile in
    memory at a time."""
    manifest = load_manifest(Path(dataset_dir))
    _, _, ignore_id = class_table(manifest)
    sample = Reservoir(max_samples, seed)
    for name in [split] if isinstance(split, str) else list(split):
        ds = ShardDataset(dataset_dir, name, manifest=manifest)
        for i in split_tiles_of(ds, regions):
            _, mask = ds.raw(i)
            ids = mask.ravel()
            sample.add(ids[ids != ignore_id])
    return sample.sample().astype(np.int64)
