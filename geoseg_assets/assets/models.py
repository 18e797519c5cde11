"""`model` (train + register a challenger in MLflow) and `model_evaluation` (test metrics + promotion)."""

import hashlib
import json

import dagster as dg
import numpy as np
from pydantic import Field

from geoseg_assets import metadata as md
from geoseg_assets.markdown import markdown_table
from geoseg_assets.ml.options import DEFAULT_CLASS_WEIGHTING, ClassWeighting, Norm
from geoseg_assets.pools import MODEL_COMPUTE_POOL
from geoseg_assets.assets.datasets import DVC_STAGE, REPRODUCE, dataset
from resources.catalog import DATASET, MODELS, SCENE_RECORD
from resources.data_store import DataStore
from resources.dvc_store import DvcError, DvcStore
from resources.mlflow_tracking import (
    CHALLENGER,
    CHAMPION,
    ONNX_DIR,
    ONNX_FILE,
    PREPROCESSING_FILE,
    MlflowTracking,
    load_registered,
)
# Defaults chosen by benchmarks/bench_model_quality.py (README "Model quality against a plain script"; the class
# weighting's figures are in ml/options.py).
ENCODER_DEPTH = 3


class ModelConfig(dg.Config):
    """A training run: network, inputs and optimisation (editable in the launchpad)."""

    architecture: str = Field(default="unet", description="unet, unetplusplus, fpn or deeplabv3plus.")
    encoder: str = Field(default="resnet18", description="smp encoder name (weights are never downloaded).")
    encoder_depth: int = Field(default=ENCODER_DEPTH, ge=3, le=5,
                               description="Encoder stages: 5 is smp's full depth (receptive field for real scenes); "
                               "3 trains about twice as fast on CPU.")
    indices: list[str] = Field(default=["NDVI", "NDWI"], description="Spectral indices appended as input channels "
                               "(need the bands they are made of: NDVI R+NIR, NDWI G+NIR; [] for other products).")
    epochs: int = Field(default=15, gt=0, description="Epochs of `samples_per_epoch` crops each.")
    samples_per_epoch: int | None = Field(
        default=None, gt=0, description="Random train crops per epoch, drawn from the train split's labelled pixels "
        "(a crop may span neighbouring tiles). None = one per train tile, at least 8 batches. Steps per epoch = "
        "samples_per_epoch // batch_size.")
    crop_context: bool = Field(default=False, description="Train crops that reach into val/test tiles show their "
                               "pixels (never their labels) instead of the train mean.")
    crop: int | None = Field(default=None, gt=0, description="Train crop size in pixels (None = the tile size; "
                             "a multiple of 2^encoder_depth).")
    batch_size: int = Field(default=8, gt=0, description="Crops per optimizer step (and tiles per val/test batch).")
    lr: float = Field(default=3e-3, gt=0, description="Peak AdamW learning rate, reached after a 5 % warmup, then cosine decay.")
    weight_decay: float = Field(default=1e-4, ge=0, description="AdamW weight decay.")
    class_weighting: ClassWeighting = Field(default=DEFAULT_CLASS_WEIGHTING, description="Cross-entropy class weights from "
                                            "train pixel counts: none, inverse_sqrt or inverse (frequency^-1/2 or ^-1).")
    class_weight_cap: float | None = Field(default=10.0, ge=1, description="Largest class weight at most this many "
                                           "times the smallest (None = uncapped).")
    ema_decay: float | None = Field(default=None, gt=0, lt=1, description="Validate, keep and serve an exponential "
                                    "moving average of the weights (e.g. 0.99: about the last 100 steps); None = the raw weights.")
    norm: Norm = Field(default="batch", description="batch (BatchNorm) or group (GroupNorm: for batches of 1-4).")
    seed: int = Field(default=0, description="Seed of weights, crop positions and augmentations (same seed, same data: "
                      "same model on CPU).")
    patience: int | None = Field(default=5, description="Epochs without val mIoU gain before stopping (None = never).")
    max_steps_per_epoch: int | None = Field(default=None, description="Cap steps per epoch (quick experiments).")
    weights_path: str | None = Field(default=None, description="Local weights (encoder or whole model) to start from.")
    device: str = Field(default="auto", description="auto (CUDA when present), cpu or cuda.")
    export_onnx: bool = Field(default=True, description="Also log an ONNX export (checked against ONNX Runtime) next to the model.")
    fresh: bool = Field(default=False, description="Train from scratch even when a checkpoint of this config and dataset "
                        "exists (by default a re-run resumes or reuses it); step retries of this run still resume.")


