"""The demo's training set and default model config: the DVC version is reproduced exactly and a
CPU training run reaches val and test mIoU >= 0.85 and becomes champion (about 4-5 minutes on 2 cores)."""

import numpy as np
import pytest

from geoseg_assets.definitions import build_defs

from geoseg_assets.demo import stage_landing
from resources.label_store import ImportOptions
from tests.support.pipeline import materialize_partition
from tests.support.project import build
from tests.support.repos import new_project_repo

pytestmark = pytest.mark.slow(minutes=4)  # wall time alone on 2 cores: started first (tests/conftest.py)

DEMO_DATASET_VERSION = "04071365c17454e8d8d6be42cffdfa8d.dir"  # what `make demo` pins in dvc.lock


@pytest.fixture(scope="module")
def demo_project(tmp_path_factory):
    """The demo's scenes, labels, masks and dataset in a throwaway git repo."""
    import dagster as dg

    from resources.class_map import ClassMapResource
    from resources.compute import ComputeDevice
    from resources.data_store import DataStore
    from resources.drift_policy import DriftPolicy
    from resources.dvc_store import DvcStore
    from resources.geopackage_labels import GeoPackageLabelStore
    from resources.landing_source import LandingFolderSource
    from resources.mlflow_tracking import MlflowTracking
    from resources.notifier import Notifier

    tmp = tmp_path_factory.mktemp("demo")
    repo = new_project_repo(tmp / "repo")
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
    with dg.DagsterInstance.ephemeral() as instance:
        yield make_demo_partitions(instance, synthetic, resources, repo, tmp)


def make_demo_partitions(instance, synthetic, resources, repo, tmp):
    """The demo's partitions on `instance`: every scene, tiles and masks, with the labels imported."""
    from geoseg_assets.assets.masks import import_region_labels

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


@pytest.fixture(scope="module")
def demo_champion(demo_project):
    """(dataset metadata, training run) of the demo's dataset and the default ModelConfig, as `make demo` runs
    them: trained once for the module, whichever of its tests runs first."""
    meta, _, _ = build(demo_project)
    _, _, instance, resources = demo_project
    job = build_defs(resources).resolve_job_def("training_job")
    return meta, job.execute_in_process(instance=instance, raise_on_error=False)


def test_demo_dataset_trains_to_val_and_test_miou_0_85_on_cpu(demo_champion):
    """The floors leave room for the CPU: the same seed and data follow a different float path on another
    processor's kernels or thread count. Measured on this 2-core machine with one thread: best val 0.871 / test
    0.892 with the default `class_weighting: none`, 0.889 / 0.882 with `inverse_sqrt` (the default until the
    cross-validated bench chose `none`); 0.904 val on an earlier machine. The two recipes trade val for test
    on this small training set; a broken sampler, loss or split lands far below both (< 0.8)."""
    meta, result = demo_champion
    assert meta["dataset_version"].value == DEMO_DATASET_VERSION
    assert result.success, result.get_step_failure_events()
    model = result.asset_materializations_for_node("model")[0].metadata
    evaluation = result.asset_materializations_for_node("model_evaluation")[0].metadata
    print(f"demo champion: best val mIoU {model['best_val_miou'].value:.4f}, test mIoU {evaluation['test_miou'].value:.4f}")
    assert model["best_val_miou"].value >= 0.85
    assert evaluation["test_miou"].value >= 0.85 and evaluation["promoted"].value is True


def seam_distance(length: int, config) -> np.ndarray:
    """Per pixel along one axis: distance to the nearest seam, the middle of two windows' overlap."""
    from geoseg_assets.ml.inference import axis_windows

    seams = np.array(axis_windows(length, config).seams)
    pos = np.arange(length) + 0.5
    return np.abs(pos[:, None] - seams[None]).min(axis=1) if seams.size else np.full(length, np.inf)


