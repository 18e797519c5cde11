"""Operations: `dagster-daemon` alone on the production instance (the repo's dagster.yaml, storage on a
throwaway PostgreSQL database, data under a temp GEOSEG_DATA_DIR), no webserver; the harness, an operator's
earlier work (labels, a training set, a champion) and the daemon, is tests/support/daemon.py.

Drift: two dates land 50 % brighter; their drift reports (automation) pass the DriftPolicy, and `drift_sensor`,
once switched on, requests one `retraining_job` run: the training set is rebuilt with those dates (new DVC
version, in the throwaway git repository the code location gets as GEOSEG_DVC_REPO), a new model version is
trained on it and evaluated; the run succeeds exactly when it clears the quality floor. The drift reports
automation then refreshes against the new training set mark those dates as training data, and the sensor's
next tick requests no second retraining. A backfill of predictions launched beside the retraining run takes
turns with it in the model_compute pool: no two networks at once, whoever launched them.
"""

import json
import time

import pytest

from tests.support.daemon import (
    DRIFT_SENSOR,
    REGION,
    SCENE_SENSOR,
    SETUP_DATE,
    Ops,
    all_runs,
    assert_no_run_lost,
    describe_runs,
    latest_materialization,
    next_tick,
    run_failures,
    sensor_state,
    switch_on,
    wait_for_new,
    wait_until_quiet,
)
from tests.support.paths import REPO
from tests.support.project import QUICK

pytestmark = [pytest.mark.slow(minutes=6), pytest.mark.postgres]

DRIFT_DATES = ["2024-07-01", "2024-07-15"]  # landed 50 % brighter than the training data: a re-calibrated sensor

DRIFT_SHIFT = 0.5

# The drift test's retraining_job trains with the champion's recipe (tests.support.project.QUICK): a few minutes here,
# the dataset rebuild and the checks included; generous, as a slow machine must not fail it.
RETRAINING_TIMEOUT = 25 * 60

POOL_STEPS = {"model", "model_evaluation", "predictions"}  # the steps of the model_compute pool (geoseg_assets/pools.py)

