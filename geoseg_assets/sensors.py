"""Sensors: new scenes become region partitions and `scenes` runs; label changes re-run masks; drift
requests retraining; failed runs notify."""


import datetime as dt
import hashlib
import json
from dataclasses import dataclass, fields

import dagster as dg

from geoseg_assets.assets.masks import LABEL_FINGERPRINT_TAG, masks
from geoseg_assets.assets.scenes import scenes
from geoseg_assets.partitions import DATE_START, partition_key, region_partitions
from resources.drift_policy import DriftPolicy
from resources.label_store import LabelStore
from resources.mlflow_tracking import CHAMPION, MlflowTracking
from resources.notifier import Notifier
from resources.scene_sources import SceneSource

FINGERPRINT_TAG = "geoseg/scene_fingerprint"


def date_problem(ref, today: dt.date) -> str | None:
    """Why a scene's date has no partition (before DATE_START, or after `today`), with the fix; None if it has one.

    A future date is a misnamed folder (or a clock off by days): requesting it would fail the whole tick,
    since its partition does not exist yet, so the file is skipped and the other scenes still run.
    """
    date = dt.date.fromisoformat(ref.date)
    if date < dt.date.fromisoformat(DATE_START):
        return (f"{ref.paths[0]}: skipped, date {ref.date} is before the first date partition {DATE_START} "
                f"(Landsat 1's launch): rename the date folder to the acquisition date")
    if date > today:
        return (f"{ref.paths[0]}: skipped, the date folder {ref.date} is in the future (today is {today} UTC): "
                f"rename it to the acquisition date")
    return None


def plan_scene_runs(scan, cursor: dict, known_regions: set[str], today: dt.date | None = None):
    """Pure planning step: which regions to add and which partitions to (re)run.

    `cursor["seen"]` maps partition key -> fingerprint of the content last requested; a partition
    is requested again only when its fingerprint changes (a replaced file), never for the same bytes.
    Scenes dated outside DATE_START..`today` (default: today in UTC, the date partitions' last day) are
    skipped with a problem naming the file and the fix; a skipped future date runs once renamed, or on its day.
    """
    seen: dict[str, str] = dict(cursor.get("seen", {}))
    today = today or dt.datetime.now(dt.timezone.utc).date()
    problems = list(scan.problems)
    new_regions: list[str] = []
    requests: list[dg.RunRequest] = []
    for ref in scan.refs:
        problem = date_problem(ref, today)
        if problem is not None:
            problems.append(problem)
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
    problems.extend(duplicate_scene_problems(scan.refs))
    return new_regions, requests, seen, problems


def duplicate_scene_problems(refs) -> list[str]:
    """A warning per set of identical files landed under several dates of one region (a copy filed under
    the wrong date would train and predict as if it were another acquisition); each still runs."""
    dates: dict[tuple[str, str], list] = {}
    for ref in refs:
        dates.setdefault((ref.region, ref.fingerprint), []).append(ref)
    return [f"{', '.join(p for r in same for p in r.paths)}: identical bytes landed under {len(same)} dates of region "
            f"{region!r} ({', '.join(r.date for r in same)}); a scene has one acquisition date: remove the copies "
            "filed under a wrong date"
            for (region, _), same in sorted(dates.items()) if len(same) > 1]


# A steady-state tick over 10,000 landed files takes ~0.5 s (benchmarks/bench_backfill.py), so a 30 s
# interval costs little and halves the wait between a scene landing and its run.
NEW_SCENE_INTERVAL_S = 30


def scan_new_scenes(context: dg.SensorEvaluationContext, scene_source: SceneSource) -> dg.SensorResult:
    """new_scene_sensor's tick: add new regions, request `scenes` for new or replaced files."""
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
        skip_reason=None if requests else dg.SkipReason(
            f"no new or changed scenes in {scene_source.location()}"
            + (f"; {len(problems)} skipped: " + "; ".join(problems[:3]) if problems else "")),
    )


