"""Run-failure sensor: every failed run notifies with its job, failed steps, partition, run id and errors."""


import dagster as dg

from resources.notifier import Notifier


def failure_message(run, step_errors: dict[str, str], run_error: str | None) -> str:
    """One message naming the job, failed steps (assets), partition, run and errors of a failed run."""
    partition = run.tags.get("dagster/partition", "-")
    failed = ", ".join(step_errors) or "-"
    errors = "; ".join(f"{step}: {error}" for step, error in step_errors.items()) or run_error or "unknown error"
    return (f"geoseg run failed: job {run.job_name}, failed steps {failed}, partition {partition}, "
            f"run {run.run_id}: {errors}")


@dg.run_failure_sensor(
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Notifies (log + optional webhook) with job, assets, partition, run id and error of every failed run.",
)
def run_failure_notifier(context: dg.RunFailureSensorContext, notifier: Notifier) -> None:
    step_errors = {}
    for event in context.get_step_failure_events():
        error = event.event_specific_data.error
        lines = error.message.strip().splitlines() if error else []
        step_errors[event.step_key] = " ".join(lines[:2]) or "unknown error"
    run_error = context.failure_event.message if context.failure_event else None
    run = context.dagster_run
    notifier.notify(failure_message(run, step_errors, run_error), run_id=run.run_id, job=run.job_name,
                    partition=run.tags.get("dagster/partition"), failed_steps=list(step_errors))
