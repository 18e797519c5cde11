"""Scene -> prediction COGs and polygons on real GeoTIFFs: georeferencing, colour table, nodata,
band order, known feature locations, and atomic replacement."""

from functools import partial

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from shapely import union_all

from geoseg_assets.geo import synthetic
from geoseg_assets.geo.classmap import DEFAULT_CLASS_MAP
from geoseg_assets.geo.errors import SceneError
from geoseg_assets.geo.prediction_io import pixel_area_m2, predict_to_cogs, scene_band_order
from geoseg_assets.geo.vectorize import vectorize_classes
from geoseg_assets.ml.normalize import Normalizer
from geoseg_assets.ml.inference import InferenceConfig, predict_scene

NORMALIZER = Normalizer(synthetic.BAND_NAMES, (800.0, 900.0, 900.0, 2000.0), (400.0, 400.0, 500.0, 1000.0))
CLASS_IDS = [c.id for c in DEFAULT_CLASS_MAP.classes]


class SpectralOracle(torch.nn.Module):
    """Per-pixel nearest synthetic class spectrum (undoing the normalization): a real network-shaped
    model whose predictions are known, so locations can be checked without training."""

    def __init__(self, normalizer: Normalizer):
        super().__init__()
        names = [c.name for c in DEFAULT_CLASS_MAP.classes]
        self.register_buffer("spectra", torch.tensor([synthetic.SPECTRA[n] for n in names]).view(len(names), 4, 1, 1))
        self.register_buffer("mean", torch.tensor(normalizer.mean).view(1, 4, 1, 1))
        self.register_buffer("std", torch.tensor(normalizer.std).view(1, 4, 1, 1))

    def forward(self, x):
        raw = x[:, :4] * self.std + self.mean
        d = ((raw[:, None] - self.spectra[None]) / 500.0) ** 2  # (B, K, 4, H, W)
        return -d.sum(dim=2) * 4.0


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    params = synthetic.SyntheticParams(region="alpha", date="2024-06-15", width=640, height=512, nodata_margin=0.1,
                                       noise=0.02)
    folder = tmp_path_factory.mktemp("scene")
    path = synthetic.write_scene(params, folder / "scene.tif")
    labels = synthetic.write_labels(params, folder / "labels.gpkg")
    return path, labels


def predict_into(scene_path, out_dir, probabilities=False, config=InferenceConfig(window=128, overlap=32)):
    predict = partial(predict_scene, SpectralOracle(NORMALIZER), NORMALIZER, CLASS_IDS, config=config)
    classes = out_dir / "classes.tif"
    probs = out_dir / "probabilities.tif" if probabilities else None
    result = predict_to_cogs(predict, str(scene_path), NORMALIZER.band_names, str(classes), DEFAULT_CLASS_MAP,
                             str(probs) if probs else None)
    return result, classes, probs


def test_prediction_cog_is_aligned_with_the_scene_and_keeps_nodata(scene, tmp_path):
    scene_path, _ = scene
    result, classes, probs = predict_into(scene_path, tmp_path, probabilities=True)
    with rasterio.open(scene_path) as src, rasterio.open(classes) as out, rasterio.open(probs) as p:
        assert (out.crs, out.transform, out.width, out.height) == (src.crs, src.transform, src.width, src.height)
        assert (p.crs, p.transform, p.count) == (src.crs, src.transform, len(CLASS_IDS))
        assert out.dtypes[0] == "uint8" and out.nodata == 255
        assert out.colormap(1)[1][:3] == DEFAULT_CLASS_MAP.palette()[1]  # water's colour in the table
        assert out.overviews(1), "a COG has overviews"
        assert out.profile["blockxsize"] == 512 and out.profile["tiled"]
        invalid = ~(src.read() != 0).all(axis=0)
        data = out.read(1)
        assert invalid.any() and (data[invalid] == 255).all() and (data[~invalid] != 255).all()
        prob = p.read()
        assert (prob[:, invalid] == 255).all()
        sums = prob[:, ~invalid].astype(int).sum(axis=0)
        assert np.abs(sums - 250).max() <= len(CLASS_IDS)  # probabilities sum to 1 (rounding per class)
    assert result.nodata_pixels == int(invalid.sum())
    assert sum(result.class_pixels.values()) == result.valid_pixels == int((~invalid).sum())
    assert pixel_area_m2(str(scene_path)) == pytest.approx(100.0)


