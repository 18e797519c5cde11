"""Shared fixtures: small real GeoTIFFs written on the fly, data stores, sources and instances."""

import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from resources.data_store import DataStore
from resources.landing_source import LandingFolderSource
from resources.synthetic_source import SyntheticSource

DATA = Path(__file__).parent / "data"


def write_tif(path, data, *, crs="EPSG:32633", transform=None, nodata=0, **extra) -> Path:
    """Write a (bands, h, w) array as a GeoTIFF; crs=None writes one without a CRS."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count, height, width = data.shape
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=data.dtype.name,
                   transform=transform or from_origin(500000, 5000000, 10, 10), nodata=nodata, **extra)
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def random_scene(bands=4, height=300, width=400, seed=0, dtype="uint16"):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 4000, size=(bands, height, width)).astype(dtype)


@pytest.fixture
def store(tmp_path) -> DataStore:
    return DataStore(root=str(tmp_path / "store"))


@pytest.fixture
def landing(tmp_path) -> Path:
    path = tmp_path / "landing"
    path.mkdir()
    return path


@pytest.fixture
def landing_source(landing) -> LandingFolderSource:
    return LandingFolderSource(root=str(landing))


@pytest.fixture
def synthetic_source(tmp_path) -> SyntheticSource:
    return SyntheticSource(cache_dir=str(tmp_path / "synthetic"), regions=["alpha", "beta"],
                           dates=["2024-04-15", "2024-06-15"], width=512, height=512, nodata_margin=0.1)


def land(landing: Path, region: str, date: str, src: Path, name: str | None = None) -> Path:
    """Copy a file into the landing layout `<landing>/<region>/<date>/<name>`."""
    dst = landing / region / date / (name or Path(src).name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    return dst


@pytest.fixture
def dagster_home(tmp_path, monkeypatch) -> Path:
    """An empty SQLite DAGSTER_HOME for tests that use DagsterInstance.get()."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def with_test_resources(resources: dict) -> dict:
    """Fill in what a test does not exercise: a GeoPackage label store next to the data store, the
    default class map, a DVC store on that folder, a local MLflow store, a log-only notifier and the CPU."""
    from resources.class_map import ClassMapResource
    from resources.compute import ComputeDevice
    from resources.drift_policy import DriftPolicy
    from resources.dvc_store import DvcStore
    from resources.geopackage_labels import GeoPackageLabelStore
    from resources.mlflow_tracking import MlflowTracking
    from resources.notifier import Notifier

    root = Path(resources["data_store"].root).parent
    return {"label_store": GeoPackageLabelStore(path=str(root / "labels.gpkg")), "class_map": ClassMapResource(),
            "dvc": DvcStore(repo_dir=str(root)), "notifier": Notifier(), "compute": ComputeDevice(device="cpu"),
            "drift_policy": DriftPolicy(),
            "mlflow_tracking": MlflowTracking(tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                                              artifact_location=str(root / "mlflow-artifacts")),
            **resources}


def materialize_partition(instance, resources, region, date, *, raise_on_error=True, selection=None):
    """Materialize scenes, tiles and masks (+ their checks) of one partition, as the imagery job does."""
    from geoseg_assets.definitions import build_defs
    from geoseg_assets.partitions import partition_key

    if region not in instance.get_dynamic_partitions("region"):
        instance.add_dynamic_partitions("region", [region])
    job = build_defs(with_test_resources(resources)).resolve_job_def("imagery_job")
    return job.execute_in_process(
        partition_key=partition_key(region, date), instance=instance, raise_on_error=raise_on_error,
        asset_selection=selection,
    )


PG = dict(host="127.0.0.1", port=5432, user="postgres")


@contextmanager
def throwaway_database():
    """A fresh database on the local PostgreSQL server, dropped afterwards."""
    import psycopg2

    name = f"geoseg_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(dbname="postgres", **PG)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
