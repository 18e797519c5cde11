"""Prototype fix used by tests/test_operations_daemon.py (not part of the code location).

Dagster's `DefaultRunLauncher` (what the repo's dagster.yaml gets) has no run-worker health check
(`supports_check_run_worker_health` is False), so run monitoring never looks at a STARTED run's worker.
The code server that launched a run fails it when the run's process dies (its orphan check), but when the
code server dies too (SIGKILL of the daemon's process group, a service manager killing the daemon's
cgroup, a lost host) nothing ever does: the run stays STARTED forever, holds a run-queue slot (and the
`geoseg/heavy` slot for training/inference) and, being "in progress", keeps automation away from its
partition.

`HealthCheckedRunLauncher` is the DefaultRunLauncher plus that check: the run's code server (recorded by
the launcher in the run's `dagster/grpc_info` tag) is asked for the runs it executes. Unreachable
(gRPC UNAVAILABLE: socket or port gone) or not executing the run -> FAILED, so run monitoring fails the
run with a clear message and run retries (`run_retries` in dagster.yaml) re-execute it. A slow server
(deadline exceeded) counts as RUNNING, so load never fails a live run. In the project it would live in
`geoseg_assets/` and be named in dagster.yaml as
`run_launcher: {module: geoseg_assets.run_launcher, class: HealthCheckedRunLauncher}`.
"""

from dagster import DefaultRunLauncher
from dagster._core.errors import DagsterUserCodeUnreachableError
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._grpc.types import GetCurrentRunsResult
from dagster._serdes import deserialize_value


class HealthCheckedRunLauncher(DefaultRunLauncher):
    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        import grpc

        client = self._get_grpc_client_for_termination(run.run_id)
        if client is None:  # finished meanwhile, or launched without a gRPC server: nothing to say
            return CheckRunHealthResult(WorkerStatus.UNKNOWN if not run.is_finished else WorkerStatus.SUCCESS,
                                        "no code server recorded for the run")
        where = run.tags.get(GRPC_INFO_TAG)
        try:
            current = deserialize_value(client.get_current_runs(), GetCurrentRunsResult).current_runs
        except DagsterUserCodeUnreachableError as exc:
            cause = exc.__cause__
            if isinstance(cause, grpc.RpcError) and cause.code() == grpc.StatusCode.UNAVAILABLE:
                return CheckRunHealthResult(
                    WorkerStatus.FAILED, f"the code server that launched the run ({where}) is gone, and its run "
                    f"worker with it ({exc})")
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"code server {where} slow to answer: {exc}",
                                        transient=True)
        if run.run_id in current:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        fresh = self._instance.get_run_by_id(run.run_id)
        if fresh is not None and fresh.is_finished:
            return CheckRunHealthResult(WorkerStatus.SUCCESS, f"run ended ({fresh.status.value})")
        return CheckRunHealthResult(WorkerStatus.FAILED, f"the code server at {where} does not execute the run")
