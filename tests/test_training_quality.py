"""The demo's training set and default model config: the DVC version is reproduced exactly and a
CPU training run reaches val mIoU >= 0.9 and becomes champion (about 4-5 minutes on 2 cores)."""

import pytest

from geoseg_assets.definitions import build_defs

from geoseg_assets.demo import stage_landing
from resources.label_store import ImportOptions
from tests.test_dataset_asset import build

DEMO_DATASET_VERSION = "04071365c17454e8d8d6be42cffdfa8d.dir"  # what `make demo` pins in dvc.lock


@pytest.fixture(scope="module")
def demo_project(tmp_path_factory):
    """The demo's scenes, labels, masks and dataset in a throwaway git repo."""
    import shutil
    import subprocess

    import dagster as dg

    from geoseg_assets.assets.masks import import_region_labels
    from geoseg_assets.definitions import REPO_ROOT
    from resources.compute import ComputeDevice
    from resources.data_store import DataStore
    from resources.dvc_store import DvcStore
    from resources.label_store import ClassMapResource, GeoPackageLabelStore
    from resources.mlflow_tracking import MlflowTracking
    from resources.notifier import Notifier
    from resources.scene_sources import LandingFolderSource
    from tests.conftest import materialize_partition

    tmp = tmp_path_factory.mktemp("demo")
    repo = tmp / "repo"
    repo.mkdir()
    for args in (["init", "-q"], ["config", "user.name", "t"], ["config", "user.email", "t@geoseg.invalid"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    (repo / ".gitignore").write_text("/data/\n")
    shutil.copy(REPO_ROOT / "dvc.yaml", repo / "dvc.yaml")
    (repo / "geoseg_assets" / "geo").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "geoseg_assets/geo/dataset.py", repo / "geoseg_assets/geo/dataset.py")
    synthetic = stage_landing(tmp / "landing")
    resources = {
        "data_store": DataStore(root=str(repo / "data" / "store")),
        "scene_source": LandingFolderSource(root=str(tmp / "landing")),
        "label_store": GeoPackageLabelStore(path=str(tmp / "labels.gpkg")),
        "class_map": ClassMapResource(),
        "dvc": DvcStore(repo_dir=str(repo), remote_url=str(tmp / "remote")),
        "mlflow_tracking": MlflowTracking(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", artifact_location=str(tmp / "art")),
        "notifier": Notifier(),
        "compute": ComputeDevice(device="cpu"),
    }
    instance = dg.DagsterInstance.ephemeral()
    for region in synthetic.regions:
        for i, date in enumerate(synthetic.dates):
            assert materialize_partition(instance, resources, region, date).success
            if i == 0:
                import_region_labels(str(synthetic.labels_path(region)), region,
                                     ImportOptions(class_column="class_name", source="synthetic", replace=True),
                                     data_store=resources["data_store"], label_store=resources["label_store"],
                                     class_map=resources["class_map"])
        assert materialize_partition(instance, resources, region, synthetic.dates[0]).success  # masks with labels
    return repo, tmp, instance, resources


@pytest.mark.slow
def test_demo_dataset_trains_to_val_miou_0_9_on_cpu(demo_project):
    meta, checks, _ = build(demo_project)
    assert meta["dataset_version"].value == DEMO_DATASET_VERSION
    _, _, instance, resources = demo_project
    job = build_defs(resources).resolve_job_def("training_job")
    result = job.execute_in_process(instance=instance)  # the default ModelConfig, as `make demo` runs it
    assert result.success
    model = result.asset_materializations_for_node("model")[0].metadata
    evaluation = result.asset_materializations_for_node("model_evaluation")[0].metadata
    assert model["best_val_miou"].value >= 0.9
    assert evaluation["test_miou"].value >= 0.85 and evaluation["promoted"].value is True
