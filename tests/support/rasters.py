"""Small real GeoTIFFs written on the fly."""

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin


def write_tif(path, data, *, crs="EPSG:32633", transform=None, nodata=0, **extra) -> Path:
    """Write a (bands, h, w) array as a GeoTIFF; crs=None writes one without a CRS."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count, height, width = data.shape
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=data.dtype.name,
                   transform=transform or from_origin(500000, 5000000, 10, 10), nodata=nodata, **extra)
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def random_scene(bands=4, height=300, width=400, seed=0, dtype="uint16"):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 4000, size=(bands, height, width)).astype(dtype)