def test_predicted_polygons_lie_on_the_known_synthetic_features(scene, tmp_path):
    scene_path, labels_path = scene
    _, classes, _ = predict_into(scene_path, tmp_path)
    names = {c.id: c.name for c in DEFAULT_CLASS_MAP.classes}
    summary = vectorize_classes(str(classes), str(tmp_path / "polygons.gpkg"), names, simplify_tolerance=5.0)
    polygons = gpd.read_file(tmp_path / "polygons.gpkg")
    truth = gpd.read_file(labels_path)
    with rasterio.open(scene_path) as src:
        assert polygons.crs == src.crs
        from shapely.geometry import box

        footprint = box(*src.bounds)
    assert summary.features == len(polygons) > 0
    assert polygons.geometry.within(footprint.buffer(1.0)).all()
    # Water: truth by painting order (roads and built-up drawn later cut through it), inside the data area.
    order = synthetic.PRIORITY
    later = union_all(list(truth[truth["class_name"].isin(order[order.index("water") + 1:])].geometry))
    water_truth = union_all(list(truth[truth["class_name"] == "water"].geometry)).difference(later)
    data_area = box(footprint.bounds[0] + 0.1 * 640 * 10.0, *footprint.bounds[1:])
    water_truth = water_truth.intersection(data_area)
    water_pred = union_all(list(polygons[polygons["class_name"] == "water"].geometry))
    assert water_truth.area > 10_000  # the scene really has a lake
    iou = water_pred.intersection(water_truth).area / water_pred.union(water_truth).area
    assert iou > 0.9, f"predicted water is in the wrong place (IoU {iou:.3f})"


def test_band_order_follows_names_not_positions(scene, tmp_path):
    scene_path, _ = scene
    with rasterio.open(scene_path) as src:
        profile, data, names = src.profile, src.read(), list(src.descriptions)
    shuffled = tmp_path / "shuffled.tif"
    order = [3, 1, 0, 2]
    with rasterio.open(shuffled, "w", **profile) as dst:
        dst.write(data[order])
        for i, k in enumerate(order, start=1):
            dst.set_band_description(i, names[k])
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    _, original, _ = predict_into(scene_path, tmp_path / "a")
    _, reordered, _ = predict_into(shuffled, tmp_path / "b")
    with rasterio.open(original) as a, rasterio.open(reordered) as b:
        assert (a.read(1) == b.read(1)).all()


def test_a_scene_without_the_models_bands_is_refused_naming_file_and_fix(tmp_path):
    with pytest.raises(SceneError) as err:
        scene_band_order("/data/scene.tif", ["B", "G", "R"], ["B", "G", "R", "NIR"])
    assert "/data/scene.tif" in str(err.value) and "NIR" in str(err.value) and "Fix:" in str(err.value)


def test_a_failed_prediction_leaves_the_previous_cog_untouched(scene, tmp_path):
    scene_path, _ = scene
    _, classes, _ = predict_into(scene_path, tmp_path)
    before = classes.read_bytes()

    def crashing(**kwargs):
        kwargs["sink"](0, np.zeros((4, kwargs["width"]), dtype=np.uint8), None)
        raise RuntimeError("out of memory in the middle of the scene")

    with pytest.raises(RuntimeError):
        predict_to_cogs(crashing, str(scene_path), NORMALIZER.band_names, str(classes), DEFAULT_CLASS_MAP)
    assert classes.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif"]  # no stage or temp files left