def test_trained_champion_predicts_without_seams_and_in_the_right_place(demo_project, demo_champion):
    """The demo champion (the module's one training run) predicts demo scenes through
    `prediction_job` twice, with the default blended windows (2 x 2 of 576 px on these 1024² scenes, overlap 64,
    seams at 512) and with plain tiling (3 x 3 windows of 352 px, overlap 0, seams at 352 and 704), whose seams lie
    elsewhere. Compared on the same pixels, so that only the window position differs:
    - at the blended grid's seams (away from plain tiling's), blending scores within 1 mIoU point of plain
      tiling, for which those pixels are window interiors: blending adds no seam of its own;
    - plain tiling's seams (away from the blended grid's) are reported, not asserted: the champion trained on whole
      tiles lost 1.2 points there (0.8718 plain / 0.8834 blended, 256 px windows both), but since training crops span
      tile borders the champion shows no such seam (within 16 px 0.8723 plain / 0.8748 blended; within 4 px
      0.8587 / 0.8547; blended seams 0.9201 blended / 0.9202 plain), so a control "plain tiling is worse at its
      seams" did not hold then. With 352 px plain windows it shows again (0.8357 plain / 0.8947 blended at plain
      seams; 0.8957 / 0.8958 at blended seams), still reported only.
    Predicted water polygons lie on the true lakes."""
    import geopandas as gpd
    import rasterio
    from shapely import union_all

    from geoseg_assets.geo import synthetic
    from geoseg_assets.ml.inference import InferenceConfig
    from geoseg_assets.ml.metrics import confusion_matrix, segmentation_metrics
    from geoseg_assets.partitions import partition_key

    _, tmp, instance, resources = demo_project
    assert demo_champion[1].success and resources["mlflow_tracking"].alias_version("champion") is not None
    job = build_defs(resources).resolve_job_def("prediction_job")
    store = resources["data_store"]
    grids = {"plain": InferenceConfig(window=384, overlap=0), "blended": InferenceConfig()}  # blended: the asset's defaults
    class_ids, names = list(synthetic.CLASSES.values()), list(synthetic.CLASSES)
    # confusion matrices by (pixel set, grid that predicted it)
    cms = {(where, grid): 0 for where in ("blended seams", "plain seams") for grid in grids}
    water_iou = {}
    for region in ("alpha", "beta"):
        date = "2024-04-15"
        dims = {"region": region, "date": date}
        preds, meta = {}, None
        for grid, config in grids.items():  # blended last: its outputs stay on disk
            run = job.execute_in_process(partition_key=partition_key(region, date), instance=instance, run_config={
                "ops": {"predictions": {"config": {"window": config.window, "overlap": config.overlap}}}})
            meta = run.asset_materializations_for_node("predictions")[0].metadata
            with rasterio.open(store.path("predictions", dims, "classes.tif")) as p:
                preds[grid] = p.read(1)
        with rasterio.open(store.path("masks", dims, "mask.tif")) as m:
            truth = m.read(1)
        d = {grid: np.minimum(seam_distance(truth.shape[0], c)[:, None], seam_distance(truth.shape[1], c)[None, :])
             for grid, c in grids.items()}
        pixels = {"blended seams": (d["blended"] <= 16) & (d["plain"] >= 48),
                  "plain seams": (d["plain"] <= 16) & (d["blended"] >= 48)}
        for (where, grid) in cms:
            cms[where, grid] = cms[where, grid] + confusion_matrix(truth[pixels[where]], preds[grid][pixels[where]],
                                                                   class_ids)
        polygons = gpd.read_file(meta["polygons_path"].value)
        labels = resources["label_store"].labels(region, date=date)
        truth_water = union_all(list(labels[labels["class_name"] == "water"].geometry))
        pred_water = union_all(list(polygons[polygons["class_name"] == "water"].geometry))
        water_iou[region] = pred_water.intersection(truth_water).area / pred_water.union(truth_water).area
    miou = {key: segmentation_metrics(cm, names)["miou"] for key, cm in cms.items()}
    print("mIoU by (pixels, grid):", {f"{w} / {g}": round(v, 4) for (w, g), v in miou.items()},
          f"water polygon IoU {water_iou}")
    assert miou["blended seams", "blended"] >= miou["blended seams", "plain"] - 0.01, miou
    assert all(cms[key].sum() > 10_000 for key in cms), {k: int(v.sum()) for k, v in cms.items()}  # both pixel sets
    assert min(water_iou.values()) > 0.8
