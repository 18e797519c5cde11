"""Class rasters (masks, predictions): one uint8 band of class ids on a scene's grid with the class colours as
colour table, written window by window into a tiled stage file and published as a COG (mode overviews, so
an overview pixel is a class, never an average of ids)."""

from __future__ import annotations

import os

import rasterio

from .classmap import ClassMap
from .scene_io import COG_BLOCKSIZE, publish_as_cog

CLASS_BAND = "class"  # description of the class band


def grid_profile(scene, nodata: int) -> dict:
    """Creation profile of a tiled one-band uint8 GeoTIFF aligned pixel for pixel with the open `scene`."""
    return {"driver": "GTiff", "width": scene.width, "height": scene.height, "count": 1, "dtype": "uint8",
            "crs": scene.crs, "transform": scene.transform, "nodata": nodata, "tiled": True,
            "blockxsize": COG_BLOCKSIZE, "blockysize": COG_BLOCKSIZE}


def colour_table(class_map: ClassMap) -> dict[int, tuple[int, int, int, int]]:
    """The class colours as a 256-entry RGBA table: opaque for classes, clear for every other value."""
    return {**{i: (0, 0, 0, 0) for i in range(256)}, **{k: (*v, 255) for k, v in class_map.palette().items()}}


def open_class_stage(path: str | os.PathLike, profile: dict, class_map: ClassMap):
    """Open a stage file for class ids (rasterio writer) with the colour table and band description set."""
    out = rasterio.open(path, "w", **profile)
    out.write_colormap(1, colour_table(class_map))
    out.set_band_description(1, CLASS_BAND)
    return out


def publish_class_cog(stage: str | os.PathLike, dst: str | os.PathLike) -> None:
    """The finished stage as a COG at `dst` (mode overviews), replacing `dst` only once complete."""
    publish_as_cog(str(stage), dst, resampling="mode")
