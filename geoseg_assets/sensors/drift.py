"""Drift sensor logic: new drift reports -> at most one retraining run per drift event, with the champion's recipe."""


import hashlib
import json

import dagster as dg

from resources.drift_policy import DriftPolicy
from resources.mlflow_tracking import CHAMPION, MlflowTracking
from resources.notifier import Notifier

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
