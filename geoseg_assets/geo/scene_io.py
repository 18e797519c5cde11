"""Scene COG writing, streamed by window so memory does not grow with scene size.

`write_scene_cog` is the one path from source GeoTIFF(s) to the canonical scene COG: it validates
the header (`scene_checks.py`), optionally reprojects or mosaics through a `WarpedVRT`, copies block by
block into a temporary tiled GeoTIFF while counting valid pixels (`validity.py`; this also proves every
block is readable), then lets GDAL's COG driver build overviews and the final layout.

Nodata is decided once, here (`nodata_plan`, `border_fill` in `nodata.py`), so every downstream
reader (`pixel_validity`) agrees with the record. An internal mask band or a dropped alpha band is
honoured by writing the final validity as the COG's internal (per-dataset) mask.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_bounds

from .errors import SceneError, disk_full_error, free_bytes
from .nodata import border_fill, detected_plan, mask_note, nodata_plan
from .publish import atomic_file
from .scene_checks import SceneSpec, check_header, check_output_grid, data_band_indexes, mask_kind, open_landed
from .validity import MaskedSink, Validity, scan_blocks

COG_BLOCKSIZE = 512
GDAL_CACHE_BYTES = 64 * 1024 * 1024  # GDAL block cache cap for pipeline I/O (rasterio takes bytes)


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
        srcs = [open_landed(p) for p in sorted(sources)]
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
    how = Validity(indexes, plan.value, masks=kind is not None and not warped)
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
                valid, bmin, bmax = scan_blocks(readers, width, height, block, how, None, codes)
            if detect:
                how.fill, fill_value = border_fill(codes, first.dtypes[0])
                codes = None  # the candidate mask is no longer needed: free it before the next pass
                if how.fill is not None:
                    plan = detected_plan(fill_value, float(how.fill.mean()))
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
    note = "; ".join(n for n in (plan.note, mask_note(first, indexes, kind)) if n)
    return SceneSummary(
        path=str(dst), crs=dst_crs.to_string(), crs_wkt=dst_crs.to_wkt(), transform=tuple(transform)[:6],
        width=width, height=height, count=len(indexes), dtype=first.dtypes[0], nodata=plan.value,
        bounds=(l, b, r, t), bounds_wgs84=tuple(wgs84), resolution=(transform.a, -transform.e),
        band_names=band_names, valid_pixels=valid, band_min=bmin, band_max=bmax,
        nodata_source=plan.source, nodata_note=note,
    )


def _band_names(src, spec: SceneSpec, indexes: list[int]) -> list[str]:
    if spec.band_names:
        return list(spec.band_names)
    return [src.descriptions[i - 1] or f"band_{i}" for i in indexes]


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


def _write_stage(readers, stage, first, crs, transform, width, height, band_names, nodata, block, how,
                 masked: bool = False):
    """Composite the readers into the tiled stage GeoTIFF (data bands only, named, grey/undefined);
    with `masked`, also its internal per-dataset mask (the final validity), masked pixels set to
    `nodata` (0 when there is none: the dataset's padding value, so its images read them as nodata
    too). Returns what `scan_blocks` does."""
    profile = _stage_profile(first, crs, transform, width, height, nodata, len(band_names))
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(stage, "w", **profile) as sink:
        sink.colorinterp = [ColorInterp.gray] + [ColorInterp.undefined] * (len(band_names) - 1)
        for i, name in enumerate(band_names, start=1):
            sink.set_band_description(i, name)
        return scan_blocks(readers, width, height, block, how, sink if not masked else MaskedSink(sink, nodata))


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
