"""The demo's training set and default model config: the DVC version is reproduced exactly and a
CPU training run reaches val mIoU >= 0.9 and becomes champion (about 4-5 minutes on 2 cores)."""

import numpy as np
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
    from resources.drift_policy import DriftPolicy
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
        "drift_policy": DriftPolicy(),
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


def seam_distance(length: int, config) -> np.ndarray:
    """Per pixel along one axis: distance to the nearest seam, the middle of two windows' overlap."""
    from geoseg_assets.ml.inference import window_starts

    starts = window_starts(length, config.window, config.stride, config.pad)
    seams = np.array([(a + config.window + b) / 2 for a, b in zip(starts, starts[1:])])
    pos = np.arange(length) + 0.5
    return np.abs(pos[:, None] - seams[None]).min(axis=1) if seams.size else np.full(length, np.inf)


@pytest.mark.slow
def test_trained_champion_predicts_without_seams_and_in_the_right_place(demo_project):
    """Runs after the training test (same module fixture): the champion predicts demo scenes through
    `prediction_job`; mIoU next to window seams matches mIoU at window centres within 1 point, and
    predicted water polygons lie on the true lakes."""
    import geopandas as gpd
    import rasterio
    from shapely import union_all

    from geoseg_assets.geo import synthetic
    from geoseg_assets.ml.inference import InferenceConfig
    from geoseg_assets.ml.metrics import confusion_matrix, segmentation_metrics
    from geoseg_assets.partitions import partition_key

    _, tmp, instance, resources = demo_project
    if resources["mlflow_tracking"].alias_version("champion") is None:
        pytest.skip("needs the champion trained by the test above")
    job = build_defs(resources).resolve_job_def("prediction_job")
    store = resources["data_store"]
    config = InferenceConfig()  # the asset's defaults: 256 px windows, 64 px overlap, ramp blending
    class_ids = list(synthetic.CLASSES.values())
    near_cm = centre_cm = 0
    water_iou = {}
    for region in ("alpha", "beta"):
        date = "2024-04-15"
        run = job.execute_in_process(partition_key=partition_key(region, date), instance=instance)
        meta = run.asset_materializations_for_node("predictions")[0].metadata
        dims = {"region": region, "date": date}
        with rasterio.open(store.path("predictions", dims, "classes.tif")) as p, \
                rasterio.open(store.path("masks", dims, "mask.tif")) as m:
            pred, truth = p.read(1), m.read(1)
        d = np.minimum(seam_distance(pred.shape[0], config)[:, None], seam_distance(pred.shape[1], config)[None, :])
        near_cm = near_cm + confusion_matrix(truth[d <= 16], pred[d <= 16], class_ids)
        centre_cm = centre_cm + confusion_matrix(truth[d >= 64], pred[d >= 64], class_ids)
        polygons = gpd.read_file(meta["polygons_path"].value)
        labels = resources["label_store"].labels(region, date=date)
        truth_water = union_all(list(labels[labels["class_name"] == "water"].geometry))
        pred_water = union_all(list(polygons[polygons["class_name"] == "water"].geometry))
        water_iou[region] = pred_water.intersection(truth_water).area / pred_water.union(truth_water).area
    names = list(synthetic.CLASSES)
    near = segmentation_metrics(near_cm, names)["miou"]
    centre = segmentation_metrics(centre_cm, names)["miou"]
    print(f"mIoU near seams {near:.4f}, at window centres {centre:.4f}; water polygon IoU {water_iou}")
    assert abs(near - centre) <= 0.01
    assert min(water_iou.values()) > 0.8
