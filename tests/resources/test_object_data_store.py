"""ObjectDataStore (issue 19, item 1) against a real S3-protocol server (moto's standalone server, its own process on
127.0.0.1): the DataStore layout as object keys, outputs published atomically (temp keys, then copies; a failed or
killed step leaves the earlier objects and nothing half-written at a final key), listings through the API, rasters
read in place over `/vsis3/`, the training set cached locally once per object version, and errors that name the
object and the fix. The local root holds no output, only scratch files and caches."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import rasterio

from resources.catalog import DATASET_MANIFEST, PREDICTION_RECORD, SCENE_COG, SCENE_RECORD, TILE_TABLE
from resources.data_store import UnsafePartitionKeyError
from resources.object_data_store import ObjectDataStore, ObjectStoreError
from tests.support.paths import REPO
from tests.support.rasters import random_scene, write_tif

ALPHA = {"region": "alpha", "date": "2024-06-15"}


@pytest.fixture
def bucket(s3_env):
    return s3_env.new_bucket()


@pytest.fixture
def store(s3_env, bucket, tmp_path) -> ObjectDataStore:
    return ObjectDataStore(url=f"s3://{bucket}/geoseg/outputs", endpoint_url=s3_env.endpoint, root=str(tmp_path / "cache"))


def local_files(store: ObjectDataStore) -> list[str]:
    """Files under the store's local root other than its scratch folder and caches."""
    root = Path(store.root)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.relative_to(root).parts[0] not in (".tmp", "cache"))


def test_outputs_are_objects_laid_out_like_the_folder_store(store, s3_env, bucket):
    cog = store.file(SCENE_COG, ALPHA)
    assert str(cog) == f"/vsis3/{bucket}/geoseg/outputs/scenes/region=alpha/date=2024-06-15/scene.tif"
    assert store.display(cog) == f"s3://{bucket}/geoseg/outputs/scenes/region=alpha/date=2024-06-15/scene.tif"
    assert store.file(SCENE_COG, {"date": "2024-06-15", "region": "alpha"}) == cog  # Dagster's key order
    with store.publishing() as outputs:
        outputs.write_bytes(store.file(SCENE_RECORD, ALPHA), json.dumps({"crs": "EPSG:32633"}).encode())
        outputs.write_bytes(store.file(SCENE_RECORD, {"region": "beta", "date": "2024-04-15"}), b"{}")
    assert s3_env.keys(bucket) == ["geoseg/outputs/scenes/region=alpha/date=2024-06-15/scene.json",
                                   "geoseg/outputs/scenes/region=beta/date=2024-04-15/scene.json"]
    assert store.read_json(SCENE_RECORD, ALPHA) == {"crs": "EPSG:32633"}
    assert store.exists(SCENE_RECORD, ALPHA) and not store.exists(SCENE_COG, ALPHA)
    assert store.partitions_with(SCENE_RECORD) == [ALPHA, {"region": "beta", "date": "2024-04-15"}]
    assert store.dates_with(SCENE_RECORD, "alpha") == ["2024-06-15"]
    assert store.previous_date(SCENE_RECORD, "alpha", "2024-07-01") == "2024-06-15"
    with pytest.raises(FileNotFoundError):
        store.read_json(PREDICTION_RECORD, ALPHA)
    store.discard(SCENE_RECORD, {"region": "beta", "date": "2024-04-15"})
    assert store.partitions_with(SCENE_RECORD) == [ALPHA]
    assert local_files(store) == [] and not any(Path(store.root, ".tmp").iterdir())


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "x" * 65, ".hidden"])
def test_hostile_partition_keys_never_become_object_keys(store, s3_env, bucket, bad):
    with pytest.raises(UnsafePartitionKeyError):
        store.file(SCENE_RECORD, {"region": bad, "date": "2024-06-15"})
    with pytest.raises(ValueError, match="not a path of the store"):
        store.read_bytes(f"/vsis3/{bucket}/elsewhere/scene.json")  # a path outside the prefix is refused
    assert s3_env.keys(bucket) == []


