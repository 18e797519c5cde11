"""Label import and rasterization against real SpaceNet footprints, for every label store."""

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from scipy import ndimage

from geoseg_assets.geo.classmap import ClassDef, ClassMap
from geoseg_assets.geo.errors import LabelError
from geoseg_assets.geo.masks import write_mask_cog
from geoseg_assets.geo.scene_checks import SceneSpec
from geoseg_assets.geo.scene_io import write_scene_cog
from resources.geopackage_labels import GeoPackageLabelStore
from resources.label_store import ImportOptions
from resources.postgis_labels import PostgisLabelStore
from tests.support.paths import DATA
from tests.support.postgres import throwaway_database

SPACENET = DATA / "spacenet_buildings"
BUILDINGS = ClassMap((ClassDef("building", 1, (220, 60, 60)),))
OPTS = ImportOptions(default_class="building", annotator="spacenet")


@pytest.fixture(params=["gpkg", pytest.param("postgis", marks=pytest.mark.postgres)])
def label_store(request, tmp_path):
    """Every test runs against the GeoPackage store and a real PostGIS database (throwaway)."""
    if request.param == "gpkg":
        yield GeoPackageLabelStore(path=str(tmp_path / "labels.gpkg"))
        return
    with throwaway_database() as db:
        yield PostgisLabelStore(dbname=db)


@pytest.fixture(scope="module")
def spacenet_scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("scene") / "scene.tif"
    return write_scene_cog([str(SPACENET / "sample_geotiff.tif")], str(out), SceneSpec(band_names=("PAN",), dtype="uint16"))


def rasterized(store, region, scene, tmp_path, name):
    labels = store.labels(region)
    return write_mask_cog(scene.path, labels, BUILDINGS, str(tmp_path / f"{name}.tif"))


def read(path):
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:32617"])
def test_labels_in_another_crs_rasterize_to_the_same_pixels(label_store, spacenet_scene, tmp_path, crs):
    native = gpd.read_file(SPACENET / "geotiff_labels.geojson")
    other = tmp_path / "other.gpkg"
    native.to_crs(crs).to_file(other, driver="GPKG")

    label_store.import_file(str(SPACENET / "geotiff_labels.geojson"), "native", spacenet_scene.crs, BUILDINGS, OPTS,
                            footprint=spacenet_scene.bounds)
    report = label_store.import_file(str(other), "moved", spacenet_scene.crs, BUILDINGS, OPTS, footprint=spacenet_scene.bounds)
    assert report.reprojected_from == crs and report.features == 43
    a = read(rasterized(label_store, "native", spacenet_scene, tmp_path, "a").path)
    b = read(rasterized(label_store, "moved", spacenet_scene, tmp_path, "b").path)
    built = a == 1
    assert built.sum() > 10_000  # the footprints really cover buildings
    differ = a != b
    # Only boundary pixels may differ (reprojection moves vertices by millimetres).
    edge = ndimage.binary_dilation(built, iterations=1) & ~ndimage.binary_erosion(built, iterations=1)
    assert not (differ & ~edge).any()
    assert differ.sum() < 0.01 * built.sum()


def test_mask_is_aligned_with_the_scene_and_ignores_unlabelled_and_nodata(label_store, spacenet_scene, tmp_path):
    label_store.import_file(str(SPACENET / "geotiff_labels.geojson"), "native", spacenet_scene.crs, BUILDINGS, OPTS)
    summary = rasterized(label_store, "native", spacenet_scene, tmp_path, "m")
    with rasterio.open(summary.path) as mask, rasterio.open(spacenet_scene.path) as scene:
        assert (mask.crs, mask.transform, mask.shape) == (scene.crs, scene.transform, scene.shape)
        assert mask.nodata == 255 and mask.dtypes[0] == "uint8"
        assert mask.colormap(1)[1][:3] == (220, 60, 60)
        m = mask.read(1)
        scene_valid = scene.read_masks(1) > 0
    assert set(np.unique(m)) <= {1, 255}
    assert (m[~scene_valid] == 255).all()
    assert summary.class_pixels["building"] == int((m == 1).sum())
    assert summary.ignored_pixels == int((m == 255).sum())


def test_declared_crs_contradicting_coordinates_is_refused(label_store, spacenet_scene):
    bad = SPACENET / "geotiff_custom_proj_labels.geojson"
    with pytest.raises(LabelError) as err:
        label_store.import_file(str(bad), "custom", spacenet_scene.crs, BUILDINGS, OPTS)
    assert str(bad) in str(err.value) and "not degrees" in str(err.value) and "Fix:" in str(err.value)
    assert label_store.regions() == []


