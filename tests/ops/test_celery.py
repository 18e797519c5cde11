"""Scale-out on Celery: one partition of `celery_imagery_job` launched here, its steps executed by a
real `dagster-celery` worker process over the local Redis broker, on a PostgreSQL Dagster instance
(a throwaway database) that launcher and worker share; then the same with no shared disk: the scene landed in a
bucket and the outputs in it (`ObjectDataStore`), the worker with local folders of its own."""

import os
import socket
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from geoseg_assets.celery_executor import celery_imagery_job
from geoseg_assets.definitions import build_defs
from geoseg_assets.partitions import partition_key, region_date_partitions
from resources.catalog import SCENE_COG
from resources.data_store import DataStore
from resources.synthetic_source import SyntheticSource
from tests.support.pipeline import with_test_resources
from tests.support.celery import flushed_redis, start_worker, stop_worker, worker_group_pids
from tests.support.celery import postgres_dagster_home as postgres_dagster_home_in

pytestmark = pytest.mark.slow(minutes=0.5)  # wall time alone on 2 cores: started first (tests/conftest.py)

# A Redis database of its own, flushed before and after, so stale tasks of other runs never interfere.
BROKER = os.environ.get("GEOSEG_TEST_CELERY_BROKER", "redis://127.0.0.1:6379/5")
REGION, DATE = "alpha", "2024-06-15"
ASSETS = ("scenes", "tiles", "masks")


def celery_imagery_job_for_test(root: str) -> dg.JobDefinition:
    """The job the launcher and the worker both rebuild (via `build_reconstructable_job`) on the
    test's data: a 256 x 256 synthetic scene landed under `<root>/landing`, outputs in `<root>/store`."""
    resources = with_test_resources({
        "data_store": DataStore(root=str(Path(root) / "store")),
        "scene_source": SyntheticSource(cache_dir=str(Path(root) / "landing"), regions=[REGION], dates=[DATE],
                                        width=256, height=256),
    })
    defs = dg.Definitions.merge(build_defs(resources), dg.Definitions(jobs=[celery_imagery_job]))
    return defs.resolve_job_def("celery_imagery_job")


def celery_object_store_job_for_test(bucket: str, endpoint: str) -> dg.JobDefinition:
    """The job on a machine that shares no disk with the others: outputs in `s3://<bucket>/outputs`, scenes landed
    under `s3://<bucket>/landing`, and this process's own local folder ($GEOSEG_TEST_LOCAL_ROOT: the launcher's and
    the worker's differ) for caches and scratch files only."""
    from resources.bucket_landing_source import BucketLandingSource
    from resources.object_data_store import ObjectDataStore

    root = Path(os.environ["GEOSEG_TEST_LOCAL_ROOT"])
    resources = with_test_resources({
        "data_store": ObjectDataStore(url=f"s3://{bucket}/outputs", endpoint_url=endpoint, root=str(root / "store-cache")),
        "scene_source": BucketLandingSource(url=f"s3://{bucket}/landing", cache_dir=str(root / "landing-cache")),
    })
    defs = dg.Definitions.merge(build_defs(resources), dg.Definitions(jobs=[celery_imagery_job]))
    return defs.resolve_job_def("celery_imagery_job")


@pytest.fixture
def postgres_dagster_home(tmp_path, monkeypatch):
    """DAGSTER_HOME whose dagster.yaml stores runs, events and schedules in a throwaway database."""
    with postgres_dagster_home_in(tmp_path) as home:
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        yield home


@pytest.fixture
def redis_broker():
    with flushed_redis(BROKER) as url:
        yield url


