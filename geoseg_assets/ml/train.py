"""Training loop: CE + Dice loss, AdamW with warmup + cosine, early stopping on val mIoU, and a
checkpoint every epoch from which a crashed run resumes to the exact weights of an uninterrupted one.

Checkpoints (in `checkpoint_dir`, each written to a temp file then renamed, so a crash never leaves
a torn file): `last.pt` after every epoch (model, optimizer, scheduler, scaler, RNG states, history,
early-stopping state, config and dataset hash) and `best.pt` when val mIoU improves (model weights
plus what inference needs: architecture, normalizer, class ids/names). Calling `train` again with the
same `checkpoint_dir` resumes from `last.pt`; on CPU with a fixed seed the result is bit-identical.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn

from .data import IGNORE_INDEX, MANIFEST_FILE, make_loaders, set_epoch
from .metrics import confusion_matrix, segmentation_metrics
from .models import NORMS, build_model

log = logging.getLogger("geoseg.train")

CHECKPOINT_FORMAT = 1
CLASS_WEIGHTINGS = ("none", "inverse_sqrt", "inverse")
LAST, BEST = "last.pt", "best.pt"
# Config fields that may change between a crash and the resume without changing the result.
RESUME_FREE = ("checkpoint_dir", "device", "num_workers")


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
    class_weighting: str = "inverse_sqrt"  # CE class weights: none | inverse_sqrt | inverse (train frequency)
    class_weight_cap: float | None = 10.0  # largest weight / smallest weight; None = uncapped
    norm: str = "batch"  # normalization layers: batch (smp's BatchNorm) | group (GroupNorm, for tiny batches)
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


class SegmentationLoss(nn.Module):
    """Weighted cross-entropy + `dice_weight` x multiclass soft Dice, both ignoring `ignore_index`.

    CE is averaged over the (weighted) labelled pixels and is 0, not NaN, for a batch with none."""

    def __init__(self, class_weights: torch.Tensor | None = None, dice_weight: float = 1.0,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.empty(0))
        self.dice_weight = float(dice_weight)
        self.ignore_index = ignore_index
        self.dice = DiceLoss(mode="multiclass", from_logits=True, ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        weight = self.class_weights if self.class_weights.numel() else None
        ce = F.cross_entropy(logits, target, weight=weight, ignore_index=self.ignore_index, reduction="sum")
        labelled = target[target != self.ignore_index]
        denom = weight[labelled].sum() if weight is not None else torch.tensor(float(labelled.numel()))
        loss = ce / denom.to(ce.device).clamp_min(1e-12)
        if self.dice_weight:
            loss = loss + self.dice_weight * self.dice(logits, target)
        return loss


def class_weights(pixels: Sequence[int], weighting: str = "inverse_sqrt", cap: float | None = None) -> torch.Tensor:
    """CE weights from train pixel counts: frequency^-1/2 (`inverse_sqrt`) or frequency^-1 (`inverse`),
    the largest at most `cap` times the smallest, normalized to mean 1 over the classes that have pixels
    (0 for the rest). The cap keeps a class of a few hundred pixels from outweighing the rest of the scene."""
    if weighting not in CLASS_WEIGHTINGS or weighting == "none":
        raise ValueError(f"class weighting must be one of {CLASS_WEIGHTINGS[1:]}, got {weighting!r}")
    counts = torch.tensor([float(p) for p in pixels], dtype=torch.float64)
    if counts.sum() <= 0:
        raise ValueError("no labelled train pixels to weight classes by")
    present = counts > 0
    w = torch.zeros_like(counts)
    w[present] = (counts[present] / counts.sum()) ** (-0.5 if weighting == "inverse_sqrt" else -1.0)
    if cap is not None:
        w[present] = w[present].clamp(max=float(cap) * float(w[present].min()))
    w[present] /= w[present].mean()
    return w.float()


class WeightAverage:
    """Exponential moving average of a model's weights and BatchNorm statistics, kept in a copy of the model.

    After each optimizer step: avg <- d * avg + (1 - d) * current, with d = min(decay, (1 + t) / (10 + t)) at
    update t, so the first updates follow the fast-moving early weights instead of dragging the random
    initialization along. Integer buffers (BatchNorm's batch counter) are copied. Averaging the last few
    hundred steps smooths the noise of small batches and of a tiny validation split choosing among epochs."""

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = float(decay), 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        current = model.state_dict()
        for name, avg in self.model.state_dict().items():
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(current[name].detach(), alpha=1 - d)
            else:
                avg.copy_(current[name])

    def state_dict(self) -> dict:
        return {"updates": self.updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.model.load_state_dict(state["model"])


class WarmupCosine:
    """LR factor: linear warmup over `warmup` steps to 1, then cosine decay to `floor` at `total` steps."""

    def __init__(self, total: int, warmup: int, floor: float = 0.01):
        self.total, self.warmup, self.floor = int(total), int(warmup), float(floor)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


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


def _rng_state() -> dict:
    """Torch (+CUDA), numpy and python RNG states as tensors/lists (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _atomic_save(obj, path: Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; checkpoints are shared like every other output
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_kwargs(config: TrainConfig) -> dict:
    """What `build_model` needs besides names and sizes: the smp arguments plus a non-default `norm`,
    stored in checkpoints so evaluation and inference rebuild the same network."""
    return {**config.model_kwargs, **({"norm": config.norm} if config.norm != "batch" else {})}


def _dataset_hash(dataset_dir) -> str:
    return hashlib.sha256((Path(dataset_dir) / MANIFEST_FILE).read_bytes()).hexdigest()


def _resume_key(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in RESUME_FREE}


def _load_last(path: Path, config: TrainConfig, dataset_sha: str) -> dict:
    """`last.pt`, refused (with the differences) if it belongs to another config or dataset."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} has checkpoint format {ckpt.get('format')}, expected {CHECKPOINT_FORMAT}")
    old, new = _resume_key(ckpt["config"]), _resume_key(config.to_dict())
    if old != new:
        diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
        raise ValueError(f"{path} was written by a run with another config {diff} (checkpoint, now); use a new "
                         "checkpoint_dir or delete the old checkpoints to start over")
    if ckpt["dataset_sha256"] != dataset_sha:
        raise ValueError(f"{path} was trained on another dataset (manifest sha256 {ckpt['dataset_sha256'][:12]}, "
                         f"now {dataset_sha[:12]}); use a new checkpoint_dir")
    return ckpt


@torch.inference_mode()
def evaluate(model: nn.Module, loader, loss_fn: nn.Module, class_names: Sequence[str], device: torch.device,
             use_amp: bool = False) -> dict:
    """Mean loss and segmentation metrics (exact, from one confusion matrix) of `model` over `loader`."""
    model.eval()
    k = len(class_names)
    cm = np.zeros((k, k), dtype=np.int64)
    total, count = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
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
    dataset_sha = _dataset_hash(dataset_dir)
    resume = _load_last(last_path, config, dataset_sha) if last_path.exists() else None

    with _determinism(config.deterministic):
        torch.manual_seed(config.seed)
        train_loader, val_loader, _, info = make_loaders(
            dataset_dir, config.batch_size, indices=config.indices, crop=config.crop, seed=config.seed,
            num_workers=config.num_workers, samples_per_epoch=config.samples_per_epoch, context=config.crop_context)
        if info.split_sizes["val"] == 0:
            raise ValueError(f"the val split of {dataset_dir} holds no tile: early stopping and best.pt need one")
        model = build_model(config.architecture, config.encoder, info.in_channels, info.num_classes,
                            encoder_weights=config.encoder_weights, weights_path=config.weights_path,
                            **model_kwargs(config)).to(device)
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
            _set_rng_state(resume["rng"])  # last: building the model above drew from the global RNG
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
                x, y = x.to(device), y.to(device)
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
                _atomic_save({**meta, "kind": "best", "epoch": epoch, "val_miou": miou, "model": served.state_dict()},
                             best_path)
            else:
                bad_epochs += 1
            stopped = config.patience is not None and bad_epochs >= config.patience and epoch < config.epochs
            metrics["seconds"] = time.perf_counter() - t0
            history.append({"epoch": epoch, **metrics})
            _atomic_save({**meta, "kind": "last", "epoch": epoch, "model": model.state_dict(),
                          "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                          "scaler": scaler.state_dict(), **({"average": average.state_dict()} if average else {}),
                          "best_miou": best_miou, "best_epoch": best_epoch,
                          "bad_epochs": bad_epochs, "stopped_early": stopped, "history": history,
                          "rng": _rng_state()}, last_path)
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
