"""Scene validation and COG writing, streamed by window so memory does not grow with scene size.

`write_scene_cog` is the one path from source GeoTIFF(s) to the canonical scene COG: it validates
the header, optionally reprojects or mosaics through a `WarpedVRT`, copies block by block into a
temporary tiled GeoTIFF while counting valid pixels (which also proves every block is readable),
then lets GDAL's COG driver build overviews and the final layout.

Nodata is decided once, here, so every downstream reader (`pixel_validity`) agrees with the record:
a value declared in the product spec wins, then the file's own nodata; a file without either has its
constant fill connected to the border detected (`border_fill`). An internal mask band or a dropped
alpha band is honoured by writing the final validity as the COG's internal (per-dataset) mask.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_bounds

from .errors import SceneError, disk_full_error, free_bytes
from .publish import atomic_file
from .windows import iter_blocks

COG_BLOCKSIZE = 512
GDAL_CACHE_BYTES = 64 * 1024 * 1024  # GDAL block cache cap for pipeline I/O (rasterio takes bytes)
# How a scene's nodata was decided: declared in the product spec, the file's own, 0 outside the
# footprint of a reprojected/mosaicked output, constant fill found connected to the border, or none.
NODATA_SOURCES = ("declared", "file", "reprojection", "detected border fill", "none")
NODATA_OVERRIDE_HINT = "declare `nodata` in the product spec (region.json or region_specs) to override"


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


@dataclass
class SceneSummary:
    """What was written: georeferencing, size, bands and how much of it holds data."""

    path: str
    crs: str
    crs_wkt: str
    transform: tuple[float, ...]
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    bounds: tuple[float, float, float, float]
    bounds_wgs84: tuple[float, float, float, float]
    resolution: tuple[float, float]
    band_names: list[str]
    valid_pixels: int
    band_min: list[float] = field(default_factory=list)
    band_max: list[float] = field(default_factory=list)
    nodata_source: str = "none"  # one of NODATA_SOURCES: how `nodata` was decided
    nodata_note: str = ""  # what was decided and how to override it, for the record and the UI

    @property
    def nodata_fraction(self) -> float:
        return 1.0 - self.valid_pixels / float(self.width * self.height)


def sha256_file(path: str | os.PathLike, chunk: int = 4 << 20) -> str:
    """Content hash of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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
    if head not in TIFF_SIGNATURES:
        raise SceneError(name, f"is not a GeoTIFF (its bytes start with {head!r}); VRT, XML and other formats are "
                               "refused because GDAL would follow the files and URLs they reference",
                         "convert it to a GeoTIFF (e.g. `gdal_translate -of COG in out.tif`) and land that file")


def _open(path: str):
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


def _band_names(src, spec: SceneSpec, indexes: list[int]) -> list[str]:
    if spec.band_names:
        return list(spec.band_names)
    return [src.descriptions[i - 1] or f"band_{i}" for i in indexes]


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


def _target_grid(srcs, target_crs: str | None, target_resolution: float | None):
    """Output CRS, transform and size: the first source's grid unless reprojecting or mosaicking."""
    first = srcs[0]
    dst_crs = CRS.from_user_input(target_crs) if target_crs else first.crs
    if len(srcs) == 1 and target_crs is None and target_resolution is None:
        return dst_crs, first.transform, first.width, first.height, False
    lefts, bottoms, rights, tops = [], [], [], []
    for src in srcs:
        l, b, r, t = transform_bounds(src.crs, dst_crs, *src.bounds, densify_pts=21)
        lefts.append(l), bottoms.append(b), rights.append(r), tops.append(t)
    if target_resolution:
        res = (target_resolution, target_resolution)
    elif dst_crs == first.crs:
        res = first.res
    else:
        tr, _, _ = calculate_default_transform(first.crs, dst_crs, first.width, first.height, *first.bounds)
        res = (tr.a, -tr.e)
    left, top = min(lefts), max(tops)
    width = max(1, int(np.ceil((max(rights) - left) / res[0])))
    height = max(1, int(np.ceil((top - min(bottoms)) / res[1])))
    transform = rasterio.Affine(res[0], 0.0, left, 0.0, -res[1], top)
    return dst_crs, transform, width, height, True


