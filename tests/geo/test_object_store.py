"""Rasters read in place from an S3-compatible store (geoseg_assets/geo/object_store.py) against a real S3-protocol
server (moto's, its own process on 127.0.0.1): tile statistics over `/vsis3/` equal those of the local file, a full
scan streams the object in one GET, a scene too wide to stream in full-width bands is read by range requests with
the same result, and a missing object or an unreachable store is an error, not an empty read."""


import pytest
import rasterio
from rasterio.errors import RasterioIOError

from geoseg_assets.geo.object_store import gdal_s3_options, s3_raster_env, sequential_scan_path, vsis3_path
from geoseg_assets.geo.scene_checks import SceneSpec
from geoseg_assets.geo.scene_io import write_scene_cog
from geoseg_assets.geo.tiling import compute_tiles
from tests.support.rasters import random_scene, write_tif
from tests.support.s3 import CREDENTIALS
from tests.support.webserver import free_port

BANDS = ["B", "G", "R", "NIR"]


def upload_scene(s3, tmp_path, width: int, height: int) -> tuple[str, str, str]:
    data = random_scene(height=height, width=width, seed=3)
    data[:, : height // 5, : width // 3] = 0  # a nodata corner
    cog = write_scene_cog([str(write_tif(tmp_path / "in.tif", data))], str(tmp_path / "scene.tif"), SceneSpec()).path
    bucket, key = s3.new_bucket(), "scenes/region=alpha/date=2024-04-15/scene.tif"
    s3.client().upload_file(cog, bucket, key)
    return cog, bucket, key


def env(s3):
    return s3_raster_env(s3.endpoint, CREDENTIALS["AWS_ACCESS_KEY_ID"], CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                         CREDENTIALS["AWS_DEFAULT_REGION"])


def records(tiles):
    return [(t.tile_id, t.bounds, t.valid_fraction, t.stats) for t in tiles]


# One tile row per band over the full width (streamed), and a scene whose tile row is cut into runs of columns.
@pytest.mark.parametrize("width,band_bytes,streamed", [(700, 256 * 700 * 8, True), (1300, 256 * 600 * 8, False)])
def test_tiles_read_over_vsis3_equal_the_local_files(s3, tmp_path, width, band_bytes, streamed):
    cog, bucket, key = upload_scene(s3, tmp_path, width, 900)
    local = compute_tiles(cog, BANDS, size=256, overlap=32, band_bytes=band_bytes)
    _, mark = s3.gets(bucket, key)
    with env(s3):
        remote = compute_tiles(vsis3_path(bucket, key), BANDS, size=256, overlap=32, band_bytes=band_bytes)
    assert records(remote) == records(local) and len(local) == 4 * (3 if width == 700 else 6)
    requests, _ = s3.gets(bucket, key, mark)
    if streamed:  # full-width bands, top to bottom: the object streams (header, then the rest), whatever the bands
        assert requests <= 2
    else:  # runs of columns go back in the file: range requests
        assert requests > 2


def test_a_missing_object_or_an_unreachable_store_is_an_error(s3, tmp_path):
    _, bucket, key = upload_scene(s3, tmp_path, 300, 300)
    with env(s3), pytest.raises(RasterioIOError, match="does not exist"):
        rasterio.open(vsis3_path(bucket, "scenes/none.tif"))
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: a store that is down
    with s3_raster_env(closed, "key", "secret"), pytest.raises(RasterioIOError):
        rasterio.open(vsis3_path(bucket, key))
    with env(s3), rasterio.open(vsis3_path(bucket, key)) as src:  # the right pair reads it
        assert src.read(1, window=((0, 8), (0, 8))).shape == (8, 8)


def test_paths_and_options():
    assert vsis3_path("bucket", "/a/b.tif") == "/vsis3/bucket/a/b.tif"
    with pytest.raises(ValueError, match="not a bucket name"):
        vsis3_path("a/b", "c.tif")
    assert sequential_scan_path("/vsis3/b/k.tif") == "/vsis3_streaming/b/k.tif"
    assert sequential_scan_path("/data/store/scene.tif") == "/data/store/scene.tif"
    options = gdal_s3_options("http://127.0.0.1:9000")
    assert options["AWS_S3_ENDPOINT"] == "127.0.0.1:9000" and options["AWS_HTTPS"] == "NO"
    assert options["AWS_VIRTUAL_HOSTING"] == "FALSE" and options["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert "AWS_S3_ENDPOINT" not in gdal_s3_options()  # AWS itself
    assert not any("SECRET" in k or "KEY_ID" in k for k in options)  # credentials go through a session only
    with pytest.raises(ValueError, match="not an http"):
        gdal_s3_options("127.0.0.1:9000")
