"""MLflow registry through MlflowTracking (real local SQLite store): champion/challenger promotion
and loading back by alias."""

import numpy as np
import pytest
import torch

from geoseg_assets.ml.promotion import check_floor, comparable_scores, decide_promotion
from geoseg_assets.monitoring.model_quality import version_history
from resources.mlflow_tracking import CHALLENGER, CHAMPION, MlflowTracking


def tiny_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(4, 3, 3, padding=1)).eval()


def log_and_register(tracking, model, score, all_classes=None):
    """A registered version whose run logged `test_miou` (and `test_miou_all_classes` unless None: a version
    evaluated before that figure existed)."""
    import mlflow

    example = np.zeros((1, 4, 8, 8), dtype=np.float32)
    with tracking.run("test", {"geoseg.dataset_version": "abc.dir"}) as run:
        mlflow.log_metric("test_miou", score)
        if all_classes is not None:
            mlflow.log_metric("test_miou_all_classes", all_classes)
        info = tracking.log_model(model, example)
    return run.info.run_id, tracking.register(info.model_uri, CHALLENGER)


def promote(tracking, version, score, margin=0.01):
    champion = tracking.alias_version(CHAMPION)
    champion_score = None
    if champion is not None:
        champion_score = tracking.client().get_run(champion.run_id).data.metrics["test_miou"]
    decision = decide_promotion(score, champion_score, margin)
    if decision.promote:
        tracking.set_alias(CHAMPION, version)
    return decision


def test_first_model_is_champion_worse_is_not_better_is(tmp_path):
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "artifacts"))
    first = tiny_model(0)
    run1, v1 = log_and_register(tracking, first, 0.80)
    assert promote(tracking, v1, 0.80).promote
    _, v2 = log_and_register(tracking, tiny_model(1), 0.805)  # within the margin: not better
    decision = promote(tracking, v2, 0.805)
    assert not decision.promote and "does not beat" in decision.reason
    assert str(tracking.alias_version(CHAMPION).version) == v1
    assert str(tracking.alias_version(CHALLENGER).version) == v2
    third = tiny_model(2)
    _, v3 = log_and_register(tracking, third, 0.85)
    assert promote(tracking, v3, 0.85).promote
    assert str(tracking.alias_version(CHAMPION).version) == v3

    loaded = tracking.load(CHAMPION)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), third(x))
    assert tracking.client().get_run(run1).data.tags["geoseg.dataset_version"] == "abc.dir"


@pytest.mark.parametrize("challenger,champion,margin,expected", [
    (0.5, None, 0.01, True), (0.9, 0.8, 0.01, True), (0.805, 0.8, 0.01, False), (float("nan"), None, 0.0, False),
])
def test_promotion_gate(challenger, champion, margin, expected):
    assert decide_promotion(challenger, champion, margin).promote is expected


def test_rejection_and_promotion_reasons_print_both_scores_and_the_margin():
    kept = decide_promotion(0.61, 0.63, 0.005)
    assert not kept.promote
    assert kept.reason == ("challenger test mIoU 0.6100 does not beat champion 0.6300 by more than margin 0.005 "
                           "(difference -0.0200)")
    beaten = decide_promotion(0.7, 0.63, 0.005)
    assert beaten.promote and beaten.reason == ("challenger test mIoU 0.7000 beats champion 0.6300 by more than "
                                                "margin 0.005 (difference +0.0700)")


def test_floor_message_carries_value_threshold_and_fix():
    low = check_floor(0.258, 0.5)
    assert not low.passed
    assert low.message == ("test mIoU 0.2580 (present classes) is below the floor min_miou=0.5000; lower `min_miou` in "
                           "the model_evaluation config or improve the model (more labels, more steps)")
    assert check_floor(0.258, 0.1).passed and "0.2580" in check_floor(0.258, 0.1).message
    nothing = check_floor(float("nan"), 0.1)
    assert not nothing.passed and "no labelled pixel" in nothing.message and "min_miou=0.1000" in nothing.message


def test_a_champion_evaluated_before_present_class_miou_is_compared_on_the_all_class_figure():
    challenger = {"miou": 0.258, "miou_all_classes": 0.194}
    assert comparable_scores(challenger, None) == (0.258, None, "test mIoU")
    assert comparable_scores(challenger, {"test_miou": 0.25, "test_miou_all_classes": 0.2}) == (0.258, 0.25, "test mIoU")
    # the old champion's `test_miou` was the all-class figure: 0.258 (present) must not beat it by definition alone
    score, champion, metric = comparable_scores(challenger, {"test_miou": 0.2})
    assert (score, champion, metric) == (0.194, 0.2, "all-class test mIoU")
    assert "challenger all-class test mIoU 0.1940 does not beat champion 0.2000" in decide_promotion(
        score, champion, 0.005, metric).reason


def test_version_history_says_which_miou_each_version_recorded(tmp_path):
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "artifacts"))
    _, old = log_and_register(tracking, tiny_model(0), 0.194)  # evaluated when test_miou was the all-class figure
    _, new = log_and_register(tracking, tiny_model(1), 0.258, all_classes=0.194)
    history = version_history(tracking.client(), tracking.model_name, champion_version=new)
    assert [(h["version"], h["test_miou"], h["test_miou_all_classes"], h["champion"]) for h in history] == [
        (old, None, 0.194, False), (new, 0.258, 0.194, True)]
