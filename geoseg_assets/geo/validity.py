"""Which pixels of a scene hold data, and the block scan that counts them: a window's validity from nodata
values and masks, composited over several sources. Shared by the scene writer and every reader of a scene COG."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.vrt import WarpedVRT

from .errors import SceneError
from .nodata import fill_codes
from .windows import iter_blocks


@dataclass
class Validity:
    """How the writer judges a pixel of its readers valid."""

    indexes: list[int]  # data bands read (a dropped alpha band is not among them)
    nodata: float | None  # value rule: a pixel with a band equal to it is nodata (declared or the file's)
    masks: bool  # AND the dataset's own mask (internal mask band or alpha)
    fill: np.ndarray | None = None  # detected border fill (scene-wide bool): nodata too


@dataclass
class MaskedSink:
    """A stage writer that also writes each window's validity as the internal mask."""

    sink: object
    nodata: float | None

    def write(self, data: np.ndarray, valid: np.ndarray, window) -> None:
        data[:, ~valid] = data.dtype.type(0 if self.nodata is None else self.nodata)
        self.sink.write(data, window=window)
        self.sink.write_mask(np.where(valid, np.uint8(255), np.uint8(0)), window=window)


def scan_blocks(readers, width, height, block, how: Validity, sink=None, codes=None):
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
        if isinstance(sink, MaskedSink):
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


def _source_validity(reader, data: np.ndarray, window, how: Validity) -> np.ndarray:
    """Validity of a source window under the decided rule: no band equal to the decided nodata value
    (the file's masks from a nodata value it no longer has are ignored) and, when the source has one,
    its internal mask or alpha."""
    valid = nodata_validity(data, how.nodata)
    if how.masks:
        valid &= reader.read_masks(how.indexes, window=window).all(axis=0) > 0
    return valid


def _read_composite(readers, win, how: Validity):
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
