"""Large .npy shards of a dataset, written tile by tile through memory maps, and the train statistics
gathered on the way.

Per split a few shard pairs `images-<split>-NNNNN.npy` (N, C, H, W, scene dtype) and
`masks-<split>-NNNNN.npy` (N, H, W, uint8), so memory is bounded by one tile and DVC tracks a handful
of large files instead of one file per tile.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from numpy.lib.format import open_memmap

from .classmap import IGNORE_ID
from .dataset_inputs import PartitionInput, TileRef
from .scene_io import raster_env
from .validity import pixel_validity


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
