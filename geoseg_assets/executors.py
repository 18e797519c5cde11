"""The code location's default executor: Dagster's multi_or_in_process executor with `forkserver` as the
multiprocess start method, preloading `geoseg_assets.forkserver_preload`, unless a run's config names another.

Steps still run in their own processes (isolation; independent steps in parallel), but each is forked from a
server process that has already imported this code location, built its repository and loaded Dagster's instance
storage, instead of a fresh interpreter importing dagster, geopandas, rasterio and every asset module again.

The preload list is set here on purpose: with `forkserver: {}` and no `preload_modules`, dagster 1.13.27 preloads
nothing but its own executor module (the config's missing key becomes [] in `_core_multiprocess_executor_creation`,
and [] overrides the documented default, the job's module), so every step re-imported everything. Measured on
this 2-core machine, idle, one scenes + tiles run (4 steps), STEP_WORKER_STARTING -> STEP_START: 2.6-3.6 s for every
step before; now 3.8-4.5 s for the first (the forkserver boots and preloads) and 0.45-0.5 s for each later one.
benchmarks/bench_backfill.py prints the per-step start cost under load (variant `forkserver_bare` is the old way).

`execution: {config: {in_process: {}}}` in a run's config still runs the whole run in one process;
`multiprocess: {start_method: {spawn: {}}}` restores spawning, and a run config that sets its own
`forkserver: {preload_modules: [...]}` keeps it.
"""

import dagster as dg

FORKSERVER_PRELOAD = ["geoseg_assets.forkserver_preload"]


def forkserver_unless_set(config: dict) -> dict:
    """The executor config a run gets: its own, with the forkserver start method (and its preload) filled in for
    multiprocess where the run leaves them open."""
    if "multiprocess" not in config:
        return config
    multiprocess = dict(config["multiprocess"] or {})
    start_method = multiprocess.get("start_method") or {"forkserver": {}}
    if "forkserver" in start_method:
        forkserver = start_method["forkserver"] or {}
        start_method = {"forkserver": {"preload_modules": FORKSERVER_PRELOAD, **forkserver}}
    return {"multiprocess": {**multiprocess, "start_method": start_method}}


default_executor = dg.multi_or_in_process_executor.configured(
    forkserver_unless_set,
    config_schema=dg.multi_or_in_process_executor.config_schema.as_field(),
    description="multiprocess (forkserver start method: step processes forked from a server that has the code "
    "location imported and its repository built) unless the run config asks for in_process or another start method",
)
