"""DriftPolicy: when drift reports add up to a retraining request."""

from dagster import ConfigurableResource
from pydantic import Field


class DriftPolicy(ConfigurableResource):
    """Thresholds of the drift sensor (edit them in the resource config of the deployment)."""

    threshold: float = Field(default=0.5, gt=0, le=1, description="A partition drifts when its drift share reaches this.")
    min_partitions: int = Field(default=2, ge=1, description="Drifting partitions (not yet acted on) that make a drift event.")
    hard_threshold: float = Field(default=0.9, gt=0, le=1, description="One partition at or above this is an event on its own.")