def plan_mask_runs(fingerprints: dict[str, str], cursor: dict, scene_partitions: list[str],
                   built_with: dict[str, str] | None = None):
    """Pure planning step: regions whose label fingerprint changed -> their scene partitions' masks.

    `scene_partitions` are materialized `scenes` keys ("date|region"); only partitions of changed
    regions are requested, so one region's label edit never re-runs another region. `built_with`
    (partition -> label fingerprint its current mask was made from) spares masks already up to date,
    e.g. every partition when the sensor is first switched on over finished work.
    """
    built_with = built_with or {}
    seen: dict[str, str] = dict(cursor.get("labels", {}))
    requests: list[dg.RunRequest] = []
    for region, fingerprint in sorted(fingerprints.items()):
        if seen.get(region) == fingerprint:
            continue
        seen[region] = fingerprint
        for key in sorted(scene_partitions):
            date, key_region = key.split("|")
            if key_region == region and built_with.get(key) != fingerprint:
                requests.append(dg.RunRequest(
                    run_key=f"masks:{key}:{fingerprint}",
                    partition_key=partition_key(region, date),
                    tags={LABEL_FINGERPRINT_TAG: fingerprint},
                ))
    return requests, seen


def mask_label_fingerprints(instance: dg.DagsterInstance, partition_keys: list[str]) -> dict[str, str]:
    """The label fingerprint each partition's latest `masks` materialization was made from (its metadata)."""
    built = {}
    for key in partition_keys:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=masks.key, asset_partitions=[key]), limit=1).records
        meta = records[0].asset_materialization.metadata if records else {}
        if "label_fingerprint" in meta:
            built[key] = meta["label_fingerprint"].value
    return built


def scan_label_changes(context: dg.SensorEvaluationContext, label_store: LabelStore) -> dg.SensorResult:
    """label_change_sensor's tick: the masks of the partitions of regions whose labels changed."""
    cursor = json.loads(context.cursor) if context.cursor else {}
    fingerprints = {region: label_store.fingerprint(region) for region in label_store.regions()}
    scene_partitions = [str(k) for k in context.instance.get_materialized_partitions(scenes.key)]
    unseen = {r for r in fingerprints if r not in cursor.get("labels", {})}
    built_with = mask_label_fingerprints(context.instance, [k for k in scene_partitions if k.split("|")[1] in unseen])
    requests, seen = plan_mask_runs(fingerprints, cursor, scene_partitions, built_with)
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


DRIFT_REPORT = dg.AssetKey("data_drift_report")
DRIFT_EVENT_TAG = "geoseg/drift_event"


def plan_drift_retraining(reports: list[tuple[str, int, float, bool]], cursor: dict, policy,
                          retraining_in_flight: str | None = None):
    """Pure planning step: (partition, storage id, drift share, in training set) of new drift reports -> at most
    one retraining request, once per drift event.

    Partitions drifting since the last event accumulate in `cursor["pending"]`; an event fires when
    `policy.min_partitions` of them drift, or one reaches `policy.hard_threshold`. Its partitions are
    then handled: the same reports never trigger twice, and a partition that recovers leaves the pool.
    A report of a partition the training set holds is no drift signal (the model has seen those data; a
    retraining that took the drifted dates in refreshes their reports this way) and takes it out of the pool.
    While a retraining run is queued or running (`retraining_in_flight` names it) no event fires: the pool
    waits for that run's training set, which may cover it.
    """
    pending: dict[str, list] = dict(cursor.get("pending", {}))
    for partition, storage_id, share, in_training_set in reports:
        if share >= policy.threshold and not in_training_set:
            pending[partition] = [storage_id, share]
        else:
            pending.pop(partition, None)
    hard = [p for p, (_, share) in pending.items() if share >= policy.hard_threshold]
    if pending and (len(pending) >= policy.min_partitions or hard) and retraining_in_flight is None:
        event = sorted(f"{p}@{sid}" for p, (sid, _) in pending.items())
        run_key = "drift:" + hashlib.sha256("|".join(event).encode()).hexdigest()[:16]
        reason = (f"drift share >= {policy.threshold} in {len(pending)} partition(s)"
                  + (f", >= {policy.hard_threshold} in {', '.join(sorted(hard))}" if hard else "")
                  + ": " + ", ".join(f"{p} ({share:.2f})" for p, (_, share) in sorted(pending.items())))
        request = dg.RunRequest(run_key=run_key, tags={DRIFT_EVENT_TAG: run_key.removeprefix("drift:")})
        return request, {"pending": {}}, reason
    return None, {"pending": pending}, None


