"""What a landed scene must be before the pipeline reads it: a plain local GeoTIFF whose header (CRS, bands,
dtype, size, transform) and output grid fit the product's `SceneSpec`. The checks landing sources and the COG
writer share, kept apart from the writing itself."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioIOError

from .errors import SceneError


@dataclass(frozen=True)
class SceneSpec:
    """What a scene must look like to enter the pipeline (None means "accept any")."""

    band_names: tuple[str, ...] | None = None
    dtype: str | None = None
    min_size: int = 16
    max_size: int = 200_000
    max_pixels: int = 1_000_000_000  # of the OUTPUT grid (a mosaic of distant files, a sparse 100000^2 file)
    nodata: float | None = None  # declared nodata value: overrides the file's, disables fill detection
    nodata_declared_in: str = ""  # where `nodata` was declared (e.g. a region.json path), named in messages

    @property
    def band_count(self) -> int | None:
        return len(self.band_names) if self.band_names else None


# What a landed file may be: a GeoTIFF (COGs included), read by GDAL's GTiff driver only. A VRT or other
# XML "raster" makes GDAL read whatever files or URLs it names, so landed bytes are checked before GDAL sees them.
LANDED_DRIVER = "GTiff"
TIFF_SIGNATURES = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, both byte orders


def check_landed_file(path: str) -> None:
    """Refuse a landed path that is not a plain local GeoTIFF, before GDAL opens it (SceneError naming the
    file and the fix): GDAL virtual or remote paths, and files whose bytes are not a TIFF (VRT, XML, ...)."""
    name = str(path)
    if name.startswith("/vsi") or "://" in name:
        raise SceneError(name, "is a GDAL virtual or remote path; only local GeoTIFF files are read",
                         "download or copy the GeoTIFF into the landing folder and land the file itself")
    try:
        with open(name, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise SceneError(name, f"cannot be read ({exc.strerror or exc})", "make the file readable, or land it again") from exc
    check_tiff_signature(name, head)


def check_tiff_signature(name: str, head: bytes) -> None:
    """Refuse a landed file (named `name` in the error) whose first 4 bytes `head` are not a TIFF's."""
    if head not in TIFF_SIGNATURES:
        raise SceneError(name, f"is not a GeoTIFF (its bytes start with {head!r}); VRT, XML and other formats are "
                               "refused because GDAL would follow the files and URLs they reference",
                         "convert it to a GeoTIFF (e.g. `gdal_translate -of COG in out.tif`) and land that file")


def open_landed(path: str):
    check_landed_file(path)
    try:
        return rasterio.open(path, driver=LANDED_DRIVER)
    except RasterioIOError as exc:
        raise SceneError(
            path,
            f"cannot be opened as a raster ({exc})",
            "re-export or re-download the file; it is corrupt, truncated or not a GeoTIFF",
        ) from exc


def check_header(src, spec: SceneSpec) -> None:
    """Raise SceneError if the opened dataset's header cannot be used (CRS, bands, dtype, size, transform)."""
    path = src.name
    if src.crs is None:
        raise SceneError(
            path,
            "has no CRS",
            "assign the correct CRS (e.g. `gdal_edit.py -a_srs EPSG:32633 file.tif`) before landing it",
        )
    if spec.band_count is not None and len(data_band_indexes(src, spec)) != spec.band_count:
        raise SceneError(
            path,
            f"has {src.count} band(s), expected {spec.band_count} ({', '.join(spec.band_names)})",
            "land the product with the configured bands or change the source's band_names",
        )
    dtypes = set(src.dtypes)
    if spec.dtype is not None and dtypes != {spec.dtype}:
        raise SceneError(
            path,
            f"has dtype {sorted(dtypes)}, expected {spec.dtype}",
            "convert the file to the configured dtype or change the source's dtype",
        )
    if len(dtypes) != 1:
        raise SceneError(path, f"mixes band dtypes {sorted(dtypes)}", "convert all bands to one dtype")
    if not (spec.min_size <= src.width <= spec.max_size and spec.min_size <= src.height <= spec.max_size):
        raise SceneError(
            path,
            f"has implausible size {src.width} x {src.height} (allowed {spec.min_size}..{spec.max_size} pixels a side)",
            "check the file is a whole scene, not a thumbnail or a broken mosaic",
        )
    t = src.transform
    if t.is_identity:
        raise SceneError(path, "has no geotransform", "georeference the file before landing it")
    if t.b != 0 or t.d != 0:
        raise SceneError(
            path,
            f"has a rotated/sheared geotransform {tuple(t)[:6]}",
            "warp it to a north-up grid (`gdalwarp`) or configure a target CRS so the pipeline reprojects it",
        )


