"""`PrewarmingRunCoordinator`: Dagster's QueuedRunCoordinator that starts warm run workers before the runs need them.

With warm run workers (geoseg_assets/run_launcher.py) a code location's first run in a process waits for its warm
worker to import the code location (~2 s here): on a backfill of small partitions that is most of the first wave's
cost. The process that launches runs is the daemon's run queue, so this coordinator starts warm workers there:
- at the run queue's first pass (a daemon start), for the code locations whose runs the instance forked last;
- when the daemon itself submits a run (backfills, sensors, automation), for that run's code location, so the worker
  loads while the backfill daemon is still creating runs and the queue has not yet picked them.
A process that only submits runs (the webserver) starts nothing: its runs are launched by the daemon.

Which process launches is told by the run queue reading `dequeue_use_threads`: only the queue daemon reads it
(dagster 1.13.27, `queued_run_coordinator_daemon.py`); re-check on upgrade.
"""

from dagster import QueuedRunCoordinator
from dagster._core.run_coordinator import SubmitRunContext


class PrewarmingRunCoordinator(QueuedRunCoordinator):
    """QueuedRunCoordinator (same config) whose launching process starts the run launcher's warm workers early."""

    _launching_process = False

    @property
    def dequeue_use_threads(self) -> bool:
        if not self._launching_process:
            self._launching_process = True
            prewarm_remembered = getattr(self._instance.run_launcher, "prewarm_remembered", None)
            if prewarm_remembered is not None:
                prewarm_remembered()
        return super().dequeue_use_threads

    def submit_run(self, context: SubmitRunContext):
        run = super().submit_run(context)
        prewarm = getattr(self._instance.run_launcher, "prewarm", None)
        if self._launching_process and prewarm is not None and run.job_code_origin is not None:
            prewarm(run.job_code_origin.repository_origin)
        return run
