"""Synthetic scenes: deterministic, plausible spectra per class, ground truth written as labels."""

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.features import rasterize

from geoseg_assets.geo import synthetic


def test_same_params_give_identical_bytes_and_other_dates_differ(tmp_path):
    p = synthetic.SyntheticParams("alpha", "2024-06-15", width=300, height=200, seed=1)
    a = synthetic.write_scene(p, tmp_path / "a.tif")
    again = synthetic.write_scene(synthetic.SyntheticParams("alpha", "2024-06-15", width=300, height=200, seed=1), tmp_path / "b.tif")
    other_date = synthetic.write_scene(synthetic.SyntheticParams("alpha", "2024-01-15", width=300, height=200, seed=1), tmp_path / "c.tif")
    with rasterio.open(a) as ra, rasterio.open(again) as rb, rasterio.open(other_date) as rc:
        assert np.array_equal(ra.read(), rb.read())
        assert not np.array_equal(ra.read(), rc.read())
        assert ra.crs.to_epsg() == 32633 and ra.res == (10.0, 10.0) and ra.count == 4 and ra.dtypes[0] == "uint16"
        assert ra.descriptions == ("B", "G", "R", "NIR")
    assert p.fingerprint() == synthetic.SyntheticParams("alpha", "2024-06-15", width=300, height=200, seed=1).fingerprint()
    assert p.fingerprint() != synthetic.SyntheticParams("alpha", "2024-01-15", width=300, height=200, seed=1).fingerprint()


def test_labels_cover_six_classes_and_match_spectra(tmp_path):
    p = synthetic.SyntheticParams("alpha", "2024-07-20", width=1024, height=1024, nodata_margin=0.1)
    scene = synthetic.write_scene(p, tmp_path / "scene.tif")
    labels = synthetic.write_labels(p, tmp_path / "labels.gpkg")
    gdf = gpd.read_file(labels)
    assert set(gdf["class_name"]) == set(synthetic.CLASSES)
    assert gdf.crs.to_epsg() == 32633
    # Non-overlapping: total polygon area equals the scene area.
    assert abs(gdf.area.sum() - 1024 * 1024 * 100) < 1e-3 * 1024 * 1024 * 100
    with rasterio.open(scene) as src:
        pixels = src.read().astype(float)
        classes = rasterize(zip(gdf.geometry, gdf["class_id"]), out_shape=(1024, 1024), transform=src.transform)
    valid = pixels[3] > 0
    assert not valid[:, :100].any() and valid[:, 110:].all()  # 10 % nodata margin on the left
    mean_nir = {n: pixels[3][(classes == c) & valid].mean() for n, c in synthetic.CLASSES.items()}
    mean_red = {n: pixels[2][(classes == c) & valid].mean() for n, c in synthetic.CLASSES.items()}
    assert mean_nir["water"] < 400 < 2000 < mean_nir["forest"]
    assert mean_nir["cropland"] > 2 * mean_red["cropland"]  # vegetation: NIR >> red in summer
    assert mean_nir["built_up"] / mean_red["built_up"] < 1.5  # built-up is spectrally flat


def test_season_lowers_vegetation_nir_and_shift_brightens(tmp_path):
    summer = synthetic._class_spectra(synthetic.SyntheticParams("a", "2024-07-19"))
    winter = synthetic._class_spectra(synthetic.SyntheticParams("a", "2024-01-15"))
    shifted = synthetic._class_spectra(synthetic.SyntheticParams("a", "2024-07-19", brightness_shift=0.2))
    crop, water = synthetic.CLASSES["cropland"], synthetic.CLASSES["water"]
    assert winter[crop][3] < 0.5 * summer[crop][3]
    assert winter[water][3] == summer[water][3]
    np.testing.assert_allclose(shifted[1:], summer[1:] * 1.2)
