"""A project laid out like this repository (git, dvc.yaml, 2 synthetic regions x 2 dates with labels and masks)
and the jobs the tests run on it: the training set, a quick model."""

import json
from pathlib import Path

import dagster as dg

from geoseg_assets.definitions import build_defs
from resources.class_map import ClassMapResource
from resources.compute import ComputeDevice
from resources.data_store import DataStore
from resources.drift_policy import DriftPolicy
from resources.dvc_store import DvcStore
from resources.geopackage_labels import GeoPackageLabelStore
from resources.mlflow_tracking import MlflowTracking
from resources.notifier import Notifier
from resources.synthetic_source import SyntheticSource
from tests.support.pipeline import import_truth, materialize_partition
from tests.support.repos import new_project_repo


DATES = ["2024-04-15", "2024-06-15"]


def make_project(tmp: Path):
    """Under `tmp`: a git repo with this project's dvc.yaml, 2 synthetic regions x 2 dates with labels and masks;
    (repo, tmp, instance, resources)."""
    repo = new_project_repo(tmp / "repo")
    source = SyntheticSource(cache_dir=str(tmp / "landing"), regions=["alpha", "beta"], dates=DATES, width=1024,
                             height=1024, nodata_margin=0.05)
    resources = {
        "data_store": DataStore(root=str(repo / "data" / "store")),
        "scene_source": source,
        "label_store": GeoPackageLabelStore(path=str(tmp / "labels.gpkg")),
        "class_map": ClassMapResource(),
        "dvc": DvcStore(repo_dir=str(repo), remote_url=str(tmp / "remote")),
        "mlflow_tracking": MlflowTracking(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
                                          artifact_location=str(tmp / "mlflow-artifacts")),
        "notifier": Notifier(),
        "compute": ComputeDevice(device="cpu"),
        "drift_policy": DriftPolicy(),
    }
    instance = dg.DagsterInstance.ephemeral()
    for region in ("alpha", "beta"):
        assert materialize_partition(instance, resources, region, DATES[0]).success
        import_truth(region, source, resources)
        for date in DATES:
            assert materialize_partition(instance, resources, region, date).success
    return repo, tmp, instance, resources


def build(project, **config):
    repo, _, instance, resources = project
    job = build_defs(resources).resolve_job_def("dataset_job")
    result = job.execute_in_process(instance=instance, run_config=dg.RunConfig(ops={"dataset": {"config": config}}))
    assert result.success
    meta = result.asset_materializations_for_node("dataset")[0].metadata
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    manifest = json.loads((repo / "data/store/dataset/manifest.json").read_text())
    return meta, checks, manifest


QUICK = {"architecture": "unet", "encoder": "resnet18", "encoder_depth": 3, "epochs": 2, "batch_size": 4,
         "max_steps_per_epoch": 2, "indices": ["NDVI"], "export_onnx": False}


def train_and_evaluate(project, min_miou, **model):
    _, _, instance, resources = project
    job = build_defs(resources).resolve_job_def("training_job")
    return job.execute_in_process(instance=instance, raise_on_error=False, run_config=dg.RunConfig(ops={
        "model": {"config": {**QUICK, **model}}, "model_evaluation": {"config": {"min_miou": min_miou}}}))
