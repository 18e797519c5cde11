"""Quality and drift reports through Dagster on real GeoTIFFs, and the drift sensor against the instance:
one retraining request per drift event, none under the threshold."""

import json

import dagster as dg
import pytest

from geoseg_assets.definitions import build_defs
from geoseg_assets.partitions import partition_key
from geoseg_assets.sensors import drift_sensor, plan_drift_retraining
from resources.drift_policy import DriftPolicy
from resources.notifier import Notifier
from resources.scene_sources import SyntheticSource
from tests.conftest import materialize_partition
from tests.test_dataset_asset import DATES, build, project  # noqa: F401  (module fixture reused)

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

    def tick(cursor):
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources={
                "drift_policy": policy, "notifier": Notifier()}) as context:
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
    requests, cursor = tick(cursor)  # the same event is never requested twice
    assert requests == []
    defs = build_defs(resources)
    assert defs.resolve_sensor_def("drift_sensor").job_name == "retraining_job"


class Policy:
    threshold, min_partitions, hard_threshold = 0.5, 2, 0.9


def test_drift_planner_counts_partitions_and_honours_the_hard_threshold():
    request, state, _ = plan_drift_retraining([("a", 1, 0.6)], {}, Policy)
    assert request is None and state["pending"] == {"a": [1, 0.6]}
    request, state, _ = plan_drift_retraining([("a", 2, 0.2)], state, Policy)  # recovered
    assert request is None and state["pending"] == {}
    request, state, _ = plan_drift_retraining([("a", 3, 0.6), ("b", 4, 0.7)], state, Policy)
    assert request is not None and state["pending"] == {}
    again, _, _ = plan_drift_retraining([("a", 3, 0.6), ("b", 4, 0.7)], {}, Policy)
    assert again.run_key == request.run_key  # the same reports are the same event (the run key dedupes)
    hard, _, reason = plan_drift_retraining([("c", 5, 0.95)], {}, Policy)
    assert hard is not None and "c" in reason