def raster_env():
    """GDAL settings for pipeline I/O: a bounded block cache, so memory does not grow with scene size."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)


def landed_env():
    """`raster_env` for reading landed files: GDAL sees no sidecar files (a `scene.tif.ovr` or `.msk` may be VRT
    XML naming URLs or other files, which GDAL would read for overviews and masks) and no `.aux.xml`, so only
    the GeoTIFF's own bytes are read. Masks and overviews count when they are inside the GeoTIFF."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", GDAL_PAM_ENABLED="NO")


def write_scene_cog(
    sources: list[str],
    dst_path: str,
    spec: SceneSpec,
    *,
    target_crs: str | None = None,
    target_resolution: float | None = None,
    resampling: str = "bilinear",
    block: int = 1024,
    tmp_dir: str | None = None,
) -> SceneSummary:
    """Validate `sources`, then write them (reprojected/mosaicked if asked) as a COG at `dst_path`.

    One source on its own grid is scanned once by window (validity, band ranges, and proof that
    every block decodes) and handed to GDAL's COG driver as it is. Reprojection or a mosaic goes
    through a `WarpedVRT` per source, composited by window into a tiled stage file first. The
    destination is only ever replaced by a complete file: everything is written under temporary
    names and renamed at the end, so a failure leaves an earlier COG untouched.
    """
    if not sources:
        raise ValueError("no source files given")
    with landed_env():
        srcs = [_open(p) for p in sorted(sources)]
        try:
            return _write(srcs, Path(dst_path), spec, target_crs, target_resolution, resampling, block, tmp_dir)
        finally:
            for src in srcs:
                src.close()


def _write(srcs, dst: Path, spec, target_crs, target_resolution, resampling, block, tmp_dir) -> SceneSummary:
    for src in srcs:
        check_header(src, spec)
    first = srcs[0]
    for src in srcs[1:]:
        if src.count != first.count or src.dtypes != first.dtypes:
            raise SceneError(
                src.name,
                f"cannot be mosaicked with {first.name}: {src.count} x {src.dtypes[0]} vs {first.count} x {first.dtypes[0]}",
                "land only scenes of one product in one region/date folder",
            )
    dst_crs, transform, width, height, warped = _target_grid(srcs, target_crs, target_resolution)
    check_output_grid(srcs, width, height, spec, warped)
    indexes = data_band_indexes(first, spec)
    plan = nodata_plan(first, spec, warped)
    kind = mask_kind(first, indexes)
    band_names = _band_names(first, spec, indexes)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp_base = Path(tmp_dir) if tmp_dir else dst.parent
    tmp_base.mkdir(parents=True, exist_ok=True)
    stage = tmp_base / f".{dst.name}.{os.getpid()}.stage.tif"
    # Worst case on disk: an uncompressed stage plus an uncompressed COG with overviews (4/3) at once.
    worst_case = int(width * height * len(indexes) * np.dtype(first.dtypes[0]).itemsize * (1 + 4 / 3))
    free_before = min(f for f in (free_bytes(dst.parent), free_bytes(tmp_base), 2**62) if f is not None)
    # The warper honours the sources' masks and alpha itself (their pixels come out as `plan.value`).
    how = _Validity(indexes, plan.value, masks=kind is not None and not warped)
    readers = (
        [WarpedVRT(src, crs=dst_crs, transform=transform, width=width, height=height, nodata=plan.value,
                   src_nodata=spec.nodata, resampling=Resampling[resampling]) for src in srcs]
        if warped
        else srcs
    )
    stage_args = (stage, first, dst_crs, transform, width, height, band_names)
    staged = warped or how.masks  # else the COG is copied from a VRT over the source, unless fill is found
    try:
        if warped:
            valid, bmin, bmax = _write_stage(readers, *stage_args, plan.value, block, how)
        else:
            detect = plan.source == "none"
            codes = np.zeros((height, width), dtype=np.uint8) if detect else None
            if detect or not how.masks:  # proves every block decodes and counts valid pixels
                valid, bmin, bmax = _scan_blocks(readers, width, height, block, how, None, codes)
            if detect:
                how.fill, fill_value = border_fill(codes, first.dtypes[0])
                codes = None  # the candidate mask is no longer needed: free it before the next pass
                if how.fill is not None:
                    plan = _detected_plan(fill_value, float(how.fill.mean()))
                    staged = True
            if staged:
                valid, bmin, bmax = _write_stage(readers, *stage_args, plan.value, block, how, masked=True)
        if valid == 0:
            raise SceneError(
                ", ".join(s.name for s in srcs),
                f"contains no valid pixels (every pixel is nodata: {plan.note or f'nodata={plan.value}'})",
                "drop this acquisition (fully clouded/outside swath) or fix the nodata value in the file",
            )
        publish_as_cog(str(stage) if staged else spectral_vrt(first, band_names, plan.value), dst)
    except Exception as exc:
        full = disk_full_error(exc, (dst.parent, tmp_base), need=worst_case, free_before=free_before)
        if full is None:
            raise
        raise full from exc
    finally:
        stage.unlink(missing_ok=True)
        if warped:
            for vrt in readers:
                vrt.close()
    l, b, r, t = rasterio.transform.array_bounds(height, width, transform)
    wgs84 = transform_bounds(dst_crs, "EPSG:4326", l, b, r, t, densify_pts=21)
    note = "; ".join(n for n in (plan.note, _mask_note(first, indexes, kind)) if n)
    return SceneSummary(
        path=str(dst), crs=dst_crs.to_string(), crs_wkt=dst_crs.to_wkt(), transform=tuple(transform)[:6],
        width=width, height=height, count=len(indexes), dtype=first.dtypes[0], nodata=plan.value,
        bounds=(l, b, r, t), bounds_wgs84=tuple(wgs84), resolution=(transform.a, -transform.e),
        band_names=band_names, valid_pixels=valid, band_min=bmin, band_max=bmax,
        nodata_source=plan.source, nodata_note=note,
    )


