"""Masks: label polygons rasterized on a scene's grid (uint8 COG, ignore id where unlabelled or nodata)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from PIL import Image
from rasterio.features import rasterize
from rasterio.windows import bounds as window_bounds, transform as window_transform
from shapely import STRtree, box

from .class_raster import grid_profile, open_class_stage, publish_class_cog
from .classmap import ClassMap
from .scene_io import raster_env
from .validity import pixel_validity
from .windows import iter_blocks


@dataclass
class MaskSummary:
    path: str
    width: int
    height: int
    class_pixels: dict[str, int]  # per class name
    ignored_pixels: int

    @property
    def labelled_fraction(self) -> float:
        return sum(self.class_pixels.values()) / float(self.width * self.height)


def write_mask_cog(scene_cog: str, labels: gpd.GeoDataFrame, class_map: ClassMap, dst_path: str,
                   *, block: int = 1024, tmp_dir: str | None = None) -> MaskSummary:
    """Rasterize `labels` (class_id + polygons in the scene CRS) window by window onto the scene grid.

    Pixels no label covers, and pixels where the scene has no data, get the ignore id. The result
    is a COG aligned pixel for pixel with the scene, with the class colours as its colour table;
    it replaces `dst_path` only once complete.
    """
    ignore = class_map.ignore_id
    geoms = list(labels.geometry.values)
    values = labels["class_id"].to_numpy()
    tree = STRtree(geoms)
    counts = np.zeros(256, dtype=np.int64)
    dst = Path(dst_path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp_base = Path(tmp_dir) if tmp_dir else dst.parent
    stage = tmp_base / f".{dst.name}.{os.getpid()}.stage.tif"
    try:
        with raster_env(), rasterio.open(scene_cog) as scene:
            with open_class_stage(stage, grid_profile(scene, ignore), class_map) as out:
                for win in iter_blocks(scene.width, scene.height, block):
                    hits = tree.query(box(*window_bounds(win, scene.transform)))
                    shape = (int(win.height), int(win.width))
                    if len(hits):
                        hits = np.sort(hits)
                        mask = rasterize(((geoms[i], int(values[i])) for i in hits), out_shape=shape,
                                         transform=window_transform(win, scene.transform), fill=ignore, dtype="uint8")
                    else:
                        mask = np.full(shape, ignore, dtype=np.uint8)
                    valid = pixel_validity(scene, scene.read(window=win), win)
                    mask[~valid] = ignore
                    counts += np.bincount(mask.ravel(), minlength=256)
                    out.write(mask, 1, window=win)
            publish_class_cog(stage, dst)
            width, height = scene.width, scene.height
    finally:
        stage.unlink(missing_ok=True)
    return MaskSummary(
        path=str(dst), width=width, height=height,
        class_pixels={c.name: int(counts[c.id]) for c in class_map.classes},
        ignored_pixels=int(counts[ignore]),
    )


def overlay_image(quicklook: Image.Image, mask_cog: str, class_map: ClassMap, alpha: float = 0.45) -> Image.Image:
    """The quicklook with the mask's class colours blended over it (ignored pixels left clear)."""
    with rasterio.open(mask_cog) as src:
        mask = src.read(1, out_shape=(quicklook.height, quicklook.width), resampling=rasterio.enums.Resampling.nearest)
    lut = np.zeros((256, 3), dtype=np.float32)
    for cid, color in class_map.palette().items():
        lut[cid] = color
    base = np.asarray(quicklook.convert("RGB"), dtype=np.float32)
    labelled = (mask != class_map.ignore_id)[..., None]
    blended = np.where(labelled, (1 - alpha) * base + alpha * lut[mask], base)
    return Image.fromarray(blended.clip(0, 255).astype(np.uint8), mode="RGB")