def train_config(config: ModelConfig, checkpoint_dir: str):
    from geoseg_assets.ml.models import depth_kwargs
    from geoseg_assets.ml.train import TrainConfig

    return TrainConfig(
        architecture=config.architecture, encoder=config.encoder,
        model_kwargs=depth_kwargs(config.architecture, config.encoder_depth), indices=tuple(config.indices),
        epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
        seed=config.seed, patience=config.patience, crop=config.crop, samples_per_epoch=config.samples_per_epoch,
        crop_context=config.crop_context, class_weighting=config.class_weighting, class_weight_cap=config.class_weight_cap, norm=config.norm,
        ema_decay=config.ema_decay,
        device=config.device, checkpoint_dir=checkpoint_dir, max_steps_per_epoch=config.max_steps_per_epoch,
        weights_path=config.weights_path,
    )


def checkpoint_key(config: ModelConfig, dataset_version: str, run_id: str) -> str:
    """Same config + same dataset -> same checkpoint folder, so a retried or re-launched run resumes instead of
    restarting; with `fresh`, the run id joins the key: a new folder per run, shared by that run's retries."""
    parts = [config.model_dump(), dataset_version] + ([run_id] if config.fresh else [])
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def dataset_record(context, dvc: DvcStore):
    """The git record of the dataset version in dvc.lock. A version without one (built by `dvc repro`, or before
    records existed) is recorded now, so every model can be traced back to restorable bytes."""
    record = dvc.record_of(DVC_STAGE)
    if record is not None:
        return record
    try:
        record = dvc.record(DVC_STAGE)
    except DvcError as exc:
        raise dg.Failure(f"{exc}; without a record the model's dataset could not be restored later",
                         allow_retries=False) from exc
    pushed = dvc.push_record(record)
    context.log.warning(f"dataset {record.version} had no git record (built by `dvc repro`, or before records "
                        f"existed): recorded it now as {record.ref}; {pushed.message}. Its bytes must be in the DVC "
                        "remote (`dvc push dataset`) for it to be restorable elsewhere")
    return record


def training_grid(manifest: dict, data_store: DataStore) -> dict:
    """dtype, CRS and pixel size of the training scenes (from their scene records), so predictions can
    refuse scenes on another grid or scale (see monitoring/integrity.py)."""
    grid = {"dtype": manifest.get("dtype")}
    for part in manifest["partitions"]:
        dims = {"region": part["region"], "date": part["date"]}
        if data_store.exists(SCENE_RECORD, dims):
            scene = data_store.scene_record(dims)
            grid.update(crs_wkt=scene["crs_wkt"], resolution=scene["resolution"])
            break
    return grid


def log_onnx_export(context, net, channels: int, tile_shape, data_store: DataStore, mlflow_tracking: MlflowTracking,
                    run_id: str) -> float | None:
    """Export `net` to ONNX, check ONNX Runtime against torch on a random batch and log the file as
    `onnx/model.onnx` of MLflow run `run_id`; returns the max abs logit difference (None if the
    export failed: logged as a warning, the torch model stays the one that predicts)."""
    import tempfile

    from geoseg_assets.ml.onnx_export import export_onnx, onnx_max_abs_diff
    from geoseg_assets.ml.runtimes import ONNX_TOLERANCE

    with tempfile.TemporaryDirectory(dir=data_store.tmp_dir()) as tmp:
        try:
            path = export_onnx(net, channels, tuple(tile_shape), f"{tmp}/{ONNX_FILE}")
            batch = np.random.default_rng(0).standard_normal((2, channels, *tile_shape)).astype(np.float32)
            diff = onnx_max_abs_diff(net, path, batch)
        except Exception as exc:  # noqa: BLE001 (an optional artefact must not fail a finished training)
            context.log.warning(f"ONNX export failed, the model is logged without it: {exc}")
            return None
        if diff > ONNX_TOLERANCE:
            context.log.warning(f"ONNX Runtime differs from torch by {diff:.2e} (> {ONNX_TOLERANCE}): not logged")
            return None
        mlflow_tracking.log_artifact(run_id, str(path), artifact_path=ONNX_DIR)
        mlflow_tracking.log_metrics(run_id, {"onnx_max_abs_diff": diff})
    return diff