@dataclass(frozen=True)
class NodataPlan:
    """The nodata value the COG carries, how it was decided (one of NODATA_SOURCES) and a note saying so."""

    value: float | None
    source: str
    note: str = ""


def _fmt(value: float) -> str:
    return f"{value:g}"


def nodata_plan(first, spec: SceneSpec, warped: bool) -> NodataPlan:
    """Nodata before any detection: the value declared in the product spec (checked against the dtype),
    else the file's own, else 0 for a reprojected/mosaicked output (what the warper writes outside the
    footprint), else "none", whose note holds only if the caller's border fill search finds nothing."""
    if spec.nodata is not None:
        where = spec.nodata_declared_in or "the product spec"
        check_nodata_fits(spec.nodata, first.dtypes[0], where)
        own = "the file declares none" if first.nodata is None else f"the file's own is {_fmt(first.nodata)}"
        return NodataPlan(float(spec.nodata), "declared", f"nodata={_fmt(spec.nodata)} declared in {where} ({own})")
    if first.nodata is not None:
        return NodataPlan(float(first.nodata), "file", f"nodata={_fmt(first.nodata)} from the file")
    if warped:
        return NodataPlan(0.0, "reprojection", "no nodata declared or in the file: 0 marks pixels outside the "
                          "source footprint after reprojection/mosaicking (and any pixel with a band equal to 0); "
                          f"{NODATA_OVERRIDE_HINT}")
    return NodataPlan(None, "none", "no nodata declared or in the file and no constant fill (every band 0 or the "
                      f"dtype maximum) touches the border; {NODATA_OVERRIDE_HINT}")


def _detected_plan(value: float, share: float) -> NodataPlan:
    return NodataPlan(float(value), "detected border fill",
                      f"no nodata declared; {share * 100:.1f} % constant {_fmt(value)} fill connected to the border "
                      f"recorded as nodata={_fmt(value)} (pixels of that value not connected to the border stay "
                      f"valid: the COG carries an internal mask); {NODATA_OVERRIDE_HINT}")