RETRAINING_JOB = "retraining_job"
RECIPE_TAG = "geoseg/retraining_recipe"
RECIPE_OPS = ("model", "model_evaluation")  # the ops of retraining_job whose config a champion's run carries


def champion_recipe(instance: dg.DagsterInstance, tracking: MlflowTracking, job: dg.JobDefinition) -> tuple[dict, str]:
    """(run config, description) of a drift retraining that trains with the recipe that made the champion: the
    `model` and `model_evaluation` config of the Dagster run its MLflow run names (`geoseg.dagster_run_id`).
    ({}, why) when there is no champion, its run is not in this instance, or that config no longer fits `job`
    (a changed ModelConfig): the retraining then uses the defaults and says why in its tags."""
    try:
        champion = tracking.alias_version(CHAMPION)
        if champion is None:
            return {}, "defaults: no champion yet"
        run_id = tracking.run_tags(champion.run_id).get("geoseg.dagster_run_id", "")
    except Exception as exc:  # noqa: BLE001 (an unreadable registry must not stop the drift event)
        return {}, f"defaults: the model registry could not be read ({str(exc).splitlines()[0][:120]})"
    run = instance.get_run_by_id(run_id) if run_id else None
    if run is None:
        return {}, f"defaults: champion v{champion.version}'s training run {run_id or '(unrecorded)'} is not in this instance"
    ops = {op: cfg for op, cfg in (run.run_config or {}).get("ops", {}).items() if op in RECIPE_OPS}
    config = {"ops": ops} if ops else {}
    try:
        dg.validate_run_config(job, config)
    except dg.DagsterInvalidConfigError as exc:
        return {}, f"defaults: champion v{champion.version}'s config no longer fits {job.name} ({exc.errors[0].message[:120]})"
    return config, f"champion v{champion.version}'s recipe (run {run_id[:8]})"


IN_FLIGHT = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED]


def scan_drift_reports(context: dg.SensorEvaluationContext, drift_policy: DriftPolicy, notifier: Notifier,
                       mlflow_tracking: MlflowTracking) -> dg.SensorResult:
    """drift_sensor's tick: new drift reports -> at most one retraining request per drift event."""
    cursor = json.loads(context.cursor) if context.cursor else {}
    after = cursor.get("after")
    result = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=DRIFT_REPORT, after_storage_id=after), limit=10_000, ascending=True)
    reports = []
    for record in result.records:
        materialization = record.asset_materialization
        after = max(after or 0, record.storage_id)
        share = materialization.metadata.get("drift_share")
        if share is None or materialization.partition is None:  # a baseline report: nothing to compare yet
            continue
        in_training_set = materialization.metadata.get("in_training_set")
        reports.append((str(materialization.partition), record.storage_id, float(share.value),
                        bool(in_training_set and in_training_set.value)))
    in_flight = context.instance.get_runs(filters=dg.RunsFilter(job_name=RETRAINING_JOB, statuses=IN_FLIGHT), limit=1)
    running = in_flight[0].run_id if in_flight else None
    request, state, reason = plan_drift_retraining(reports, cursor, drift_policy, running)
    if request is not None:
        run_config, recipe = {}, "defaults: DriftPolicy.retraining_recipe is `defaults`"
        if drift_policy.retraining_recipe == "champion":
            run_config, recipe = champion_recipe(context.instance, mlflow_tracking,
                                                 context.repository_def.get_job(RETRAINING_JOB))
        request = dg.RunRequest(run_key=request.run_key, run_config=run_config,
                                tags={**request.tags, RECIPE_TAG: recipe})
        notifier.notify(f"geoseg drift event {request.run_key}: {reason}; retraining requested (retraining_job, "
                        f"{recipe})", run_key=request.run_key, reason=reason)
        context.log.info(f"{reason}; retraining with {recipe}")
    return dg.SensorResult(
        run_requests=[request] if request else [],
        cursor=json.dumps({**state, "after": after}, sort_keys=True),
        skip_reason=None if request else dg.SkipReason(
            f"{len(reports)} new drift report(s); {len(state['pending'])} partition(s) drifting, "
            + (f"waiting for retraining run {running}" if running and state["pending"] else "below the policy")),
    )


