"""The geoseg code location: one Definitions object with assets, checks, sensors and resources."""


import os
from pathlib import Path

import dagster as dg

from geoseg_assets.assets.catalog import catalog_job, catalog_schedule, stac_catalog, stac_catalog_valid
from geoseg_assets.assets.datasets import dataset
from geoseg_assets.assets.feedback import feedback_job
from geoseg_assets.assets.masks import import_labels_job, masks
from geoseg_assets.assets.models import model, model_evaluation
from geoseg_assets.assets.monitoring import (
    data_drift_report,
    data_quality_report,
    model_quality_report,
    prediction_drift_report,
)
from geoseg_assets.assets.predictions import predictions
from geoseg_assets.assets.scenes import scenes
from geoseg_assets.assets.tiles import tiles
from geoseg_assets.celery_executor import celery_imagery_job, celery_prediction_job
from geoseg_assets.checks import (
    dataset_class_coverage,
    dataset_no_leakage,
    label_geometries_valid,
    scene_integrity,
    tile_stats_sanity,
)
from geoseg_assets.executors import default_executor
from geoseg_assets.sensors import SensorIntervals, build_sensors
from geoseg_assets.sensors.drift import RETRAINING_JOB
from resources.bucket_landing_source import BucketLandingSource
from resources.class_map import ClassMapResource
from resources.compute import ComputeDevice
from resources.data_store import DataStore
from resources.drift_policy import DriftPolicy
from resources.dvc_store import DvcStore
from resources.geopackage_labels import GeoPackageLabelStore
from resources.landing_source import LandingFolderSource
from resources.mlflow_tracking import MlflowTracking
from resources.notifier import Notifier
from resources.object_data_store import ObjectDataStore
from resources.postgis_labels import PostgisLabelStore

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_data_dir() -> Path:
    """The data root: $GEOSEG_DATA_DIR, else the repository's ignored `data/` folder."""
    return Path(os.environ.get("GEOSEG_DATA_DIR", REPO_ROOT / "data")).resolve()


def default_dvc_repo() -> Path:
    """The git + DVC repository that versions the dataset: $GEOSEG_DVC_REPO, else this checkout. Its dvc.yaml
    keeps the dataset at `<repo>/data/store/dataset`, so a data root other than `<checkout>/data` needs a
    repository of its own whose `data/` is that root (otherwise materializing `dataset` would rewrite this
    checkout's dvc.lock; the asset refuses a data root DVC does not version)."""
    return Path(os.environ.get("GEOSEG_DVC_REPO", REPO_ROOT)).resolve()


MLFLOW_UI_URL = "http://127.0.0.1:5000"  # where `make ui` serves the embedded MLflow store


def default_viewer_url() -> str:
    """Where the geoseg viewer serves the data store (asset metadata links there): $GEOSEG_VIEWER_URL, else
    `make ui`'s http://127.0.0.1:3100."""
    return os.environ.get("GEOSEG_VIEWER_URL", DataStore.model_fields["viewer_url"].default)


def default_resources(data_dir: Path, dvc_repo: Path = REPO_ROOT) -> dict:
    """Embedded defaults: outputs under `<data>/store`, scenes landed under `<data>/landing`,
    labels in `<data>/labels.gpkg`, class maps from `<data>/landing/classes.json` and `<data>/landing/<region>/classes.json`
    when present (else the built-in classes), `dvc_repo` (this checkout by default)
    as the DVC repo with its default remote `<repo>/data/dvc-remote`, a local SQLite MLflow store under
    `<data>/mlflow` (its UI at MLFLOW_UI_URL when `make ui` runs), failure notices in the log only, networks on
    CUDA when present, else CPU."""
    return {
        "data_store": DataStore(root=str(data_dir / "store"), viewer_url=default_viewer_url()),
        "scene_source": LandingFolderSource(root=str(data_dir / "landing")),
        "label_store": GeoPackageLabelStore(path=str(data_dir / "labels.gpkg")),
        "class_map": ClassMapResource(folder=str(data_dir / "landing")),
        "dvc": DvcStore(repo_dir=str(dvc_repo)),
        "mlflow_tracking": MlflowTracking(tracking_uri=f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}",
                                          artifact_location=str(data_dir / "mlflow" / "artifacts"),
                                          ui_url=MLFLOW_UI_URL),
        "notifier": Notifier(),
        "compute": ComputeDevice(),
        "drift_policy": DriftPolicy(),
    }


