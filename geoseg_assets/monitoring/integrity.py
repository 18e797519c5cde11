"""Data integrity: does a scene look like the data a model was trained on? Checked before predicting,
because a wrong band order, dtype, grid or value scale gives confident nonsense, not an error."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

RESOLUTION_TOLERANCE = 0.25  # relative pixel-size difference still accepted
SCALE_SIGMAS = 6.0  # a band whose whole range lies this many training std above the mean is on another scale
SCALE_FACTOR = 10.0  # ... or whose maximum is below a tenth of the training mean (e.g. reflectance 0..1 vs x10000)


@dataclass(frozen=True)
class IntegrityIssue:
    """One way the scene differs from the model's training data."""

    check: str
    problem: str
    fix: str
    blocking: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def _is_geographic(crs: str) -> bool | None:
    from pyproj import CRS

    try:
        return CRS.from_user_input(crs).is_geographic
    except Exception:  # noqa: BLE001 (an unreadable CRS is reported by the CRS check itself)
        return None


def input_integrity(scene: Mapping, model: Mapping, resolution_tolerance: float = RESOLUTION_TOLERANCE) -> list[IntegrityIssue]:
    """Issues of a scene record (scene.json: band_names, dtype, crs_wkt, resolution, band_min/max)
    against a model's training record (preprocessing.json: band_names, mean, std, and when known
    dtype, crs_wkt, resolution). Blocking issues make predictions meaningless."""
    issues: list[IntegrityIssue] = []
    bands, trained = list(scene.get("band_names", [])), list(model["band_names"])
    if len(bands) != len(trained):
        issues.append(IntegrityIssue(
            "band_count", f"has {len(bands)} band(s) {bands}, the model was trained on {len(trained)}: {trained}",
            "land scenes of the product the model was trained on, or train a model on this product"))
    elif bands != trained:
        if sorted(b.upper() for b in bands) == sorted(b.upper() for b in trained):
            issues.append(IntegrityIssue(
                "band_order", f"has bands {bands}, the model expects {trained} (same bands, another order)",
                "reorder the bands (e.g. `gdal_translate -b ...`) or fix the region's declared band_names"))
        else:
            issues.append(IntegrityIssue(
                "bands", f"has bands {bands}, the model was trained on {trained}",
                "land scenes of the product the model was trained on, or train a model on this product"))
    if model.get("dtype") and scene.get("dtype") and scene["dtype"] != model["dtype"]:
        issues.append(IntegrityIssue(
            "dtype", f"has dtype {scene['dtype']}, the model was trained on {model['dtype']} (another value scale)",
            "convert the product to the training dtype and scale, or train on this product"))
    if model.get("crs_wkt") and scene.get("crs_wkt"):
        geo_scene, geo_model = _is_geographic(scene["crs_wkt"]), _is_geographic(model["crs_wkt"])
        if geo_scene is not None and geo_model is not None and geo_scene != geo_model:
            issues.append(IntegrityIssue(
                "crs_family", f"is in a {'geographic' if geo_scene else 'projected'} CRS, the model was trained on "
                f"{'geographic' if geo_model else 'projected'} data",
                "set `target_crs` (and `target_resolution`) in the scenes config so the scene is reprojected"))
    if model.get("resolution") and scene.get("resolution") and not any(i.check == "crs_family" for i in issues):
        res, ref = abs(float(scene["resolution"][0])), abs(float(model["resolution"][0]))
        if ref > 0 and abs(res - ref) / ref > resolution_tolerance:
            issues.append(IntegrityIssue(
                "resolution", f"has {res:g} units per pixel, the model was trained at {ref:g} "
                f"(more than {resolution_tolerance:.0%} apart: objects change size in pixels)",
                f"set `target_resolution: {ref:g}` in the scenes config, or train on this resolution"))
    if not any(i.check in ("band_count", "dtype") for i in issues) and scene.get("band_min") and model.get("mean"):
        by_name = dict(zip(trained, zip(model["mean"], model["std"])))
        for name, lo, hi in zip(bands, scene["band_min"], scene["band_max"]):
            if name not in by_name:
                continue
            mean, std = by_name[name]
            far = SCALE_SIGMAS * max(float(std), 1e-6)
            if (mean > 0 and hi < mean / SCALE_FACTOR) or hi < mean - far or lo > mean + far:
                issues.append(IntegrityIssue(
                    "value_range", f"band {name} spans [{lo:g}, {hi:g}], the training data centres on {mean:g} "
                    f"(std {std:g}): another scale or unit",
                    "apply the training data's scaling (e.g. reflectance x 10000) before landing the scene"))
    return issues


def describe(path: str, issues: list[IntegrityIssue]) -> str:
    """One message naming the file, each problem and its fix."""
    return f"{path}: cannot be predicted by this model: " + "; ".join(
        f"[{i.check}] {i.problem}. Fix: {i.fix}" for i in issues)
