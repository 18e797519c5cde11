"""Training loop: CE + Dice loss, AdamW with warmup + cosine, early stopping on val mIoU, and a
checkpoint every epoch from which a crashed run resumes to the exact weights of an uninterrupted one.

Checkpoints (in `checkpoint_dir`, each written to a temp file then renamed, so a crash never leaves
a torn file): `last.pt` after every epoch (model, optimizer, scheduler, scaler, RNG states, history,
early-stopping state, config and dataset hash) and `best.pt` when val mIoU improves (model weights
plus what inference needs: architecture, normalizer, class ids/names). Calling `train` again with the
same `checkpoint_dir` resumes from `last.pt`; on CPU with a fixed seed the result is bit-identical.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..geo.classmap import IGNORE_ID as IGNORE_INDEX
from .averaging import WarmupCosine, WeightAverage
from .checkpoints import (
    BEST,
    CHECKPOINT_FORMAT,
    LAST,
    atomic_save,
    dataset_hash,
    load_last,
    rng_state,
    set_rng_state,
)
from .data import make_loaders
from .losses import SegmentationLoss, class_weights
from .metrics import confusion_matrix, segmentation_metrics
from .models import batch_on, build_model, on_device
from .options import CLASS_WEIGHTINGS, DEFAULT_CLASS_WEIGHTING, NORMS, ClassWeighting, Norm
from .sampling import set_epoch

log = logging.getLogger("geoseg.train")


@dataclass
class TrainConfig:
    """Everything that determines a training run (besides the dataset)."""

    architecture: str = "unet"  # unet | unetplusplus | fpn | deeplabv3plus
    encoder: str = "resnet18"
    model_kwargs: dict = field(default_factory=dict)  # extra smp arguments, e.g. {"encoder_depth": 4, ...}
    indices: tuple[str, ...] = ()  # spectral indices appended as channels, e.g. ("NDVI", "NDWI")
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3  # peak learning rate, reached after the warmup
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05  # share of all steps spent warming the lr up linearly
    seed: int = 0
    patience: int | None = 5  # epochs without val mIoU improvement before stopping; None = never stop early
    crop: int | None = None  # train crop size in px (None = the tile size); crops may span neighbouring tiles
    samples_per_epoch: int | None = None  # train crops per epoch (None = one per train tile, at least 8 batches)
    crop_context: bool = False  # crops show val/test tiles' pixels (never their labels) instead of a blank
    class_weighting: ClassWeighting = DEFAULT_CLASS_WEIGHTING  # CE class weights from the train pixel frequency
    class_weight_cap: float | None = 10.0  # largest weight / smallest weight; None = uncapped
    norm: Norm = "batch"  # normalization layers: batch (smp's BatchNorm) | group (GroupNorm, for tiny batches)
    dice_weight: float = 1.0  # loss = CE + dice_weight * Dice
    ema_decay: float | None = None  # validate, keep and serve an exponential moving average of the weights; None = raw
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # mixed precision; only ever used on CUDA
    checkpoint_dir: str | None = None  # None = a fresh temporary folder (no resume)
    max_steps_per_epoch: int | None = None  # cap for quick runs
    num_workers: int = 0
    deterministic: bool = True  # torch.use_deterministic_algorithms(True, warn_only=True) during the run
    encoder_weights: str | None = None  # named smp weights (downloads!); keep None offline
    weights_path: str | None = None  # local state dict of the encoder or the whole model to start from

    def __post_init__(self):
        if isinstance(self.class_weighting, bool):  # older configs: True meant inverse_sqrt
            self.class_weighting = "inverse_sqrt" if self.class_weighting else "none"
        if self.class_weighting not in CLASS_WEIGHTINGS:
            raise ValueError(f"class_weighting must be one of {CLASS_WEIGHTINGS}, got {self.class_weighting!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie strictly between 0 and 1 (or be None), got {self.ema_decay}")
        if self.class_weight_cap is not None and not self.class_weight_cap >= 1:
            raise ValueError(f"class_weight_cap must be >= 1 (largest / smallest weight) or None, "
                             f"got {self.class_weight_cap}")

    def to_dict(self) -> dict:
        """JSON-safe copy (tuples become lists), as stored in checkpoints."""
        return json.loads(json.dumps(asdict(self)))


@dataclass
class TrainResult:
    """Outcome of `train`. `epochs_run` counts all completed epochs, those before a resume included;
    `resumed_from` is the epoch `last.pt` held when this call started (None for a fresh run)."""

    best_miou: float
    history: list[dict]
    best_state_path: str
    epochs_run: int
    resumed_from: int | None
    best_epoch: int = 0
    stopped_early: bool = False
    last_state_path: str = ""


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA if present else CPU; asking for CUDA without one is an error, not a silent CPU run."""
    name = str(name).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device; use 'auto' or 'cpu'")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    return torch.device(name)


