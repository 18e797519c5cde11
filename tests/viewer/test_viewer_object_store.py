"""The geoseg viewer over an `ObjectDataStore` (issue 19): outputs in a bucket of a real S3-protocol server (moto's,
its own process), nothing of them on the local disk. Map pages and tiles read the COGs in place over `/vsis3/`; the
STAC catalog written into the bucket is crawled through /store/ as a STAC client does, and a COG asset it lists is
read by an HTTP range that the viewer serves with one ranged GET of the object; reports come from the bucket."""

import json
from pathlib import Path
from urllib.parse import urljoin

import dagster as dg
import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient

from geoseg_assets.geo.classmap import DEFAULT_CLASS_MAP
from geoseg_assets.geo.class_raster import colour_table
from geoseg_assets.geo.stac_catalog import PartitionOutputs, write_catalog
from geoseg_assets.geo.stac_validation import validate_catalog
from geoseg_assets.viewer import tiles
from geoseg_assets.viewer.app import create_app
from resources.catalog import DATA_DRIFT_HTML, PREDICTED_CLASSES, SCENE_COG, SCENE_RECORD, STAC_CATALOG
from resources.class_map import ClassMapResource
from resources.object_data_store import ObjectDataStore
from tests.support.rasters import random_scene, write_tif
from tests.support.stac import first_scene_item

DIMS = {"region": "alpha", "date": "2024-04-15"}
WATER = DEFAULT_CLASS_MAP.classes[0]


@pytest.fixture
def viewer(s3_env, tmp_path):
    """A bucket holding one partition's scene, prediction, drift report and STAC catalog; the viewer over it."""
    bucket = s3_env.new_bucket()
    store = ObjectDataStore(url=f"s3://{bucket}/outputs", endpoint_url=s3_env.endpoint, root=str(tmp_path / "cache"))
    scene = write_tif(tmp_path / "scene.tif", random_scene(height=256, width=256))
    classes = write_tif(tmp_path / "classes.tif", np.full((1, 256, 256), WATER.id, dtype="uint8"), nodata=255)
    with rasterio.open(classes, "r+") as dst:
        dst.write_colormap(1, colour_table(DEFAULT_CLASS_MAP))
    with rasterio.open(scene) as src:
        record = {"crs": src.crs.to_string(), "transform": list(src.transform)[:6], "width": src.width,
                  "height": src.height, "count": src.count, "dtype": src.dtypes[0], "bounds": list(src.bounds)}
    with store.publishing() as outputs:
        outputs.path(store.file(SCENE_COG, DIMS)).write_bytes(scene.read_bytes())
        outputs.path(store.file(PREDICTED_CLASSES, DIMS)).write_bytes(classes.read_bytes())
        outputs.write_bytes(store.file(DATA_DRIFT_HTML, DIMS), b"<html><title>data drift</title></html>")
        outputs.write_bytes(store.file(SCENE_RECORD, DIMS), json.dumps(record).encode())
    root = store.file(STAC_CATALOG).parent
    write_catalog(root, [PartitionOutputs(
        region="alpha", date="2024-04-15", scene_record=store.file(SCENE_RECORD, DIMS),
        scene_files={"data": store.file(SCENE_COG, DIMS), "metadata": store.file(SCENE_RECORD, DIMS)})], {},
        files=store.catalog_files())
    with dg.build_resources({"data_store": store}) as built:  # as the viewer's main builds it
        yield TestClient(create_app(built.data_store, ClassMapResource())), built.data_store, s3_env, scene


def test_maps_tiles_and_reports_come_from_the_bucket(viewer):
    client, store, _, _ = viewer
    assert "/map/alpha/2024-04-15" in client.get("/").text
    page = client.get("/map/alpha/2024-04-15")
    assert page.status_code == 200 and "water" in page.text and '"prediction"' in page.text
    west, south, east, north = tiles.geographic_bounds(store.file(SCENE_COG, DIMS))
    import morecantile

    tile = morecantile.tms.get("WebMercatorQuad").tile((west + east) / 2, (south + north) / 2, 15)
    for layer in ("scene", "prediction"):
        response = client.get(f"/tiles/{layer}/alpha/2024-04-15/{tile.z}/{tile.x}/{tile.y}.png")
        assert response.status_code == 200 and response.content.startswith(b"\x89PNG"), layer
    assert "data drift" in client.get("/reports/data_drift/alpha/2024-04-15").text
    assert client.get("/reports/prediction_drift/alpha/2024-04-15").status_code == 404
    assert client.get("/map/alpha/2030-01-01").status_code == 404
    local = [p for p in Path(store.root).rglob("*") if p.is_file() and ".tmp" not in p.parts]
    assert local == []  # nothing of the outputs was downloaded to read them


def test_the_stac_catalog_in_the_bucket_validates_and_is_crawled_with_ranges(viewer):
    client, store, s3, scene = viewer
    assert validate_catalog(store.file(STAC_CATALOG).parent, store.catalog_files()) == []
    item, item_url = first_scene_item(client)
    cog_url = urljoin(item_url, item["assets"]["data"]["href"])
    assert cog_url == "http://testserver/store/scenes/region=alpha/date=2024-04-15/scene.tif"
    key = store.key_of(store.file(SCENE_COG, DIMS))
    bucket = store.bucket_and_prefix()[0]
    _, since = s3.gets(bucket, key)
    part = client.get(cog_url, headers={"Range": "bytes=100-1123"})
    assert part.status_code == 206 and part.content == scene.read_bytes()[100:1124]
    assert part.headers["content-range"] == f"bytes 100-1123/{scene.stat().st_size}"
    assert s3.gets(bucket, key, since)[0] == 1  # one ranged GET of the object per request
    whole = client.get(cog_url)
    assert whole.status_code == 200 and whole.content == scene.read_bytes()
    assert client.get(cog_url, headers={"Range": "bytes=5-1,7-9"}).status_code == 416
    for path in ("dataset/manifest.json", "stac/../scenes/x.json", "stac/.tmp/x.json", "scenes/region=alpha/none.tif"):
        assert client.get(f"/store/{path}").status_code == 404, path
