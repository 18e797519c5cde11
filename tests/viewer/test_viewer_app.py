"""The geoseg viewer's app over a real data store of GeoTIFFs (FastAPI's in-process client; the browser test is
tests/ops/test_demo.py): tiles are PNGs of the right layer, outside the scene there is no tile, the legend has the
classes in the COG's colours, and bad keys, unknown layers and missing outputs get a clear 4xx, never a file
outside the store."""

import io

import morecantile
import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from PIL import Image

from geoseg_assets.geo.classmap import DEFAULT_CLASS_MAP
from geoseg_assets.geo.class_raster import colour_table
from geoseg_assets.viewer import tiles
from geoseg_assets.viewer.app import create_app
from resources.catalog import DATA_DRIFT_HTML, PREDICTED_CLASSES, PREDICTED_PROBABILITIES, SCENE_COG
from resources.class_map import ClassMapResource
from resources.data_store import DataStore
from tests.support.rasters import random_scene, write_tif
from tests.support.stac import first_scene_item

DIMS = {"region": "alpha", "date": "2024-04-15"}
WATER = DEFAULT_CLASS_MAP.classes[0]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    store = DataStore(root=str(tmp_path_factory.mktemp("store")))
    scene = random_scene(height=256, width=256)
    scene[:, :, :32] = 0  # nodata fill at the left edge
    write_tif(store.file(SCENE_COG, DIMS), scene, descriptions=None)
    classes = np.full((1, 256, 256), WATER.id, dtype="uint8")
    classes[:, :, :32] = 255
    path = write_tif(store.file(PREDICTED_CLASSES, DIMS), classes, nodata=255)
    with rasterio.open(path, "r+") as dst:
        dst.write_colormap(1, colour_table(DEFAULT_CLASS_MAP))
    store.write_bytes(store.file(DATA_DRIFT_HTML, DIMS), b"<html><title>data drift</title></html>")
    probabilities = np.stack([np.full((256, 256), 250, "uint8"), np.zeros((256, 256), "uint8")])  # certain: water
    probabilities[:, :, :32] = 255
    with rasterio.open(write_tif(store.file(PREDICTED_PROBABILITIES, DIMS), probabilities, nodata=255), "r+") as dst:
        dst.descriptions = ("p_water", "p_forest")
    return TestClient(create_app(store, ClassMapResource())), store


def _tile_over_scene(store: DataStore, zoom: int = 15):
    west, south, east, north = tiles.geographic_bounds(store.file(SCENE_COG, DIMS))
    return morecantile.tms.get("WebMercatorQuad").tile((west + east) / 2, (south + north) / 2, zoom)


def test_scene_and_prediction_tiles_are_pngs_and_outside_the_scene_there_is_none(client):
    client, store = client
    tile = _tile_over_scene(store)
    for layer in ("scene", "prediction"):
        response = client.get(f"/tiles/{layer}/alpha/2024-04-15/{tile.z}/{tile.x}/{tile.y}.png")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(response.content))
        assert image.size == (256, 256) and image.mode == "RGBA"
    prediction = np.asarray(Image.open(io.BytesIO(client.get(
        f"/tiles/prediction/alpha/2024-04-15/{tile.z}/{tile.x}/{tile.y}.png").content)))
    opaque = prediction[prediction[..., 3] == 255][:, :3]
    assert len(opaque) and (opaque == WATER.color).all()  # drawn in the class COG's own colour
    assert client.get("/tiles/scene/alpha/2024-04-15/3/0/0.png").status_code == 204  # far away: no tile


def test_a_class_probability_is_a_viridis_tile_certain_water_bright_and_forest_dark(client):
    client, store = client
    tile = _tile_over_scene(store)
    colours = {}
    for name in ("water", "forest"):
        response = client.get(f"/tiles/probability/alpha/2024-04-15/{name}/{tile.z}/{tile.x}/{tile.y}.png")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        pixels = np.asarray(Image.open(io.BytesIO(response.content)))
        colours[name] = np.unique(pixels[pixels[..., 3] == 255][:, :3], axis=0)
    assert colours["water"].tolist() == [[253, 231, 36]] and colours["forest"].tolist() == [[68, 1, 84]]  # viridis ends
    missing = client.get(f"/tiles/probability/alpha/2024-04-15/road/{tile.z}/{tile.x}/{tile.y}.png")
    assert missing.status_code == 404 and "no probability of 'road'; it has water, forest" in missing.text
    assert '"probabilities": ["water", "forest"]' in client.get("/map/alpha/2024-04-15").text


