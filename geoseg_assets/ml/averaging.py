"""Per-step rules of the optimizer run: the learning-rate warmup + cosine schedule and the moving average
of the weights that is validated, kept and served."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


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
