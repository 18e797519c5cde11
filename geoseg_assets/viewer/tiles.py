"""Web-map tiles (256 px, Web Mercator) of scene and class COGs, read by window with rio-tiler.

A scene is shown as true colour when it has R, G and B bands (else its first three bands), each band stretched
between its 2nd and 98th percentile over valid pixels of the COG's smallest overview, computed once per file
version. A class COG (mask, prediction) is shown with its own colour table, a class's probability band (`p_<class>`
of the optional probability COG) in viridis from 0 to certain; nodata and ignore stay transparent.
No Dagster here: the viewer app wraps it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePath

import numpy as np
from rasterio.crs import CRS
from rio_tiler.colormap import cmap
from rio_tiler.errors import TileOutsideBounds
from rio_tiler.io import Reader

from geoseg_assets.geo.prediction_io import PROBABILITY_SCALE

TILE_SIZE = 256
STRETCH_PERCENTILES = (2.0, 98.0)
TRUE_COLOUR = ("R", "G", "B")
WGS84 = CRS.from_epsg(4326)


@dataclass(frozen=True)
class SceneStretch:
    """Band indexes (1-based) shown as red, green, blue and the value range each is stretched over."""

    indexes: tuple[int, int, int]
    ranges: tuple[tuple[float, float], ...]


def display_bands(descriptions: tuple[str | None, ...]) -> tuple[int, int, int]:
    """1-based indexes of R, G, B by band name, else the first three bands (a single band is shown grey)."""
    names = [(d or "").upper() for d in descriptions]
    if all(b in names for b in TRUE_COLOUR):
        return tuple(names.index(b) + 1 for b in TRUE_COLOUR)
    count = len(names)
    return tuple(min(i, count) for i in (1, 2, 3))


def scene_stretch(path: PurePath, version: str | None = None) -> SceneStretch:
    """The stretch of a scene COG, cached per (path, version): a replaced scene gets a new one. The version of a local
    file is its size and mtime; an object's is its ETag, which the caller passes."""
    if version is None:
        stat = Path(path).stat()
        version = f"{stat.st_size}-{stat.st_mtime_ns}"
    return _scene_stretch(str(path), version)


@lru_cache(maxsize=256)
def _scene_stretch(path: str, version: str) -> SceneStretch:
    with Reader(path) as src:
        indexes = display_bands(tuple(src.dataset.descriptions))
        preview = src.preview(indexes=indexes, max_size=512)
    ranges = []
    for band, mask in zip(preview.array.data, np.ma.getmaskarray(preview.array)):
        valid = band[~mask]
        low, high = (np.percentile(valid, STRETCH_PERCENTILES) if valid.size else (0.0, 1.0))
        ranges.append((float(low), float(high) if high > low else float(low) + 1.0))
    return SceneStretch(indexes=indexes, ranges=tuple(ranges))


def scene_tile(path: PurePath, z: int, x: int, y: int, version: str | None = None) -> bytes | None:
    """PNG of a scene tile (transparent where nodata), None outside the scene (`version`: see `scene_stretch`)."""
    stretch = scene_stretch(path, version)
    try:
        with Reader(str(path)) as src:
            image = src.tile(x, y, z, tilesize=TILE_SIZE, indexes=stretch.indexes)
    except TileOutsideBounds:
        return None
    image.rescale(in_range=stretch.ranges, out_range=((0, 255),))
    return image.render(img_format="PNG")


def class_tile(path: Path, z: int, x: int, y: int) -> bytes | None:
    """PNG of a class COG tile in the file's colour table (nodata transparent), None outside it."""
    try:
        with Reader(str(path)) as src:
            image = src.tile(x, y, z, tilesize=TILE_SIZE, indexes=(1,), resampling_method="nearest")
            colormap = src.colormap
    except TileOutsideBounds:
        return None
    return image.render(img_format="PNG", colormap=colormap)


def _probability_names(src: Reader) -> list[str]:
    return [(d or "").removeprefix("p_") for d in src.dataset.descriptions]


def probability_classes(path: Path) -> list[str]:
    """Class names of a probability COG, in band order (its bands are described `p_<class>`)."""
    with Reader(str(path)) as src:
        return _probability_names(src)


def probability_tile(path: Path, class_name: str, z: int, x: int, y: int) -> bytes | None:
    """PNG of one class's probability (viridis, 0..certain; nodata transparent), None outside the COG. A class the
    COG has no band for raises KeyError naming the classes it has."""
    with Reader(str(path)) as src:  # one open per tile: the band names and the window
        classes = _probability_names(src)
        if class_name not in classes:
            raise KeyError(f"{path} has no probability of {class_name!r}; it has {', '.join(classes)}")
        try:
            image = src.tile(x, y, z, tilesize=TILE_SIZE, indexes=(classes.index(class_name) + 1,))
        except TileOutsideBounds:
            return None
    image.rescale(in_range=((0, PROBABILITY_SCALE),), out_range=((0, 255),))
    return image.render(img_format="PNG", colormap=cmap.get("viridis"))


def geographic_bounds(path: Path) -> tuple[float, float, float, float]:
    """(west, south, east, north) of a COG in degrees, to fit the map to it."""
    with Reader(str(path)) as src:
        return tuple(float(v) for v in src.get_geographic_bounds(WGS84))


def class_colours(path: Path) -> dict[int, tuple[int, int, int]]:
    """The colour table of a class COG: class id -> RGB (ids the file's colour table gives a colour)."""
    with Reader(str(path)) as src:
        return {int(k): tuple(int(c) for c in v[:3]) for k, v in (src.colormap or {}).items()}
