"""Pure torch/numpy ML code (no Dagster): data, models, training, metrics, inference."""
