"""Nodata of real products: declared in the product spec, the file's own, or constant fill connected to
the scene border detected; internal masks and alpha honoured. The recorded nodata fraction is the COG's
actual nodata share and the tiles' (1 - valid fraction) mean."""

import datetime as dt
import json

import dagster as dg
import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
from rasterio.windows import Window
from scipy import ndimage

from geoseg_assets.geo.errors import SceneError
from geoseg_assets.geo.prediction_io import SceneWindowReader
from geoseg_assets.geo.scene_checks import SceneSpec
from geoseg_assets.geo.scene_io import write_scene_cog
from geoseg_assets.geo.tiling import compute_tiles
from geoseg_assets.monitoring.features import scene_tile_features
from resources.landing_source import LandingFolderSource
from resources.scene_sources import RegionSpec
from resources.stac_source import StacCatalogSource
from tests.support.paths import DATA
from tests.support.pipeline import materialize_partition
from tests.support.rasters import random_scene, write_tif
from tests.support.runs import failure_text

BANDS = ["B", "G", "R", "NIR"]
DATE = "2024-06-15"
H, W, TILE = 512, 768, 256  # a 2 x 3 grid of whole tiles, so tile means equal pixel shares exactly
RGB_BYTE = DATA / "landsat_rgb/RGB.byte.tif"


def footprint_fill(height=H, width=W) -> np.ndarray:
    """Fill outside a Landsat-like footprint: the left 256 columns (two tiles of pure fill) and two
    slanted wedges on the right, all connected to the border."""
    rows, cols = np.mgrid[0:height, 0:width]
    return (cols < 256) | (cols > width - 140 + rows // 4) | (cols > width - 40 - rows // 3 + height // 3)


def zero_fill_scene(seed=0) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(4, H, W) uint16 data with zero fill outside the footprint, a 30 x 30 zero block inside it (dark
    water, say: data), the fill mask, and the interior block's slices."""
    data = random_scene(height=H, width=W, seed=seed)
    fill = footprint_fill()
    data[:, fill] = 0
    block = np.s_[300:330, 400:430]
    data[(slice(None), *block)] = 0
    return data, fill, block


def cog_nodata_share(path) -> tuple[float, np.ndarray]:
    """The COG's actual nodata share as GDAL reads it (every band's mask), and the invalid pixels."""
    with rasterio.open(path) as src:
        invalid = ~(src.read_masks().all(axis=0) > 0)
    return float(invalid.mean()), invalid


def tile_nodata_mean(path, bands) -> float:
    return float(np.mean([1 - r.valid_fraction for r in compute_tiles(str(path), bands, size=TILE)]))


def scene_metadata(result) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node("scenes")[0].metadata.items()}


def test_zero_fill_edges_without_nodata_become_nodata_and_pure_fill_tiles_are_dropped(instance, landing, landing_source, store):
    data, fill, block = zero_fill_scene()
    write_tif(landing / "alpha" / DATE / "scene.tif", data, nodata=None)
    result = materialize_partition(instance, {"data_store": store, "scene_source": landing_source},
                                   "alpha", DATE)
    assert result.success
    meta = scene_metadata(result)
    assert meta["nodata_source"] == "detected border fill" and meta["nodata_value"] == 0
    assert meta["nodata_fraction"] == pytest.approx(fill.mean(), abs=1e-6)
    assert f"{fill.mean() * 100:.1f} % constant 0 fill connected to the border recorded as nodata=0" in meta["nodata_note"]
    assert "region.json" in meta["nodata_note"]

    dims = {"region": "alpha", "date": DATE}
    cog = store.path("scenes", dims, "scene.tif")
    share, invalid = cog_nodata_share(cog)
    np.testing.assert_array_equal(invalid, fill)  # exactly the border fill; the interior zero block is data
    assert share == pytest.approx(meta["nodata_fraction"], abs=1e-6)
    assert tile_nodata_mean(cog, BANDS) == pytest.approx(share, abs=1e-9)
    with rasterio.open(cog) as src:
        assert src.nodata == 0 and src.count == 4

    tiles = gpd.read_parquet(store.path("tiles", dims, "tiles.parquet"))
    tiles_meta = result.asset_materializations_for_node("tiles")[0].metadata
    assert tiles_meta["grid_size"].value == 6 and tiles_meta["dropped_count"].value == 2
    assert not {(0, 0), (256, 0)} & set(zip(tiles["row"], tiles["col"]))  # the two tiles of pure fill
    assert (tiles["valid_fraction"] >= 0.5).all()
    # Downstream readers ignore the fill too: drift features and the prediction window reader.
    features = scene_tile_features(str(cog), BANDS, tile=TILE, min_valid_fraction=0.0)
    tile_valid = 1 - fill.reshape(2, TILE, 3, TILE).mean(axis=(1, 3)).ravel()
    assert sorted(features["valid_fraction"]) == pytest.approx(sorted(tile_valid[tile_valid > 0]))
    reader = SceneWindowReader(str(cog), BANDS)
    try:
        _, valid = reader(200, 250, 300, 200)
    finally:
        reader.close()
    np.testing.assert_array_equal(valid, ~fill[250:450, 200:500])


