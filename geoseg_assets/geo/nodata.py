"""How a scene's nodata is decided, once, by the scene writer and recorded with the scene: a value declared in
the product spec wins, then the file's own, then 0 after reprojection; a file without any has its constant fill
connected to the border detected (`fill_codes`, `border_fill`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scene_checks import SceneSpec, check_nodata_fits

# How a scene's nodata was decided: declared in the product spec, the file's own, 0 outside the
# footprint of a reprojected/mosaicked output, constant fill found connected to the border, or none.
NODATA_SOURCES = ("declared", "file", "reprojection", "detected border fill", "none")
NODATA_OVERRIDE_HINT = "declare `nodata` in the product spec (region.json or region_specs) to override"


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


def detected_plan(value: float, share: float) -> NodataPlan:
    return NodataPlan(float(value), "detected border fill",
                      f"no nodata declared; {share * 100:.1f} % constant {_fmt(value)} fill connected to the border "
                      f"recorded as nodata={_fmt(value)} (pixels of that value not connected to the border stay "
                      f"valid: the COG carries an internal mask); {NODATA_OVERRIDE_HINT}")


def mask_note(src, indexes: list[int], kind: str | None) -> str:
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