def test_a_url_that_is_not_a_bucket_is_refused_naming_the_setting(tmp_path):
    for url in ("/data/store", "s3://", "s3://Bad_Bucket/x", "s3://bucket/a/../b"):
        with pytest.raises(ValueError, match="is not s3://<bucket>/<prefix>"):
            ObjectDataStore(url=url, root=str(tmp_path)).partition_dir("scenes")


def test_a_failed_step_leaves_every_earlier_object_and_no_temp_key(store, s3_env, bucket):
    record, table = store.file(SCENE_RECORD, ALPHA), store.file(TILE_TABLE, ALPHA)
    with store.publishing() as outputs:
        outputs.write_bytes(record, b'{"v": 1}')
        outputs.write_bytes(table, b"table v1")
    with pytest.raises(RuntimeError, match="crash after the first output"):
        with store.publishing() as outputs:
            outputs.write_bytes(record, b'{"v": 2}')
            raise RuntimeError("crash after the first output")
    assert store.read_json(SCENE_RECORD, ALPHA) == {"v": 1}
    assert len(s3_env.keys(bucket)) == 2 and local_files(store) == []


def test_a_copy_failing_midway_puts_the_replaced_objects_back(store, s3_env, bucket):
    """Both outputs are uploaded, the first is copied over its key, the second's copy fails: the first gets its
    earlier bytes back, and the step fails naming the object, not retried."""
    from geoseg_assets.geo.object_publish import ObjectPublication

    record, table = store.file(SCENE_RECORD, ALPHA), store.file(TILE_TABLE, ALPHA)
    with store.publishing() as outputs:
        outputs.write_bytes(record, b'{"v": 1}')
        outputs.write_bytes(table, b"table v1")

    class FailingSecondCopy(ObjectPublication):
        copies = 0

        def _copy(self, source_key, key):
            if not key.split("/")[-1].startswith(".") and ".tmp/" not in key:
                FailingSecondCopy.copies += 1
                if FailingSecondCopy.copies == 2:
                    raise OSError(5, "injected copy failure")
            super()._copy(source_key, key)

    publication = FailingSecondCopy(store.client(), bucket, "geoseg/outputs/", store.tmp_dir())
    publication.write_bytes(record, b'{"v": 2}')
    publication.write_bytes(table, b"table v2")
    with pytest.raises(Exception, match="tiles.parquet: cannot be published") as err:
        publication.commit()
    assert "every output of the step was kept" in str(err.value)
    assert store.read_json(SCENE_RECORD, ALPHA) == {"v": 1}
    assert store.read_bytes(table) == b"table v1"
    assert len(s3_env.keys(bucket)) == 2  # no temp or backup key left


KILLED_UPLOAD = """
import sys
from resources.object_data_store import ObjectDataStore
store = ObjectDataStore(url=sys.argv[1], endpoint_url=sys.argv[2], root=sys.argv[3])
target = store.file(__import__("resources.catalog").catalog.SCENE_COG, {"region": "alpha", "date": "2024-06-15"})
with store.publishing() as outputs:
    with open(outputs.path(target), "wb") as out:
        out.write(b"II*\\x00" + bytes(200 * 1024 * 1024))
    print("uploading", flush=True)
"""


def test_a_kill_mid_upload_leaves_no_visible_partial_object(store, s3_env, bucket, tmp_path):
    """A step killed (SIGKILL) while its 200 MB output is being uploaded: the final key still holds the earlier
    object, whole; what the kill left under the temp prefix is swept by a later step once it is stale."""
    cog = store.file(SCENE_COG, ALPHA)
    with store.publishing() as outputs:
        outputs.write_bytes(cog, b"II*\x00 earlier scene")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_UPLOAD, store.url, s3_env.endpoint, str(tmp_path / "killed")],
                            env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "uploading"
    client = store.client()
    deadline = time.monotonic() + 60
    while not client.list_multipart_uploads(Bucket=bucket).get("Uploads"):  # the upload is under way
        assert proc.poll() is None and time.monotonic() < deadline, "the upload never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert store.read_bytes(cog) == b"II*\x00 earlier scene"
    visible = s3_env.keys(bucket)
    assert [k for k in visible if not k.startswith("geoseg/outputs/.tmp/")] == [store.key_of(cog)]
    (upload,) = client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert upload["Key"].startswith("geoseg/outputs/.tmp/")  # an unfinished upload is never a visible object

    time.sleep(1.1)  # the leftovers are now older than the sweep's threshold
    with store.model_copy(update={"stale_temp_seconds": 1}).publishing() as outputs:
        outputs.write_bytes(store.file(SCENE_RECORD, ALPHA), b"{}")
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert not [k for k in s3_env.keys(bucket) if ".tmp/" in k]