def test_interior_fill_value_not_connected_to_the_border_stays_valid(tmp_path):
    data, fill, block = zero_fill_scene(seed=1)
    # A second zero block touching the fill wedge is part of the fill (connected), the first is not.
    data[:, 100:120, 250:270] = 0
    src = write_tif(tmp_path / "raw.tif", data, nodata=None)
    summary = write_scene_cog([str(src)], str(tmp_path / "scene.tif"), SceneSpec(band_names=tuple(BANDS)))
    _, invalid = cog_nodata_share(summary.path)
    assert not invalid[block].any()
    assert invalid[100:120, 250:270].all()
    expected = fill.copy()
    expected[100:120, 250:270] = True
    np.testing.assert_array_equal(invalid, expected)
    assert summary.nodata_fraction == pytest.approx(expected.mean())
    records = {(r.row, r.col): r.valid_fraction for r in compute_tiles(summary.path, BANDS, size=TILE)}
    assert records[(256, 256)] == 1.0  # the tile holding the interior zero block: all data


def test_fill_of_the_dtype_maximum_is_detected(tmp_path):
    data = random_scene(bands=3, height=256, width=256, seed=2, dtype="uint8")
    data[data == 255] = 254
    data[:, :, 200:] = 255  # saturated-white fill on the right edge
    src = write_tif(tmp_path / "raw.tif", data, nodata=None)
    summary = write_scene_cog([str(src)], str(tmp_path / "scene.tif"), SceneSpec(band_names=("R", "G", "B")))
    assert (summary.nodata, summary.nodata_source) == (255, "detected border fill")
    assert summary.nodata_fraction == pytest.approx(56 / 256)


def test_scene_without_fill_records_none(tmp_path):
    src = write_tif(tmp_path / "raw.tif", random_scene(height=128, width=128), nodata=None)
    summary = write_scene_cog([str(src)], str(tmp_path / "scene.tif"), SceneSpec(band_names=tuple(BANDS)))
    assert (summary.nodata, summary.nodata_source, summary.nodata_fraction) == (None, "none", 0.0)
    with rasterio.open(summary.path) as out:
        assert out.nodata is None and out.read_masks().all()


def test_region_json_nodata_is_used_and_overrides_the_file(instance, landing, landing_source, store):
    data, _, _ = zero_fill_scene(seed=3)
    data[0, 10:20, 600:610] = 65535  # the file's (wrong) nodata value appears as data
    write_tif(landing / "alpha" / DATE / "scene.tif", data, nodata=65535)
    sidecar = landing / "alpha" / "region.json"
    sidecar.write_text(json.dumps({"band_names": BANDS, "dtype": "uint16", "nodata": 0}))
    result = materialize_partition(instance, {"data_store": store, "scene_source": landing_source},
                                   "alpha", DATE)
    assert result.success
    meta = scene_metadata(result)
    assert meta["nodata_source"] == "declared" and meta["nodata_value"] == 0
    assert str(sidecar) in meta["nodata_note"] and "the file's own is 65535" in meta["nodata_note"]
    declared_invalid = (data == 0).any(axis=0)  # a declared value means what nodata means in GDAL
    assert meta["nodata_fraction"] == pytest.approx(declared_invalid.mean(), abs=1e-6)
    cog = store.path("scenes", {"region": "alpha", "date": DATE}, "scene.tif")
    share, invalid = cog_nodata_share(cog)
    np.testing.assert_array_equal(invalid, declared_invalid)
    assert tile_nodata_mean(cog, BANDS) == pytest.approx(share, abs=1e-9)
    with rasterio.open(cog) as src:
        assert src.nodata == 0