@pytest.mark.postgres
# dagster_celery re-creates its task object for every submitted step; celery 5.7 warns each time.
@pytest.mark.filterwarnings("ignore:Task name 'execute_plan' is already registered")
def test_celery_worker_executes_the_imagery_steps(tmp_path, postgres_dagster_home, redis_broker):
    started = time.monotonic()
    name = f"geoseg-test-{uuid.uuid4().hex[:6]}"
    worker, log = start_worker(postgres_dagster_home, tmp_path, name, BROKER)
    instance = dg.DagsterInstance.get()
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        instance.add_dynamic_partitions("region", [REGION])
        key = partition_key(REGION, DATE)
        recon = dg.build_reconstructable_job(__name__, celery_imagery_job_for_test.__name__,
                                             reconstructable_kwargs={"root": str(tmp_path)})
        result = dg.execute_job(
            recon, instance, tags=region_date_partitions.get_tags_for_partition_key(str(key)),
            run_config={"execution": {"config": {"broker": redis_broker, "backend": redis_broker}}},
        )
        worker_pids = worker_group_pids(worker)  # while the worker is still up
        assert result.success, log.read_text(errors="replace")[-5000:]

        run = instance.get_run_by_id(result.run_id)
        assert run.status == dg.DagsterRunStatus.SUCCESS and run.tags["dagster/partition"] == str(key)
        records = instance.all_logs(result.run_id)
        events = [r.dagster_event for r in records if r.dagster_event]
        step_keys = {"scenes", "scenes_scene_integrity", "tiles", "tiles_tile_stats_sanity", "masks",
                     "masks_label_geometries_valid"}

        # The launcher (this process) submitted every step to Celery and ran none itself...
        submitted = {e.step_key for e in events if e.event_type == dg.DagsterEventType.ENGINE_EVENT
                     and e.message.startswith("Submitting celery task for step") and e.pid == os.getpid()}
        assert submitted == step_keys
        starts = {e.step_key: e.pid for e in events if e.event_type == dg.DagsterEventType.STEP_START}
        assert set(starts) == step_keys
        assert os.getpid() not in starts.values()
        # ...the worker process group started above did, announcing itself by its Celery node name.
        assert set(starts.values()) <= worker_pids - {worker.pid}, (starts, worker_pids)
        in_worker = [e for e in events if e.event_type == dg.DagsterEventType.ENGINE_EVENT
                     and e.message.endswith("in celery worker")]
        assert {e.step_key for e in in_worker} == step_keys
        node = f"{name}@{socket.gethostname()}"
        assert {e.engine_event_data.metadata["Celery worker"].value for e in in_worker} == {node}
        assert all(e.pid in worker_pids for e in events if e.event_type == dg.DagsterEventType.STEP_SUCCESS)
        assert "execute_plan" in log.read_text(errors="replace")  # the worker's own log shows the tasks

        # scenes, tiles and masks materialized for exactly that partition, by the worker, into the store.
        for asset in ASSETS:
            materializations = [e for e in events if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION
                                and e.asset_key == dg.AssetKey(asset)]
            assert len(materializations) == 1 and materializations[0].pid in worker_pids
            assert materializations[0].partition == str(key)
            assert instance.get_materialized_partitions(dg.AssetKey(asset)) == {str(key)}
            path = Path(materializations[0].step_materialization_data.materialization.metadata["path"].value)
            assert path.is_file() and path.is_relative_to(tmp_path / "store" / asset / f"region={REGION}" / f"date={DATE}")
        checks = [e for e in events if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION]
        assert len(checks) == 3 and all(e.event_specific_data.passed for e in checks)
        print(f"\ncelery run {result.run_id}: {len(step_keys)} steps on {node} "
              f"(pids {sorted(set(starts.values()))}, launcher {os.getpid()}), {time.monotonic() - started:.1f} s")
    finally:
        instance.dispose()
        stop_worker(worker)
    assert worker.poll() is not None and not worker_group_pids(worker)


