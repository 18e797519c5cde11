"""The demo on production-style object storage (issue 19): `python -m geoseg_assets.demo` with
`GEOSEG_RESOURCES=production` and every output in a bucket of a real S3-protocol server (moto's, its own process on
127.0.0.1): the outputs are objects (`GEOSEG_STORE_URL`), the DVC remote is on the same store, MLflow is an
`mlflow server` whose artifacts are on it too, and the labels are in PostGIS. Afterwards no file of the outputs is on
the local disk (only the landing folder the demo stages, the Dagster home and the store's caches); the STAC catalog in
the bucket validates and links every prediction to its scene and model; the viewer serves it by URL, and GDAL reads a
prediction it lists by HTTP ranges, pixel for pixel the object; `dvc pull` from the S3 remote in a fresh clone gives
back the dataset the bucket holds; the registered model's weights in the bucket load with their recorded checksum.
Then a Celery worker whose data root and DAGSTER_HOME folder are its own, empty folders re-predicts a demo partition
(`celery_prediction_job`) from the bucket and the MLflow server alone, leaving no file of the outputs behind."""

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from resources.catalog import PREDICTED_CLASSES
from tests.support.mlflow_server import mlflow_server
from tests.support.paths import REPO
from tests.support.postgres import PG, throwaway_database
from tests.support.processes import start_group, stop_group
from tests.support.repos import DATASET, digests, dvc, git, new_project_repo
from tests.support.webserver import free_port, wait_for_server

pytestmark = [pytest.mark.slow(minutes=2.8), pytest.mark.postgres]

QUICK_TRAINING = {"model": {"epochs": 1, "max_steps_per_epoch": 2, "export_onnx": False},
                  "model_evaluation": {"min_miou": 0.0}}
PREFIX = "geoseg/outputs"
# What the local data root may hold afterwards: the demo's inputs, the Dagster instance and the store's caches.
LOCAL_ALLOWED = {"landing", "dagster_home", "store-cache", "demo.log"}
# A Redis database of its own (tests/ops/test_celery.py uses 5): flushed before and after.
CELERY_BROKER = os.environ.get("GEOSEG_TEST_CELERY_BROKER_DEMO", "redis://127.0.0.1:6379/6")