@dataclass(frozen=True)
class SensorIntervals:
    """Seconds between two ticks of each sensor (`minimum_interval_seconds`). The defaults suit a deployment;
    `GEOSEG_SENSOR_INTERVALS` (e.g. `drift_sensor=10,new_scene_sensor=5`, read once by definitions.py) shortens
    them where waiting costs more than a tick: tests of the daemon, a demo."""

    new_scene_sensor: int = NEW_SCENE_INTERVAL_S
    label_change_sensor: int = 60
    drift_sensor: int = 300  # drift reports arrive with new scenes: minutes of delay cost nothing
    geoseg_automation_sensor: int = 30

    @classmethod
    def parse(cls, text: str | None, source: str = "GEOSEG_SENSOR_INTERVALS") -> "SensorIntervals":
        """`name=seconds` pairs separated by commas (None or "" = the defaults); a clear error otherwise."""
        names = [f.name for f in fields(cls)]
        values = {}
        for item in filter(None, (part.strip() for part in (text or "").split(","))):
            name, _, seconds = item.partition("=")
            if name.strip() not in names or not seconds.strip().isdigit() or int(seconds) < 1:
                raise ValueError(f"{source}={text!r}: {item!r} is not `<sensor>=<whole seconds >= 1>` for one of "
                                 f"{', '.join(names)}; e.g. {source}=drift_sensor=10,new_scene_sensor=5")
            values[name.strip()] = int(seconds)
        return cls(**values)


def build_sensors(intervals: SensorIntervals = SensorIntervals()) -> list[dg.SensorDefinition]:
    """The code location's sensors, each ticking at its interval in `intervals`."""

    @dg.sensor(
        target=scenes,
        minimum_interval_seconds=intervals.new_scene_sensor,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Scans the scene source; adds new regions as partitions and requests `scenes` for new or replaced "
        "files.",
    )
    def new_scene_sensor(context: dg.SensorEvaluationContext, scene_source: SceneSource) -> dg.SensorResult:
        return scan_new_scenes(context, scene_source)

    @dg.sensor(
        target=masks,
        minimum_interval_seconds=intervals.label_change_sensor,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Watches the label store per region (content fingerprint) and re-runs only the changed regions' "
        "masks.",
    )
    def label_change_sensor(context: dg.SensorEvaluationContext, label_store: LabelStore) -> dg.SensorResult:
        return scan_label_changes(context, label_store)

    @dg.sensor(
        job_name=RETRAINING_JOB,
        minimum_interval_seconds=intervals.drift_sensor,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Reads new `data_drift_report` results; when drift exceeds DriftPolicy in enough partitions (or "
        "one beyond the hard threshold) requests one retraining run (dataset rebuilt with the new labelled dates -> "
        "model -> evaluation -> promotion) per drift event, and notifies. Partitions the training set holds never "
        "count, and no event fires while a retraining run is queued or running. The retraining trains with the "
        "champion's recipe (the model and evaluation config of its training run; DriftPolicy.retraining_recipe).",
    )
    def drift_sensor(context: dg.SensorEvaluationContext, drift_policy: DriftPolicy, notifier: Notifier,
                     mlflow_tracking: MlflowTracking) -> dg.SensorResult:
        return scan_drift_reports(context, drift_policy, notifier, mlflow_tracking)

    automation_sensor = dg.AutomationConditionSensorDefinition(
        "geoseg_automation_sensor",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=intervals.geoseg_automation_sensor,
    )
    return [new_scene_sensor, label_change_sensor, automation_sensor, run_failure_notifier, drift_sensor]


# The sensors at their default intervals, for tests and scripts that evaluate one directly.
new_scene_sensor, label_change_sensor, automation_sensor, _, drift_sensor = build_sensors()
