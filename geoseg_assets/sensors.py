"""Sensors: new scenes become region partitions and `scenes` runs; label changes re-run masks."""


import datetime as dt
import json

import dagster as dg

from geoseg_assets.assets.masks import LABEL_FINGERPRINT_TAG, masks
from geoseg_assets.assets.scenes import scenes
from geoseg_assets.partitions import DATE_START, partition_key, region_partitions
from resources.label_store import LabelStore
from resources.notifier import Notifier
from resources.scene_sources import SceneSource

FINGERPRINT_TAG = "geoseg/scene_fingerprint"


def plan_scene_runs(scan, cursor: dict, known_regions: set[str]):
    """Pure planning step: which regions to add and which partitions to (re)run.

    `cursor["seen"]` maps partition key -> fingerprint of the content last requested; a partition
    is requested again only when its fingerprint changes (a replaced file), never for the same bytes.
    """
    seen: dict[str, str] = dict(cursor.get("seen", {}))
    start = dt.date.fromisoformat(DATE_START)
    problems = list(scan.problems)
    new_regions: list[str] = []
    requests: list[dg.RunRequest] = []
    for ref in scan.refs:
        if dt.date.fromisoformat(ref.date) < start:
            problems.append(f"{ref.paths[0]}: date {ref.date} is before the first date partition {DATE_START}; skipped")
            continue
        if ref.region not in known_regions and ref.region not in new_regions:
            new_regions.append(ref.region)
        key = partition_key(ref.region, ref.date)
        if seen.get(str(key)) == ref.fingerprint:
            continue
        seen[str(key)] = ref.fingerprint
        requests.append(
            dg.RunRequest(
                run_key=f"{key}:{ref.fingerprint}",
                partition_key=key,
                tags={FINGERPRINT_TAG: ref.fingerprint},
            )
        )
    return new_regions, requests, seen, problems


@dg.sensor(
    target=scenes,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Scans the scene source; adds new regions as partitions and requests `scenes` for new or replaced files.",
)
def new_scene_sensor(context: dg.SensorEvaluationContext, scene_source: SceneSource) -> dg.SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {}
    digests = cursor.get("digests", {})
    scan = scene_source.scan(digest_cache=digests)
    known = set(context.instance.get_dynamic_partitions(region_partitions.name))
    new_regions, requests, seen, problems = plan_scene_runs(scan, cursor, known)
    for problem in problems:
        context.log.warning(problem)
    present = {p for ref in scan.refs for p in ref.paths}
    digests = {p: v for p, v in digests.items() if p in present}
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[region_partitions.build_add_request(new_regions)] if new_regions else [],
        cursor=json.dumps({"seen": seen, "digests": digests}, sort_keys=True),
        skip_reason=None if requests else dg.SkipReason(f"no new or changed scenes in {scene_source.location()}"),
    )


def plan_mask_runs(fingerprints: dict[str, str], cursor: dict, scene_partitions: list[str]):
    """Pure planning step: regions whose label fingerprint changed -> their scene partitions' masks.

    `scene_partitions` are materialized `scenes` keys ("date|region"); only partitions of changed
    regions are requested, so one region's label edit never re-runs another region.
    """
    seen: dict[str, str] = dict(cursor.get("labels", {}))
    requests: list[dg.RunRequest] = []
    for region, fingerprint in sorted(fingerprints.items()):
        if seen.get(region) == fingerprint:
            continue
        seen[region] = fingerprint
        for key in sorted(scene_partitions):
            date, key_region = key.split("|")
            if key_region == region:
                requests.append(dg.RunRequest(
                    run_key=f"masks:{key}:{fingerprint}",
                    partition_key=partition_key(region, date),
                    tags={LABEL_FINGERPRINT_TAG: fingerprint},
                ))
    return requests, seen


@dg.sensor(
    target=masks,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Watches the label store per region (content fingerprint) and re-runs only the changed regions' masks.",
)
def label_change_sensor(context: dg.SensorEvaluationContext, label_store: LabelStore) -> dg.SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {}
    fingerprints = {region: label_store.fingerprint(region) for region in label_store.regions()}
    scene_partitions = [str(k) for k in context.instance.get_materialized_partitions(scenes.key)]
    requests, seen = plan_mask_runs(fingerprints, cursor, scene_partitions)
    return dg.SensorResult(
        run_requests=requests,
        cursor=json.dumps({"labels": seen}, sort_keys=True),
        skip_reason=None if requests else dg.SkipReason("no label changes"),
    )


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