def test_the_demo_runs_on_object_storage_and_leaves_no_output_on_the_local_disk(s3_env, tmp_path, monkeypatch):
    import pystac
    import rasterio

    from geoseg_assets.geo.stac_validation import validate_catalog
    from resources.object_data_store import ObjectDataStore

    s3 = s3_env  # AWS's standard variables point this process (dvc, GDAL) at the server too
    bucket = s3.new_bucket()
    store_url = f"s3://{bucket}/{PREFIX}"
    repo = new_project_repo(tmp_path / "repo", store_url=store_url)  # the deployment's DVC repository:
    dvc(repo, "init", "-q")  # dvc.yaml depends on the bucket's tiles and masks; .dvc/ committed, no remote in it
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "dvc init")
    data, home = tmp_path / "data", tmp_path / "data" / "dagster_home"
    subprocess.run(["make", "-s", f"{home}/dagster.yaml", f"DATA={data}"], cwd=REPO, check=True)
    viewer_port = free_port()
    with throwaway_database() as db, mlflow_server(s3, bucket, tmp_path) as mlflow_url:
        env = {**os.environ, **s3.env(), "DAGSTER_HOME": str(home), "GEOSEG_DATA_DIR": str(data),
               "GEOSEG_DVC_REPO": str(repo), "PYTHONUNBUFFERED": "1", "GEOSEG_RESOURCES": "production",
               "GEOSEG_STORE_URL": store_url, "GEOSEG_DVC_REMOTE": f"s3://{bucket}/dvc",
               "MLFLOW_TRACKING_URI": mlflow_url, "GEOSEG_VIEWER_URL": f"http://127.0.0.1:{viewer_port}",
               "GEOSEG_PG_HOST": PG["host"], "GEOSEG_PG_PORT": str(PG["port"]), "GEOSEG_PG_USER": PG["user"],
               "GEOSEG_PG_PASSWORD": "", "GEOSEG_PG_DB": db}
        env.pop("GEOSEG_LANDING_URL", None)
        t0 = time.time()
        demo = subprocess.run([sys.executable, "-m", "geoseg_assets.demo", "--training-config",
                               json.dumps(QUICK_TRAINING)], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=900)
        print(f"\ndemo on the object store in {time.time() - t0:.0f} s:\n{demo.stdout[-2500:]}")
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        assert "0 failed" in demo.stdout and f"outputs        : {store_url}" in demo.stdout

        # Every output is an object; none is a local file. The DVC working copy went once it was pushed.
        keys = s3.keys(bucket, f"{PREFIX}/")
        for asset, name, count in (("scenes", "scene.tif", 8), ("scenes", "scene.json", 8), ("tiles", "tiles.parquet", 8),
                                   ("masks", "mask.tif", 8), ("predictions", "classes.tif", 6),
                                   ("predictions", "polygons.gpkg", 6), ("data_quality_report", "report.html", 8),
                                   ("data_drift_report", "report.json", 8), ("prediction_drift_report", "report.json", 6)):
            found = [k for k in keys if k.startswith(f"{PREFIX}/{asset}/region=") and k.endswith(f"/{name}")]
            assert len(found) == count, (asset, name, found)
        assert not [k for k in keys if "/.tmp/" in k]  # no publication left anything behind
        assert sorted(p.name for p in data.iterdir()) <= sorted(LOCAL_ALLOWED), sorted(p.name for p in data.iterdir())
        names = {k.rsplit("/", 1)[1] for k in keys if "/dataset/" not in k}
        local = [p for p in data.rglob("*") if p.is_file() and p.name in names
                 and not p.is_relative_to(data / "landing") and not p.is_relative_to(data / "store-cache" / "cache")]
        assert local == [], local
        assert not (repo / DATASET).exists()

        # The STAC catalog in the bucket validates; every prediction links to its scene and its model.
        store = ObjectDataStore(url=store_url, endpoint_url=s3.endpoint, root=str(tmp_path / "check-cache"))
        root = store.partition_dir("stac")
        assert validate_catalog(root, store.catalog_files()) == []
        prediction_items = [p for p in store.catalog_files().json_files(root / "predictions")
                            if p.name.startswith("prediction-")]
        assert len(prediction_items) == 6
        for path in prediction_items:
            item = json.loads(store.read_bytes(path))
            derived = [link["href"] for link in item["links"] if link["rel"] == "derived_from"]
            assert any("/scenes/" in h for h in derived) and any("/models/" in h for h in derived), derived

        # The viewer of the production profile serves that catalog by URL; GDAL reads a COG it lists by ranges.
        viewer_log = tmp_path / "viewer.log"
        viewer = start_group([sys.executable, "-m", "geoseg_assets.viewer", "--port", str(viewer_port)], env, viewer_log)
        try:
            wait_for_server(viewer_port, {"viewer": viewer}, {"viewer": viewer_log}, path="/")
            catalog = pystac.Catalog.from_file(f"http://127.0.0.1:{viewer_port}/store/stac/catalog.json")
            items = {item.id: item for item in catalog.get_items(recursive=True)}
            href = items["prediction-alpha-2024-04-15"].assets["data"].get_absolute_href()
            cog = store.file(PREDICTED_CLASSES, {"region": "alpha", "date": "2024-04-15"})
            with rasterio.open(f"/vsicurl/{href}") as remote, store.raster_env(), rasterio.open(str(cog)) as direct:
                assert (remote.read() == direct.read()).all()
        finally:
            stop_group(viewer)

        # `dvc pull` from the S3 remote, in a fresh clone of the DVC repository, gives back the bucket's dataset.
        # The dataset's git record (refs/geoseg/datasets/<md5>: code + dvc.lock) is fetched and checked out as the
        # asset's `restore_command` says.
        (ref,) = git(repo, "for-each-ref", "--format=%(refname)", "refs/geoseg/datasets/").split()
        clone = tmp_path / "clone"
        git(tmp_path, "clone", "-q", str(repo), str(clone))
        git(clone, "fetch", "-q", "origin", f"{ref}:{ref}")
        git(clone, "checkout", "-q", ref)
        dvc(clone, "remote", "add", "--local", "-f", "-d", "s3", f"s3://{bucket}/dvc")
        dvc(clone, "pull", "dataset")
        in_bucket = {k.rsplit("/", 1)[1]: hashlib.sha256(store.read_bytes(f"/vsis3/{bucket}/{k}")).hexdigest()
                     for k in keys if k.startswith(f"{PREFIX}/dataset/")}
        assert in_bucket and digests(clone / DATASET) == in_bucket

        # The champion's weights are objects of the same bucket (MLflow's artifacts), and load by their checksum.
        from resources.mlflow_tracking import CHAMPION, MlflowTracking

        assert [k for k in s3.keys(bucket, "mlflow/") if k.endswith("weights.safetensors")]
        champion = MlflowTracking(tracking_uri=mlflow_url).load(CHAMPION)
        assert sum(p.numel() for p in champion.parameters()) > 0

        predict_on_a_celery_worker_with_its_own_empty_root(s3, bucket, env, tmp_path, monkeypatch)


