"""Real public scenes (tests/data, see its README) through `scenes` and `tiles`, checked against
values computed independently with rasterio/numpy."""

import hashlib
import json

import dagster as dg
import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from resources.data_store import DataStore
from resources.landing_source import LandingFolderSource
from resources.scene_sources import RegionSpec
from tests.support.paths import DATA
from tests.support.pipeline import land, materialize_partition, with_test_resources

REAL = {
    # region: (file, band names, dtype, date)
    "pucallpa": (DATA / "landsat_drift/pucallpa_2010.tif", ["SWIR1", "NIR", "R", "G"], "uint8", "2010-07-01"),
    "spacenet": (DATA / "spacenet_buildings/sample_geotiff.tif", ["PAN"], "uint16", "2017-03-01"),
    "landsatrgb": (DATA / "landsat_rgb/RGB.byte.tif", ["R", "G", "B"], "uint8", "2013-05-01"),
}


@pytest.fixture
def real_resources(tmp_path, landing):
    for region, (src, _, _, date) in REAL.items():
        land(landing, region, date, src)
    source = LandingFolderSource(
        root=str(landing),
        region_specs={r: RegionSpec(band_names=b, dtype=d) for r, (_, b, d, _) in REAL.items()},
    )
    return {"data_store": DataStore(root=str(tmp_path / "store")), "scene_source": source}


@pytest.mark.parametrize("region", sorted(REAL))
def test_real_scene_and_tiles_match_rasterio(instance, region, real_resources):
    src_path, bands, dtype, date = REAL[region]
    result = materialize_partition(instance, real_resources, region, date)
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"scene_integrity": True, "tile_stats_sanity": True, "label_geometries_valid": True}

    store = real_resources["data_store"]
    dims = {"region": region, "date": date}
    cog = store.path("scenes", dims, "scene.tif")
    scene_meta = result.asset_materializations_for_node("scenes")[0].metadata
    with rasterio.open(src_path) as ref, rasterio.open(cog) as out:
        assert out.crs == ref.crs
        assert out.transform == ref.transform
        assert tuple(out.bounds) == pytest.approx(tuple(ref.bounds))
        assert scene_meta["crs"].value == ref.crs.to_string()
        assert scene_meta["bounds"].value == pytest.approx(list(ref.bounds))
        assert scene_meta["source_sha256"].value[0] == hashlib.sha256(src_path.read_bytes()).hexdigest()
        np.testing.assert_array_equal(out.read(), ref.read())  # bit for bit, no resampling
        ref_valid = ref.read_masks().all(axis=0)  # a pixel is valid when every band holds data
        assert scene_meta["nodata_fraction"].value == pytest.approx(1 - ref_valid.mean(), abs=1e-6)
        assert (scene_meta["nodata_source"].value, scene_meta["nodata_value"].value) == ("file", ref.nodata)
        assert out.descriptions == tuple(bands)

        frame = gpd.read_parquet(store.path("tiles", dims, "tiles.parquet"))
        assert frame.crs == ref.crs
        assert len(frame) == result.asset_materializations_for_node("tiles")[0].metadata["tile_count"].value
        # Recompute a few tiles' stats straight from the original file.
        for _, tile in frame.sample(min(4, len(frame)), random_state=0).iterrows():
            win = Window(tile["col"], tile["row"], tile["width"], tile["height"])
            pixels = ref.read(window=win)
            valid = ref.read_masks(window=win).all(axis=0)
            assert tile["valid_fraction"] == pytest.approx(valid.mean())
            assert tuple(tile.geometry.bounds) == pytest.approx(tuple(rasterio.windows.bounds(win, ref.transform)))
            for b, name in enumerate(bands):
                vals = pixels[b][valid].astype(float)
                assert tile[f"{name}_mean"] == pytest.approx(vals.mean())
                assert tile[f"{name}_p98"] == pytest.approx(np.percentile(vals, 98))
                assert tile[f"{name}_max"] == vals.max()
    summary = json.loads(store.path("scenes", dims, "scene.json").read_text())
    assert summary["band_names"] == bands


def test_geographic_scene_is_tiled_in_degrees_or_reprojected(instance, real_resources):
    """pucallpa is EPSG:4326: by default tiles are in degrees; with a target CRS it is reprojected to UTM."""
    instance.add_dynamic_partitions("region", ["pucallpa"])
    from geoseg_assets.definitions import build_defs
    from geoseg_assets.partitions import partition_key

    job = build_defs(with_test_resources(real_resources)).resolve_job_def("imagery_job")
    result = job.execute_in_process(
        partition_key=partition_key("pucallpa", "2010-07-01"),
        instance=instance,
        run_config=dg.RunConfig(ops={"scenes": {"config": {"target_crs": "EPSG:32718", "target_resolution": 90.0}}}),
    )
    assert result.success
    cog = real_resources["data_store"].path("scenes", {"region": "pucallpa", "date": "2010-07-01"}, "scene.tif")
    with rasterio.open(cog) as out:
        assert out.crs.to_epsg() == 32718 and out.res == (90.0, 90.0)
        # ~697 x 0.00081 deg ~ 62.7 km wide at 8.4 S: about 700 pixels of 90 m.
        assert 650 < out.width < 720