@pytest.mark.postgres
@pytest.mark.filterwarnings("ignore:Task name 'execute_plan' is already registered")
def test_a_worker_with_its_own_empty_root_works_from_the_object_store_alone(tmp_path, postgres_dagster_home,
                                                                           redis_broker, s3_env, monkeypatch):
    """Issue 19, item 4: the worker's local folder and its DAGSTER_HOME folder are its own, empty at the start; the
    scene is landed in a bucket; every step reads and writes only the object store. Afterwards the bucket holds the
    partition's outputs, and neither the launcher's folder nor the worker's holds a file of them (only caches)."""
    from resources.object_data_store import ObjectDataStore
    from tests.support.rasters import random_scene, write_tif

    s3, bucket = s3_env, s3_env.new_bucket()
    scene = write_tif(tmp_path / "upload" / "scene.tif", random_scene(bands=4, height=256, width=256))
    s3.client().upload_file(str(scene), bucket, f"landing/{REGION}/{DATE}/scene.tif")
    launcher_root, worker_root, worker_home = tmp_path / "launcher", tmp_path / "worker", tmp_path / "worker_home"
    for folder in (launcher_root, worker_root, worker_home):
        folder.mkdir()
    (worker_home / "dagster.yaml").write_text((postgres_dagster_home / "dagster.yaml").read_text())  # same instance
    monkeypatch.setenv("GEOSEG_TEST_LOCAL_ROOT", str(launcher_root))
    worker, log = start_worker(worker_home, worker_root, f"geoseg-test-{uuid.uuid4().hex[:6]}", BROKER,
                               {"GEOSEG_TEST_LOCAL_ROOT": str(worker_root)})
    instance = dg.DagsterInstance.get()
    try:
        instance.add_dynamic_partitions("region", [REGION])
        key = partition_key(REGION, DATE)
        recon = dg.build_reconstructable_job(__name__, celery_object_store_job_for_test.__name__,
                                             reconstructable_kwargs={"bucket": bucket, "endpoint": s3.endpoint})
        result = dg.execute_job(
            recon, instance, tags=region_date_partitions.get_tags_for_partition_key(str(key)),
            run_config={"execution": {"config": {"broker": redis_broker, "backend": redis_broker}}},
        )
        worker_pids = worker_group_pids(worker)
        assert result.success, log.read_text(errors="replace")[-5000:]
        events = [r.dagster_event for r in instance.all_logs(result.run_id) if r.dagster_event]
        starts = {e.step_key: e.pid for e in events if e.event_type == dg.DagsterEventType.STEP_START}
        assert set(starts) >= set(ASSETS) and set(starts.values()) <= worker_pids - {worker.pid}, (starts, worker_pids)
        prefix = f"outputs/%s/region={REGION}/date={DATE}/"
        keys = s3.keys(bucket, "outputs/")
        for asset, names in (("scenes", {"scene.tif", "scene.json", "quicklook.png"}),
                             ("tiles", {"tiles.parquet", "grid.png"}), ("masks", {"mask.tif", "overlay.png"})):
            assert {k.rsplit("/", 1)[1] for k in keys if k.startswith(prefix % asset)} == names, keys
            (materialization,) = [e for e in events if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION
                                  and e.asset_key == dg.AssetKey(asset)]
            assert materialization.pid in worker_pids
            assert materialization.step_materialization_data.materialization.metadata["path"].value.startswith(
                f"s3://{bucket}/{prefix % asset}")
        checks = [e for e in events if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION]
        assert len(checks) == 3 and all(e.event_specific_data.passed for e in checks)
        store = ObjectDataStore(url=f"s3://{bucket}/outputs", endpoint_url=s3.endpoint, root=str(tmp_path / "check"))
        with dg.build_resources({"data_store": store}) as built:
            import rasterio

            with rasterio.open(str(built.data_store.file(SCENE_COG, {"region": REGION, "date": DATE}))) as cog, \
                    rasterio.open(scene) as landed:
                assert (cog.read() == landed.read()).all()  # the worker's COG, read back from the bucket
        output_names = {k.rsplit("/", 1)[1] for k in keys}
        for root, caches in ((launcher_root, ()), (worker_root, ("landing-cache",))):
            files = [p.relative_to(root) for p in root.rglob("*") if p.is_file()]
            outputs = [f for f in files if f.name in output_names and f.parts[0] not in caches]
            assert outputs == [], (root, files)
        assert not [p for p in launcher_root.rglob("*") if p.is_file()]  # the launcher touched no file at all
    finally:
        instance.dispose()
        stop_worker(worker)
