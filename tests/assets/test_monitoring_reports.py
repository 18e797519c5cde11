"""Quality and drift reports through Dagster on real GeoTIFFs, and the drift sensor against the instance:
one retraining request per drift event, none under the threshold."""

import json

import dagster as dg
import pytest

from geoseg_assets.definitions import build_defs
from geoseg_assets.partitions import partition_key
from geoseg_assets.sensors import drift_sensor
from geoseg_assets.sensors.drift import RECIPE_TAG, champion_recipe, plan_drift_retraining
from resources.drift_policy import DriftPolicy
from resources.notifier import Notifier
from resources.synthetic_source import SyntheticSource
from tests.support.pipeline import materialize_partition
from tests.support.project import DATES, build

SHIFTED = "2024-06-25"  # a re-calibrated sensor: every band 50 % brighter than in training


def report(project, region, date, *assets):
    _, _, instance, resources = project
    job = build_defs(resources).resolve_job_def("monitoring_job")
    run = job.execute_in_process(partition_key=partition_key(region, date), instance=instance, raise_on_error=False,
                                 asset_selection=[dg.AssetKey(a) for a in assets])
    return run


@pytest.fixture(scope="module")
def shifted(project):
    """The project with its dataset built and a brightness-shifted date landed for both regions."""
    _, _, instance, resources = project
    build(project)
    base = resources["scene_source"]
    source = SyntheticSource(cache_dir=base.cache_dir, regions=base.regions, dates=[*DATES, SHIFTED], width=base.width,
                             height=base.height, nodata_margin=base.nodata_margin, brightness_shifts={SHIFTED: 0.5})
    shifted_resources = {**resources, "scene_source": source}
    for region in ("alpha", "beta"):
        assert materialize_partition(instance, shifted_resources, region, SHIFTED).success
    return project


def test_drift_reports_separate_a_shifted_sensor_from_training_conditions(shifted):
    _, _, _, resources = shifted
    same = report(shifted, "alpha", DATES[1], "data_drift_report")
    moved = report(shifted, "alpha", SHIFTED, "data_drift_report")
    assert same.success and moved.success
    calm = same.asset_materializations_for_node("data_drift_report")[0].metadata
    drift = moved.asset_materializations_for_node("data_drift_report")[0].metadata
    print(f"drift share: training date {calm['drift_share'].value}, shifted {drift['drift_share'].value}")
    assert calm["dataset_drift"].value is False and drift["dataset_drift"].value is True
    assert drift["drift_share"].value >= 0.5 > calm["drift_share"].value
    assert "NIR_mean" in drift["drifted_columns"].value and calm["reference"].value.startswith("training set")
    # The training date is part of the training set (no drift signal for the sensor); the shifted date is not.
    assert calm["in_training_set"].value is True and drift["in_training_set"].value is False
    html = resources["data_store"].path("data_drift_report", {"region": "alpha", "date": SHIFTED}, "report.html")
    text = html.read_text()
    assert html.stat().st_size > 10_000 and "NIR_mean" in text and "drift" in text.lower()
    assert "data:image/png;base64" in drift["chart"].value


def test_data_quality_report_passes_a_clean_scene_and_explains_each_rule(shifted):
    _, _, _, resources = shifted
    run = report(shifted, "beta", DATES[0], "data_quality_report")
    assert run.success
    meta = run.asset_materializations_for_node("data_quality_report")[0].metadata
    checks = {e.check_name: e.passed for e in run.get_asset_check_evaluations()}
    assert checks == {"data_quality_passes": True} and meta["failed_rules"].value == []
    assert {"nodata_share", "saturated_share", "out_of_reference_range"} <= set(meta["rules"].value.split())
    html = resources["data_store"].path("data_quality_report", {"region": "beta", "date": DATES[0]}, "report.html")
    assert "nodata_share" in html.read_text()
    moved = report(shifted, "beta", SHIFTED, "data_quality_report")
    rules = json.loads(resources["data_store"].path(
        "data_quality_report", {"region": "beta", "date": SHIFTED}, "report.json").read_text())["rules"]
    out_of_range = next(r for r in rules if r["rule"] == "out_of_reference_range")
    assert out_of_range["status"] in ("warn", "fail") and moved.success


def test_drift_sensor_requests_one_retraining_per_drift_event(shifted):
    _, _, instance, resources = shifted
    policy = DriftPolicy(threshold=0.5, min_partitions=2, hard_threshold=1.0)
    defs = build_defs(resources)
    sensor_resources = {"drift_policy": policy, "notifier": Notifier(), "mlflow_tracking": resources["mlflow_tracking"]}

    def tick(cursor):
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources=sensor_resources,
                                     definitions=defs) as context:
            result = drift_sensor(context)
        return result.run_requests, result.cursor

    latest = instance.fetch_materializations(dg.AssetKey("data_drift_report"), limit=1).records
    requests, cursor = tick(json.dumps({"after": latest[0].storage_id if latest else None}))  # earlier tests' reports
    assert requests == []
    for region in ("alpha", "beta"):  # under the threshold: nothing
        assert report(shifted, region, DATES[0], "data_drift_report").success
    requests, cursor = tick(cursor)
    assert requests == []
    assert report(shifted, "alpha", SHIFTED, "data_drift_report").success  # one drifting partition: not yet
    requests, cursor = tick(cursor)
    assert requests == []
    assert report(shifted, "beta", SHIFTED, "data_drift_report").success  # the second one: a drift event
    requests, cursor = tick(cursor)
    assert len(requests) == 1 and requests[0].run_key.startswith("drift:"), cursor
    assert requests[0].tags[RECIPE_TAG] == "defaults: no champion yet" and not requests[0].run_config
    requests, cursor = tick(cursor)  # the same event is never requested twice
    assert requests == []

    # While that event's retraining run is in flight (created, not yet ended), the same partitions drift again: no
    # second run is requested; they wait in the pool, and fire once the run has ended (without a training set that
    # covers them).
    queued = instance.create_run_for_job(defs.resolve_job_def("retraining_job"), status=dg.DagsterRunStatus.NOT_STARTED)
    for region in ("alpha", "beta"):
        assert report(shifted, region, SHIFTED, "data_drift_report").success
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=sensor_resources,
                                 definitions=defs) as context:
        waiting = drift_sensor(context)
    assert waiting.run_requests == [] and queued.run_id in waiting.skip_reason.skip_message, waiting.skip_reason
    assert sorted(json.loads(waiting.cursor)["pending"]) == [f"{SHIFTED}|alpha", f"{SHIFTED}|beta"]
    instance.report_run_failed(instance.get_run_by_id(queued.run_id))
    requests, cursor = tick(waiting.cursor)
    assert len(requests) == 1 and requests[0].run_key.startswith("drift:"), cursor
    assert defs.resolve_sensor_def("drift_sensor").job_name == "retraining_job"


