"""Tile grid statistics over a scene COG, read window by window (memory bounded by one tile)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.windows import Window, bounds as window_bounds

from .windows import tile_grid

STAT_NAMES = ("mean", "std", "min", "max", "p2", "p98")


@dataclass
class TileRecord:
    tile_id: str
    row: int
    col: int
    width: int
    height: int
    bounds: tuple[float, float, float, float]
    valid_fraction: float
    stats: dict[str, float]


def band_stats(pixels: np.ndarray) -> dict[str, float]:
    """mean/std/min/max/p2/p98 of a 1-D array of valid pixels (NaN when empty)."""
    if pixels.size == 0:
        return {k: float("nan") for k in STAT_NAMES}
    p2, p98 = np.percentile(pixels, [2, 98])
    as_float = pixels.astype(np.float64)
    return {
        "mean": float(as_float.mean()),
        "std": float(as_float.std()),
        "min": float(pixels.min()),
        "max": float(pixels.max()),
        "p2": float(p2),
        "p98": float(p98),
    }


def tile_id(prefix: str, window: Window) -> str:
    return f"{prefix}_r{int(window.row_off):06d}_c{int(window.col_off):06d}"


def compute_tiles(
    cog_path: str,
    band_names: list[str],
    *,
    size: int = 256,
    overlap: int = 0,
    id_prefix: str = "tile",
) -> list[TileRecord]:
    """One record per tile of the grid: window, bounds (scene CRS), valid fraction, per-band stats."""
    records: list[TileRecord] = []
    with rasterio.open(cog_path) as src:
        for win in tile_grid(src.width, src.height, size, overlap):
            data = src.read(window=win)
            valid = src.read_masks(window=win).all(axis=0)
            if np.issubdtype(data.dtype, np.floating):
                valid &= ~np.isnan(data).any(axis=0)
            n_valid = int(valid.sum())
            stats: dict[str, float] = {}
            for b, name in enumerate(band_names):
                for key, value in band_stats(data[b][valid]).items():
                    stats[f"{name}_{key}"] = value
            records.append(
                TileRecord(
                    tile_id=tile_id(id_prefix, win),
                    row=int(win.row_off),
                    col=int(win.col_off),
                    width=int(win.width),
                    height=int(win.height),
                    bounds=tuple(window_bounds(win, src.transform)),
                    valid_fraction=n_valid / float(win.width * win.height),
                    stats=stats,
                )
            )
    return records
