"""Concurrency pools: the steps that run a network hold a slot of `MODEL_COMPUTE_POOL` while they run.

Training, evaluation and inference each fill the CPU (or the GPU) on their own, so an instance runs one of them
at a time, whoever launched it: a job, a backfill, automation or the UI's Materialize button. The limit is the
instance's (`concurrency: pools: default_limit: 1` in dagster.yaml and the embedded instance the Makefile
writes); `dagster instance concurrency set model_compute 2` raises it on a machine with more devices.
"""

MODEL_COMPUTE_POOL = "model_compute"


def create_pools(instance) -> None:
    """Create the pool's limit row (at the instance's `default_limit`) before any run claims a slot. Dagster creates it
    on the first claim, and two runs making that first claim together on a fresh instance collide: one fails with a
    unique-key violation on `concurrency_limits` (seen on PostgreSQL, two prediction runs started at once)."""
    instance.event_log_storage.initialize_concurrency_limit_to_default(MODEL_COMPUTE_POOL)


if __name__ == "__main__":  # `python -m geoseg_assets.pools`: after `dagster instance migrate`, on $DAGSTER_HOME
    import dagster as dg

    with dg.DagsterInstance.get() as dagster_instance:
        create_pools(dagster_instance)
