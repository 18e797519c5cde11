"""The asset graph as the tests drive it: landing files, test resources, one partition's imagery, labels."""

import shutil
from pathlib import Path

from geoseg_assets.assets.masks import import_region_labels
from resources.label_store import ImportOptions


def land(landing: Path, region: str, date: str, src: Path, name: str | None = None) -> Path:
    """Copy a file into the landing layout `<landing>/<region>/<date>/<name>`."""
    dst = landing / region / date / (name or Path(src).name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    return dst


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


def import_truth(region, synthetic_source, resources):
    path = synthetic_source.labels_path(region)
    return import_region_labels(str(path), region, ImportOptions(class_column="class_name", source="synthetic"),
                                data_store=resources["data_store"], label_store=resources["label_store"],
                                class_map=resources["class_map"])
