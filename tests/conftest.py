"""Shared fixtures: data stores, landing folders, sources, a SQLite DAGSTER_HOME, the module-wide project and a
DVC-tracked repository. Helpers the tests import live in tests/support/."""

import shutil
from itertools import islice
from pathlib import Path

import dagster as dg
import pytest

from resources.data_store import DataStore
from resources.dvc_store import DvcStore
from resources.landing_source import LandingFolderSource
from resources.synthetic_source import SyntheticSource
from tests.support.paths import REPO
from tests.support.postgres import dagster_pg_env, throwaway_database
from tests.support.project import make_project
from tests.support.repos import DATASET, new_git_repo, write_npy_dataset
from tests.support.s3 import s3_server


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


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3-protocol server (moto's, its own process on 127.0.0.1) for the module; tests take fresh buckets."""
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3_env(s3, monkeypatch):
    """This process, and the processes it starts (dvc), reach the S3 server through AWS's standard variables."""
    for var, value in s3.env().items():
        monkeypatch.setenv(var, value)
    return s3


@pytest.fixture
def dagster_home(tmp_path, monkeypatch) -> Path:
    """An empty SQLite DAGSTER_HOME for tests that use DagsterInstance.get()."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture
def postgres_home(tmp_path, monkeypatch):
    """A throwaway database on the local server and a DAGSTER_HOME holding the repo's dagster.yaml (the production
    instance, its DAGSTER_PG_* pointing at that database); yields the database's name."""
    with throwaway_database() as db:
        home = tmp_path / "pg_home"
        home.mkdir()
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        for var, value in {"DAGSTER_HOME": str(home), **dagster_pg_env(db)}.items():
            monkeypatch.setenv(var, value)
        yield db


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git repo with this project's dvc.yaml, 2 synthetic regions x 2 dates with labels and masks (one per
    module that asks: its tests build datasets and train models on it in their own order)."""
    project = make_project(tmp_path_factory.mktemp("project"))
    yield project
    project[2].dispose()  # the ephemeral instance's temp folder, now rather than when the garbage collector runs


@pytest.fixture
def instance():
    """An ephemeral Dagster instance, disposed (its temp folder removed) when the test ends."""
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


@pytest.fixture
def tracked(tmp_path):
    """A git repo with a tracked, pushed dataset; the remote lives outside the repo so clones share it."""
    repo = new_git_repo(tmp_path / "repo")
    store = DvcStore(repo_dir=str(repo), remote_url=str(tmp_path / "remote"))
    store.ensure_repo()
    write_npy_dataset(repo / DATASET)
    return store, repo, store.commit("dataset")


def pytest_collection_modifyitems(config, items):
    """Long modules first, each with a short one behind it. `make test` hands whole modules to pytest-xdist workers
    (`--dist loadfile`) in collection order, and a worker takes its next module as soon as fewer than 3 of its tests
    are pending: behind a one-test module that takes minutes it holds the next module in reserve. That reserve is
    a short module of several tests, so a long module goes to the first worker that is free, never waits behind
    another long one. A module's weight is the `minutes` of its `slow` marker (its wall time alone on this 2-core
    machine); the order of the tests inside a module is kept."""
    weight: dict[str, float] = {}
    tests: dict[str, int] = {}
    for item in items:
        marker = item.get_closest_marker("slow")
        minutes = marker.kwargs.get("minutes", 1.0) if marker else 0.0
        name = item.module.__name__
        weight[name] = max(weight.get(name, 0.0), minutes)
        tests[name] = tests.get(name, 0) + 1
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    modules = list(dict.fromkeys(item.module.__name__ for item in items))
    long = sorted((m for m in modules if weight[m] > 0), key=lambda m: -weight[m])
    reserves = [m for m in modules if weight[m] == 0 and tests[m] >= 3]
    rest = [m for m in modules if weight[m] == 0 and tests[m] < 3]
    spare = iter(reserves)
    order = long[:workers] + list(islice(spare, workers))
    for module in long[workers:]:
        order += [module, *islice(spare, 1)]
    order += [*spare, *rest]
    rank = {m: i for i, m in enumerate(order)}
    position = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (rank[item.module.__name__], position[id(item)]))