def celery_prediction_job_on_the_production_profile() -> dg.JobDefinition:
    """The code location's `celery_prediction_job` with the production profile, built from this process's environment
    (the launcher and the worker each have their own GEOSEG_DATA_DIR)."""
    from geoseg_assets.definitions import build_defs, profile_resources

    resources = profile_resources("production", Path(os.environ["GEOSEG_DATA_DIR"]), Path(os.environ["GEOSEG_DVC_REPO"]))
    return build_defs(resources).resolve_job_def("celery_prediction_job")


def predict_on_a_celery_worker_with_its_own_empty_root(s3, bucket: str, env: dict, tmp_path: Path, monkeypatch) -> None:
    """Issue 19, item 4, for the predictions step: a Celery worker whose data root and DAGSTER_HOME folder are its own
    and empty re-predicts a demo partition, reading the scene from the bucket and the champion through the MLflow
    server, writing the class COG back to the bucket; neither it nor the launcher leaves a file of the outputs."""
    from geoseg_assets.partitions import partition_key, region_date_partitions
    from tests.support.celery import flushed_redis, postgres_dagster_home, start_worker, stop_worker, worker_group_pids

    launcher_data, worker_data, worker_home = tmp_path / "launcher-data", tmp_path / "worker-data", tmp_path / "worker-home"
    for folder in (launcher_data, worker_data, worker_home, tmp_path / "celery"):
        folder.mkdir()
    for var, value in {**env, "GEOSEG_DATA_DIR": str(launcher_data)}.items():
        monkeypatch.setenv(var, value)
    classes_key = f"{PREFIX}/predictions/region=alpha/date=2024-04-15/classes.tif"
    before = s3.client().head_object(Bucket=bucket, Key=classes_key)
    with postgres_dagster_home(tmp_path / "celery") as home, flushed_redis(CELERY_BROKER) as broker:
        (worker_home / "dagster.yaml").write_text((home / "dagster.yaml").read_text())  # the same instance
        worker, log = start_worker(worker_home, tmp_path / "celery", f"geoseg-demo-{uuid.uuid4().hex[:6]}", broker,
                                   {**env, "GEOSEG_DATA_DIR": str(worker_data)})
        try:
            with dg.DagsterInstance.from_config(str(home)) as instance:
                instance.add_dynamic_partitions("region", ["alpha"])
                key = str(partition_key("alpha", "2024-04-15"))
                result = dg.execute_job(
                    dg.build_reconstructable_job(__name__, celery_prediction_job_on_the_production_profile.__name__),
                    instance, tags=region_date_partitions.get_tags_for_partition_key(key),
                    run_config={"execution": {"config": {"broker": broker, "backend": broker}}})
                pids = worker_group_pids(worker)
                assert result.success, log.read_text(errors="replace")[-5000:]
                events = [r.dagster_event for r in instance.all_logs(result.run_id) if r.dagster_event]
                (materialization,) = [e for e in events if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION]
                assert materialization.pid in pids - {worker.pid} and materialization.partition == key
                metadata = materialization.step_materialization_data.materialization.metadata
                assert metadata["classes_path"].value == f"s3://{bucket}/{classes_key}"
        finally:
            stop_worker(worker)
    after = s3.client().head_object(Bucket=bucket, Key=classes_key)
    assert after["LastModified"] > before["LastModified"] and after["ContentLength"] > 0  # published anew
    assert not [k for k in s3.keys(bucket, f"{PREFIX}/.tmp/")]
    assert not [p for p in launcher_data.rglob("*") if p.is_file()]
    worker_files = [p.relative_to(worker_data) for p in worker_data.rglob("*") if p.is_file()]
    assert not [f for f in worker_files if f.suffix in (".tif", ".gpkg", ".png", ".json")], worker_files
