"""The code location's default executor (geoseg_assets/executors.py): a run of one step or of no network step runs
in the run process; a run with a network step beside others runs each step in its own process, forked from a
forkserver that has the code location imported (geoseg_assets/forkserver_preload.py); a run's config can still ask
for `in_process`, a start method (every plan then gets it) or other preload modules.

The runs execute in a fresh interpreter, as a run worker does (`execute_job` of the reconstructable job on a
real SQLite instance): a forkserver is per process and keeps the environment it started with, so it must not
outlive one test.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geoseg_assets.executors import default_executor, forkserver_unless_set
from tests.support.paths import REPO


RUN = r"""
import json, multiprocessing.forkserver as fs, os, sys
import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository
from geoseg_assets.partitions import partition_key
from resources.synthetic_source import SyntheticSource

data, home, run_config, assets = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
SyntheticSource(cache_dir=f"{data}/landing", regions=["alpha"], dates=["2024-06-15"], width=128, height=128).fetch(
    "alpha", "2024-06-15")
recon = ReconstructableRepository.for_module("geoseg_assets.definitions", "defs", os.getcwd()).get_reconstructable_job(
    "imagery_job")
if assets:  # these assets alone, without their checks
    recon = recon.get_subset(asset_selection={dg.AssetKey(a) for a in assets}, asset_check_selection=set())
with dg.instance_for_test(temp_dir=home) as instance:
    instance.add_dynamic_partitions("region", ["alpha"])
    result = dg.execute_job(recon, instance=instance, run_config=run_config,
                            tags={"dagster/partition": str(partition_key("alpha", "2024-06-15"))})
    events = [r.dagster_event for r in instance.all_logs(result.run_id) if r.dagster_event]
    run_pid = next(e.pid for e in events if e.event_type == dg.DagsterEventType.RUN_START)
    steps = {e.step_key: e.pid for e in events if e.event_type == dg.DagsterEventType.STEP_START}
    server = fs._forkserver._forkserver_pid
    # What the forkserver was asked to preload (its command line) and what it has loaded (its memory map: rasterio's
    # and GDAL's libraries are only there once the code location was imported).
    cmdline = open(f"/proc/{server}/cmdline").read().replace("\0", " ") if server else ""
    maps = open(f"/proc/{server}/maps").read() if server else ""
    print(json.dumps({"success": result.success, "run_pid": run_pid, "steps": steps, "forkserver": server is not None,
                      "forkserver_cmdline": cmdline, "forkserver_has_rasterio": "/rasterio/" in maps}))