def test_rasters_are_read_in_place_and_tables_through_the_api(store, s3_env, bucket, tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    local = write_tif(tmp_path / "scene.tif", random_scene(bands=2, height=48, width=64))
    cog, table = store.file(SCENE_COG, ALPHA), store.file(TILE_TABLE, ALPHA)
    frame = gpd.GeoDataFrame({"tile_id": ["a"]}, geometry=[box(0, 0, 1, 1)], crs="EPSG:32633")
    with store.publishing() as outputs:
        outputs.path(cog).write_bytes(local.read_bytes())
        frame.to_parquet(outputs.path(table))
    with dg.build_resources({"data_store": store}) as built:  # each step runs inside the store's GDAL settings
        with rasterio.open(str(cog)) as src:
            assert (src.width, src.height, src.crs.to_epsg()) == (64, 48, 32633)
            with rasterio.open(local) as ref:
                assert np.array_equal(src.read(1), ref.read(1))
        assert built.data_store.tile_table(ALPHA)["tile_id"].tolist() == ["a"]
    import hashlib

    assert store.sha256(cog) == hashlib.sha256(local.read_bytes()).hexdigest()
    with store.local_copy(table) as copy:  # for a reader with its own GDAL (the feedback job's GeoPackage)
        assert copy.name == "tiles.parquet" and gpd.read_parquet(copy)["tile_id"].tolist() == ["a"]
    assert not copy.exists() and local_files(store) == []


def test_the_training_set_is_downloaded_once_per_object_version(store, s3_env, bucket, tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"v": 1}')
    (folder / "images-train-00000.npy").write_bytes(b"shard v1")
    (folder / "old-shard.npy").write_bytes(b"gone in v2")
    assert store.dataset_dir() is None
    store.publish_folder("dataset", folder)
    local = store.dataset_dir()
    assert (local / "images-train-00000.npy").read_bytes() == b"shard v1"
    shard_key = store.key_of(store.partition_dir("dataset") / "images-train-00000.npy")
    _, since = s3_env.gets(bucket, shard_key)
    assert store.dataset_dir() == local
    assert s3_env.gets(bucket, shard_key, since)[0] == 0  # the cached copy is used: no second download

    (folder / "old-shard.npy").unlink()
    (folder / "images-train-00000.npy").write_bytes(b"shard v2")
    (folder / "manifest.json").write_text('{"v": 2}')
    store.publish_folder("dataset", folder)
    assert sorted(k.rsplit("/", 1)[1] for k in s3_env.keys(bucket, store.key_of(store.partition_dir("dataset")))) == [
        "images-train-00000.npy", "manifest.json"]
    assert store.dataset_manifest() == {"v": 2}
    local = store.dataset_dir()
    assert sorted(p.name for p in local.iterdir() if not p.name.startswith(".")) == ["images-train-00000.npy",
                                                                                     "manifest.json"]
    assert (local / "images-train-00000.npy").read_bytes() == b"shard v2"
    assert store.exists(DATASET_MANIFEST)


def test_an_unreachable_store_fails_the_step_naming_the_store_and_the_fix(tmp_path, s3_env):
    from tests.support.webserver import free_port

    down = ObjectDataStore(url="s3://geoseg-nowhere/outputs", endpoint_url=f"http://127.0.0.1:{free_port()}",
                           root=str(tmp_path / "cache"), max_attempts=1)
    with pytest.raises(ObjectStoreError, match=r"s3://geoseg-nowhere/outputs/scenes/.*cannot be read.*Fix: check"):
        down.read_json(SCENE_RECORD, ALPHA)
    with pytest.raises(dg.Failure, match="s3://geoseg-nowhere/outputs/.*cannot be read") as err:
        with down.publishing() as outputs:
            outputs.write_bytes(down.file(SCENE_RECORD, ALPHA), b"{}")
    assert err.value.allow_retries is False
