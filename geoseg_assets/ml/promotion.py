"""The promotion gate: a challenger replaces the champion only when it is clearly better."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    challenger_score: float
    champion_score: float | None


@dataclass(frozen=True)
class FloorCheck:
    passed: bool
    message: str


@dataclass(frozen=True)
class Verdict:
    """What the gate concludes for a challenger: is it the champion after this evaluation, must the alias move
    to it now, and why."""

    promoted: bool
    move_alias: bool
    reason: str


def promotion_verdict(decision: PromotionDecision, floor: FloorCheck, already_champion: bool) -> Verdict:
    """A challenger becomes champion when it beats the champion (`decide_promotion`) and passes the quality
    floor (`check_floor`); one that already is the champion stays it and the alias does not move."""
    if already_champion:
        return Verdict(True, False, "challenger already is the champion")
    promoted = decision.promote and floor.passed
    return Verdict(promoted, promoted, decision.reason if floor.passed else floor.message)


def decide_promotion(challenger_score: float, champion_score: float | None, margin: float = 0.005,
                     metric: str = "test mIoU") -> PromotionDecision:
    """Promote when there is no champion, or the challenger's score beats it by more than `margin`; the reason
    prints both scores, their difference and the margin, so a rejection explains itself."""
    if challenger_score != challenger_score:  # NaN: nothing measured
        return PromotionDecision(False, "challenger has no test score", challenger_score, champion_score)
    if champion_score is None:
        return PromotionDecision(True, "no champion yet", challenger_score, None)
    scores = (f"challenger {metric} {challenger_score:.4f} {{verb}} champion {champion_score:.4f} by more than "
              f"margin {margin:g} (difference {challenger_score - champion_score:+.4f})")
    if challenger_score > champion_score + margin:
        return PromotionDecision(True, scores.format(verb="beats"), challenger_score, champion_score)
    return PromotionDecision(False, scores.format(verb="does not beat"), challenger_score, champion_score)


def check_floor(test_miou: float, min_miou: float) -> FloorCheck:
    """The quality floor of the promotion gate: passes when the present-class test mIoU reaches `min_miou`. The
    message carries the value, the threshold and, on failure, the fix (a NaN score means no labelled test pixel)."""
    if test_miou != test_miou:
        return FloorCheck(False, f"no test mIoU: the test split has no labelled pixel (floor min_miou={min_miou:.4f}); "
                                 "rebuild `dataset` with labelled test tiles")
    if test_miou >= min_miou:
        return FloorCheck(True, f"test mIoU {test_miou:.4f} (present classes) reaches the floor min_miou={min_miou:.4f}")
    return FloorCheck(False, f"test mIoU {test_miou:.4f} (present classes) is below the floor min_miou={min_miou:.4f}; "
                             "lower `min_miou` in the model_evaluation config or improve the model (more labels, "
                             "more steps)")


def comparable_scores(challenger: dict, champion_metrics: dict | None) -> tuple[float, float | None, str]:
    """(challenger score, champion score, metric name) for the champion comparison, from the challenger's
    `segmentation_metrics` and the champion run's MLflow metrics. A champion evaluated before present-class
    mIoU existed logged only `test_miou`, which was the all-class figure: it is then compared on that figure,
    so an older champion is not beaten by a change of definition alone."""
    present, all_classes = recorded_test_miou(champion_metrics or {})
    if present is not None or all_classes is None:
        return challenger["miou"], present, "test mIoU"
    return challenger["miou_all_classes"], all_classes, "all-class test mIoU"


def recorded_test_miou(run_metrics: dict) -> tuple[float | None, float | None]:
    """(present-class, all-class) test mIoU of an evaluated run's MLflow metrics, None where not recorded. Runs
    that carry no `test_miou_all_classes` were evaluated when `test_miou` was the all-class figure."""
    if "test_miou_all_classes" in run_metrics:
        return run_metrics.get("test_miou"), run_metrics["test_miou_all_classes"]
    return None, run_metrics.get("test_miou")