def _mask_note(src, indexes: list[int], kind: str | None) -> str:
    """What the record says about masks honoured besides nodata values."""
    if kind == "alpha":
        dropped = ", ".join(str(i) for i in src.indexes if i not in indexes)
        return f"alpha band {dropped} dropped: its transparent pixels are nodata (internal mask of the COG)"
    if kind == "internal mask":
        return "the file's internal mask is honoured: its masked pixels are nodata (internal mask of the COG)"
    return ""


FILL_ZERO, FILL_MAX = 1, 2  # bits of `fill_codes`


def fill_codes(data: np.ndarray) -> np.ndarray:
    """(h, w) uint8 of a (bands, h, w) block: bit FILL_ZERO where every band is 0, bit FILL_MAX where
    every band is the integer dtype's maximum, the two constant fills products use off their footprint."""
    codes = (data == 0).all(axis=0).astype(np.uint8)
    if np.issubdtype(data.dtype, np.integer):
        codes |= (data == np.iinfo(data.dtype).max).all(axis=0).astype(np.uint8) << 1
    return codes


def _edges(a: np.ndarray) -> np.ndarray:
    return np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])


def border_fill(codes: np.ndarray, dtype: str) -> tuple[np.ndarray | None, float | None]:
    """Constant fill connected to the scene border: pixels whose every band is 0 (or the dtype maximum)
    reached from the border through such pixels (4-connected flood fill, `scipy.ndimage.binary_propagation`).
    Interior pixels of that value that no fill path reaches stay data. The value with more border pixels
    wins (0 on a tie). `codes` (scene-wide `fill_codes`) is turned into the candidate mask in place, so the
    flood fill holds three scene-sized bool masks (candidates, seed, result: 3 bytes per pixel) besides
    scipy's work lists. Returns (fill mask, value), or (None, None) when no candidate touches the border."""
    from scipy import ndimage

    border = _edges(codes)
    counts = {bit: int(np.count_nonzero(border & bit)) for bit in (FILL_ZERO, FILL_MAX)}
    bit = FILL_ZERO if counts[FILL_ZERO] >= counts[FILL_MAX] else FILL_MAX
    if counts[bit] == 0:
        return None, None
    np.bitwise_and(codes, bit, out=codes)
    if bit == FILL_MAX:
        np.right_shift(codes, 1, out=codes)
    candidates = codes.view(bool)
    seed = np.zeros_like(candidates)
    for edge in (np.s_[0, :], np.s_[-1, :], np.s_[:, 0], np.s_[:, -1]):
        seed[edge] = candidates[edge]
    fill = ndimage.binary_propagation(seed, mask=candidates)
    return fill, (0.0 if bit == FILL_ZERO else float(np.iinfo(np.dtype(dtype)).max))


def spectral_vrt(src, band_names: list[str], nodata: float | None) -> str:
    """VRT XML exposing `src`'s pixels unchanged but with band names, grey/undefined colour
    interpretation (so the COG never inherits an RGB(A) reading of spectral bands) and `nodata`
    (the decided value, which may override the file's)."""
    from xml.sax.saxutils import escape

    nodata = "" if nodata is None else f"<NoDataValue>{nodata!r}</NoDataValue>"
    gdal_type = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
                 "int32": "Int32", "float32": "Float32", "float64": "Float64"}[src.dtypes[0]]
    bands = "".join(
        f'<VRTRasterBand dataType="{gdal_type}" band="{i}"><Description>{escape(name)}</Description>'
        f"<ColorInterp>{'Gray' if i == 1 else 'Undefined'}</ColorInterp>{nodata}"
        f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(src.name)}</SourceFilename>'
        f"<SourceBand>{i}</SourceBand></SimpleSource></VRTRasterBand>"
        for i, name in enumerate(band_names, start=1)
    )
    gt = ", ".join(repr(v) for v in src.transform.to_gdal())
    return (
        f'<VRTDataset rasterXSize="{src.width}" rasterYSize="{src.height}">'
        f"<SRS>{escape(src.crs.to_wkt())}</SRS><GeoTransform>{gt}</GeoTransform>{bands}</VRTDataset>"
    )