@contextmanager
def _determinism(enabled: bool):
    """Deterministic kernels (warn-only) for the duration of the run, then the caller's settings back."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2], before[3]


def model_kwargs(config: TrainConfig) -> dict:
    """What `build_model` needs besides names and sizes: the smp arguments plus a non-default `norm`,
    stored in checkpoints so evaluation and inference rebuild the same network."""
    return {**config.model_kwargs, **({"norm": config.norm} if config.norm != "batch" else {})}


@torch.inference_mode()
def evaluate(model: nn.Module, loader, loss_fn: nn.Module, class_names: Sequence[str], device: torch.device,
             use_amp: bool = False) -> dict:
    """Mean loss and segmentation metrics (exact, from one confusion matrix) of `model` over `loader`."""
    model.eval()
    k = len(class_names)
    cm = np.zeros((k, k), dtype=np.int64)
    total, count = 0.0, 0
    for x, y in loader:
        x, y = batch_on(x, device), y.to(device)
        with torch.autocast(device.type, enabled=use_amp):
            logits = model(x)
        total += float(loss_fn(logits, y)) * x.shape[0]
        count += x.shape[0]
        cm += confusion_matrix(y, logits.argmax(1), list(range(k)), ignore_id=IGNORE_INDEX)
    metrics = segmentation_metrics(cm, list(class_names))
    return {"loss": total / max(count, 1), "miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"],
            "iou": {n: v["iou"] for n, v in metrics["per_class"].items()}}


def train(config: TrainConfig, dataset_dir: str | os.PathLike,
          on_epoch: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train on the dataset folder `dataset_dir` (resuming from `checkpoint_dir/last.pt` if present).

    `on_epoch(epoch, metrics)` runs after each epoch's checkpoints are written (epochs count from 1;
    metrics: train_loss, val_loss, val_miou, val_pixel_accuracy, val_iou_<class>, lr, seconds); if it
    raises, training stops there and a later call resumes after that epoch.
    """
    ckpt_dir = Path(config.checkpoint_dir or tempfile.mkdtemp(prefix="geoseg-train-"))
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = ckpt_dir / LAST, ckpt_dir / BEST
    device = resolve_device(config.device)
    use_amp = bool(config.amp) and device.type == "cuda"
    dataset_sha = dataset_hash(dataset_dir)
    resume = load_last(last_path, config, dataset_sha) if last_path.exists() else None

    with _determinism(config.deterministic):
        torch.manual_seed(config.seed)
        train_loader, val_loader, _, info = make_loaders(
            dataset_dir, config.batch_size, indices=config.indices, crop=config.crop, seed=config.seed,
            num_workers=config.num_workers, samples_per_epoch=config.samples_per_epoch, context=config.crop_context)
        if info.split_sizes["val"] == 0:
            raise ValueError(f"the val split of {dataset_dir} holds no tile: early stopping and best.pt need one")
        model = build_model(config.architecture, config.encoder, info.in_channels, info.num_classes,
                            encoder_weights=config.encoder_weights, weights_path=config.weights_path,
                            **model_kwargs(config))
        model = on_device(model, device)
        weights = (None if config.class_weighting == "none" else
                   class_weights(info.train_class_pixels, config.class_weighting, config.class_weight_cap))
        loss_fn = SegmentationLoss(weights, config.dice_weight).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        steps = len(train_loader) if config.max_steps_per_epoch is None else min(len(train_loader),
                                                                                 int(config.max_steps_per_epoch))
        total_steps = max(1, steps * int(config.epochs))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, WarmupCosine(total_steps, max(1, round(config.warmup_fraction * total_steps))))
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        average = WeightAverage(model, config.ema_decay) if config.ema_decay is not None else None
        served = average.model if average is not None else model  # the weights validated, kept and served

        start, history, best_miou, best_epoch, bad_epochs, stopped = 0, [], -math.inf, 0, 0, False
        resumed_from = None
        if resume is not None:
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            scaler.load_state_dict(resume["scaler"])
            if average is not None:
                average.load_state_dict(resume["average"])
            start, history = int(resume["epoch"]), list(resume["history"])
            best_miou, best_epoch = float(resume["best_miou"]), int(resume["best_epoch"])
            bad_epochs, stopped = int(resume["bad_epochs"]), bool(resume["stopped_early"])
            set_rng_state(resume["rng"])  # last: building the model above drew from the global RNG
            resumed_from = start
            log.info("resuming from %s at epoch %d/%d (best val mIoU %.4f)", last_path, start, config.epochs, best_miou)

        meta = {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "dataset_sha256": dataset_sha,
                "architecture": config.architecture, "encoder": config.encoder, "model_kwargs": model_kwargs(config),
                "in_channels": info.in_channels, "num_classes": info.num_classes,
                "normalizer": info.normalizer.to_dict(), "class_ids": list(info.class_ids),
                "class_names": list(info.class_names), "ignore_index": IGNORE_INDEX}
        epoch = start
        while epoch < config.epochs and not stopped:
            epoch += 1
            t0 = time.perf_counter()
            set_epoch(train_loader, epoch)
            model.train()
            total, seen, done = 0.0, 0, 0
            for step, (x, y) in enumerate(train_loader):
                if step >= steps:
                    break
                done += 1
                x, y = batch_on(x, device), y.to(device)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, enabled=use_amp):
                    loss = loss_fn(model(x), y)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if average is not None:
                    average.update(model)
                total += float(loss.detach()) * x.shape[0]
                seen += x.shape[0]
            val = evaluate(served, val_loader, loss_fn, info.class_names, device, use_amp)
            miou = val["miou"] if math.isfinite(val["miou"]) else 0.0
            metrics = {"train_loss": total / max(seen, 1), "train_steps": done, "val_loss": val["loss"], "val_miou": miou,
                       "val_pixel_accuracy": val["pixel_accuracy"],
                       **{f"val_iou_{n}": v for n, v in val["iou"].items() if math.isfinite(v)},
                       "lr": optimizer.param_groups[0]["lr"]}
            if miou > best_miou:
                best_miou, best_epoch, bad_epochs = miou, epoch, 0
                atomic_save({**meta, "kind": "best", "epoch": epoch, "val_miou": miou, "model": served.state_dict()},
                             best_path)
            else:
                bad_epochs += 1
            stopped = config.patience is not None and bad_epochs >= config.patience and epoch < config.epochs
            metrics["seconds"] = time.perf_counter() - t0
            history.append({"epoch": epoch, **metrics})
            atomic_save({**meta, "kind": "last", "epoch": epoch, "model": model.state_dict(),
                          "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                          "scaler": scaler.state_dict(), **({"average": average.state_dict()} if average else {}),
                          "best_miou": best_miou, "best_epoch": best_epoch,
                          "bad_epochs": bad_epochs, "stopped_early": stopped, "history": history,
                          "rng": rng_state()}, last_path)
            log.info("epoch %d/%d train_loss %.4f val_loss %.4f val_miou %.4f lr %.2e %.1fs", epoch, config.epochs,
                     metrics["train_loss"], metrics["val_loss"], miou, metrics["lr"], metrics["seconds"])
            if stopped:
                log.info("early stop after epoch %d: no val mIoU gain for %d epochs (best %.4f at epoch %d)",
                         epoch, bad_epochs, best_miou, best_epoch)
            if on_epoch is not None:
                on_epoch(epoch, dict(metrics))

    return TrainResult(best_miou=best_miou, history=history, best_state_path=str(best_path), epochs_run=epoch,
                       resumed_from=resumed_from, best_epoch=best_epoch, stopped_early=stopped,
                       last_state_path=str(last_path))