def test_the_map_page_has_the_legend_the_layers_and_the_report_links(client):
    client, _ = client
    page = client.get("/map/alpha/2024-04-15").text
    for c in DEFAULT_CLASS_MAP.classes:
        assert f"{c.name} <small>({c.id})</small>" in page
    assert f"rgb{tuple(WATER.color)}" in page
    assert '"layers": ["prediction"]' in page and "/reports/data_drift/alpha/2024-04-15" in page
    assert client.get("/reports/data_drift/alpha/2024-04-15").text.startswith("<html><title>data drift")
    assert "/map/alpha/2024-04-15" in client.get("/").text


@pytest.mark.parametrize("url, status, says", [
    ("/map/alpha/2024-05-01", 404, "no scenes output for region=alpha date=2024-05-01"),
    ("/tiles/mask/alpha/2024-04-15/15/0/0.png", 404, "no masks output"),
    ("/tiles/dem/alpha/2024-04-15/15/0/0.png", 404, "no layer 'dem'"),
    ("/reports/secrets/alpha/2024-04-15", 404, "no report 'secrets'"),
    ("/map/..%2F..%2Fetc/2024-04-15", 404, ""),
    ("/map/al pha/2024-04-15", 400, "region"),
    ("/tiles/scene/alpha/..%2Fdate=2024-04-15/15/0/0.png", 404, ""),
])
def test_bad_keys_unknown_layers_and_missing_outputs_get_a_clear_error(client, url, status, says):
    client, _ = client
    response = client.get(url)
    assert response.status_code == status, response.text
    assert says in response.text


def test_the_stac_catalog_and_its_outputs_are_served_with_ranges_and_nothing_else(client, tmp_path):
    """/store/ serves the catalog and the files its items link to, so a STAC client crawls it by URL and reads a COG
    by HTTP ranges (what GDAL's /vsicurl/ does for QGIS); the rest of the data root, dot-files, traversal and symlinks
    out of the store are 404."""
    import json
    import os
    from urllib.parse import urljoin

    from geoseg_assets.geo.stac_catalog import PartitionOutputs, write_catalog
    from resources.catalog import SCENE_RECORD, STAC_CATALOG

    client, store = client
    scene = store.file(SCENE_COG, DIMS)
    with rasterio.open(scene) as src:
        record = {"crs": src.crs.to_string(), "transform": list(src.transform)[:6], "width": src.width,
                  "height": src.height, "count": src.count, "dtype": src.dtypes[0], "bounds": list(src.bounds)}
    store.write_bytes(store.file(SCENE_RECORD, DIMS), json.dumps(record).encode())
    write_catalog(store.file(STAC_CATALOG).parent, [PartitionOutputs(
        region="alpha", date="2024-04-15", scene_record=store.file(SCENE_RECORD, DIMS),
        scene_files={"data": scene, "metadata": store.file(SCENE_RECORD, DIMS)})], {})
    assert "/store/stac/catalog.json" in client.get("/").text

    item, item_url = first_scene_item(client)
    assert item["id"] == "scene-alpha-2024-04-15"
    cog_url = urljoin(item_url, item["assets"]["data"]["href"])
    assert cog_url == "http://testserver/store/scenes/region=alpha/date=2024-04-15/scene.tif"
    part = client.get(cog_url, headers={"Range": "bytes=100-1123"})
    assert part.status_code == 206 and part.content == scene.read_bytes()[100:1124]
    assert part.headers["accept-ranges"] == "bytes"

    outside = tmp_path / "secret.json"
    outside.write_text("{}")
    os.symlink(outside, store.partition_dir("scenes") / "leak.json")
    (store.partition_dir("stac") / ".catalog.json.tmp").write_text("{}")
    for path in ("dataset/manifest.json", "stac/../../secret.json", "scenes/leak.json", "stac/.catalog.json.tmp",
                 "scenes/region=alpha/date=2024-04-15/nothing.tif", "stac/catalog.html", ""):
        assert client.get(f"/store/{path}").status_code == 404, path
