"""Materialize scenes, tiles and masks for 2 regions x 2 dates through the new-scene sensor on a SQLite
instance and on a real PostgreSQL instance configured by the repository's dagster.yaml."""

import base64
import io
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
from dagster_postgres.run_storage import PostgresRunStorage
from PIL import Image

from geoseg_assets.definitions import build_defs
from geoseg_assets.metadata import INLINE_IMAGE_BYTES
from geoseg_assets.run_coordinator import PrewarmingRunCoordinator
from geoseg_assets.sensors import new_scene_sensor
from resources.data_store import DataStore
from resources.synthetic_source import SyntheticSource
from tests.support.paths import REPO
from tests.support.pipeline import with_test_resources
from tests.support.postgres import PG

REGIONS, DATES = ["alpha", "beta"], ["2024-04-15", "2024-06-15"]


def run_pipeline(instance, tmp_path):
    """What `make demo` does: sensor tick, partitions added, imagery job per requested partition."""
    synthetic = SyntheticSource(cache_dir=str(tmp_path / "landing"), regions=REGIONS, dates=DATES, width=384, height=384)
    resources = {"data_store": DataStore(root=str(tmp_path / "store")), "scene_source": synthetic}
    defs = build_defs(with_test_resources(resources))
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        tick = new_scene_sensor(ctx)
    for request in tick.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    job = defs.resolve_job_def("imagery_job")
    results = [job.execute_in_process(partition_key=r.partition_key, instance=instance, tags=r.tags) for r in tick.run_requests]
    return tick, results


def assert_recorded(instance, tick, results, store_root: Path):
    assert sorted(instance.get_dynamic_partitions("region")) == REGIONS
    assert len(tick.run_requests) == 4 and all(r.success for r in results)
    runs = instance.get_runs()
    assert len(runs) == 4 and {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
    for asset in ("scenes", "tiles", "masks"):
        key = dg.AssetKey(asset)
        assert sorted(instance.get_materialized_partitions(key)) == sorted(str(r.partition_key) for r in tick.run_requests)
        records = instance.fetch_materializations(key, limit=10).records
        assert len(records) == 4
        for record in records:
            metadata = record.asset_materialization.metadata
            path = Path(metadata["path"].value)
            assert path.is_file() and path.is_relative_to(store_root / asset)
            assert len(str(metadata)) < 150_000  # inline previews are thumbnails: each event stays small
    quicklook = instance.get_latest_materialization_event(dg.AssetKey("scenes")).asset_materialization.metadata
    inline = base64.b64decode(quicklook["quicklook"].value.split("base64,")[1].rstrip(")"))
    with Image.open(io.BytesIO(inline)) as thumb, Image.open(quicklook["quicklook_path"].value) as full:
        assert len(inline) <= INLINE_IMAGE_BYTES and full.size == (384, 384)  # the file keeps the full preview
        assert thumb.size[0] == thumb.size[1] and thumb.size[0] <= full.size[0]
    latest_tiles = instance.get_latest_materialization_event(dg.AssetKey("tiles")).asset_materialization
    assert latest_tiles.metadata["tile_count"].value == 4  # 384 px / 256 -> 2 x 2 tiles, none dropped
    checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("scenes"), "scene_integrity")]
    )
    assert list(checks.values())[0].status.value == "SUCCEEDED"


def test_sqlite_instance_records_runs_and_materializations(tmp_path):
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        tick, results = run_pipeline(instance, tmp_path)
        assert_recorded(instance, tick, results, tmp_path / "store")


@pytest.mark.postgres
def test_postgres_instance_records_runs_and_materializations(tmp_path, postgres_home):
    instance = dg.DagsterInstance.get()
    try:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert instance.get_ref().storage_data.class_name == "PooledPostgresStorage"  # dagster.yaml's pooled storage
        assert isinstance(instance.run_coordinator, PrewarmingRunCoordinator)  # a QueuedRunCoordinator
        assert instance.run_retries_enabled
        tick, results = run_pipeline(instance, tmp_path)
        assert_recorded(instance, tick, results, tmp_path / "store")
    finally:
        instance.dispose()
    # The rows are really in PostgreSQL.
    with psycopg2.connect(dbname=postgres_home, **PG) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE status = 'SUCCESS'")
        assert cur.fetchone()[0] == 4
        cur.execute("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")
        assert cur.fetchone()[0] == 12  # scenes, tiles, masks x 4 partitions
        cur.execute("SELECT partition FROM dynamic_partitions WHERE partitions_def_name = 'region' ORDER BY partition")
        assert [r[0] for r in cur.fetchall()] == REGIONS


@pytest.mark.postgres
def test_the_pool_is_created_before_any_run_claims_it(postgres_home):
    """`python -m geoseg_assets.pools` (what `make ui-prod` runs after `dagster instance migrate`) creates the
    model_compute pool at the instance's default limit, so no two first claims race to create it."""
    import subprocess
    import sys

    from geoseg_assets.pools import MODEL_COMPUTE_POOL

    subprocess.run([sys.executable, "-m", "geoseg_assets.pools"], cwd=REPO, check=True, timeout=120)
    instance = dg.DagsterInstance.get()
    try:
        limits = {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()}
        assert limits == {MODEL_COMPUTE_POOL: 1}, limits  # dagster.yaml's default_limit
        assert instance.event_log_storage.get_concurrency_info(MODEL_COMPUTE_POOL).slot_count == 1
    finally:
        instance.dispose()
