"""Operations: `dagster-daemon` alone on the production instance (the repo's dagster.yaml, storage on a
throwaway PostgreSQL database, data under a temp GEOSEG_DATA_DIR), no webserver; the harness, an operator's
earlier work (labels, a training set, a champion) and the daemon, is tests/support/daemon.py.

Full chain: an operator has imported the region's labels, built a training set and trained a champion
(`Ops.train_champion`, in-process on the same instance before the daemon starts). A new scene dropped into
the landing folder then goes through scenes -> tiles, masks, predictions, data_quality_report,
data_drift_report, prediction_drift_report and model_quality_report with no human action beyond switching
`new_scene_sensor` on (`dagster sensor start`, the CLI twin of the UI's switch): the sensor requests
`scenes`, `geoseg_automation_sensor` (declarative automation) requests the rest as their inputs land. The
latency from the copy to each materialization is printed. The training set and the model are not
re-planned: only `drift_sensor` (off by default) requests training.

A label edit: with `label_change_sensor` switched on over finished work nothing runs; a reviewer sends 5
labels back to `test` and the next tick re-runs the masks of exactly that region's partitions (with fewer
labelled pixels), and automation refreshes the model quality report.
"""

import time

import pytest

from tests.support.daemon import (
    AUTOMATION_SENSOR,
    INTERVALS,
    LABEL_SENSOR,
    REGION,
    SCENE_SENSOR,
    SENSOR_TIMEOUT,
    SETUP_DATE,
    all_runs,
    describe_runs,
    latest_materialization,
    sensor_state,
    switch_on,
    wait_all_finished,
    wait_for_new,
)

pytestmark = [pytest.mark.slow(minutes=3), pytest.mark.postgres]

SENSOR_DATE = "2024-06-15"

# What a new scene of a labelled region feeds, with a champion in place: all planned by automation.
FOLLOWERS = ["tiles", "masks", "data_quality_report", "predictions", "data_drift_report", "prediction_drift_report",
             "model_quality_report"]

NOT_REQUESTED = ["dataset", "model", "champion_model"]  # a new scene never retrains by itself

def test_new_scene_flows_through_sensors_with_no_human_action(ops):
    from dagster import AssetKey, DagsterRunStatus

    from geoseg_assets.partitions import partition_key

    instance, partition = ops.instance, str(partition_key(REGION, SENSOR_DATE))
    t_start = time.time()
    # The operator switches the sensor on; its first tick finds an empty landing folder.
    first_tick = switch_on(ops, SCENE_SENSOR)
    print(f"{SCENE_SENSOR} on, first tick {first_tick.status.value} {time.time() - t_start:.1f} s after start")

    t_copy = ops.land(SENSOR_DATE)
    print(f"scene landed {t_copy - first_tick.timestamp:.1f} s after the first tick "
          f"(minimum_interval_seconds={INTERVALS[SCENE_SENSOR]})")
    wanted = ["scenes", *FOLLOWERS]
    done: dict[str, object] = {}
    last = None
    while len(done) < len(wanted):
        ops.check_daemon()
        assert time.time() - t_copy < SENSOR_TIMEOUT, (
            f"after {SENSOR_TIMEOUT} s only {sorted(done)} of {wanted}:\n{describe_runs(instance)}\n{ops.tail()}")
        for asset in wanted:
            record = None if asset in done else latest_materialization(instance, asset, partition)
            if record is not None and record.timestamp >= t_copy:
                done[asset] = record
                print(f"  {asset:20s} materialized {record.timestamp - t_copy:6.1f} s after the copy "
                      f"(run {record.run_id[:8]})")
        state = sorted((r.run_id[:8], r.status.value) for r in all_runs(instance))
        if state != last:
            last = state
            print(f"  {time.time() - t_copy:6.1f} s runs {state}")
        failed = [r for r in all_runs(instance) if r.status == DagsterRunStatus.FAILURE]
        assert not failed, f"failed runs:\n{describe_runs(instance)}"
        time.sleep(1)

    # The runs end (their asset checks run after the materializations) and each of them succeeds.
    wait_all_finished(ops, t_copy, SENSOR_TIMEOUT)
    print(f"all runs finished {time.time() - t_copy:.1f} s after the copy:\n{describe_runs(instance)}")
    print("latency copy -> materialization:", {a: round(r.timestamp - t_copy, 1) for a, r in done.items()})
    runs = {r.run_id: r for r in all_runs(instance)}
    assert all(r.status == DagsterRunStatus.SUCCESS for r in runs.values()), describe_runs(instance)

    # Who launched what: `scenes` by the new-scene sensor (one run per file content), the rest by automation.
    scene_run = runs[done["scenes"].run_id]
    assert scene_run.tags.get("dagster/sensor_name") == SCENE_SENSOR, scene_run.tags
    assert scene_run.tags.get("dagster/run_key", "").startswith(f"{partition}:"), scene_run.tags
    assert scene_run.tags.get("geoseg/scene_fingerprint"), scene_run.tags
    for asset in FOLLOWERS:
        run = runs[done[asset].run_id]
        assert run.tags.get("dagster/sensor_name") == AUTOMATION_SENSOR, (asset, run.tags)
        assert run.tags.get("dagster/from_automation_condition") == "true", (asset, run.tags)
    assert sorted(instance.get_dynamic_partitions("region")) == [REGION]  # no partition from elsewhere

    # Everything downstream of the scene was planned by exactly the runs that materialized it; the training
    # set and the model are not (drift_sensor, off by default, is what would request training).
    planned = {asset: getattr(instance.get_latest_planned_materialization_info(AssetKey(asset)), "run_id", None)
               for asset in ["scenes", *FOLLOWERS, *NOT_REQUESTED]}
    print("latest planned materialization (run) per asset:", {a: r and r[:8] for a, r in planned.items()})
    # The runs no sensor launched are ops.train_champion's in-process runs (the other tests here start theirs by sensors).
    setup_runs = {r.run_id for r in all_runs(instance) if r.tags.get("dagster/sensor_name") is None}
    assert {a: planned[a] for a in ["scenes", *FOLLOWERS]} == {a: done[a].run_id for a in ["scenes", *FOLLOWERS]}
    assert all(planned[a] in setup_runs for a in NOT_REQUESTED), (planned, setup_runs)
    print(f"test 1 wall time {time.time() - t_start:.1f} s")

