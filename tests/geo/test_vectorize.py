"""`vectorize_classes`: class raster -> GeoPackage polygons, streamed by block yet equal to a whole-raster run."""

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from pyproj import Geod
from rasterio.transform import from_origin

from geoseg_assets.geo import block_polygons, gpkg_output
from geoseg_assets.geo.errors import InputError
from geoseg_assets.geo.vectorize import vectorize_classes

NAMES = {0: "water", 1: "forest", 2: "urban", 3: "crop"}
ORIGIN = (500000.0, 5000000.0)  # EPSG:32633, 10 m pixels


def class_raster(path, classes, *, crs="EPSG:32633", transform=None):
    """Write a (h, w) array of class ids as a uint8 GeoTIFF with 255 as nodata."""
    height, width = classes.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8", crs=crs,
                       transform=transform or from_origin(*ORIGIN, 10, 10), nodata=255) as dst:
        dst.write(classes.astype(np.uint8), 1)
    return str(path)


def blobs(height=300, width=300, seed=0):
    """Irregular regions of classes 0-3 and ignore: coarse cells plus 5% speckle (corner contacts, holes)."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice([0, 1, 2, 3, 255], size=(height // 10 + 1, width // 10 + 1))
    classes = np.repeat(np.repeat(coarse, 10, axis=0), 10, axis=1)[:height, :width]
    speckle = rng.random((height, width)) < 0.05
    classes[speckle] = rng.choice([0, 1, 2, 3, 255], size=int(speckle.sum()))
    return classes.astype(np.uint8)


def polygons_by_class(path):
    frame = gpd.read_file(path, layer="predictions")
    return {cid: sorted(shapely.to_wkb(shapely.normalize(g.geometry.values)))
            for cid, g in frame.groupby("class_id")}


def test_rectangle_across_block_borders_is_one_polygon(tmp_path):
    classes = np.ones((300, 300), dtype=np.uint8)  # forest around ...
    classes[20:271, 100:263] = 3  # ... a crop field crossing block borders 128 and 256 both ways
    src = class_raster(tmp_path / "classes.tif", classes)
    summary = vectorize_classes(src, str(tmp_path / "out.gpkg"), NAMES, block=128)

    frame = gpd.read_file(tmp_path / "out.gpkg", layer="predictions")
    crop = frame[frame.class_id == 3]
    assert len(crop) == 1 and crop.class_name.iloc[0] == "crop"
    x0, y0 = ORIGIN
    assert tuple(crop.total_bounds) == (x0 + 100 * 10, y0 - 271 * 10, x0 + 263 * 10, y0 - 20 * 10)
    assert crop.area_m2.iloc[0] == 251 * 163 * 100 == crop.geometry.iloc[0].area
    assert len(crop.geometry.iloc[0].exterior.coords) == 5  # no leftover vertices where block seams were
    forest = frame[frame.class_id == 1]
    assert len(forest) == 1 and len(forest.geometry.iloc[0].interiors) == 1  # the frame, holed by the field
    assert forest.area_m2.iloc[0] == (300 * 300 - 251 * 163) * 100
    assert summary.features == 2 and summary.dropped_small == 0
    assert summary.per_class["crop"] == {"count": 1, "area_m2": 251 * 163 * 100}
    assert summary.per_class["water"] == {"count": 0, "area_m2": 0.0}
    assert frame.crs.to_epsg() == 32633


def test_blocked_output_equals_whole_raster_output(tmp_path):
    classes = blobs()
    src = class_raster(tmp_path / "classes.tif", classes)
    blocked = vectorize_classes(src, str(tmp_path / "blocked.gpkg"), NAMES, block=64)
    whole = vectorize_classes(src, str(tmp_path / "whole.gpkg"), NAMES, block=1000)

    assert blocked.features == whole.features > 100
    assert blocked.per_class == whole.per_class
    for cid, name in NAMES.items():
        assert blocked.per_class[name]["area_m2"] == (classes == cid).sum() * 100
    assert polygons_by_class(tmp_path / "blocked.gpkg") == polygons_by_class(tmp_path / "whole.gpkg")
    assert gpd.read_file(tmp_path / "blocked.gpkg").is_valid.all()


def test_ignore_pixels_make_no_polygon_and_unknown_ids_get_a_generic_name(tmp_path):
    classes = np.full((100, 100), 255, dtype=np.uint8)
    classes[10:40, 10:40] = 0
    classes[60:90, 20:50] = 7  # not in NAMES
    src = class_raster(tmp_path / "classes.tif", classes)
    summary = vectorize_classes(src, str(tmp_path / "out.gpkg"), NAMES, block=32)

    frame = gpd.read_file(tmp_path / "out.gpkg")
    assert sorted(zip(frame.class_id, frame.class_name)) == [(0, "water"), (7, "class_7")]
    assert frame.area_m2.sum() == frame.geometry.area.sum() == (30 * 30 + 30 * 30) * 100  # nothing for 255
    assert summary.per_class["class_7"] == {"count": 1, "area_m2": 30 * 30 * 100}


def test_min_area_drops_small_polygons_and_counts_them(tmp_path):
    classes = np.full((64, 64), 255, dtype=np.uint8)
    classes[2, 2] = classes[10, 40] = classes[50, 7] = 2  # three single pixels: 100 m² each
    classes[30:35, 30:35] = 2  # 2500 m², crossing the block corner at (32, 32)
    src = class_raster(tmp_path / "classes.tif", classes)
    summary = vectorize_classes(src, str(tmp_path / "out.gpkg"), NAMES, min_area_m2=500, block=32)

    frame = gpd.read_file(tmp_path / "out.gpkg")
    assert list(frame.area_m2) == [2500.0]
    assert summary.dropped_small == 3 and summary.features == 1
    assert summary.per_class["urban"] == {"count": 1, "area_m2": 2500.0}


def test_simplification_happens_after_merging_and_keeps_pixel_areas(tmp_path):
    rows, cols = np.indices((200, 200))
    classes = np.where(cols < rows, 0, 1).astype(np.uint8)  # a staircase border across many blocks
    src = class_raster(tmp_path / "classes.tif", classes)
    plain = vectorize_classes(src, str(tmp_path / "plain.gpkg"), NAMES, block=50)
    smooth = vectorize_classes(src, str(tmp_path / "smooth.gpkg"), NAMES, block=50, simplify_tolerance=15.0)

    frame = gpd.read_file(tmp_path / "smooth.gpkg")
    assert smooth.features == plain.features == 2 and frame.is_valid.all()
    assert smooth.per_class == plain.per_class  # area_m2 is the pixels' area, not the simplified outline's
    vertices = shapely.get_num_coordinates(frame.geometry.values)
    assert (vertices < 10).all()  # the 200-step staircase became a straight diagonal


def test_all_ignore_raster_gives_an_empty_layer_with_the_schema(tmp_path):
    src = class_raster(tmp_path / "classes.tif", np.full((50, 70), 255, dtype=np.uint8))
    summary = vectorize_classes(src, str(tmp_path / "out.gpkg"), NAMES, block=32)

    assert summary.features == 0 and all(v["count"] == 0 for v in summary.per_class.values())
    frame = gpd.read_file(tmp_path / "out.gpkg", layer="predictions")
    assert len(frame) == 0 and list(frame.columns) == ["class_id", "class_name", "area_m2", "geometry"]
    info = pyogrio.read_info(tmp_path / "out.gpkg", layer="predictions")
    assert info["geometry_type"] == "Polygon" and info["crs"] == "EPSG:32633"
    assert list(info["ogr_types"]) == ["OFTInteger", "OFTString", "OFTReal"]


def test_geographic_raster_area_is_geodesic(tmp_path):
    step = 0.001  # degrees
    classes = np.full((200, 200), 255, dtype=np.uint8)
    classes[40:160, 30:180] = 1  # crosses block borders at 64 and 128
    src = class_raster(tmp_path / "classes.tif", classes, crs="EPSG:4326",
                       transform=from_origin(10.0, 46.0, step, step))
    summary = vectorize_classes(src, str(tmp_path / "out.gpkg"), NAMES, block=64)

    frame = gpd.read_file(tmp_path / "out.gpkg")
    assert len(frame) == 1 and frame.crs.to_epsg() == 4326
    west, north = 10.0 + 30 * step, 46.0 - 40 * step
    east, south = 10.0 + 180 * step, 46.0 - 160 * step
    assert np.allclose(frame.total_bounds, (west, south, east, north), rtol=0, atol=1e-9)
    ring = shapely.segmentize(shapely.box(west, south, east, north), step / 10)  # edges follow parallels
    lon, lat = np.asarray(ring.exterior.coords).T
    expected, _ = Geod(ellps="WGS84").polygon_area_perimeter(lon, lat)
    assert frame.area_m2.iloc[0] == pytest.approx(abs(expected), rel=0.01)
    assert summary.per_class["forest"]["area_m2"] == pytest.approx(abs(expected), rel=0.01)


def test_failure_leaves_an_existing_destination_untouched(tmp_path):
    dst = tmp_path / "out.gpkg"
    dst.write_bytes(b"earlier result")
    with pytest.raises(InputError, match="cannot be opened"):
        vectorize_classes(str(tmp_path / "missing.tif"), str(dst), NAMES)
    assert dst.read_bytes() == b"earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gpkg"]  # no temp files left behind


def test_failure_while_writing_leaves_the_destination_untouched(tmp_path, monkeypatch):
    src = class_raster(tmp_path / "classes.tif", blobs())
    dst = tmp_path / "out.gpkg"
    dst.write_bytes(b"earlier result")
    calls = []

    def failing_on_the_fifth_block(data, win, ignore_id):
        calls.append(win)
        if len(calls) == 5:
            raise OSError("block 5 unreadable")
        return real(data, win, ignore_id)

    real = block_polygons._block_polygons
    monkeypatch.setattr(block_polygons, "_block_polygons", failing_on_the_fifth_block)
    monkeypatch.setattr(gpkg_output, "BATCH_FEATURES", 10)  # batches were already written when it fails
    with pytest.raises(OSError, match="block 5 unreadable"):
        vectorize_classes(src, str(dst), NAMES, block=64)
    assert dst.read_bytes() == b"earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif", "out.gpkg"]


def test_staging_in_tmp_dir_replaces_the_destination(tmp_path):
    src = class_raster(tmp_path / "classes.tif", blobs(80, 90, seed=3))
    dst = tmp_path / "out" / "pred.gpkg"
    dst.parent.mkdir()
    dst.write_bytes(b"earlier result")
    summary = vectorize_classes(src, str(dst), NAMES, block=32, tmp_dir=str(tmp_path / "scratch"))

    assert len(gpd.read_file(dst)) == summary.features > 0
    assert list((tmp_path / "scratch").iterdir()) == [] and [p.name for p in dst.parent.iterdir()] == ["pred.gpkg"]