def _stage_profile(first, crs, transform, width, height, nodata, count: int) -> dict:
    return {
        "driver": "GTiff", "width": width, "height": height, "count": count, "dtype": first.dtypes[0],
        "crs": crs, "transform": transform, "nodata": nodata, "tiled": True, "blockxsize": COG_BLOCKSIZE,
        "blockysize": COG_BLOCKSIZE, "BIGTIFF": "IF_SAFER",
        # Bands are spectral measurements, never RGB(A): GDAL would otherwise take band 4 of a
        # 4-band uint8 scene for an alpha channel and mask pixels by it.
        "photometric": "MINISBLACK",
    }


@dataclass
class _Validity:
    """How the writer judges a pixel of its readers valid."""

    indexes: list[int]  # data bands read (a dropped alpha band is not among them)
    nodata: float | None  # value rule: a pixel with a band equal to it is nodata (declared or the file's)
    masks: bool  # AND the dataset's own mask (internal mask band or alpha)
    fill: np.ndarray | None = None  # detected border fill (scene-wide bool): nodata too


def _write_stage(readers, stage, first, crs, transform, width, height, band_names, nodata, block, how,
                 masked: bool = False):
    """Composite the readers into the tiled stage GeoTIFF (data bands only, named, grey/undefined);
    with `masked`, also its internal per-dataset mask (the final validity), masked pixels set to
    `nodata` (0 when there is none: the dataset's padding value, so its images read them as nodata
    too). Returns what `_scan_blocks` does."""
    profile = _stage_profile(first, crs, transform, width, height, nodata, len(band_names))
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(stage, "w", **profile) as sink:
        sink.colorinterp = [ColorInterp.gray] + [ColorInterp.undefined] * (len(band_names) - 1)
        for i, name in enumerate(band_names, start=1):
            sink.set_band_description(i, name)
        return _scan_blocks(readers, width, height, block, how, sink if not masked else _MaskedSink(sink, nodata))


@dataclass
class _MaskedSink:
    """A stage writer that also writes each window's validity as the internal mask."""

    sink: object
    nodata: float | None

    def write(self, data: np.ndarray, valid: np.ndarray, window) -> None:
        data[:, ~valid] = data.dtype.type(0 if self.nodata is None else self.nodata)
        self.sink.write(data, window=window)
        self.sink.write_mask(np.where(valid, np.uint8(255), np.uint8(0)), window=window)


def _scan_blocks(readers, width, height, block, how: _Validity, sink=None, codes=None):
    """Read every window (first valid reader wins), optionally write it to `sink` and its `fill_codes`
    into `codes`; return the valid pixel count and per-band min/max over valid pixels."""
    count = len(how.indexes)
    valid_total = 0
    bmin = np.full(count, np.inf)
    bmax = np.full(count, -np.inf)
    for win in iter_blocks(width, height, block):
        data, valid = _read_composite(readers, win, how)
        rows, cols = win.toslices()
        if codes is not None:
            codes[rows, cols] = fill_codes(data)
        if how.fill is not None:
            valid &= ~how.fill[rows, cols]
        n = int(valid.sum())
        if n:
            valid_total += n
            vals = data[:, valid]
            if vals.dtype.kind == "f" and not np.isfinite(vals).all():
                raise _infinite_values(readers, vals, win, how.indexes)
            bmin = np.minimum(bmin, vals.min(axis=1))
            bmax = np.maximum(bmax, vals.max(axis=1))
        if isinstance(sink, _MaskedSink):
            sink.write(data, valid, win)
        elif sink is not None:
            sink.write(data, window=win)
    return valid_total, [float(v) for v in bmin], [float(v) for v in bmax]


def _infinite_values(readers, vals: np.ndarray, win, indexes: list[int]) -> SceneError:
    """+/-inf in valid pixels of a float scene (a band ratio divided by zero, say): statistics, normalization
    and training would all turn into inf/NaN, so the scene is refused naming the band and where."""
    band = int(np.nonzero(~np.isfinite(vals).all(axis=1))[0][0])
    count = int((~np.isfinite(vals[band])).sum())
    names = ", ".join(r.src_dataset.name if isinstance(r, WarpedVRT) else r.name for r in readers)
    return SceneError(names, f"band {indexes[band]} holds {count} +/-inf value(s) in the block at row {win.row_off}, "
                             f"column {win.col_off} (and maybe elsewhere)",
                      "set them to the nodata value (e.g. `gdal_calc.py --calc 'where(isinf(A), nan, A)'` with "
                      "nodata nan) or fix the computation that produced them, and land the file again")


