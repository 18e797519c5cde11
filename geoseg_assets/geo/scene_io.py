"""Scene validation and COG writing, streamed by window so memory does not grow with scene size.

`write_scene_cog` is the one path from source GeoTIFF(s) to the canonical scene COG: it validates
the header, optionally reprojects or mosaics through a `WarpedVRT`, copies block by block into a
temporary tiled GeoTIFF while counting valid pixels (which also proves every block is readable),
then lets GDAL's COG driver build overviews and the final layout.
"""

from __future__ import annotations

import hashlib
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

from .errors import SceneError
from .windows import iter_blocks

COG_BLOCKSIZE = 512
GDAL_CACHE_BYTES = 64 * 1024 * 1024  # GDAL block cache cap for pipeline I/O (rasterio takes bytes)


@dataclass(frozen=True)
class SceneSpec:
    """What a scene must look like to enter the pipeline (None means "accept any")."""

    band_names: tuple[str, ...] | None = None
    dtype: str | None = None
    min_size: int = 16
    max_size: int = 200_000

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


def _open(path: str):
    try:
        return rasterio.open(path)
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
    if spec.band_count is not None and src.count != spec.band_count:
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


def _band_names(src, spec: SceneSpec) -> list[str]:
    if spec.band_names:
        return list(spec.band_names)
    return [d or f"band_{i + 1}" for i, d in enumerate(src.descriptions)]


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
    with raster_env():
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
    nodata = first.nodata if first.nodata is not None else (0 if warped else None)
    band_names = _band_names(first, spec)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp_base = Path(tmp_dir) if tmp_dir else dst.parent
    tmp_base.mkdir(parents=True, exist_ok=True)
    stage = tmp_base / f".{dst.name}.{os.getpid()}.stage.tif"
    tmp_cog = dst.parent / f".{dst.name}.{os.getpid()}.cog.tif"
    readers = (
        [WarpedVRT(src, crs=dst_crs, transform=transform, width=width, height=height, nodata=nodata,
                   resampling=Resampling[resampling]) for src in srcs]
        if warped
        else srcs
    )
    try:
        if warped:
            profile = _stage_profile(first, dst_crs, transform, width, height, nodata)
            with rasterio.open(stage, "w", **profile) as sink:
                sink.colorinterp = [ColorInterp.gray] + [ColorInterp.undefined] * (first.count - 1)
                for i, name in enumerate(band_names, start=1):
                    sink.set_band_description(i, name)
                valid, bmin, bmax = _scan_blocks(readers, width, height, block, sink)
        else:
            valid, bmin, bmax = _scan_blocks(readers, width, height, block, None)
        if valid == 0:
            raise SceneError(
                ", ".join(s.name for s in srcs),
                f"contains no valid pixels (every pixel is nodata={nodata})",
                "drop this acquisition (fully clouded/outside swath) or fix the nodata value in the file",
            )
        if warped:
            copy_as_cog(str(stage), str(tmp_cog))
        else:
            copy_as_cog(spectral_vrt(first, band_names), str(tmp_cog))
        os.replace(tmp_cog, dst)
    finally:
        for leftover in (stage, tmp_cog):
            leftover.unlink(missing_ok=True)
        if warped:
            for vrt in readers:
                vrt.close()
    l, b, r, t = rasterio.transform.array_bounds(height, width, transform)
    wgs84 = transform_bounds(dst_crs, "EPSG:4326", l, b, r, t, densify_pts=21)
    return SceneSummary(
        path=str(dst), crs=dst_crs.to_string(), crs_wkt=dst_crs.to_wkt(), transform=tuple(transform)[:6],
        width=width, height=height, count=first.count, dtype=first.dtypes[0], nodata=nodata,
        bounds=(l, b, r, t), bounds_wgs84=tuple(wgs84), resolution=(transform.a, -transform.e),
        band_names=band_names, valid_pixels=valid, band_min=bmin, band_max=bmax,
    )


def spectral_vrt(src, band_names: list[str]) -> str:
    """VRT XML exposing `src` unchanged but with band names and grey/undefined colour
    interpretation, so the COG never inherits an RGB(A) reading of spectral bands."""
    from xml.sax.saxutils import escape

    nodata = "" if src.nodata is None else f"<NoDataValue>{src.nodata!r}</NoDataValue>"
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


def _stage_profile(first, crs, transform, width, height, nodata) -> dict:
    return {
        "driver": "GTiff", "width": width, "height": height, "count": first.count, "dtype": first.dtypes[0],
        "crs": crs, "transform": transform, "nodata": nodata, "tiled": True, "blockxsize": COG_BLOCKSIZE,
        "blockysize": COG_BLOCKSIZE, "BIGTIFF": "IF_SAFER",
        # Bands are spectral measurements, never RGB(A): GDAL would otherwise take band 4 of a
        # 4-band uint8 scene for an alpha channel and mask pixels by it.
        "photometric": "MINISBLACK",
    }


def _scan_blocks(readers, width, height, block, sink):
    """Read every window (first valid reader wins), optionally write it to `sink`; return the valid
    pixel count and per-band min/max over valid pixels."""
    count = readers[0].count
    valid_total = 0
    bmin = np.full(count, np.inf)
    bmax = np.full(count, -np.inf)
    for win in iter_blocks(width, height, block):
        data, valid = _read_composite(readers, win)
        n = int(valid.sum())
        if n:
            valid_total += n
            vals = data[:, valid]
            bmin = np.minimum(bmin, vals.min(axis=1))
            bmax = np.maximum(bmax, vals.max(axis=1))
        if sink is not None:
            sink.write(data, window=win)
    return valid_total, [float(v) for v in bmin], [float(v) for v in bmax]


def pixel_validity(dataset, data: np.ndarray, window) -> np.ndarray:
    """(h, w) bool: True where every band holds data. Uses the nodata value directly when that is
    what defines the mask (no second read), else the dataset's masks; NaN is never valid."""
    flags = dataset.mask_flag_enums
    if all(MaskFlags.all_valid in f for f in flags):
        valid = np.ones(data.shape[1:], dtype=bool)
    elif dataset.nodata is not None and all(f == [MaskFlags.nodata] for f in flags):
        nodata = dataset.nodata
        valid = ~np.isnan(data).any(axis=0) if np.isnan(nodata) else (data != data.dtype.type(nodata)).all(axis=0)
    else:
        valid = dataset.read_masks(window=window).all(axis=0) > 0
    if np.issubdtype(data.dtype, np.floating):
        valid &= ~np.isnan(data).any(axis=0)
    return valid


def _read_composite(readers, win):
    """Pixels and validity of one window over all readers; earlier readers take precedence."""
    data = valid = None
    for reader in readers:
        try:
            block = reader.read(window=win)
            mask = pixel_validity(reader, block, win)
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
    if len(readers) > 1 and readers[0].nodata is not None:
        data[:, ~valid] = readers[0].nodata
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