@pytest.mark.timeout(45 * 60)
def test_drift_requests_retraining_on_the_new_data(ops):
    """Two dates land 50 % brighter than the training data (a re-calibrated sensor). Automation makes their drift
    reports; the operator switches `drift_sensor` on, and its tick requests exactly one `retraining_job` run for the
    drift event: it rebuilds the training set from every labelled partition, the drifted dates included (a new
    DVC version), trains a new model version on it (MLflow lineage names that version and those partitions) and
    evaluates it: promoted if it clears the quality floor and beats the champion, else the run fails on the floor and
    the champion stays. No human action beyond the switch, and no second run: the refreshed reports of dates the
    new training set holds are no drift signal."""
    import mlflow
    from dagster import DagsterEventType, DagsterRunStatus

    from geoseg_assets.assets.models import EvaluationConfig
    from geoseg_assets.sensors.drift import DRIFT_EVENT_TAG, RECIPE_TAG
    from resources.drift_policy import DriftPolicy
    from resources.mlflow_tracking import CHAMPION, MlflowTracking

    instance, t_start = ops.instance, time.time()
    partitions = [f"{d}|{REGION}" for d in DRIFT_DATES]
    dataset_before = latest_materialization(instance, "dataset", "")
    model_before = latest_materialization(instance, "model", "")
    runs_before = {r.run_id for r in all_runs(instance)}
    state = sensor_state(instance, SCENE_SENSOR)
    if state is None or state.status.value != "RUNNING":  # whatever ran before: the scenes must come in by themselves
        switch_on(ops, SCENE_SENSOR)
    for day in DRIFT_DATES:
        ops.land(day, brightness_shift=DRIFT_SHIFT)
    t_land = time.time()

    # new_scene_sensor -> scenes; automation -> tiles, masks, data_drift_report (and the other followers).
    reports = wait_for_new(ops, "data_drift_report", partitions, lambda p, r: r.timestamp >= t_land, t_land,
                            "the landing")
    threshold = DriftPolicy().threshold
    shares = {p: float(r.asset_materialization.metadata["drift_share"].value) for p, r in reports.items()}
    print(f"drift share of the landed dates: {shares} (DriftPolicy threshold {threshold})")
    assert all(share >= threshold for share in shares.values()), (shares, threshold)
    wait_until_quiet(ops)  # the drifted dates' masks (labels cover them) are in before the training set is rebuilt
    masks = {p: latest_materialization(instance, "masks", p) for p in partitions}
    assert all(m is not None and m.timestamp >= t_land for m in masks.values()), masks

    first = switch_on(ops, DRIFT_SENSOR)
    t_tick = first.timestamp
    print(f"{DRIFT_SENSOR} on: first tick {first.status.value}, runs {first.run_ids}, "
          f"{t_tick - max(r.timestamp for r in reports.values()):.1f} s after the last drift report")
    assert first.status.value == "SUCCESS" and len(first.run_ids) == 1, (first.status, first.run_ids, first.skip_reason)
    (run_id,) = first.run_ids
    # At the same moment an operator backfills predictions of two dates with the current champion (`dagster job
    # backfill`, the CLI twin of the UI's backfill dialog). Its runs are queued beside the retraining run, and their
    # `predictions` steps take turns with its `model` and `model_evaluation` steps in the model_compute pool.
    backfill_keys = [f"{SETUP_DATE}|{REGION}", partitions[0]]
    ops.cli("job", "backfill", "-j", "prediction_job", "--partitions", ",".join(backfill_keys), "--noprompt",
            "-w", str(REPO / "workspace.yaml"))
    while not (run := instance.get_run_by_id(run_id)).is_finished:
        ops.check_daemon()
        assert time.time() - t_tick < RETRAINING_TIMEOUT, f"retraining still going:\n{describe_runs(instance)}\n{ops.tail()}"
        time.sleep(1)
    print(f"retraining run {run_id[:8]} {run.job_name} {run.status.value} {time.time() - t_tick:.1f} s after the tick")
    _assert_heavy_steps_took_turns(ops, run_id, backfill_keys, t_tick)
    assert run.job_name == "retraining_job" and run.tags.get(DRIFT_EVENT_TAG), run.tags
    assert run.tags.get("geoseg/heavy") == "true", run.tags  # one heavy run at a time (dagster.yaml)
    # It trains with the recipe that made the champion (ops.train_champion's config), not the launchpad defaults.
    assert run.tags[RECIPE_TAG].startswith("champion v1's recipe"), run.tags
    assert run.run_config["ops"]["model"]["config"] == QUICK, run.run_config

    # The training set was rebuilt with the drifted dates, and the new model version was trained on exactly it.
    dataset = latest_materialization(instance, "dataset", "")
    model = latest_materialization(instance, "model", "")
    assert dataset.run_id == run_id and model.run_id == run_id, (dataset.run_id, model.run_id, run_failures(instance, run_id))
    meta, old = dataset.asset_materialization.metadata, dataset_before.asset_materialization.metadata
    assert meta["dataset_version"].value != old["dataset_version"].value, meta["dataset_version"]
    version = int(model.asset_materialization.metadata["model_version"].value)
    assert version == int(model_before.asset_materialization.metadata["model_version"].value) + 1
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{ops.data / 'mlflow' / 'mlflow.db'}")
    mlflow.set_tracking_uri(tracking.tracking_uri)
    tags = mlflow.get_run(model.asset_materialization.metadata["mlflow_run_id"].value).data.tags
    print(f"dataset {old['dataset_version'].value} -> {meta['dataset_version'].value}; model v{version} trained on "
          f"{tags['geoseg.partitions']}")
    assert tags["geoseg.dataset_version"] == meta["dataset_version"].value
    assert all(f"{REGION}/{d}" in tags["geoseg.partitions"].split(",") for d in DRIFT_DATES), tags["geoseg.partitions"]

    # The evaluation decides. The run succeeds exactly when the retrained model clears the quality floor; below it
    # nothing is promoted and the run fails on that check alone, naming the score (the failure notifier says so).
    evaluation = latest_materialization(instance, "model_evaluation", "")
    assert evaluation.run_id == run_id
    emeta = evaluation.asset_materialization.metadata
    floor = run.run_config["ops"]["model_evaluation"]["config"].get("min_miou", EvaluationConfig().min_miou)
    test_miou = float(emeta["test_miou"].value)
    failures = run_failures(instance, run_id)
    print(f"evaluation of v{version}: test mIoU {test_miou:.3f} (floor {floor}), promoted {emeta['promoted'].value} "
          f"({emeta['promotion_reason'].value}); run {run.status.value}\n{failures}")
    champion = tracking.alias_version(CHAMPION)
    if test_miou >= floor:
        assert run.status == DagsterRunStatus.SUCCESS, f"{failures}\n{describe_runs(instance)}"
        assert (int(champion.version) == version) == emeta["promoted"].value
    else:
        assert run.status == DagsterRunStatus.FAILURE and not emeta["promoted"].value
        assert int(champion.version) == version - 1, champion  # production keeps the champion it had
        checks = [e.dagster_event.event_specific_data
                  for e in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)]
        assert [c.check_name for c in checks if not c.passed] == ["min_test_miou"], failures
        assert f"{test_miou:.4f}" in emeta["promotion_reason"].value and str(floor) in emeta["promotion_reason"].value
        failed_steps = {e.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)}
        assert failed_steps == {"model_evaluation"}, failures

    # The new training set holds the drifted dates, so automation refreshes the region's drift reports against it.
    # The brightened dates still differ from the others, but they are training data now: the sensor's next tick
    # after the refresh finds no drift event and requests no second retraining (a retraining loop, otherwise).
    wait_until_quiet(ops)  # whatever the new training set or a new champion re-plans (reports, predictions) ends
    t_quiet = time.time()
    refreshed = {p: r for p in (f"{d}|{REGION}" for d in (SETUP_DATE, *DRIFT_DATES))
                 if (r := latest_materialization(instance, "data_drift_report", p)) and r.timestamp >= dataset.timestamp}
    print("drift reports against the new training set: " + ", ".join(
        f"{p} share {r.asset_materialization.metadata['drift_share'].value} in training set "
        f"{r.asset_materialization.metadata['in_training_set'].value}" for p, r in refreshed.items()))
    assert set(partitions) <= set(refreshed), sorted(refreshed)
    assert all(r.asset_materialization.metadata["in_training_set"].value for r in refreshed.values())
    tick = next_tick(ops, DRIFT_SENSOR, t_quiet)
    pending = json.loads(sensor_state(instance, DRIFT_SENSOR).instigator_data.cursor)["pending"]
    print(f"{DRIFT_SENSOR} tick {tick.timestamp - t_quiet:.1f} s after the refresh: {tick.status.value} "
          f"({tick.skip_reason}), runs {tick.run_ids}, pending {pending}")
    assert tick.status.value == "SKIPPED" and not tick.run_ids and pending == {}, (tick.status, tick.run_ids, pending)
    assert all(r.tags.get("dagster/sensor_name") != DRIFT_SENSOR for r in all_runs(instance)
               if r.run_id not in runs_before and r.run_id != run_id), "more than one retraining run"
    assert_no_run_lost(instance)
    state = sensor_state(instance, DRIFT_SENSOR)
    instance.stop_sensor(state.instigator_origin_id, state.selector_id, None)
    print(f"drift test wall time {time.time() - t_start:.1f} s")

