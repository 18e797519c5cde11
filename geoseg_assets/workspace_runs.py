"""Runs made against the workspace's code location, as the UI makes them, and executed in this process.

A run made by `execute_in_process` has no code-location origin: the UI cannot re-execute it (its "Re-execute" raises
`CheckError: Expected non-None value`) and its job's page does not list it. `WorkspaceRuns` loads `workspace.yaml`
as `dagster dev` does, creates each run from the location's remote job (origins, job snapshot, execution plan) and
executes it here, so a script's runs (`make demo`) are ordinary runs a user can open and re-execute. A sensor
evaluated outside the daemon is recorded with `record_sensor_tick`: its runs carry the tags the daemon gives them
(sensor name, run key), its cursor is stored and the tick is listed, so switching the sensor on later resumes where
the script stopped instead of requesting everything again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

# Private Dagster APIs, checked against dagster 1.13.27 (pinned by requirements.lock); re-check on upgrade. They are
# what `dagster job launch` and the webserver's launch mutation use: the workspace (one managed gRPC code server per
# location), the job subset selector, run execution from an existing run, and the sensor's stored state and ticks.
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.execution.api import execute_run_iterator
from dagster._core.scheduler.instigation import (
    InstigatorState,
    InstigatorStatus,
    SensorInstigatorData,
    TickData,
    TickStatus,
)
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster._utils.hosted_user_process import recon_job_from_origin

class WorkspaceRuns:
    """Create runs of one code location's jobs with the location's origin (`create_run`) and execute them in this
    process (`execute`)."""

    def __init__(self, instance: dg.DagsterInstance, request_context, location_name: str, defs: dg.Definitions):
        self.instance = instance
        self._defs = defs  # the definitions the location serves, loaded here too: partition tags of a key
        self.location = request_context.get_code_location(location_name)
        (self.repository,) = self.location.get_repositories().values()

    def create_run(self, job_name: str, *, partition_key: str | None = None, tags: Mapping[str, str] | None = None,
                   asset_selection: Sequence[dg.AssetKey] | None = None,
                   run_config: Mapping | None = None) -> dg.DagsterRun:
        """A NOT_STARTED run of `job_name` with the code location's origin, snapshots and execution plan."""
        selector = JobSubsetSelector(location_name=self.location.name, repository_name=self.repository.name,
                                     job_name=job_name, op_selection=None,
                                     asset_selection=list(asset_selection) if asset_selection else None)
        remote_job = self.location.get_job(selector)
        run_config = dict(run_config or {})
        plan = self.location.get_execution_plan(remote_job, run_config, step_keys_to_execute=None, known_state=None,
                                                instance=self.instance)
        run_tags = {**remote_job.tags, **(tags or {})}
        if partition_key is not None:
            job_def = self._defs.resolve_job_def(job_name)
            run_tags.update(job_def.get_tags_for_partition_key(partition_key, selected_asset_keys=None))
        return self.instance.create_run(
            job_name=job_name, run_id=None, run_config=run_config, resolved_op_selection=None,
            step_keys_to_execute=plan.execution_plan_snapshot.step_keys_to_execute,
            status=dg.DagsterRunStatus.NOT_STARTED, op_selection=None, root_run_id=None, parent_run_id=None,
            tags=run_tags,
            job_snapshot=remote_job.job_snapshot, execution_plan_snapshot=plan.execution_plan_snapshot,
            parent_job_snapshot=remote_job.parent_job_snapshot,
            asset_selection=frozenset(asset_selection) if asset_selection else None, asset_check_selection=None,
            remote_job_origin=remote_job.get_remote_origin(), job_code_origin=remote_job.get_python_origin(),
            asset_graph=self.repository.asset_graph,
        )

    def execute(self, run: dg.DagsterRun) -> dg.DagsterRun:
        """Execute a run made by `create_run` in this process; return it as it ended (`.is_success`); a failure is
        recorded in the run, not raised."""
        recon_job = recon_job_from_origin(run.job_code_origin)
        for _ in execute_run_iterator(recon_job, run, self.instance):
            pass
        return self.instance.get_run_by_id(run.run_id)

    def sensor_run_tags(self, sensor_name: str, request: dg.RunRequest) -> dict[str, str]:
        """The tags the sensor daemon gives a run it launches for `request` (it finds earlier runs by them)."""
        tags = {**request.tags, SENSOR_NAME_TAG: sensor_name}
        if request.run_key:
            tags[RUN_KEY_TAG] = request.run_key
        return tags

    def record_sensor_tick(self, sensor_name: str, started: float, result: dg.SensorResult,
                           run_ids: Sequence[str]) -> None:
        """Store `result.cursor` as the sensor's cursor (keeping its on/off status) and list a successful tick
        with the runs made for its requests, as the daemon would after evaluating the sensor."""
        sensor = self.repository.get_sensor(sensor_name)
        origin_id, selector_id = sensor.get_remote_origin_id(), sensor.selector_id
        now = time.time()
        data = SensorInstigatorData(last_tick_timestamp=now, last_run_key=None,
                                    min_interval=sensor.min_interval_seconds, cursor=result.cursor,
                                    last_tick_start_timestamp=started, sensor_type=sensor.sensor_type,
                                    last_tick_success_timestamp=now)
        stored = self.instance.get_instigator_state(origin_id, selector_id)
        if stored is None:
            status = (InstigatorStatus.DECLARED_IN_CODE if sensor.default_status == dg.DefaultSensorStatus.RUNNING
                      else InstigatorStatus.STOPPED)
            self.instance.add_instigator_state(InstigatorState(sensor.get_remote_origin(), InstigatorType.SENSOR,
                                                               status, data))
        else:
            self.instance.update_instigator_state(stored.with_data(data))
        run_keys = [r.run_key for r in result.run_requests or [] if r.run_key]
        self.instance.create_tick(TickData(
            instigator_origin_id=origin_id, instigator_name=sensor_name, instigator_type=InstigatorType.SENSOR,
            status=TickStatus.SUCCESS if run_ids else TickStatus.SKIPPED, timestamp=started, run_ids=list(run_ids),
            run_keys=run_keys, cursor=result.cursor, selector_id=selector_id, end_timestamp=now))


@contextmanager
def workspace_runs(instance: dg.DagsterInstance, workspace_file: Path, location_name: str,
                   defs: dg.Definitions) -> Iterator[WorkspaceRuns]:
    """`WorkspaceRuns` over `workspace_file`'s location `location_name` (whose definitions are `defs`); its code
    server stops on exit."""
    with WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(workspace_file)])) as process_context:
        request_context = process_context.create_request_context()
        error = request_context.get_code_location_error(location_name)
        if error is not None:
            raise RuntimeError(f"{workspace_file}: code location {location_name!r} did not load: {error.message}")
        yield WorkspaceRuns(instance, request_context, location_name, defs)
