"""What Dagster says about runs: the errors of failed steps, the time spans of steps in the event log."""

from collections.abc import Iterable

import dagster as dg

STEP_ENDS = (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE,
             dg.DagsterEventType.STEP_UP_FOR_RETRY)


def step_spans(instance: dg.DagsterInstance, run_ids: Iterable[str], steps: set[str]) -> list[tuple[float, float, str, str]]:
    """(start, end, step key, run id) of every execution of `steps` in the runs, sorted by start; a retried step
    gives one span per attempt, and a step still running has no span."""
    spans = []
    for run_id in run_ids:
        started: dict[str, float] = {}
        for record in instance.all_logs(run_id):
            event = record.dagster_event
            if event is None or record.step_key not in steps:
                continue
            if event.event_type == dg.DagsterEventType.STEP_START:
                started[record.step_key] = record.timestamp
            elif event.event_type in STEP_ENDS and record.step_key in started:
                spans.append((started.pop(record.step_key), record.timestamp, record.step_key, run_id))
    return sorted(spans)


def failure_text(result) -> str:
    events = result.all_events
    return "\n".join(
        str(e.event_specific_data.error.message) for e in events if e.event_type == dg.DagsterEventType.STEP_FAILURE
    )
