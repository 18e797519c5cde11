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

A run that runs no network (no step in the `model_compute` pool: scenes, tiles, masks, datasets, reports), or has
only one step (a single-partition `prediction_job`), runs its steps in the run worker itself. Such steps take well
under a second each on small scenes, and the forkserver's boot was most of their run's start-up: about 2 s of CPU
and 4 s of wall time per run, paid once per partition by a backfill or by automation. A run of training, evaluation
or inference beside other steps keeps a process per step: a crash or out-of-memory kill of the network's step
fails that step (which its RetryPolicy retries), not the run worker. benchmarks/bench_backfill.py measures both.

`execution: {config: {in_process: {}}}` in a run's config still runs the whole run in one process; a run config that
names a multiprocess start method gets a process per step for every plan: `multiprocess: {start_method: {spawn: {}}}`
restores spawning, `forkserver: {}` the preloading forkserver, and `forkserver: {preload_modules: [...]}` keeps its
own list.
"""

import dagster as dg

from geoseg_assets.pools import MODEL_COMPUTE_POOL

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


def runs_a_network(step) -> bool:
    """Whether an execution step trains, evaluates or applies a model (it holds a `model_compute` pool slot)."""
    return step.pool == MODEL_COMPUTE_POOL


class LightRunsInProcessExecutor(dg.Executor):
    """The multiprocess executor for a plan of several steps of which one runs a network; the in-process one,
    same retries, for any other plan (one step, or no network)."""

    def __init__(self, multiprocess: dg.Executor, in_process: dg.Executor):
        self.multiprocess, self.in_process = multiprocess, in_process

    @property
    def retries(self):
        return self.multiprocess.retries

    @property
    def step_dependency_config(self):
        return self.multiprocess.step_dependency_config

    def execute(self, plan_context, execution_plan):
        keys = execution_plan.step_keys_to_execute
        isolate = len(keys) > 1 and any(runs_a_network(execution_plan.get_step_by_key(key)) for key in keys)
        return (self.multiprocess if isolate else self.in_process).execute(plan_context, execution_plan)


IN_PROCESS_KEYS = ("retries", "step_dependency_config")  # what the in-process config shares with multiprocess's


def _dagster_executor(init_context: dg.InitExecutorContext, config: dict) -> dg.Executor:
    """Dagster's multi_or_in_process executor for `config` (already complete: defaults filled in by the schema)."""
    return dg.multi_or_in_process_executor.executor_creation_fn(dg.InitExecutorContext(
        job=init_context.job, executor_def=dg.multi_or_in_process_executor, executor_config=config,
        instance=init_context.instance))


def _requirements(config: dict) -> list:
    return dg.multiple_process_executor_requirements() if "multiprocess" in config else []


def _create(init_context: dg.InitExecutorContext) -> dg.Executor:
    """Dagster's executor for the run's config with the forkserver filled in; a light plan in process, unless the run
    config names a start method."""
    asked = dict(init_context.executor_config)
    config = forkserver_unless_set(asked)
    executor = _dagster_executor(init_context, config)
    if "multiprocess" not in config or (asked["multiprocess"] or {}).get("start_method"):
        return executor
    in_process = {"in_process": {k: v for k, v in config["multiprocess"].items() if k in IN_PROCESS_KEYS}}
    return LightRunsInProcessExecutor(executor, _dagster_executor(init_context, in_process))


default_executor = dg.ExecutorDefinition(
    name="geoseg_executor",
    config_schema=dg.multi_or_in_process_executor.config_schema.as_field(),
    requirements=_requirements,
    executor_creation_fn=_create,
    description="in the run process for a run of one step or of no network step; otherwise multiprocess "
    "(forkserver start method: step processes forked from a server that has the code location imported and its "
    "repository built). A run config that asks for in_process or names a start method gets exactly that.",
)