def test_labels_outside_the_scene_are_refused(label_store, spacenet_scene, tmp_path):
    moved = gpd.read_file(SPACENET / "geotiff_labels.geojson")
    moved["geometry"] = moved.geometry.translate(50_000, 0)
    path = tmp_path / "elsewhere.geojson"
    moved.to_file(path)
    with pytest.raises(LabelError, match="overlaps the scene footprint"):
        label_store.import_file(str(path), "native", spacenet_scene.crs, BUILDINGS, OPTS, footprint=spacenet_scene.bounds)
    assert label_store.regions() == []


def _write_geojson(path, features, crs="EPSG:32616"):
    gdf = gpd.GeoDataFrame(features, geometry="geometry", crs=crs)
    gdf.to_file(path, driver="GeoJSON")
    return path


def test_bad_label_files_import_nothing(label_store, tmp_path):
    good = _write_geojson(tmp_path / "good.geojson", [{"class": "building", "geometry": shapely.box(733700, 3724700, 733710, 3724710)}])
    label_store.import_file(str(good), "r1", "EPSG:32616", BUILDINGS)
    before = label_store.fingerprint("r1")

    empty = tmp_path / "empty.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    unknown = _write_geojson(tmp_path / "unknown.geojson", [{"class": "castle", "geometry": shapely.box(0, 0, 1, 1)}])
    partly = _write_geojson(tmp_path / "partly.geojson", [
        {"class": "building", "geometry": shapely.box(733700, 3724700, 733720, 3724720)},
        {"class": "volcano", "geometry": shapely.box(733730, 3724700, 733740, 3724710)},
    ])
    lines = _write_geojson(tmp_path / "lines.geojson", [{"class": "building", "geometry": shapely.LineString([(0, 0), (1, 1)])}])
    garbage = tmp_path / "garbage.geojson"
    garbage.write_text("{not json")
    cases = {empty: "no features", unknown: "unknown classes ['castle']", partly: "unknown classes ['volcano']",
             lines: "non-polygon", garbage: "cannot be read", tmp_path / "missing.gpkg": "does not exist"}
    for path, expected in cases.items():
        with pytest.raises(LabelError) as err:
            label_store.import_file(str(path), "r1", "EPSG:32616", BUILDINGS)
        assert str(path) in str(err.value) and expected in str(err.value), str(err.value)
    assert label_store.fingerprint("r1") == before
    assert len(label_store.labels("r1")) == 1


def test_invalid_geometry_is_repaired_and_counted(label_store, tmp_path):
    bowtie = shapely.Polygon([(733700, 3724700), (733720, 3724720), (733720, 3724700), (733700, 3724720)])
    assert not bowtie.is_valid
    path = _write_geojson(tmp_path / "bowtie.geojson", [
        {"class": "building", "geometry": bowtie},
        {"class": "building", "geometry": shapely.box(733750, 3724700, 733760, 3724710)},
    ])
    report = label_store.import_file(str(path), "r1", "EPSG:32616", BUILDINGS)
    assert report.repaired == 1 and report.features == 2
    stored = label_store.labels("r1")
    assert stored.geometry.is_valid.all()
    assert stored.geometry.area.sum() == pytest.approx(200 + 100)  # the bowtie's two triangles + the box


def test_review_flow_and_validity_window(label_store, tmp_path):
    path = _write_geojson(tmp_path / "l.geojson", [
        {"class": "building", "geometry": shapely.box(733700 + 20 * i, 3724700, 733710 + 20 * i, 3724710)} for i in range(3)
    ])
    label_store.import_file(str(path), "r1", "EPSG:32616", BUILDINGS, ImportOptions(status="test"))
    assert len(label_store.labels("r1")) == 0  # only `valid` trains
    fp = label_store.fingerprint("r1")
    ids = label_store.labels("r1", statuses=("test",))["label_id"].tolist()
    assert label_store.set_status("r1", ids[:2], "valid") == 2
    assert label_store.fingerprint("r1") != fp
    assert len(label_store.labels("r1")) == 2
    label_store.import_file(str(path), "r1", "EPSG:32616", BUILDINGS,
                            ImportOptions(valid_from="2024-01-01", valid_to="2024-06-30"))
    assert len(label_store.labels("r1", date="2024-03-01")) == 5
    assert len(label_store.labels("r1", date="2024-08-01")) == 2
