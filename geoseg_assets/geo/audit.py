"""Integrity audits of written outputs (pure functions returning a list of problems)."""

from __future__ import annotations

import math

import rasterio

from .scene_checks import SceneSpec
from .tiling import STAT_NAMES


def audit_scene_cog(path: str, spec: SceneSpec, expected: dict) -> list[str]:
    """Problems with a written scene COG: not a valid COG, or CRS/size/bands/dtype differ from the record."""
    from rio_cogeo.cogeo import cog_validate

    problems: list[str] = []
    is_valid, errors, _ = cog_validate(path, quiet=True)
    if not is_valid:
        problems.append(f"{path} is not a valid COG: {'; '.join(errors)}")
    with rasterio.open(path) as src:
        if src.crs is None:
            problems.append(f"{path} has no CRS")
        elif src.crs.to_wkt() != expected["crs_wkt"]:
            problems.append(f"{path} CRS {src.crs} differs from the recorded {expected['crs']}")
        if (src.width, src.height) != (expected["width"], expected["height"]):
            problems.append(f"{path} size {src.width}x{src.height} differs from the recorded {expected['width']}x{expected['height']}")
        if spec.band_count is not None and src.count != spec.band_count:
            problems.append(f"{path} has {src.count} bands, the source spec expects {spec.band_count}")
        if spec.dtype is not None and src.dtypes[0] != spec.dtype:
            problems.append(f"{path} dtype {src.dtypes[0]} differs from the source spec {spec.dtype}")
        if not src.overviews(1) and max(src.width, src.height) > 512:
            problems.append(f"{path} has no overviews")
        if "nodata" in expected and not _same_nodata(src.nodata, expected["nodata"]):
            problems.append(f"{path} nodata {src.nodata} differs from the recorded {expected['nodata']} "
                            f"({expected.get('nodata_source', 'unknown source')})")
    if expected.get("valid_pixels", 0) <= 0:
        problems.append(f"{path} holds no valid pixels")
    return problems


def mask_grid_problem(mask_path: str, scene: dict) -> str | None:
    """Why a mask does not lie on its scene's recorded grid (size and transform), or None if it does; an
    unreadable mask is a problem too."""
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(mask_path) as mask:
            grid = (mask.width, mask.height, tuple(mask.transform)[:6])
    except RasterioIOError as exc:
        return f"its mask {mask_path} cannot be read ({exc})"
    if grid != (scene["width"], scene["height"], tuple(scene["transform"])[:6]):
        return f"its mask {mask_path} is {grid[0]} x {grid[1]} px on another grid than the {scene['width']} x {scene['height']} px scene"
    return None


def _same_nodata(a, b) -> bool:
    """Equal nodata values, NaN equal to NaN, None only to None."""
    if a is None or b is None:
        return a is None and b is None
    return (math.isnan(a) and math.isnan(b)) or a == b


def audit_tile_stats(frame, band_names: list[str], scene_bounds, dtype_range) -> list[str]:
    """Problems with a tile table: empty, duplicate ids, fractions outside [0, 1], stats out of order
    or outside the dtype range, or tiles outside the scene."""
    problems: list[str] = []
    if len(frame) == 0:
        return ["no tile passed the valid-fraction threshold"]
    if frame["tile_id"].duplicated().any():
        problems.append("duplicate tile ids")
    vf = frame["valid_fraction"]
    if ((vf < 0) | (vf > 1)).any():
        problems.append("valid_fraction outside [0, 1]")
    lo, hi = dtype_range
    for band in band_names:
        cols = {k: frame[f"{band}_{k}"] for k in STAT_NAMES}
        if any(cols[k].isna().any() for k in STAT_NAMES):
            problems.append(f"band {band}: NaN statistics in kept tiles")
            continue
        if (cols["min"] < lo).any() or (cols["max"] > hi).any():
            problems.append(f"band {band}: values outside the dtype range [{lo}, {hi}]")
        if ((cols["min"] > cols["p2"]) | (cols["p2"] > cols["p98"]) | (cols["p98"] > cols["max"])).any():
            problems.append(f"band {band}: percentiles out of order (min <= p2 <= p98 <= max violated)")
        if ((cols["mean"] < cols["min"]) | (cols["mean"] > cols["max"]) | (cols["std"] < 0)).any():
            problems.append(f"band {band}: mean outside [min, max] or negative std")
    left, bottom, right, top = scene_bounds
    tb = frame.geometry.bounds
    tol = 1e-6 * max(abs(right - left), abs(top - bottom), 1.0)
    outside = (tb["minx"] < left - tol) | (tb["maxx"] > right + tol) | (tb["miny"] < bottom - tol) | (tb["maxy"] > top + tol)
    if outside.any():
        problems.append(f"{int(outside.sum())} tile(s) extend outside the scene bounds")
    if not all(math.isfinite(v) for v in scene_bounds):
        problems.append("scene bounds are not finite")
    return problems


def audit_split_leakage(manifest: dict) -> list[str]:
    """Leaks between the splits of a dataset manifest: a tile id, a spatial block or a place (region + window)
    found in two splits, each named with both splits (the first such tile per kind and split)."""
    problems: list[str] = []
    for what, key in (("tile id", lambda t: (t["region"], t["date"], t["tile_id"])),
                      ("spatial block", lambda t: t["block"]),
                      ("place", lambda t: (t["region"], t["row"], t["col"]))):
        owner: dict = {}
        for split, content in manifest["splits"].items():
            for tile in content["tiles"]:
                k = key(tile)
                if owner.setdefault(k, split) != split:
                    problems.append(f"{what} {k} is in {owner[k]} and {split}")
                    break
    return problems