def test_drift_retraining_trains_with_the_recipe_that_made_the_champion(tmp_path):
    """The champion's training run (a real run record in the instance, named by the champion's MLflow run) gives
    the retraining its model and evaluation config; without a usable one the retraining takes the defaults and
    its tag says why."""
    import mlflow

    from geoseg_assets.definitions import default_resources
    from resources.mlflow_tracking import CHAMPION, MlflowTracking

    resources = default_resources(tmp_path / "data")
    defs = build_defs(resources)
    job = defs.resolve_job_def("retraining_job")
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "art"))
    recipe = {"ops": {"model": {"config": {"epochs": 3, "lr": 0.001, "ema_decay": 0.99, "indices": []}},
                      "model_evaluation": {"config": {"min_miou": 0.2}}}}
    with dg.instance_for_test() as instance:
        assert champion_recipe(instance, tracking, job) == ({}, "defaults: no champion yet")
        trained = instance.create_run_for_job(defs.resolve_job_def("training_job"), run_config=recipe)

        def champion_of(dagster_run_id):
            with tracking.run("trained", {"geoseg.dagster_run_id": dagster_run_id}) as run:
                mlflow.log_metric("test_miou", 0.5)
            version = tracking.register(f"{tmp_path}/art/none", run.info.run_id, "0" * 64)
            tracking.set_alias(CHAMPION, version)
            return version

        v1 = champion_of(trained.run_id)
        config, why = champion_recipe(instance, tracking, job)
        assert config == recipe and why == f"champion v{v1}'s recipe (run {trained.run_id[:8]})"
        dg.validate_run_config(job, config)  # launchable as it is

        v2 = champion_of("0" * 36)  # trained on another instance
        assert champion_recipe(instance, tracking, job) == (
            {}, f"defaults: champion v{v2}'s training run {'0' * 36} is not in this instance")

        # a champion trained before a ModelConfig field was renamed: its config no longer launches
        old = instance.add_run(dg.DagsterRun(job_name="training_job", run_config={
            "ops": {"model": {"config": {"epochs": 3, "warmup_epochs": 1}}}}))
        v3 = champion_of(old.run_id)
        config, why = champion_recipe(instance, tracking, job)
        assert config == {} and why.startswith(f"defaults: champion v{v3}'s config no longer fits retraining_job (")
        assert "warmup_epochs" in why, why


class Policy:
    threshold, min_partitions, hard_threshold = 0.5, 2, 0.9


def test_drift_planner_counts_partitions_and_honours_the_hard_threshold():
    request, state, _ = plan_drift_retraining([("a", 1, 0.6, False)], {}, Policy)
    assert request is None and state["pending"] == {"a": [1, 0.6]}
    request, state, _ = plan_drift_retraining([("a", 2, 0.2, False)], state, Policy)  # recovered
    assert request is None and state["pending"] == {}
    request, state, _ = plan_drift_retraining([("a", 3, 0.6, False), ("b", 4, 0.7, False)], state, Policy)
    assert request is not None and state["pending"] == {}
    again, _, _ = plan_drift_retraining([("a", 3, 0.6, False), ("b", 4, 0.7, False)], {}, Policy)
    assert again.run_key == request.run_key  # the same reports are the same event (the run key dedupes)
    hard, _, reason = plan_drift_retraining([("c", 5, 0.95, False)], {}, Policy)
    assert hard is not None and "c" in reason


def test_drift_planner_ignores_training_data_and_waits_for_a_running_retraining():
    # After a retraining took the drifted dates in, their refreshed reports (against the new training set, which
    # holds them) still differ from the older dates but are no drift signal: they leave the pool, nothing fires.
    request, state, _ = plan_drift_retraining([("a", 1, 0.6, False)], {}, Policy)
    assert request is None and list(state["pending"]) == ["a"]
    request, state, _ = plan_drift_retraining([("a", 2, 1.0, True), ("b", 3, 1.0, True)], state, Policy)
    assert request is None and state["pending"] == {}
    # A drift event while a retraining run is queued or running waits for it, and fires once it has ended.
    request, state, _ = plan_drift_retraining([("c", 4, 0.7, False), ("d", 5, 0.95, False)], state, Policy, "run-1")
    assert request is None and sorted(state["pending"]) == ["c", "d"]
    request, state, reason = plan_drift_retraining([], state, Policy)
    assert request is not None and state["pending"] == {} and "c (0.70)" in reason and "d (0.95)" in reason
