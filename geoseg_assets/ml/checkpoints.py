"""Training checkpoints: atomic writes, RNG states and the checks that let a crashed run resume from
`last.pt` only with the same config and dataset."""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..geo.dataset_layout import MANIFEST_FILE

if TYPE_CHECKING:
    from .train import TrainConfig

CHECKPOINT_FORMAT = 1
LAST, BEST = "last.pt", "best.pt"
# Config fields that may change between a crash and the resume without changing the result.
RESUME_FREE = ("checkpoint_dir", "device", "num_workers")


def rng_state() -> dict:
    """Torch (+CUDA), numpy and python RNG states as tensors/lists (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def atomic_save(obj, path: Path) -> None:
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


def dataset_hash(dataset_dir) -> str:
    return hashlib.sha256((Path(dataset_dir) / MANIFEST_FILE).read_bytes()).hexdigest()


def _resume_key(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in RESUME_FREE}


def load_last(path: Path, config: TrainConfig, dataset_sha: str) -> dict:
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
