"""Monitoring: tile features (scene and dataset agree), class samples, Evidently drift on a real pair and on
synthetic same-season / shifted scenes, class-share drift, atomic HTML reports, and scene quality rules."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geoseg_assets.geo.synthetic import BAND_NAMES, CLASSES, SyntheticParams, season_factor, write_scene
from geoseg_assets.monitoring.drift import class_share_drift, data_drift, drift_chart_png
from geoseg_assets.monitoring.features import (
    class_samples,
    dataset_class_samples,
    dataset_reference_features,
    feature_columns,
    scene_tile_features,
)
from geoseg_assets.monitoring.quality import (
    QualityThresholds,
    quality_html,
    reference_ranges,
    scene_quality,
)
from tests.support.partitions import make_partition
from tests.support.paths import DATA
from tests.support.rasters import write_tif

LANDSAT = DATA / "landsat_drift"
LANDSAT_BANDS = ["SWIR1", "NIR", "R", "G"]
SUMMER, SUMMER_LATER, WINTER = "2024-07-12", "2024-07-26", "2024-01-15"  # day 194 / 208 around the peak (200)
BANDS = list(BAND_NAMES)


def _scene(root: Path, size: int = 512, **kw) -> str:
    params = SyntheticParams(region="alpha", width=size, height=size, **kw)
    return str(write_scene(params, root / f"{params.fingerprint()}.tif"))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("scenes")
    return {
        "summer": _scene(root, date=SUMMER),
        "summer_later": _scene(root, date=SUMMER_LATER),
        "winter": _scene(root, date=WINTER),
        "brighter": _scene(root, date=SUMMER_LATER, brightness_shift=0.15),
    }


@pytest.fixture(scope="module")
def features(scenes) -> dict:
    return {k: scene_tile_features(p, BANDS, tile=32) for k, p in scenes.items()}


@pytest.fixture(scope="module")
def partition(tmp_path_factory):
    """A 256 x 256 summer scene COG + mask COG + tile table, as the pipeline makes them (10 % nodata margin)."""

    return make_partition(tmp_path_factory.mktemp("part"), "alpha", SUMMER, width=256, height=256, margin=0.1)


@pytest.fixture(scope="module")
def dataset(partition, tmp_path_factory) -> Path:
    from geoseg_assets.geo.dataset import build_dataset

    classes = {k: v for k, v in CLASSES.items() if k != "bare"}  # too small a scene to hold bare soil
    out = tmp_path_factory.mktemp("ds") / "ds"
    # Every tile in train, so the train ranges cover every land cover of the scene (a 2-tile train split
    # would miss the town, and the full scene would rightly warn out_of_reference_range).
    build_dataset([partition], out, classes, BANDS, block_size_m=1280.0, fractions=(1.0, 0.0, 0.0))
    return out


def _summary(result) -> str:
    return (f"drift_share={result.drift_share:.2f} dataset_drift={result.dataset_drift} "
            f"rows={result.reference_rows}/{result.current_rows} drifted={result.drifted_columns}")


# --------------------------------------------------------------------------------------------
# Features and samples
# --------------------------------------------------------------------------------------------


def test_scene_features_per_tile_equal_hand_computation(partition):
    frame = scene_tile_features(partition.scene_path, BANDS, tile=64, indices=("NDVI", "NDWI", "MNDWI"))
    cols = feature_columns(frame)
    bands = [f"{b}_{s}" for b in BANDS for s in ("mean", "std")]
    assert cols == [*bands, "NDVI_mean", "NDWI_mean"]  # no SWIR band: MNDWI is skipped
    # The left 10 % (25 px) is nodata: column 0 keeps 39/64 valid, still >= 0.5; a stricter cut drops it.
    assert sorted(frame["tile_col"].unique()) == [0, 1, 2, 3] and len(frame) == 16
    assert np.allclose(frame.loc[frame["tile_col"] == 0, "valid_fraction"], 39 / 64)
    assert len(scene_tile_features(partition.scene_path, BANDS, tile=64, min_valid_fraction=0.7)) == 12
    with rasterio.open(partition.scene_path) as src:
        block = src.read(window=((64, 128), (0, 64))).astype(np.float64)
    valid = (block != 0).all(axis=0)
    nir, red, green = block[3][valid], block[2][valid], block[1][valid]
    row = frame[(frame["tile_row"] == 1) & (frame["tile_col"] == 0)].iloc[0]
    assert row["NIR_mean"] == pytest.approx(nir.mean()) and row["R_std"] == pytest.approx(red.std())
    assert row["NDVI_mean"] == pytest.approx(((nir - red) / (nir + red)).mean(), rel=1e-5)
    assert row["NDWI_mean"] == pytest.approx(((green - nir) / (green + nir)).mean(), rel=1e-5)
    with pytest.raises(ValueError, match="unknown spectral index"):
        scene_tile_features(partition.scene_path, BANDS, indices=("NDXI",))
    with pytest.raises(ValueError, match="band name"):
        scene_tile_features(partition.scene_path, BANDS[:3])


def test_dataset_features_equal_the_scene_features_of_the_same_pixels(dataset, partition):
    manifest = json.loads((dataset / "manifest.json").read_text())
    ref = dataset_reference_features(dataset, "train", tile=64)
    scene = scene_tile_features(partition.scene_path, BANDS, tile=64).set_index(["tile_row", "tile_col"])
    assert len(ref) > 0 and feature_columns(ref) == feature_columns(scene.reset_index())
    tiles = manifest["splits"]["train"]["tiles"]
    for _, row in ref.iterrows():
        t = tiles[int(row["tile_index"])]
        key = ((t["row"] + 64 * int(row["tile_row"])) // 64, (t["col"] + 64 * int(row["tile_col"])) // 64)
        expected = scene.loc[key]
        assert row["valid_fraction"] == pytest.approx(expected["valid_fraction"])
        assert np.allclose(row[feature_columns(ref)].to_numpy(float), expected[feature_columns(ref)].to_numpy(float))


def test_class_samples_are_seeded_uniform_and_skip_ignore(dataset, partition):
    with rasterio.open(partition.mask_path) as src:
        labels = src.read(1)
    exact = np.bincount(labels[labels != 255], minlength=256)
    everything = class_samples(partition.mask_path, max_samples=10**6)
    assert np.array_equal(np.bincount(everything, minlength=256), exact)  # a sample as large as the data is the data
    a = class_samples(partition.mask_path, max_samples=5000, seed=1)
    assert len(a) == 5000 and 255 not in a and set(np.unique(a)) <= set(CLASSES.values())
    assert np.array_equal(a, class_samples(partition.mask_path, max_samples=5000, seed=1))
    assert not np.array_equal(a, class_samples(partition.mask_path, max_samples=5000, seed=2))
    share = np.bincount(a, minlength=256) / len(a)
    assert np.allclose(share, exact / exact.sum(), atol=0.03)

    manifest = json.loads((dataset / "manifest.json").read_text())
    pixels = manifest["class_distribution"]["train"]["pixels"]
    train = dataset_class_samples(dataset, "train", max_samples=10**6)
    assert {name: int((train == cid).sum()) for name, cid in manifest["class_map"]["classes"].items()} == pixels


# --------------------------------------------------------------------------------------------
# Drift
# --------------------------------------------------------------------------------------------


def test_real_landsat_pair_shows_drift():
    bands = LANDSAT_BANDS
    ref = scene_tile_features(str(LANDSAT / "pucallpa_2010.tif"), bands, tile=24)
    cur = scene_tile_features(str(LANDSAT / "pucallpa_2020.tif"), bands, tile=24)
    result = data_drift(ref, cur, feature_columns(ref))
    print("pucallpa 2010 -> 2020:", _summary(result))
    assert result.reference_rows > 400 and result.current_rows > 400
    assert result.dataset_drift and result.drift_share >= 0.5
    assert {"R_mean", "NDVI_mean"} <= set(result.drifted_columns)  # clearing changes red and NDVI most
    assert result.drift_share == pytest.approx(len(result.drifted_columns) / len(result.column_scores))
    assert all(s["method"] and s["threshold"] is not None for s in result.column_scores.values())


def test_same_region_same_season_does_not_drift(features):
    assert abs(season_factor(SUMMER) - season_factor(SUMMER_LATER)) < 0.005
    ref, cur = features["summer"], features["summer_later"]
    assert not np.allclose(ref["NIR_mean"], cur["NIR_mean"])  # a new noise draw, not the same pixels
    result = data_drift(ref, cur, feature_columns(ref))
    print("same season:", _summary(result))
    assert not result.dataset_drift and result.drift_share < 0.5


def test_seasonal_shift_drifts_in_vegetation_bands(features):
    result = data_drift(features["summer"], features["winter"], feature_columns(features["summer"]))
    print("summer -> winter:", _summary(result))
    assert result.dataset_drift
    assert {"R_mean", "NIR_mean", "NDVI_mean", "NDWI_mean"} <= set(result.drifted_columns)
    assert "B_mean" not in result.drifted_columns  # the seasonal cycle leaves blue alone


def test_brightness_shift_drifts_bands_but_not_scale_free_indices(features):
    result = data_drift(features["summer"], features["brighter"], feature_columns(features["summer"]))
    print("brightness +15 %:", _summary(result))
    assert result.dataset_drift
    assert {"B_mean", "G_mean", "R_mean", "NIR_mean"} <= set(result.drifted_columns)
    assert not {"NDVI_mean", "NDWI_mean"} & set(result.drifted_columns)


def test_html_report_is_written_and_a_failure_leaves_no_file(features, tmp_path):
    html = tmp_path / "reports" / "drift.html"
    cols = feature_columns(features["summer"])
    result = data_drift(features["summer"], features["brighter"], cols, html_path=str(html))
    assert result.html_path == str(html) and html.stat().st_size > 10_000
    text = html.read_text(encoding="utf-8")
    assert "NIR_mean" in text and "NDVI_mean" in text
    assert list(html.parent.iterdir()) == [html]  # no temporary file left
    png = drift_chart_png(result, "brightness +15 %")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    failed = tmp_path / "failed" / "drift.html"
    with pytest.raises(ValueError, match="too few tiles with data to test drift"):
        data_drift(features["summer"], features["brighter"].head(3), cols, html_path=str(failed))
    assert not failed.exists() and (not failed.parent.exists() or not any(failed.parent.iterdir()))


def test_class_share_drift():
    names = {cid: name for name, cid in CLASSES.items()}
    ids = np.array(sorted(names))
    rng = np.random.default_rng(0)
    p = np.array([0.1, 0.3, 0.35, 0.1, 0.05, 0.1])
    ref, same = rng.choice(ids, 20000, p=p), rng.choice(ids, 20000, p=p)
    shifted = rng.choice(ids, 20000, p=[0.4, 0.1, 0.1, 0.3, 0.05, 0.05])

    steady = class_share_drift(ref, same, names)
    print("class shares, same mix:", _summary(steady), steady.column_scores)
    assert not steady.dataset_drift and steady.drifted_columns == []
    assert list(steady.reference_shares) == [names[i] for i in ids]
    assert sum(steady.reference_shares.values()) == pytest.approx(1.0)
    assert sum(steady.current_shares.values()) == pytest.approx(1.0)
    assert steady.reference_shares["cropland"] == pytest.approx(0.35, abs=0.01)

    moved = class_share_drift(ref, shifted, names)
    print("class shares, shifted mix:", _summary(moved), moved.column_scores)
    assert moved.dataset_drift and moved.drifted_columns == ["class"] and moved.drift_share == 1.0
    assert moved.current_shares["water"] == pytest.approx(0.4, abs=0.01)
    assert sum(moved.current_shares.values()) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------
# Quality
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def summer_pixels(partition) -> tuple[np.ndarray, dict]:
    with rasterio.open(partition.scene_path) as src:
        return src.read(), dict(transform=src.transform, crs=src.crs)


def _variant(tmp_path, name, pixels, georef) -> str:
    return str(write_tif(tmp_path / f"{name}.tif", pixels, crs=georef["crs"], transform=georef["transform"]))


def test_clean_scene_passes_and_html_names_every_rule(partition, dataset):
    reference = reference_ranges(dataset)
    report = scene_quality(partition.scene_path, BANDS, reference=reference, tile=64)
    assert report.status == "pass", report.rules
    assert report.rule("nodata_share").value == pytest.approx(25 / 256)  # the 10 % margin: 25 of 256 columns
    assert report.rule("out_of_reference_range").value < 0.05
    assert len(report.tiles) == 16 and {"cloud_share", "shadow_share", "NIR_mean"} <= set(report.tiles.columns)
    page = quality_html(report, "alpha 2024-07-12")
    for rule in ("nodata_share", "saturated_share", "out_of_reference_range", "cloud_shadow_proxy"):
        assert rule in page
    json.dumps(report.to_dict())  # JSON-able as it is
    no_ref = scene_quality(partition.scene_path, BANDS, tile=64)
    assert no_ref.rule("out_of_reference_range").status == "pass"
    assert no_ref.rule("out_of_reference_range").message == "no reference"


def test_reference_ranges_are_the_training_percentiles(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    images = np.concatenate([np.load(dataset / s["images"]) for s in manifest["splits"]["train"]["shards"]])
    valid = (images != 0).all(axis=1)
    ranges = reference_ranges(dataset, low=1, high=99)
    for b, name in enumerate(BANDS):
        values = images[:, b][valid]
        assert ranges[name] == pytest.approx(tuple(np.percentile(values, [1, 99])), rel=0.02)


def test_mostly_nodata_scene_fails(tmp_path):
    path = _scene(tmp_path, size=256, date=SUMMER, nodata_margin=0.97)
    report = scene_quality(path, BANDS, tile=64)
    rule = report.rule("nodata_share")
    assert rule.status == "fail" and rule.value > 0.95 and report.status == "fail"


@pytest.mark.parametrize("share, status", [(0.05, "warn"), (0.2, "fail")])
def test_saturated_pixels_warn_or_fail(summer_pixels, tmp_path, share, status):
    pixels, georef = summer_pixels
    pixels = pixels.copy()
    rows = int(round(share * pixels.shape[1]))
    pixels[3, -rows:, :] = 65535  # NIR saturated on the bottom rows
    report = scene_quality(_variant(tmp_path, "sat", pixels, georef), BANDS, tile=64)
    rule = report.rule("saturated_share")
    assert rule.status == status and rule.value == pytest.approx(rows / pixels.shape[1], rel=0.15)


def test_cloud_patch_raises_the_cloud_proxy(summer_pixels, dataset, tmp_path):
    pixels, georef = summer_pixels
    cloudy = pixels.copy()
    cloudy[:, :128, 64:] = 8000  # white and bright in every band: about 3/8 of the valid pixels
    path = _variant(tmp_path, "cloud", cloudy, georef)
    for reference in (None, reference_ranges(dataset)):
        report = scene_quality(path, BANDS, reference=reference, tile=64)
        rule = report.rule("cloud_shadow_proxy")
        assert rule.status == "warn"
        assert report.summary["cloud_share"] == pytest.approx(128 * 192 / (256 * 231), abs=0.01)
        assert report.tiles.loc[(report.tiles.tile_row == 0) & (report.tiles.tile_col == 3), "cloud_share"].item() == 1
        clean = scene_quality(_variant(tmp_path, "clean", pixels, georef), BANDS, reference=reference, tile=64)
        assert clean.rule("cloud_shadow_proxy").value < 0.01
    overcast = pixels.copy()
    overcast[:, :, 40:] = 8000
    report = scene_quality(_variant(tmp_path, "overcast", overcast, georef), BANDS)
    assert report.rule("cloud_shadow_proxy").status == "fail"
    dark = pixels.copy()
    dark[:, 128:, :] = np.array([40, 60, 50, 90], dtype=dark.dtype)[:, None, None]  # shadow: dark, NIR > green
    report = scene_quality(_variant(tmp_path, "shadow", dark, georef), BANDS)
    assert report.summary["shadow_share"] > 0.4 and report.rule("cloud_shadow_proxy").status == "warn"


def test_shifted_scene_leaves_the_training_range(dataset, tmp_path):
    reference = reference_ranges(dataset)
    darker = _scene(tmp_path, size=256, date=SUMMER, brightness_shift=-0.3)
    brighter = _scene(tmp_path, size=256, date=SUMMER, brightness_shift=0.15)
    fail = scene_quality(darker, BANDS, reference=reference, tile=64).rule("out_of_reference_range")
    warn = scene_quality(brighter, BANDS, reference=reference, tile=64).rule("out_of_reference_range")
    print("out of range: darker", fail.value, "brighter", warn.value)
    assert fail.status == "fail" and fail.value > 0.25
    assert warn.status == "warn"
    custom = QualityThresholds(out_of_reference_range=(0.5, 0.9))
    report = scene_quality(darker, BANDS, reference=reference, thresholds=custom)
    assert report.rule("out_of_reference_range").status == "warn"
