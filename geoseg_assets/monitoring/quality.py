"""Scene quality rules (nodata, saturation, out-of-reference range, cloud/shadow proxy), read by window.

Each rule turns one scene-wide share into pass/warn/fail against a (warn, fail) pair of
`QualityThresholds`; the report also keeps per-tile shares and band means so a human can see where
a scene is bad. The cloud/shadow proxy is deliberately simple (brightness and flatness tests on
B, R, NIR), a screening signal and not a cloud mask.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import rasterio

from ..geo.scene_io import raster_env
from ..ml.indices import band_index
from ..ml.shard_dataset import ShardDataset, load_manifest
from .features import (
    Reservoir,
    check_band_count,
    dataset_nodata,
    dataset_validity,
    index_maps,
    iter_scene_blocks,
)

STATUS_ORDER = ("pass", "warn", "fail")
RULES = ("nodata_share", "saturated_share", "out_of_reference_range", "cloud_shadow_proxy")
CLOUD_BANDS = ("B", "R", "NIR")


@dataclass(frozen=True)
class QualityThresholds:
    """(warn, fail) levels per rule (a share above warn warns, above fail fails) and the proxy's parameters."""

    nodata_share: tuple[float, float] = (0.2, 0.95)
    saturated_share: tuple[float, float] = (0.01, 0.1)
    out_of_reference_range: tuple[float, float] = (0.05, 0.25)
    cloud_shadow_proxy: tuple[float, float] = (0.2, 0.6)
    saturation_value: float | None = None  # values >= this are saturated; None: the integer dtype's max
    cloud_max_abs_ndvi: float = 0.2  # clouds are white: NIR and red about equal
    # Without a reference, bright/dark levels as a fraction of full scale (255 for uint8, 10000 for
    # other integers - reflectance x 10000 - and 1.0 for floats).
    cloud_reflectance: float = 0.3
    shadow_reflectance: float = 0.03


@dataclass
class RuleResult:
    rule: str
    status: str  # "pass" | "warn" | "fail"
    value: float
    warn: float
    fail: float
    message: str


@dataclass
class QualityReport:
    """Worst rule status, the rules, per-tile shares and band means, and scene-wide numbers."""

    status: str
    rules: list[RuleResult]
    tiles: pd.DataFrame = field(repr=False)
    summary: dict

    def rule(self, name: str) -> RuleResult:
        """The result of rule `name`."""
        return next(r for r in self.rules if r.rule == name)

    def to_dict(self, worst_tiles: int = 20) -> dict:
        """JSON-able form: status, rules, summary and the `worst_tiles` worst tiles (not all: scenes are large)."""
        worst = worst_tile_table(self.tiles, worst_tiles)
        return {"status": self.status, "rules": [asdict(r) for r in self.rules], "summary": self.summary,
                "tile_count": int(len(self.tiles)),
                "worst_tiles": worst.astype(object).where(worst.notna(), None).to_dict(orient="records")}


def rule_status(value: float, warn: float, fail: float) -> str:
    """The status of a share: fail above `fail`, warn above `warn`, else pass."""
    return "fail" if value > fail else "warn" if value > warn else "pass"


def worst_status(statuses: Sequence[str]) -> str:
    """The worst of some statuses (pass < warn < fail); pass when there are none."""
    return max(statuses, key=STATUS_ORDER.index, default="pass")


def _rule(name: str, value: float, levels: tuple[float, float], message: str, status: str | None = None) -> RuleResult:
    warn, fail = levels
    return RuleResult(name, status or rule_status(value, warn, fail), float(value), float(warn), float(fail), message)


def full_scale(dtype: np.dtype) -> float:
    """The value of reflectance 1.0 assumed when there is no reference: 255 (uint8), 10000 (other integers), 1.0."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 255.0
    return 10000.0 if np.issubdtype(dtype, np.integer) else 1.0


def saturation_level(dtype: np.dtype, thresholds: QualityThresholds) -> float | None:
    """Values at or above this are saturated: the configured value, else the integer dtype's max (None for floats)."""
    if thresholds.saturation_value is not None:
        return float(thresholds.saturation_value)
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else None


