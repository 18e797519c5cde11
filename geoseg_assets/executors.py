"""The code location's default executor: Dagster's multi_or_in_process executor with `forkserver` as the
multiprocess start method unless a run's config names another.

Steps still run in their own processes (isolation; independent steps in parallel), but each is forked from a
server process that has already imported this code location, instead of `spawn`ing a fresh interpreter that
re-imports dagster, geopandas, rasterio and every asset module. Measured on this 2-core machine
(benchmarks/bench_backfill.py): a step process starts in about 0.7 s instead of 1.2-2 s idle, and 4 s instead of
6 s with 4 runs competing. `execution: {config: {in_process: {}}}` in a run's config still runs the whole run in
one process; `multiprocess: {start_method: {spawn: {}}}` restores spawning.
"""

import dagster as dg


def forkserver_unless_set(config: dict) -> dict:
    """The executor config a run gets: its own, with the forkserver start method filled in for multiprocess."""
    if "multiprocess" not in config:
        return config
    return {"multiprocess": {"start_method": {"forkserver": {}}, **(config["multiprocess"] or {})}}


default_executor = dg.multi_or_in_process_executor.configured(
    forkserver_unless_set,
    config_schema=dg.multi_or_in_process_executor.config_schema.as_field(),
    description="multiprocess (forkserver start method: step processes forked from a server that has the code "
    "location imported) unless the run config asks for in_process or another start method",
)
