"""Class raster -> GeoPackage polygons, streamed by block so memory follows the block size, not the scene.

`vectorize_classes` checks the class raster, polygonizes it block by block (`block_polygons.py`: one polygon
per 4-connected region of a class, pieces cut by block edges merged) and streams the polygons into the
GeoPackage (`gpkg_output.py`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import rasterio
from pyproj import CRS
from rasterio.errors import RasterioIOError

from .block_polygons import polygonize
from .classmap import IGNORE_ID
from .errors import InputError
from .gpkg_output import SQLITE_SIDECARS, Output, VectorSummary, remove_gpkg, write_layer
from .publish import atomic_file
from .scene_io import raster_env

CLASS_DTYPES = ("uint8", "uint16", "int16", "int32")  # integer types rasterio.features.shapes accepts


def vectorize_classes(
    class_raster: str,
    dst_gpkg: str,
    class_names: Mapping[int, str],
    *,
    ignore_id: int = IGNORE_ID,
    simplify_tolerance: float | None = None,
    min_area_m2: float = 0.0,
    block: int = 1024,
    layer: str = "predictions",
    tmp_dir: str | None = None,
) -> VectorSummary:
    """Polygonize `class_raster` (one polygon per 4-connected region of a class) into layer `layer` of `dst_gpkg`.

    Columns: class_id, class_name (ids missing from `class_names` become "class_<id>"), area_m2 (of the
    pixels, in an equal-area CRS if the raster's is geographic), geometry in the raster CRS, simplified
    after merging if `simplify_tolerance` (CRS units) is given. Polygons under `min_area_m2` are dropped.
    The destination is replaced only by a complete file, so a failure leaves an earlier one untouched.
    """
    dst = Path(dst_gpkg)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(dst) as near:  # next to dst: the final rename is atomic
        stage = Path(tmp_dir) / f".{dst.name}.{os.getpid()}.stage.gpkg" if tmp_dir else near
        stage.parent.mkdir(parents=True, exist_ok=True)
        try:
            remove_gpkg(stage)
            with raster_env(), _open_classes(class_raster) as src:
                crs = CRS.from_wkt(src.crs.to_wkt())
                output = Output(src.transform, crs, class_names, ignore_id, simplify_tolerance, min_area_m2)
                write_layer(output.batches(polygonize(src, block, ignore_id)), str(stage), layer, crs)
            if stage != near:
                shutil.copyfile(stage, near)
        finally:
            if stage != near:
                remove_gpkg(stage)
            remove_gpkg(near, SQLITE_SIDECARS)  # the GeoPackage itself is renamed or removed by atomic_file
    return output.summary(str(dst))


def _open_classes(path: str):
    """Open a class raster, raising InputError unless it is one integer band with a CRS."""
    try:
        src = rasterio.open(path)
    except RasterioIOError as exc:
        raise InputError(path, f"cannot be opened as a raster ({exc})",
                         "pass the path of an existing class raster (GeoTIFF/COG)") from exc
    problem = None
    if src.crs is None:
        problem, fix = "has no CRS", "write the class raster with the scene's CRS"
    elif src.count != 1 or src.dtypes[0] not in CLASS_DTYPES:
        problem = f"has {src.count} band(s) of {src.dtypes[0]}, expected one band of {'/'.join(CLASS_DTYPES)}"
        fix = "pass the single-band class-id raster, not the scene or a probability raster"
    if problem:
        src.close()
        raise InputError(path, problem, fix)
    return src