@dg.asset(
    deps=[dataset],
    kinds={"pytorch", "mlflow"},
    group_name="models",
    pool=MODEL_COMPUTE_POOL,
    retry_policy=dg.RetryPolicy(max_retries=2, delay=1),
    description="An smp network trained on the dataset (checkpoint every epoch; a retry resumes), tracked in MLflow "
    "(params, per-epoch metrics, dataset DVC version + its git record, git commit, Dagster run) and registered with alias "
    "`challenger`; `python -m geoseg_assets.reproduce <model> <version>` restores its training data.",
)
def model(context: dg.AssetExecutionContext, config: ModelConfig, data_store: DataStore, dvc: DvcStore,
          mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    from geoseg_assets.ml.model_artifact import load_checkpoint
    from geoseg_assets.ml.plots import curves_png
    from geoseg_assets.ml.train import train

    dataset_dir, manifest = data_store.dataset_dir(), data_store.dataset_manifest()
    if dataset_dir is None:
        raise dg.Failure(f"{data_store.display(data_store.partition_dir(DATASET))}: no dataset; materialize `dataset` first",
                         allow_retries=False)
    dataset_version = dvc.version(DVC_STAGE) or "unversioned"
    record = dataset_record(context, dvc) if dataset_version != "unversioned" else None
    key = checkpoint_key(config, dataset_version, context.run.run_id)
    checkpoints = data_store.scratch_dir(MODELS, "checkpoints") / key
    tags = {
        "geoseg.dataset_version": dataset_version,
        # the git record of that dataset version: `python -m geoseg_assets.reproduce <model> <version>` reads these
        "geoseg.dataset_ref": record.ref if record else "none",
        "geoseg.dataset_commit": record.commit if record else "none",
        "geoseg.git_commit": dvc.commit_of_code(DVC_STAGE),
        "geoseg.dagster_run_id": context.run.run_id,
        "geoseg.partitions": ",".join(sorted({f"{p['region']}/{p['date']}" for p in manifest["partitions"]})),
        "geoseg.checkpoint_key": key,
    }
    with mlflow_tracking.run(run_name=f"{config.architecture}-{config.encoder}-{key[:6]}", tags=tags) as run:
        run_id = run.info.run_id
        mlflow_tracking.log_params(run_id, {**{k: v for k, v in config.model_dump().items() if v is not None},
                                            "bands": manifest["band_names"]})

        logged: set[int] = set()

        def log_epoch(epoch: int, metrics: dict) -> None:
            mlflow_tracking.log_metrics(run_id, {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
                                        step=epoch)
            logged.add(epoch)

        def on_epoch(epoch: int, metrics: dict) -> None:
            log_epoch(epoch, metrics)
            context.log.info(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                            if isinstance(v, float)))

        result = train(train_config(config, str(checkpoints)), dataset_dir, on_epoch=on_epoch)
        for entry in result.history:  # epochs trained before a resume (or a finished run) belong to this run too
            if entry["epoch"] not in logged:
                log_epoch(entry["epoch"], {k: v for k, v in entry.items() if k != "epoch"})
        if result.resumed_from is not None:
            mlflow_tracking.set_tag(run_id, "geoseg.resumed_from_epoch", str(result.resumed_from))
        net, spec = load_checkpoint(result.best_state_path)
        channels = spec.in_channels
        h, w = manifest["tile_shape"]
        preprocessing = {"band_names": manifest["band_names"], "mean": manifest["norm"]["mean"],
                         "std": manifest["norm"]["std"], "indices": list(config.indices),
                         "class_ids": sorted(manifest["class_map"]["classes"].values()),
                         "class_map": manifest["class_map"], "tile_shape": manifest["tile_shape"],
                         **training_grid(manifest, data_store)}
        mlflow_tracking.log_dict(run_id, preprocessing, PREPROCESSING_FILE)
        png = curves_png(result.history)
        mlflow_tracking.log_png(run_id, png, "curves.png")
        mlflow_tracking.log_metrics(run_id, {"best_val_miou": result.best_miou})
        model_uri, weights_sha = mlflow_tracking.log_model(net, spec, run_id)
        onnx_diff = (log_onnx_export(context, net, channels, (h, w), data_store, mlflow_tracking, run_id)
                     if config.export_onnx else None)
        version = mlflow_tracking.register(model_uri, run_id, weights_sha, CHALLENGER)
    context.log.info(f"registered {mlflow_tracking.model_name} v{version} as {CHALLENGER} (best val mIoU {result.best_miou:.4f})")
    run_page = mlflow_tracking.run_page(run_id)
    return dg.MaterializeResult(
        metadata={
            "mlflow_run_id": run_id,
            **({"mlflow_run": dg.MetadataValue.url(run_page)} if run_page else {}),
            "mlflow_tracking_uri": mlflow_tracking.tracking_uri,
            "model_name": mlflow_tracking.model_name,
            "model_version": version,
            "weights_sha256": weights_sha,
            "best_val_miou": dg.MetadataValue.float(round(float(result.best_miou), 4)),
            "epochs_run": result.epochs_run,
            "resumed_from_epoch": result.resumed_from if result.resumed_from is not None else "none",
            "dataset_version": dataset_version,
            "dataset_ref": tags["geoseg.dataset_ref"],
            "git_commit": tags["geoseg.git_commit"],
            "restore_dataset": dg.MetadataValue.md(
                f"```bash\n{REPRODUCE} {mlflow_tracking.model_name} {version}\n```" if record else
                "not restorable: the model was trained on an unversioned dataset"),
            "curves": md.image(png, "training curves"),
            "onnx": f"onnx/model.onnx, max |ONNX Runtime - torch| = {onnx_diff:.2e}" if onnx_diff is not None else "not exported",
        },
        data_version=dg.DataVersion(f"{mlflow_tracking.model_name}-v{version}"),
    )


class EvaluationConfig(dg.Config):
    """The promotion gate."""

    margin: float = Field(default=0.005, ge=0, description="A challenger must beat the champion's test mIoU by more than this.")
    min_miou: float = Field(default=0.1, ge=0, le=1, description="Blocking quality floor: below this test mIoU (over the "
                            "classes present in the test truth) no model is promoted and the run fails. The default "
                            "only stops a collapsed model (one class everywhere, chance level); the champion comparison "
                            "is the real gate.")
    gallery_tiles: int = Field(default=4, ge=1, le=12, description="Worst tiles shown in the gallery.")


CHAMPION_ASSET = "champion_model"


@dg.multi_asset(
    specs=[
        dg.AssetSpec("model_evaluation", deps=[model], kinds={"mlflow"}, group_name="models",
                     description="Test-split metrics of the challenger (per class with support, per tile, confusion "
                     "matrix, worst-tile gallery), logged to its MLflow run, and the promotion decision. `test_miou` "
                     "averages the classes present in the test truth; `test_miou_all_classes` also counts classes "
                     "predicted but absent from it as 0."),
        dg.AssetSpec(CHAMPION_ASSET, deps=["model_evaluation"], kinds={"mlflow"}, group_name="models", skippable=True,
                     description="The registered version with alias `champion`, the model that predicts. Materialized "
                     "only when the alias moves, so predictions re-run for a new champion and only then."),
    ],
    pool=MODEL_COMPUTE_POOL,
    check_specs=[dg.AssetCheckSpec("min_test_miou", asset="model_evaluation", blocking=True,
                                   description="The challenger's test mIoU (present classes) reaches the floor "
                                   "`min_miou`; below it the run fails with the score, the floor and the fix.")],
)
def model_evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig, data_store: DataStore,
                     mlflow_tracking: MlflowTracking):
    from geoseg_assets.ml.evaluate import evaluate_split
    from geoseg_assets.ml.metrics import miou_note, per_class_markdown, per_class_rows
    from geoseg_assets.ml.promotion import check_floor, comparable_scores, decide_promotion, promotion_verdict

    challenger = mlflow_tracking.alias_version(CHALLENGER)
    if challenger is None:
        raise mlflow_tracking.no_alias_failure(CHALLENGER, "materialize `model` first")
    preprocessing = mlflow_tracking.read_json_artifact(challenger.run_id, PREPROCESSING_FILE)
    net = load_registered(mlflow_tracking, str(challenger.version))
    dataset_dir = data_store.dataset_dir()
    if dataset_dir is None:
        raise dg.Failure(f"{data_store.display(data_store.partition_dir(DATASET))}: no dataset; materialize `dataset` "
                         "first", allow_retries=False)
    report = evaluate_split(net, dataset_dir, "test", preprocessing["indices"], config.gallery_tiles)
    test_miou, test_miou_all = report.metrics["miou"], report.metrics["miou_all_classes"]

    champion = mlflow_tracking.alias_version(CHAMPION)
    champion_metrics = None
    if champion is not None and str(champion.version) != str(challenger.version):
        champion_metrics = mlflow_tracking.run_metrics(champion.run_id)
    challenger_score, champion_score, compared_on = comparable_scores(report.metrics, champion_metrics)
    floor = check_floor(test_miou, config.min_miou)
    passes_floor = floor.passed
    decision = decide_promotion(challenger_score, champion_score, config.margin, compared_on)
    already_champion = champion is not None and str(champion.version) == str(challenger.version)
    verdict = promotion_verdict(decision, floor, already_champion)
    promoted, reason = verdict.promoted, verdict.reason
    if verdict.move_alias:
        mlflow_tracking.set_alias(CHAMPION, str(challenger.version))

    run_id = challenger.run_id
    mlflow_tracking.log_metrics(run_id, {
        "test_miou": test_miou, "test_miou_all_classes": test_miou_all, "test_fwiou": report.metrics["fwiou"],
        "test_pixel_accuracy": report.metrics["pixel_accuracy"],
        **{f"test_iou_{n}": v["iou"] for n, v in report.metrics["per_class"].items() if v["present"]}})
    mlflow_tracking.log_dict(run_id, report.per_tile, "evaluation/per_tile.json")
    mlflow_tracking.log_dict(run_id, per_class_rows(report.metrics), "evaluation/per_class.json")
    mlflow_tracking.log_dict(run_id, {"promoted": promoted, "reason": reason, "champion_score": champion_score},
                             "evaluation/promotion.json")
    mlflow_tracking.log_png(run_id, report.confusion_png, "evaluation/confusion_matrix.png")
    mlflow_tracking.log_png(run_id, report.gallery_png, "evaluation/worst_tiles.png")
    mlflow_tracking.set_tag(run_id, "geoseg.promotion", "champion" if promoted else "rejected")

    table = markdown_table(("tile", "mIoU", "pixel acc"),
                           ((t["tile_id"], f"{t['miou']:.3f}", f"{t['pixel_accuracy']:.3f}") for t in report.per_tile[:10]))
    yield dg.MaterializeResult(
        metadata={
            "model_version": str(challenger.version),
            "test_miou": dg.MetadataValue.float(round(float(test_miou), 4)),
            "test_miou_all_classes": dg.MetadataValue.float(round(float(test_miou_all), 4)),
            "miou_classes": miou_note(report.metrics),
            "test_fwiou": dg.MetadataValue.float(round(float(report.metrics["fwiou"]), 4)),
            "test_pixel_accuracy": dg.MetadataValue.float(round(float(report.metrics["pixel_accuracy"]), 4)),
            "per_class": dg.MetadataValue.md(per_class_markdown(report.metrics)),
            "per_class_iou": {n: round(v["iou"], 4) for n, v in report.metrics["per_class"].items() if v["present"]},
            "champion_test_miou": round(champion_score, 4) if champion_score is not None else "none",
            "compared_on": compared_on,
            "promoted": promoted,
            "promotion_reason": reason,
            "worst_tiles": dg.MetadataValue.md(table),
            # Once per model version, so shown at full size (per-partition previews are thumbnails).
            "confusion_matrix": md.image(report.confusion_png, "confusion matrix", max_bytes=None),
            "worst_tiles_gallery": md.image(report.gallery_png, "worst tiles", max_bytes=None),
            "mlflow_run_id": challenger.run_id,
        },
        asset_key="model_evaluation",
    )
    floor_meta = {"test_miou": round(float(test_miou), 4), "min_miou": float(config.min_miou),
                  "test_miou_all_classes": round(float(test_miou_all), 4)}
    yield dg.AssetCheckResult(asset_key="model_evaluation", check_name="min_test_miou", passed=bool(passes_floor),
                              description=floor.message, metadata=floor_meta)
    # A champion Dagster has not seen yet (a fresh instance, or an alias set in MLflow by hand) is announced too.
    unseen = context.instance.get_latest_materialization_event(dg.AssetKey(CHAMPION_ASSET)) is None
    if promoted and (verdict.move_alias or unseen):
        context.log.info(f"{mlflow_tracking.model_name} v{challenger.version} is the new {CHAMPION}: {reason}")
        yield dg.MaterializeResult(
            asset_key=CHAMPION_ASSET,
            metadata={"model_name": mlflow_tracking.model_name, "model_version": str(challenger.version),
                      "mlflow_run_id": challenger.run_id, "model_uri": mlflow_tracking.model_uri(CHAMPION),
                      "test_miou": dg.MetadataValue.float(round(float(test_miou), 4)),
                      "previous_champion_test_miou": champion_score if champion_score is not None else "none"},
            data_version=dg.DataVersion(f"{mlflow_tracking.model_name}-v{challenger.version}"),
        )
    if not passes_floor:  # Dagster would fail the step naming only the check; this failure says why and the fix
        raise dg.Failure(description=f"min_test_miou failed: {floor.message}", metadata=floor_meta, allow_retries=False)