def nodata_validity(data: np.ndarray, nodata) -> np.ndarray:
    """(h, w) bool of a (bands, h, w) block: True where no band equals its nodata value. `nodata` is
    one value for all bands, one per band (None: that band has none) or None; NaN is never valid."""
    values = nodata if isinstance(nodata, (list, tuple)) else [nodata] * data.shape[0]
    valid = np.ones(data.shape[1:], dtype=bool)
    for band, value in zip(data, values):
        if value is not None:
            valid &= ~np.isnan(band) if math.isnan(value) else band != band.dtype.type(value)
    if np.issubdtype(data.dtype, np.floating):
        valid &= ~np.isnan(data).any(axis=0)
    return valid


def pixel_validity(dataset, data: np.ndarray, window) -> np.ndarray:
    """(h, w) bool: True where every band holds data. Uses the (per-band) nodata values directly when
    they are what defines the mask (no second read), else the dataset's masks (a scene COG's internal
    mask); NaN is never valid."""
    flags = dataset.mask_flag_enums
    if all(MaskFlags.all_valid in f for f in flags):
        return nodata_validity(data, None)
    if dataset.nodata is not None and all(f == [MaskFlags.nodata] for f in flags):
        return nodata_validity(data, dataset.nodatavals)
    return (dataset.read_masks(window=window).all(axis=0) > 0) & nodata_validity(data, None)


def _source_validity(reader, data: np.ndarray, window, how: _Validity) -> np.ndarray:
    """Validity of a source window under the decided rule: no band equal to the decided nodata value
    (the file's masks from a nodata value it no longer has are ignored) and, when the source has one,
    its internal mask or alpha."""
    valid = nodata_validity(data, how.nodata)
    if how.masks:
        valid &= reader.read_masks(how.indexes, window=window).all(axis=0) > 0
    return valid


def _read_composite(readers, win, how: _Validity):
    """Pixels (data bands) and validity of one window over all readers; earlier readers take precedence."""
    data = valid = None
    for reader in readers:
        try:
            block = reader.read(how.indexes, window=win)
            mask = _source_validity(reader, block, win, how)
        except (RasterioIOError, RasterioError) as exc:
            name = reader.src_dataset.name if isinstance(reader, WarpedVRT) else reader.name
            raise SceneError(
                name, f"cannot be read at window {win} ({exc})", "the file is truncated or corrupt: re-export or re-download it"
            ) from exc
        if data is None:
            data, valid = block, mask
        else:
            take = mask & ~valid
            data[:, take] = block[:, take]
            valid |= take
    if len(readers) > 1 and how.nodata is not None:
        data[:, ~valid] = data.dtype.type(how.nodata)
    return data, valid


def copy_as_cog(
    src_path: str, dst_path: str, *, resampling: str = "average", compress: str = "DEFLATE"
) -> None:
    """Write `src_path` (a file or VRT XML) as a Cloud Optimized GeoTIFF (internal tiles,
    overviews, compression)."""
    from rasterio.shutil import copy as rio_copy

    predictor = "YES" if compress in ("DEFLATE", "LZW", "ZSTD") else "NO"
    rio_copy(
        src_path,
        dst_path,
        driver="COG",
        COMPRESS=compress,
        PREDICTOR=predictor,
        BLOCKSIZE=str(COG_BLOCKSIZE),
        OVERVIEW_RESAMPLING=resampling.upper(),
        NUM_THREADS="ALL_CPUS",
        BIGTIFF="IF_SAFER",
    )


def publish_as_cog(src_path: str, dst_path: str | os.PathLike, *, resampling: str = "average") -> None:
    """`copy_as_cog` into a temp file next to `dst_path`, renamed over it only once complete, so a failure
    leaves an earlier COG there untouched."""
    with atomic_file(dst_path) as tmp:
        copy_as_cog(str(src_path), str(tmp), resampling=resampling)
