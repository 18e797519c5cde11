"""The inputs of a dataset build: one region/date partition (scene, mask, tile table) and the reference of a
tile selected from it, shared by the split, shard and manifest steps."""

from __future__ import annotations

from dataclasses import dataclass

import geopandas as gpd
from rasterio.windows import Window


@dataclass(frozen=True, eq=False)
class PartitionInput:
    """One region/date: its scene COG, the mask COG on the same grid, its tile table and scene hash."""

    region: str
    date: str
    scene_path: str
    mask_path: str
    tiles: gpd.GeoDataFrame
    scene_sha256: str
    mask_sha256: str | None = None  # None: hashed from `mask_path` (a local file) when the manifest is written

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
