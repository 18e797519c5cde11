"""DriftPolicy: when drift reports add up to a retraining request."""

from typing import Literal

from dagster import ConfigurableResource
from pydantic import Field


class DriftPolicy(ConfigurableResource):
    """Thresholds of the drift sensor (edit them in the resource config of the deployment)."""

    threshold: float = Field(default=0.5, gt=0, le=1, description="A partition drifts when its drift share reaches this.")
    min_partitions: int = Field(default=2, ge=1, description="Drifting partitions (not yet acted on) that make a drift event.")
    hard_threshold: float = Field(default=0.9, gt=0, le=1, description="One partition at or above this is an event on its own.")
    retraining_recipe: Literal["champion", "defaults"] = Field(
        default="champion",
        description="What a drift retraining trains: `champion` = the `model` and `model_evaluation` config of the "
        "run that trained the current champion (the recipe an operator chose), `defaults` = the launchpad defaults. "
        "Falls back to the defaults, saying why in the run's tags, when that run or its config cannot be used.")