def check_output_grid(srcs, width: int, height: int, spec: SceneSpec, warped: bool) -> None:
    """Refuse an output grid above `spec.max_pixels` before a pixel is read: the size a scene would have,
    not the size of its files (a mosaic of distant tiles, or a sparse file declaring 100000 x 100000 px)."""
    if width * height <= spec.max_pixels:
        return
    names = ", ".join(src.name for src in srcs)
    why = (f"mosaicking/reprojecting {len(srcs)} file(s) gives a {width} x {height} px grid" if warped
           else f"is {width} x {height} px")
    fix = ("land files of one footprint per region/date folder (distant tiles make one huge sparse grid), "
           if len(srcs) > 1 else "clip the scene to the area of interest, ")
    raise SceneError(names, f"{why} = {width * height / 1e6:,.0f} Mpx, above the limit of "
                            f"{spec.max_pixels / 1e6:,.0f} Mpx", fix + "or raise the source's `max_scene_pixels`")


def data_band_indexes(src, spec: SceneSpec) -> list[int]:
    """1-based indexes of the bands holding measurements: every band except an alpha band the product
    does not count (a 4-band RGBA file of a 3-band product, or any alpha band when the spec names no
    bands). A dropped alpha band is honoured as the scene's mask instead of being passed on as data."""
    alpha = [i for i, ci in zip(src.indexes, src.colorinterp) if ci == ColorInterp.alpha]
    if alpha and (spec.band_count is None or src.count - len(alpha) == spec.band_count):
        return [i for i in src.indexes if i not in alpha]
    return list(src.indexes)


def mask_kind(src, indexes: list[int]) -> str | None:
    """What besides nodata values marks pixels of `src` invalid: "alpha" (a dropped alpha band),
    "internal mask" (a GDAL mask band, e.g. written with `write_mask`) or None. An alpha-flagged band
    the product counts as data is a measurement, so its transparency reading is ignored."""
    flags = [src.mask_flag_enums[i - 1] for i in indexes]
    if all(f in ([MaskFlags.all_valid], [MaskFlags.nodata]) for f in flags):
        return None
    if any(MaskFlags.alpha in f for f in flags):
        return "alpha" if len(indexes) < src.count else None
    return "internal mask"


def check_nodata_fits(value, dtype: str | None, where: str) -> None:
    """Raise SceneError naming `where` (the declaration, e.g. a region.json) unless the declared nodata
    `value` is a number that `dtype` (None: not known yet) can hold: a pixel can only equal a value its
    dtype can store."""
    kind = np.dtype(dtype or "float64")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problem = f"declares nodata {value!r}, which is not a number"
    elif dtype is None:
        return
    elif np.issubdtype(kind, np.integer):
        info = np.iinfo(kind)
        if float(value).is_integer() and info.min <= value <= info.max:
            return
        problem = (f"declares nodata {value!r}, which {kind.name} pixels cannot hold "
                   f"(whole numbers {info.min}..{info.max})")
    else:
        info = np.finfo(kind)
        if math.isnan(value) or info.min <= value <= info.max:
            return
        problem = f"declares nodata {value!r}, outside the range of {kind.name}"
    hold = f"a {dtype} pixel can hold (e.g. 0)" if dtype else "(e.g. 0)"
    raise SceneError(where, problem, f"set `nodata` to a number {hold}, or remove it to use the file's own nodata")
