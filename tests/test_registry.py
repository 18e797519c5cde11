"""MLflow registry through MlflowTracking (real local SQLite store): champion/challenger promotion
and loading back by alias."""

import numpy as np
import pytest
import torch

from geoseg_assets.ml.promotion import decide_promotion
from resources.mlflow_tracking import CHALLENGER, CHAMPION, MlflowTracking


def tiny_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(4, 3, 3, padding=1)).eval()


def log_and_register(tracking, model, score):
    import mlflow

    example = np.zeros((1, 4, 8, 8), dtype=np.float32)
    with tracking.run("test", {"geoseg.dataset_version": "abc.dir"}) as run:
        mlflow.log_metric("test_miou", score)
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