def production_resources(data_dir: Path, dvc_repo: Path = REPO_ROOT) -> dict:
    """A shared deployment: labels in PostGIS, runs and models on an MLflow tracking server, datasets on a
    shared DVC remote (a folder, s3://, MinIO), scenes landed in a bucket when `GEOSEG_LANDING_URL` is set
    (s3://bucket/prefix; downloaded copies cached under `<data>/landing-cache`), and every output in a bucket when
    `GEOSEG_STORE_URL` is set (s3://bucket/prefix; `ObjectDataStore`, caches under `<data>/store-cache`), so workers
    on machines that share no disk run any step. Connection settings are
    `dg.EnvVar`s, resolved when a run starts (an unset variable fails the run naming it) and shown by name,
    never by value, in the UI; object-store credentials are AWS's standard variables, read by boto itself."""
    landing = ({"scene_source": BucketLandingSource(url=dg.EnvVar("GEOSEG_LANDING_URL"),
                                                    cache_dir=str(data_dir / "landing-cache"))}
               if os.environ.get("GEOSEG_LANDING_URL") else {})
    outputs = ({"data_store": ObjectDataStore(
        url=dg.EnvVar("GEOSEG_STORE_URL"), root=str(data_dir / "store-cache"), viewer_url=default_viewer_url(),
        endpoint_url=dg.EnvVar("AWS_ENDPOINT_URL_S3") if os.environ.get("AWS_ENDPOINT_URL_S3") else None)}
        if os.environ.get("GEOSEG_STORE_URL") else {})
    return {
        **default_resources(data_dir, dvc_repo),
        **landing,
        **outputs,
        "label_store": PostgisLabelStore(
            host=dg.EnvVar("GEOSEG_PG_HOST"), port=dg.EnvVar.int("GEOSEG_PG_PORT"), user=dg.EnvVar("GEOSEG_PG_USER"),
            password=dg.EnvVar("GEOSEG_PG_PASSWORD"), dbname=dg.EnvVar("GEOSEG_PG_DB")),
        "mlflow_tracking": MlflowTracking(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI")),
        "dvc": DvcStore(repo_dir=str(dvc_repo), remote_url=dg.EnvVar("GEOSEG_DVC_REMOTE")),
    }


RESOURCE_PROFILES = {"embedded": default_resources, "production": production_resources}


def profile_resources(profile: str, data_dir: Path, dvc_repo: Path = REPO_ROOT) -> dict:
    """The resources of a named profile (`$GEOSEG_RESOURCES`: `embedded`, the default, or `production`)."""
    if profile not in RESOURCE_PROFILES:
        raise ValueError(f"GEOSEG_RESOURCES={profile!r} is not a resource profile; use one of "
                         f"{', '.join(RESOURCE_PROFILES)}")
    return RESOURCE_PROFILES[profile](data_dir, dvc_repo)


# Longest a run of each job may take before the daemon's run monitoring (on in both instances) stops it
# (`dagster/max_runtime`, seconds; override per run in the launchpad): a hung read or a pathological input
# cannot tie up a worker forever. Generous: several times the largest measured runs on this 2-core machine.
MAX_RUNTIME_S = {"imagery_job": 2 * 3600, "dataset_job": 4 * 3600, "training_job": 24 * 3600,
                 "retraining_job": 28 * 3600, "monitoring_job": 2 * 3600, "prediction_job": 4 * 3600}


def runtime_limit(job: str) -> dict[str, str]:
    return {"dagster/max_runtime": str(MAX_RUNTIME_S[job])}


dataset_job = dg.define_asset_job(
    "dataset_job",
    selection=dg.AssetSelection.assets(dataset),
    tags=runtime_limit("dataset_job"),
    description="Build the training set from every labelled partition and version it with DVC.",
)

training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.assets(model, model_evaluation),
    tags={"geoseg/heavy": "true", **runtime_limit("training_job")},
    description="Train a challenger, evaluate it on the test split and promote it if it beats the champion. "
    "Launch it several times with different `model` configs for a batch of experiments.",
)

retraining_job = dg.define_asset_job(
    RETRAINING_JOB,
    selection=dg.AssetSelection.assets(dataset, model, model_evaluation),
    tags={"geoseg/heavy": "true", **runtime_limit(RETRAINING_JOB)},
    description="Rebuild the training set from every labelled partition (dates that landed since the last build "
    "included: a new DVC version), train a challenger on it, evaluate and promote it if it beats the champion. "
    "What drift_sensor requests: retraining on the data that was already there would learn nothing new.",
)

monitoring_job = dg.define_asset_job(
    "monitoring_job",
    selection=dg.AssetSelection.assets(data_quality_report, data_drift_report, prediction_drift_report),
    tags=runtime_limit("monitoring_job"),
    description="Data quality, data drift and prediction drift reports of the selected region x date partition(s).",
)

prediction_job = dg.define_asset_job(
    "prediction_job",
    selection=dg.AssetSelection.assets(predictions),
    tags=runtime_limit("prediction_job"),
    description="Predict the selected region x date partition(s) with the current champion.",
)

imagery_job = dg.define_asset_job(
    "imagery_job",
    selection=dg.AssetSelection.assets(scenes, tiles, masks),
    tags=runtime_limit("imagery_job"),
    description="scenes -> tiles and masks (with their checks) for the selected region x date partition(s).",
)


def build_defs(resources: dict, intervals: SensorIntervals = SensorIntervals()) -> dg.Definitions:
    """The code location with the given resources (tests and other deployments swap them) and sensor intervals."""
    return dg.Definitions(
        assets=[scenes, tiles, masks, dataset, model, model_evaluation, predictions, data_quality_report,
                data_drift_report, prediction_drift_report, model_quality_report, stac_catalog],
        asset_checks=[scene_integrity, tile_stats_sanity, label_geometries_valid, dataset_no_leakage,
                      dataset_class_coverage, stac_catalog_valid],
        sensors=build_sensors(intervals),
        schedules=[catalog_schedule],
        jobs=[imagery_job, import_labels_job, dataset_job, training_job, retraining_job, prediction_job, monitoring_job,
              feedback_job, celery_imagery_job, celery_prediction_job, catalog_job],
        resources=resources,
        executor=default_executor,
    )


defs = build_defs(profile_resources(os.environ.get("GEOSEG_RESOURCES", "embedded"), default_data_dir(),
                                    default_dvc_repo()),
                  SensorIntervals.parse(os.environ.get("GEOSEG_SENSOR_INTERVALS")))
