"""Scene -> prediction COGs: a thread-safe window reader in the model's band order, and a row sink
that streams class ids (colour table) and optional class probabilities into COGs.

The ML side (`ml.inference.predict_scene`) never sees rasterio; this module never sees torch.
Outputs are staged in temporary files and renamed into place only when complete.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from .bands import band_position
from .class_raster import grid_profile, open_class_stage, publish_class_cog
from .classmap import IGNORE_ID as NODATA_CLASS, ClassMap
from .errors import SceneError
from .scene_io import publish_as_cog, raster_env
from .validity import pixel_validity

PROBABILITY_SCALE = 250  # probabilities stored as uint8 0..250 (255 = nodata)


def scene_band_order(scene_path: str, descriptions: Sequence[str | None], model_bands: Sequence[str]) -> list[int]:
    """1-based scene band indexes holding the model's bands, in the model's order; SceneError naming
    the file and the fix if the scene lacks one of them."""
    names = [d or f"band_{i + 1}" for i, d in enumerate(descriptions)]
    found = {b: band_position(names, b, aliases=False) for b in model_bands}
    missing = [b for b in model_bands if found[b] is None]
    if missing:
        raise SceneError(
            scene_path,
            f"has bands {names} but the model was trained on {list(model_bands)} (missing {missing})",
            "land scenes of the product the model was trained on, or train a model on these bands",
        )
    return [found[b] + 1 for b in model_bands]


class SceneWindowReader:
    """`read(col, row, w, h)` -> (raw bands in the model's order, validity), one dataset handle per
    thread (rasterio handles must not be shared between threads)."""

    def __init__(self, scene_path: str, model_bands: Sequence[str]):
        self.path = str(scene_path)
        self._local = threading.local()
        self._handles: list = []
        self._lock = threading.Lock()
        src = self._dataset()
        self.width, self.height = src.width, src.height
        self.indexes = scene_band_order(self.path, src.descriptions, model_bands)

    def _dataset(self):
        src = getattr(self._local, "src", None)
        if src is None:
            src = rasterio.open(self.path)
            self._local.src = src
            with self._lock:
                self._handles.append(src)
        return src

    def __call__(self, col: int, row: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        src = self._dataset()
        window = Window(col, row, width, height)
        try:
            data = src.read(window=window)
        except rasterio.errors.RasterioError as exc:
            raise SceneError(self.path, f"cannot be read at window {window} ({exc})",
                             "the scene COG is truncated or corrupt: re-materialize `scenes` for this partition") from exc
        valid = pixel_validity(src, data, window)
        return data[[i - 1 for i in self.indexes]], valid

    def close(self) -> None:
        with self._lock:
            for src in self._handles:
                src.close()
            self._handles.clear()


@dataclass
class PredictionWriter:
    """Row sink writing class ids (and optionally probabilities) into staged tiled GeoTIFFs; `commit`
    turns them into COGs at their destinations."""

    scene_path: str
    classes_path: str
    class_map: ClassMap
    probabilities_path: str | None = None
    tmp_dir: str | None = None
    _stages: dict = field(default_factory=dict)
    _open: dict = field(default_factory=dict)

    def __enter__(self) -> PredictionWriter:
        with rasterio.open(self.scene_path) as scene:
            base = {**grid_profile(scene, NODATA_CLASS), "BIGTIFF": "IF_SAFER"}
        targets = {"classes": (self.classes_path, 1)}
        if self.probabilities_path:
            targets["probabilities"] = (self.probabilities_path, len(self.class_map.classes))
        for kind, (path, count) in targets.items():
            dst = Path(path)
            dst.parent.mkdir(parents=True, exist_ok=True)
            stage = Path(self.tmp_dir or dst.parent) / f".{dst.name}.{os.getpid()}.stage.tif"
            stage.parent.mkdir(parents=True, exist_ok=True)
            self._stages[kind] = (stage, dst)
            if kind == "classes":
                self._open[kind] = open_class_stage(stage, base, self.class_map)
            else:
                self._open[kind] = rasterio.open(stage, "w", **{**base, "count": count, "photometric": "MINISBLACK"})
        if "probabilities" in self._open:
            for i, c in enumerate(self.class_map.classes, start=1):
                self._open["probabilities"].set_band_description(i, f"p_{c.name}")
        return self

    def __call__(self, row: int, classes: np.ndarray, probabilities: np.ndarray | None) -> None:
        h, w = classes.shape
        window = Window(0, row, w, h)
        self._open["classes"].write(classes, 1, window=window)
        if probabilities is not None and "probabilities" in self._open:
            scaled = np.rint(probabilities * PROBABILITY_SCALE).astype(np.uint8)
            scaled[:, classes == NODATA_CLASS] = NODATA_CLASS
            self._open["probabilities"].write(scaled, window=window)

    def commit(self) -> None:
        """Close the stages and publish them as COGs (classes by mode, probabilities by average)."""
        self._close()
        for kind, (stage, dst) in self._stages.items():
            if kind == "classes":
                publish_class_cog(stage, dst)
            else:
                publish_as_cog(str(stage), dst, resampling="average")

    def _close(self) -> None:
        for out in self._open.values():
            out.close()
        self._open.clear()

    def __exit__(self, *exc) -> None:
        self._close()
        for stage, _ in self._stages.values():
            stage.unlink(missing_ok=True)


def pixel_area_m2(scene_path: str) -> float:
    """Ground area of one pixel in m2: exact for projected CRSs, at the scene centre's latitude for
    geographic ones."""
    with rasterio.open(scene_path) as src:
        a, e = abs(src.transform.a), abs(src.transform.e)
        if src.crs.is_geographic:
            lat = math.radians((src.bounds.top + src.bounds.bottom) / 2)
            metres_per_degree = 111_320.0
            return a * e * metres_per_degree ** 2 * math.cos(lat)
        factor = src.crs.linear_units_factor[1] if src.crs.linear_units_factor else 1.0
        return a * e * factor * factor


def class_areas(class_pixels, valid_pixels: int, pixel_m2: float, class_map: ClassMap) -> tuple[dict, dict]:
    """({class name: km2}, {class name: share of the valid pixels}) of a prediction's per-id pixel counts, both
    rounded to 6 digits (shares 0 when no pixel was valid)."""
    area_km2 = {c.name: round(class_pixels[c.id] * pixel_m2 / 1e6, 6) for c in class_map.classes}
    share = {c.name: round(class_pixels[c.id] / valid_pixels, 6) if valid_pixels else 0.0 for c in class_map.classes}
    return area_km2, share


def predict_to_cogs(predict, scene_path: str, model_bands: Sequence[str], classes_path: str, class_map: ClassMap,
                    probabilities_path: str | None = None, tmp_dir: str | None = None):
    """Run `predict(width=, height=, read=, sink=, with_probabilities=)` over a scene and publish the COGs;
    returns what `predict` returns. Earlier outputs stay untouched when anything fails."""
    with raster_env():
        reader = SceneWindowReader(scene_path, model_bands)
        try:
            with PredictionWriter(scene_path, classes_path, class_map, probabilities_path, tmp_dir) as writer:
                result = predict(width=reader.width, height=reader.height, read=reader, sink=writer,
                                 with_probabilities=probabilities_path is not None)
                writer.commit()
        finally:
            reader.close()
    return result
