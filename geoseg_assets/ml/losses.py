"""The training loss: weighted cross-entropy + soft Dice, with class weights from train pixel counts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn

from ..geo.classmap import IGNORE_ID as IGNORE_INDEX
from .options import CLASS_WEIGHTINGS


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