def test_bad_region_json_nodata_fails_naming_the_file_and_keeps_the_earlier_cog(instance, landing, landing_source, store):
    resources = {"data_store": store, "scene_source": landing_source}
    write_tif(landing / "alpha" / DATE / "scene.tif", random_scene(height=256, width=256), nodata=0)
    assert materialize_partition(instance, resources, "alpha", DATE).success
    cog = store.path("scenes", {"region": "alpha", "date": DATE}, "scene.tif")
    before = cog.read_bytes()

    sidecar = landing / "alpha" / "region.json"
    sidecar.write_text(json.dumps({"band_names": BANDS, "dtype": "uint16", "nodata": 70000}))
    result = materialize_partition(instance, resources, "alpha", DATE, raise_on_error=False)
    assert not result.success
    message = failure_text(result)
    assert str(sidecar) in message and "declares nodata 70000" in message and "0..65535" in message
    assert "Fix: set `nodata` to a number a uint16 pixel can hold" in message
    assert not [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert cog.read_bytes() == before


@pytest.mark.parametrize("content, expected", [
    ({"band_names": BANDS, "dtype": "uint8", "nodata": 1.5}, "declares nodata 1.5, which uint8 pixels cannot hold"),
    ({"band_names": BANDS, "nodata": "zero"}, "`nodata`: Input should be a valid number"),
    ("{not json", "is not valid JSON"),
])
def test_unusable_region_json_is_refused_naming_it(landing, content, expected):
    sidecar = landing / "alpha" / "region.json"
    sidecar.parent.mkdir()
    sidecar.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(SceneError, match=expected) as err:
        LandingFolderSource(root=str(landing)).spec_for("alpha")
    assert err.value.path == str(sidecar) and "e.g." in err.value.fix


def test_declared_nodata_is_checked_against_the_file_dtype(tmp_path):
    src = write_tif(tmp_path / "raw.tif", random_scene(height=64, width=64), nodata=None)
    spec = SceneSpec(band_names=tuple(BANDS), nodata=-1, nodata_declared_in="landing/alpha/region.json")
    with pytest.raises(SceneError, match=r"landing/alpha/region.json: declares nodata -1, which uint16 pixels"):
        write_scene_cog([str(src)], str(tmp_path / "scene.tif"), spec)
    assert not (tmp_path / "scene.tif").exists()


def test_region_specs_config_and_stac_item_declare_nodata(tmp_path):
    tif = write_tif(tmp_path / "stac" / "a.tif", random_scene(height=64, width=64), nodata=None)
    catalog = pystac.Catalog(id="scenes", description="nodata")
    item = pystac.Item(id="a-1", geometry=None, bbox=None, datetime=dt.datetime(2024, 6, 15), properties={"region": "alpha"})
    item.add_asset("image", pystac.Asset(href=str(tif), media_type=pystac.MediaType.COG,
                                         extra_fields={"raster:bands": [{"nodata": 7}] * 4}))
    catalog.add_item(item)
    catalog.normalize_hrefs(str(tmp_path / "stac"))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)

    source = StacCatalogSource(catalog_path=str(tmp_path / "stac" / "catalog.json"))
    ref = source.fetch("alpha", "2024-06-15")
    assert (ref.nodata, source.scene_spec(ref).nodata) == (7, 7)
    assert "item 'a-1'" in source.scene_spec(ref).nodata_declared_in
    configured = StacCatalogSource(catalog_path=source.catalog_path,
                                   region_specs={"alpha": RegionSpec(band_names=BANDS, dtype="uint16", nodata=0)})
    assert configured.scene_spec(ref).nodata == 0  # the region's own declaration wins over the item's
    with pytest.raises(SceneError, match=r"region_specs\['alpha'\].*declares nodata -5"):
        StacCatalogSource(catalog_path=source.catalog_path,
                          region_specs={"alpha": RegionSpec(band_names=BANDS, dtype="uint16", nodata=-5)}).spec_for("alpha")


def test_internal_mask_band_is_honoured(tmp_path):
    data = random_scene(height=H, width=W, seed=4)
    data[:, :, :64] = 0  # the file's own nodata on the left ...
    mask = np.full((H, W), 255, dtype=np.uint8)
    mask[100:400, 300:500] = 0  # ... and a GDAL mask band hiding a cloud
    src = tmp_path / "raw.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        write_tif(src, data, nodata=0)
        with rasterio.open(src, "r+") as dst:
            dst.write_mask(mask)
    with rasterio.open(src) as raw:  # GDAL itself lets the mask band hide the nodata value
        assert raw.mask_flag_enums[0] == [rasterio.enums.MaskFlags.per_dataset]
    expected = (mask == 0) | (data == 0).any(axis=0)
    summary = write_scene_cog([str(src)], str(tmp_path / "scene.tif"), SceneSpec(band_names=tuple(BANDS)))
    share, invalid = cog_nodata_share(summary.path)
    np.testing.assert_array_equal(invalid, expected)
    assert summary.nodata_fraction == pytest.approx(share)
    assert share == pytest.approx(expected.mean())
    assert tile_nodata_mean(summary.path, BANDS) == pytest.approx(share)
    assert summary.nodata_source == "file" and "internal mask is honoured" in summary.nodata_note
    with rasterio.open(summary.path) as out:
        assert out.nodata == 0 and not out.read()[:, invalid].any()  # masked pixels hold nodata, not the cloud