def test_a_label_edit_reruns_exactly_that_regions_masks(ops):
    """The operator switches `label_change_sensor` on over finished work (nothing runs: every mask was made from
    the current labels), then a reviewer sends labels back: the next tick re-runs the masks of exactly the
    region's scene partitions, with fewer labelled pixels, and automation refreshes the model quality report."""
    from dagster import AssetKey, DagsterRunStatus

    import rasterio
    from shapely.geometry import box

    from geoseg_assets.assets.masks import LABEL_FINGERPRINT_TAG
    from resources.data_store import DataStore
    from resources.geopackage_labels import GeoPackageLabelStore

    instance, t_start = ops.instance, time.time()
    # The region's partitions with masks: the operator's SETUP_DATE, and SENSOR_DATE if the new-scene test ran first.
    partitions = sorted(p for p in instance.get_materialized_partitions(AssetKey("masks")) if p.endswith(f"|{REGION}"))
    assert f"{SETUP_DATE}|{REGION}" in partitions, partitions
    before = {p: latest_materialization(instance, "masks", p) for p in partitions}
    runs_before = {r.run_id for r in all_runs(instance)}
    first = switch_on(ops, LABEL_SENSOR)
    assert first.status.value == "SKIPPED" and not first.run_ids, (first.status, first.run_ids)
    print(f"{LABEL_SENSOR} on: first tick {first.status.value} (every mask already made from the current labels)")

    store = GeoPackageLabelStore(path=str(ops.data / "labels.gpkg"))  # the code location's label store
    footprint = None  # where every partition's scene lies: the edited labels touch all their masks
    for p in partitions:
        scene = DataStore(root=str(ops.data / "store")).path("scenes", {"region": REGION, "date": p.split("|")[0]},
                                                             "scene.tif")
        with rasterio.open(scene) as src:
            footprint = box(*src.bounds) if footprint is None else footprint.intersection(box(*src.bounds))
    labels = store.labels(REGION)
    ids = labels.loc[labels.geometry.intersection(footprint).area.sort_values(ascending=False).index[:5], "label_id"]
    assert store.set_status(REGION, [int(i) for i in ids], "test") == 5  # a reviewer sends 5 labels back
    t_edit = time.time()
    fingerprint = store.fingerprint(REGION)
    after = wait_for_new(ops, "masks", partitions, lambda p, r: r.storage_id != before[p].storage_id, t_edit,
                          "the edit")
    # Automation's next tick (30 s) sees the new masks and refreshes the model quality report (live mIoU).
    last_mask = max(r.timestamp for r in after.values())
    while (quality := latest_materialization(instance, "model_quality_report", "")).timestamp <= last_mask:
        ops.check_daemon()
        assert time.time() - t_edit < SENSOR_TIMEOUT, f"model quality report not refreshed:\n{describe_runs(instance)}"
        time.sleep(1)
    print(f"  model_quality_report re-materialized {quality.timestamp - t_edit:6.1f} s after the edit "
          f"(run {quality.run_id[:8]})")
    wait_all_finished(ops, t_edit, SENSOR_TIMEOUT)
    new_runs = [r for r in all_runs(instance) if r.run_id not in runs_before]
    print("runs after the edit:\n" + "\n".join(f"  {r.run_id[:8]} {r.status.value} {r.tags.get('dagster/sensor_name')} "
                                             f"{r.tags.get('dagster/partition')}" for r in new_runs))
    assert all(r.status == DagsterRunStatus.SUCCESS for r in new_runs), describe_runs(instance)
    label_runs = [r for r in new_runs if r.tags.get("dagster/sensor_name") == LABEL_SENSOR]
    assert sorted(r.tags["dagster/partition"] for r in label_runs) == sorted(partitions)
    assert all(r.tags.get(LABEL_FINGERPRINT_TAG) == fingerprint for r in label_runs)
    for p in partitions:
        old, new = (rec.asset_materialization.metadata for rec in (before[p], after[p]))
        assert new["label_fingerprint"].value == fingerprint != old["label_fingerprint"].value
        assert new["labelled_fraction"].value < old["labelled_fraction"].value, (p, old["labelled_fraction"],
                                                                                  new["labelled_fraction"])
    assert instance.get_run_by_id(quality.run_id).tags.get("dagster/sensor_name") == AUTOMATION_SENSOR
    state = sensor_state(instance, LABEL_SENSOR)
    instance.stop_sensor(state.instigator_origin_id, state.selector_id, None)
    print(f"label edit test wall time {time.time() - t_start:.1f} s")