def _reference_bounds(band_names: Sequence[str], reference: Mapping[str, tuple[float, float]] | None):
    """(band positions, lows, highs) of the scene bands the reference covers (names matched case-insensitively)."""
    if not reference:
        return [], np.zeros(0), np.zeros(0)
    by_upper = {str(k).upper(): v for k, v in reference.items()}
    pos = [i for i, n in enumerate(band_names) if str(n).upper() in by_upper]
    lows = np.array([float(by_upper[str(band_names[i]).upper()][0]) for i in pos])
    highs = np.array([float(by_upper[str(band_names[i]).upper()][1]) for i in pos])
    return pos, lows, highs


@dataclass
class _CloudModel:
    """Where B, R, NIR (and G, if any) are, and the bright/dark level of each of B, R, NIR."""

    bands: list[int]  # positions of B, R, NIR
    green: int | None
    bright: np.ndarray
    dark: np.ndarray

    @classmethod
    def build(cls, band_names, reference, dtype, thresholds: QualityThresholds) -> _CloudModel | None:
        bands = [band_index(band_names, b) for b in CLOUD_BANDS]
        if any(b is None for b in bands):
            return None
        scale = full_scale(dtype)
        by_upper = {str(k).upper(): v for k, v in (reference or {}).items()}
        bright, dark = [], []
        for b in bands:
            ref = by_upper.get(str(band_names[b]).upper())
            bright.append(float(ref[1]) if ref else thresholds.cloud_reflectance * scale)
            dark.append(float(ref[0]) if ref else thresholds.shadow_reflectance * scale)
        return cls(bands, band_index(band_names, "G"), np.array(bright), np.array(dark))

    def masks(self, pixels: np.ndarray, band_names, max_abs_ndvi: float) -> tuple[np.ndarray, np.ndarray]:
        """(cloud, shadow) bool masks of pixels (C, h, w).

        Cloud: B, R and NIR all at or above their bright level and |NDVI| <= max_abs_ndvi (white, flat).
        Shadow: B, R and NIR all at or below their dark level, but not water-like: NIR not below green
        (or red without green), since open water is dark too but reflects less NIR than visible light."""
        sel = pixels[self.bands].astype(np.float32)
        ndvi = index_maps(pixels, band_names, ["NDVI"])[0]
        cloud = (sel >= self.bright[:, None, None]).all(axis=0) & (np.abs(ndvi) <= max_abs_ndvi)
        visible = pixels[self.green if self.green is not None else self.bands[1]].astype(np.float32)
        shadow = (sel <= self.dark[:, None, None]).all(axis=0) & (sel[2] >= visible)
        return cloud, shadow


class _Totals:
    """Scene-wide pixel counts accumulated tile by tile."""

    def __init__(self, n_bands: int, n_ref: int):
        self.pixels = self.valid = self.saturated = self.cloud = self.shadow = 0
        self.outside = np.zeros(n_ref, dtype=np.int64)
        self.band_sum = np.zeros(n_bands, dtype=np.float64)


def _tile_stats(data, valid, band_names, sat_level, ref, cloud_masks, totals: _Totals) -> dict:
    """Shares and band means of one tile, added to the scene totals. Shares other than nodata are of valid pixels."""
    n_all, n = int(valid.size), int(valid.sum())
    vals = data[:, valid]
    row: dict[str, float] = {"nodata_share": 1.0 - n / n_all}
    saturated = int((vals >= sat_level).any(axis=0).sum()) if sat_level is not None and n else 0
    row["saturated_share"] = saturated / n if n else np.nan
    pos, lows, highs = ref
    if pos:
        f = vals[pos].astype(np.float64)
        outside = ((f < lows[:, None]) | (f > highs[:, None])).sum(axis=1)
        row["out_of_range_share"] = float(outside.sum()) / (n * len(pos)) if n else np.nan
        totals.outside += outside
    if cloud_masks is not None:
        cloud, shadow = cloud_masks
        n_cloud, n_shadow = int((cloud & valid).sum()), int((shadow & valid).sum())
        row["cloud_share"], row["shadow_share"] = (n_cloud / n, n_shadow / n) if n else (np.nan, np.nan)
        totals.cloud += n_cloud
        totals.shadow += n_shadow
    sums = vals.astype(np.float64).sum(axis=1)
    for b, name in enumerate(band_names):
        row[f"{name}_mean"] = float(sums[b] / n) if n else np.nan
    totals.pixels += n_all
    totals.valid += n
    totals.saturated += saturated
    totals.band_sum += sums
    return row