def test_alpha_band_is_dropped_and_honoured(instance, landing, store):
    rgb = random_scene(bands=3, height=H, width=W, seed=5, dtype="uint8")
    alpha = np.where(footprint_fill(), 0, 255).astype(np.uint8)
    alpha[200:260, 500:560] = 0  # transparent inside too
    write_tif(landing / "rgba" / DATE / "scene.tif", np.concatenate([rgb, alpha[None]]), nodata=None,
              photometric="RGB", alpha="YES")
    source = LandingFolderSource(root=str(landing), region_specs={"rgba": RegionSpec(band_names=["R", "G", "B"], dtype="uint8")})
    result = materialize_partition(instance, {"data_store": store, "scene_source": source},
                                   "rgba", DATE)
    assert result.success
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()}["scene_integrity"]
    meta = scene_metadata(result)
    assert meta["bands"] == ["R", "G", "B"] and "alpha band 4 dropped" in meta["nodata_note"]
    cog = store.path("scenes", {"region": "rgba", "date": DATE}, "scene.tif")
    share, invalid = cog_nodata_share(cog)
    np.testing.assert_array_equal(invalid, alpha == 0)
    assert meta["nodata_fraction"] == pytest.approx(share, abs=1e-6)
    assert tile_nodata_mean(cog, ["R", "G", "B"]) == pytest.approx(share, abs=1e-9)
    with rasterio.open(cog) as out:
        assert out.count == 3
        np.testing.assert_array_equal(out.read()[:, ~invalid], rgb[:, ~invalid])


def test_reprojected_scene_without_nodata_records_the_footprint_fill(tmp_path):
    src = write_tif(tmp_path / "raw.tif", random_scene(height=200, width=200), nodata=None)
    summary = write_scene_cog([str(src)], str(tmp_path / "scene.tif"), SceneSpec(band_names=tuple(BANDS)),
                              target_crs="EPSG:4326", target_resolution=0.0002)
    assert (summary.nodata, summary.nodata_source) == (0, "reprojection")
    assert summary.nodata_fraction > 0
    assert summary.nodata_fraction == pytest.approx(cog_nodata_share(summary.path)[0])


@pytest.fixture
def landsat_without_nodata(tmp_path):
    """The real Landsat 7 crop (rotated footprint, zero fill) with its nodata tag removed: the issue's case."""
    with rasterio.open(RGB_BYTE) as src:
        data, profile = src.read(), src.profile
        declared_invalid = ~(src.read_masks().all(axis=0) > 0)
    profile.pop("nodata")
    path = tmp_path / "landsat.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path, data, declared_invalid


def test_real_landsat_fill_is_detected_when_the_file_declares_no_nodata(landsat_without_nodata, tmp_path):
    path, data, declared_invalid = landsat_without_nodata
    summary = write_scene_cog([str(path)], str(tmp_path / "scene.tif"), SceneSpec(band_names=("R", "G", "B"), dtype="uint8"))
    # Independently: 8-bit zero components (scipy.ndimage.label) that touch the border.
    labels, _ = ndimage.label((data == 0).all(axis=0))
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    expected = np.isin(labels, edge[edge > 0])
    assert expected.mean() > 0.15  # the rotated footprint leaves a lot of fill
    share, invalid = cog_nodata_share(summary.path)
    np.testing.assert_array_equal(invalid, expected)
    assert summary.nodata_source == "detected border fill" and summary.nodata == 0
    assert summary.nodata_fraction == pytest.approx(share)
    assert share == pytest.approx(expected.mean())
    # What the file's declared nodata 0 marks, up to the footprint's edge pixels with one band 0.
    assert summary.nodata_fraction == pytest.approx(declared_invalid.mean(), abs=0.005)


def test_real_landsat_with_its_declared_nodata_is_unchanged(instance, landing, store):
    land_dir = landing / "landsatrgb" / "2013-05-01"
    land_dir.mkdir(parents=True)
    (land_dir / "RGB.byte.tif").write_bytes(RGB_BYTE.read_bytes())
    source = LandingFolderSource(root=str(landing), region_specs={"landsatrgb": RegionSpec(band_names=["R", "G", "B"], dtype="uint8")})
    result = materialize_partition(instance, {"data_store": store, "scene_source": source},
                                   "landsatrgb", "2013-05-01")
    assert result.success
    meta = scene_metadata(result)
    assert (meta["nodata_source"], meta["nodata_value"], meta["nodata_note"]) == ("file", 0, "nodata=0 from the file")
    cog = store.path("scenes", {"region": "landsatrgb", "date": "2013-05-01"}, "scene.tif")
    with rasterio.open(RGB_BYTE) as ref, rasterio.open(cog) as out:
        np.testing.assert_array_equal(out.read(), ref.read())
        assert out.mask_flag_enums == ref.mask_flag_enums  # nodata-defined, no internal mask added
        assert meta["nodata_fraction"] == pytest.approx(1 - ref.read_masks().all(axis=0).mean(), abs=1e-6)
        assert out.read(window=Window(0, 0, 64, 64)).sum() == 0  # the fill corner is still nodata 0
