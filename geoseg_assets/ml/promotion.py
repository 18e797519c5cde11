"""The promotion gate: a challenger replaces the champion only when it is clearly better."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    challenger_score: float
    champion_score: float | None


def decide_promotion(challenger_score: float, champion_score: float | None, margin: float = 0.005) -> PromotionDecision:
    """Promote when there is no champion, or the challenger's test mIoU beats it by more than `margin`."""
    if challenger_score != challenger_score:  # NaN: nothing measured
        return PromotionDecision(False, "challenger has no test score", challenger_score, champion_score)
    if champion_score is None:
        return PromotionDecision(True, "no champion yet", challenger_score, None)
    if challenger_score > champion_score + margin:
        return PromotionDecision(
            True, f"test mIoU {challenger_score:.4f} beats champion {champion_score:.4f} by more than {margin}",
            challenger_score, champion_score)
    return PromotionDecision(
        False, f"test mIoU {challenger_score:.4f} does not beat champion {champion_score:.4f} by more than {margin}",
        challenger_score, champion_score)