def _assert_heavy_steps_took_turns(ops: Ops, sensor_run_id: str, backfill_keys: list[str], t0: float) -> None:
    """The backfill's prediction runs were queued while the sensor's retraining run ran, yet no two steps of the
    model_compute pool (training, evaluation, inference) overlapped: one network at a time, whoever launched it."""
    from tests.support.runs import step_spans

    instance = ops.instance
    while not (backfill := [r for r in all_runs(instance, job_name="prediction_job") if r.tags.get("dagster/backfill")]) \
            or len(backfill) < len(backfill_keys) or not all(r.is_finished for r in backfill):
        ops.check_daemon()
        assert time.time() - t0 < RETRAINING_TIMEOUT, f"backfill still going:\n{describe_runs(instance)}\n{ops.tail()}"
        time.sleep(1)
    assert sorted(r.tags["dagster/partition"] for r in backfill) == sorted(backfill_keys), describe_runs(instance)
    assert all(r.status.value == "SUCCESS" for r in backfill), describe_runs(instance)
    # The backfill's runs were queued while the retraining ran, so they competed with it for the pool: either they
    # started beside it (created before its `model` step took the slot) or the run queue held them until the slot
    # was free (Dagster's block_op_concurrency_limited_runs, on by default) - which one depends on how fast the CLI
    # creates them. Both are the pool at work; a backfill queued after the retraining ended would show nothing.
    sensor_run = instance.get_run_record_by_id(sensor_run_id)
    assert any(instance.get_run_record_by_id(r.run_id).create_timestamp.timestamp() < sensor_run.end_time
               for r in backfill), "the backfill's runs were queued after the retraining ended: the test shows nothing"
    spans = step_spans(instance, [sensor_run_id, *(r.run_id for r in backfill)], POOL_STEPS)
    print("model_compute pool steps: " + ", ".join(f"{step} of {run[:8]} {start - t0:.1f}-{end - t0:.1f} s"
                                                   for start, end, step, run in spans))
    assert {step for _, _, step, _ in spans} == POOL_STEPS, spans
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # never two at once