def _scan(src, band_names, tile, sat_level, ref, cloud_model, thresholds) -> tuple[pd.DataFrame, _Totals]:
    """Per-tile rows and scene totals, one block of about 1024 pixels a side in memory at a time."""
    totals = _Totals(len(band_names), len(ref[0]))
    rows = []
    for row0, col0, data, valid in iter_scene_blocks(src, tile):
        masks = None if cloud_model is None else cloud_model.masks(data, band_names, thresholds.cloud_max_abs_ndvi)
        for r in range(0, data.shape[1], tile):
            for c in range(0, data.shape[2], tile):
                part = (slice(r, r + tile), slice(c, c + tile))
                stats = _tile_stats(data[(slice(None), *part)], valid[part], band_names, sat_level, ref,
                                    None if masks is None else (masks[0][part], masks[1][part]), totals)
                rows.append({"tile_row": (row0 + r) // tile, "tile_col": (col0 + c) // tile, **stats})
    return pd.DataFrame(rows), totals


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _rules(totals: _Totals, band_names, sat_level, ref, cloud_model, thresholds: QualityThresholds,
           has_reference: bool) -> tuple[list[RuleResult], dict]:
    """The four rule results and the scene-wide numbers behind them."""
    t, n = thresholds, totals.valid
    nodata = 1.0 - n / totals.pixels if totals.pixels else 1.0
    rules = [_rule("nodata_share", nodata, t.nodata_share, f"{_pct(nodata)} of the pixels hold no data")]
    if sat_level is None:
        rules.append(_rule("saturated_share", 0.0, t.saturated_share,
                           "float data and no saturation_value configured: not checked"))
    else:
        sat = totals.saturated / n if n else 0.0
        rules.append(_rule("saturated_share", sat, t.saturated_share,
                           f"{_pct(sat)} of the valid pixels reach {sat_level:g} in some band"))
    pos = ref[0]
    by_band = {band_names[p]: (float(totals.outside[i]) / n if n else 0.0) for i, p in enumerate(pos)}
    if not has_reference:
        rules.append(_rule("out_of_reference_range", 0.0, t.out_of_reference_range, "no reference", "pass"))
    elif not pos:
        rules.append(_rule("out_of_reference_range", 0.0, t.out_of_reference_range,
                           f"no reference for the bands {list(band_names)}", "pass"))
    else:
        oor = float(np.mean(list(by_band.values())))
        worst = max(by_band, key=by_band.get)
        rules.append(_rule("out_of_reference_range", oor, t.out_of_reference_range,
                           f"{_pct(oor)} of the valid band values lie outside the reference range "
                           f"(worst band {worst}: {_pct(by_band[worst])})"))
    cloud = totals.cloud / n if n else 0.0
    shadow = totals.shadow / n if n else 0.0
    if cloud_model is None:
        message = f"needs bands {', '.join(CLOUD_BANDS)}; the scene has {list(band_names)}: not checked"
        rules.append(_rule("cloud_shadow_proxy", 0.0, t.cloud_shadow_proxy, message, "pass"))
    else:
        rules.append(_rule("cloud_shadow_proxy", cloud + shadow, t.cloud_shadow_proxy,
                           f"{_pct(cloud)} cloud-like and {_pct(shadow)} shadow-like valid pixels"))
    summary = {
        "nodata_share": nodata, "saturated_share": rules[1].value, "out_of_reference_range": rules[2].value,
        "out_of_reference_range_by_band": by_band, "cloud_share": cloud, "shadow_share": shadow,
        "pixels": int(totals.pixels), "valid_pixels": int(n), "saturation_level": sat_level,
        "band_mean": {b: (float(totals.band_sum[i] / n) if n else None) for i, b in enumerate(band_names)},
        "reference": has_reference,
        "cloud_levels": None if cloud_model is None else {
            "bright": dict(zip(CLOUD_BANDS, map(float, cloud_model.bright))),
            "dark": dict(zip(CLOUD_BANDS, map(float, cloud_model.dark))),
        },
    }
    return rules, summary


def scene_quality(scene_path: str, band_names: Sequence[str], *,
                  reference: Mapping[str, tuple[float, float]] | None = None, tile: int = 256,
                  thresholds: QualityThresholds = QualityThresholds()) -> QualityReport:
    """Quality rules of a scene, read block by block: nodata share, saturated share, share of band values
    outside the `reference` [low, high] per band (e.g. `reference_ranges` of the training data) and the
    cloud/shadow proxy (with B, R, NIR); per-tile shares and band means for `tile`-px tiles."""
    with raster_env(), rasterio.open(scene_path) as src:
        check_band_count(src, band_names)
        dtype = np.dtype(src.dtypes[0])
        sat_level = saturation_level(dtype, thresholds)
        ref = _reference_bounds(band_names, reference)
        cloud_model = _CloudModel.build(band_names, reference, dtype, thresholds)
        tiles, totals = _scan(src, list(band_names), tile, sat_level, ref, cloud_model, thresholds)
        width, height = src.width, src.height
    rules, summary = _rules(totals, list(band_names), sat_level, ref, cloud_model, thresholds, bool(reference))
    summary = {"scene": os.fspath(scene_path), "width": width, "height": height, "dtype": dtype.name,
               "band_names": list(band_names), "tile": tile, **summary}
    return QualityReport(worst_status([r.status for r in rules]), rules, tiles, summary)


def reference_ranges(dataset_dir: str | os.PathLike, split: str = "train", low: float = 1, high: float = 99, *,
                     max_samples: int = 200_000, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Per band (manifest band names) the `low`/`high` percentiles of valid pixels of a dataset split,
    estimated from a seeded uniform sample of at most `max_samples` pixels (memory bounded)."""
    manifest = load_manifest(dataset_dir)
    band_names = list(manifest["band_names"])
    nodata = dataset_nodata(manifest)
    ds = ShardDataset(dataset_dir, split, manifest=manifest)
    sample = Reservoir(max_samples, seed)
    for i in range(len(ds)):
        image, _ = ds.raw(i)
        sample.add(image[:, dataset_validity(image, nodata)].T)
    pixels = sample.sample()
    if pixels.size == 0:
        raise ValueError(f"split {split!r} of {dataset_dir} holds no valid pixel to compute reference ranges from")
    lows, highs = np.percentile(pixels.astype(np.float64), [low, high], axis=0)
    return {name: (float(lows[b]), float(highs[b])) for b, name in enumerate(band_names)}


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

COLOURS = {"pass": "#2e7d32", "warn": "#ef6c00", "fail": "#c62828"}
SHARE_COLUMNS = ("nodata_share", "saturated_share", "out_of_range_share", "cloud_share", "shadow_share")


def worst_tile_table(tiles: pd.DataFrame, n: int = 50) -> pd.DataFrame:
    """The `n` tiles with the largest summed problem shares (nodata, saturated, out of range, cloud, shadow)."""
    if tiles.empty:
        return tiles
    cols = [c for c in SHARE_COLUMNS if c in tiles.columns]
    badness = tiles[cols].fillna(0.0).sum(axis=1)
    return tiles.loc[badness.sort_values(ascending=False, kind="stable").index[:n]]


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))


def quality_html(report: QualityReport, title: str) -> str:
    """A self-contained HTML page: rule table with coloured status, scene summary, the 50 worst tiles."""
    esc = html.escape
    rule_rows = "".join(
        f"<tr><td>{esc(r.rule)}</td><td style='color:#fff;background:{COLOURS[r.status]}'>{esc(r.status)}</td>"
        f"<td>{_cell(r.value)}</td><td>{_cell(r.warn)}</td><td>{_cell(r.fail)}</td><td>{esc(r.message)}</td></tr>"
        for r in report.rules
    )
    summary_rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in report.summary.items())
    worst = worst_tile_table(report.tiles, 50)
    head = "".join(f"<th>{esc(str(c))}</th>" for c in worst.columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>"
                   for row in worst.itertuples(index=False))
    colour = COLOURS[report.status]
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;margin-bottom:1.5em}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}}</style></head>
<body><h1>{esc(title)}</h1>
<p>Overall status: <b style="color:{colour}">{esc(report.status)}</b></p>
<h2>Rules</h2><table><tr><th>rule</th><th>status</th><th>value</th><th>warn above</th><th>fail above</th>
<th>message</th></tr>{rule_rows}</table>
<h2>Summary</h2><table>{summary_rows}</table>
<h2>Worst tiles (of {len(report.tiles)})</h2><table><tr>{head}</tr>{body}</table>
</body></html>
"""