"""


IMAGERY_STEPS = {"scenes", "scenes_scene_integrity", "tiles", "tiles_tile_stats_sanity", "masks",
                 "masks_label_geometries_valid"}


def _run(tmp_path: Path, run_config: dict, assets: tuple[str, ...] = ()) -> dict:
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "GEOSEG_DATA_DIR": str(tmp_path / "data"), "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-c", RUN, str(tmp_path / "data"), str(home), json.dumps(run_config),
                          json.dumps(list(assets))],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(result)
    assert result["success"]
    assert set(result["steps"]) == (set(assets) or IMAGERY_STEPS)
    return result


def test_every_asset_job_uses_the_default_executor():
    from geoseg_assets.definitions import defs

    jobs = [defs.resolve_implicit_global_asset_job_def(), *(defs.resolve_job_def(name) for name in (
        "imagery_job", "dataset_job", "training_job", "retraining_job", "prediction_job", "monitoring_job"))]
    assert all(job.executor_def is default_executor for job in jobs), {j.name: j.executor_def.name for j in jobs}
    assert defs.resolve_job_def("celery_imagery_job").executor_def is not default_executor  # its own executor


PRELOAD = {"forkserver": {"preload_modules": ["geoseg_assets.forkserver_preload"]}}


@pytest.mark.parametrize("config, expected", [
    ({"multiprocess": {}}, {"multiprocess": {"start_method": PRELOAD}}),
    ({"multiprocess": None}, {"multiprocess": {"start_method": PRELOAD}}),
    ({"multiprocess": {"max_concurrent": 1}}, {"multiprocess": {"start_method": PRELOAD, "max_concurrent": 1}}),
    ({"multiprocess": {"start_method": {"forkserver": {}}}}, {"multiprocess": {"start_method": PRELOAD}}),
    ({"multiprocess": {"start_method": {"forkserver": {"preload_modules": ["dagster"]}}}},
     {"multiprocess": {"start_method": {"forkserver": {"preload_modules": ["dagster"]}}}}),
    ({"multiprocess": {"start_method": {"spawn": {}}}}, {"multiprocess": {"start_method": {"spawn": {}}}}),
    ({"in_process": {}}, {"in_process": {}}),
])
def test_forkserver_fills_in_only_what_the_run_leaves_open(config, expected):
    assert forkserver_unless_set(config) == expected


FORKSERVER = {"execution": {"config": {"multiprocess": {"start_method": {"forkserver": {}}}}}}


def test_a_run_config_naming_the_forkserver_forks_each_step_from_it_with_the_code_location_preloaded(tmp_path):
    result = _run(tmp_path, FORKSERVER)
    pids = result["steps"].values()
    assert result["forkserver"], "no forkserver was started: steps were spawned"
    assert result["run_pid"] not in pids and len(set(pids)) == len(result["steps"]), result  # a process per step
    # The steps were forked from a server that had the code location loaded, so none of them imported it again
    # (dagster 1.13.27 preloads nothing when the run config names no modules).
    assert "geoseg_assets.forkserver_preload" in result["forkserver_cmdline"], result["forkserver_cmdline"]
    assert result["forkserver_has_rasterio"], "the forkserver did not import the code location"


def test_a_default_run_without_a_network_runs_every_step_in_the_run_process_without_a_forkserver(tmp_path):
    """scenes, tiles, masks and their checks: light steps, whose run starts faster without a forkserver's boot."""
    result = _run(tmp_path, {})
    assert set(result["steps"].values()) == {result["run_pid"]} and not result["forkserver"], result


def test_a_run_of_one_step_runs_it_in_the_run_process_without_a_forkserver(tmp_path):
    """Nothing to run beside it: the step runs in the run worker, which has the code location loaded already."""
    result = _run(tmp_path, {}, assets=("scenes",))
    assert result["steps"] == {"scenes": result["run_pid"]} and not result["forkserver"], result


@pytest.mark.parametrize("job, subset, isolated", [
    ("training_job", None, True),  # dataset checks, model, model_evaluation: the network steps beside the others
    ("prediction_job", None, False),  # one step
    ("imagery_job", None, False),  # no network
    ("__ASSET_JOB", {"predictions", "prediction_drift_report"}, True),  # automation's follow-up of a new champion
    ("__ASSET_JOB", {"tiles", "masks", "data_drift_report"}, False),
])
def test_the_default_executor_isolates_a_plan_exactly_when_a_network_step_runs_beside_others(job, subset, isolated):
    """The choice per plan of the default config, on the code location's real jobs: every step's pool decides."""
    import dagster as dg
    from dagster._core.execution.api import create_execution_plan

    from geoseg_assets.definitions import defs
    from geoseg_assets.executors import LightRunsInProcessExecutor

    job_def = defs.resolve_job_def(job)
    if subset:
        job_def = job_def.get_subset(asset_selection={dg.AssetKey(a) for a in subset}, asset_check_selection=set())
    plan = create_execution_plan(job_def)
    chosen = []

    class Recorder(dg.Executor):
        def __init__(self, name):
            self.name = name

        retries = step_dependency_config = None

        def execute(self, plan_context, execution_plan):
            chosen.append(self.name)
            return iter(())

    list(LightRunsInProcessExecutor(Recorder("multiprocess"), Recorder("in_process")).execute(None, plan))
    assert chosen == ["multiprocess" if isolated else "in_process"], (job, sorted(plan.step_keys_to_execute))


def test_run_config_in_process_keeps_every_step_in_the_run_process(tmp_path):
    result = _run(tmp_path, {"execution": {"config": {"in_process": {}}}})
    assert set(result["steps"].values()) == {result["run_pid"]} and not result["forkserver"], result


def test_run_config_can_ask_for_spawn(tmp_path):
    result = _run(tmp_path, {"execution": {"config": {"multiprocess": {"start_method": {"spawn": {}}}}}})
    assert not result["forkserver"] and result["run_pid"] not in result["steps"].values(), result
