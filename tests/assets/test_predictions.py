"""`predictions` through Dagster with a real MLflow registry: the champion predicts every partition,
outputs are georeferenced and described, and a new champion makes every prediction stale."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
import geopandas as gpd
import rasterio
from dagster_postgres import PostgresEventLogStorage

from geoseg_assets.definitions import build_defs
from geoseg_assets.partitions import partition_key
from resources.mlflow_tracking import CHAMPION
from tests.support.postgres import dagster_pg_env, throwaway_database
from tests.support.runs import step_spans
from tests.support.project import DATES, build, train_and_evaluate

pytestmark = pytest.mark.slow(minutes=2)  # wall time alone on 2 cores: started first (tests/conftest.py)

PARTITIONS = sorted(str(partition_key(r, d)) for r in ("alpha", "beta") for d in DATES)
PREDICTIONS = dg.AssetKey("predictions")


def requested(result) -> list[str]:
    return sorted(str(k) for k in result.get_requested_partitions(PREDICTIONS))


def predict(project, region, date, **config):
    _, _, instance, resources = project
    job = build_defs(resources).resolve_job_def("prediction_job")
    return job.execute_in_process(partition_key=partition_key(region, date), instance=instance, raise_on_error=False,
                                  run_config=dg.RunConfig(ops={"predictions": {"config": config}}))


def test_the_champion_predicts_and_a_new_champion_makes_predictions_stale(project):
    repo, _, instance, resources = project
    defs = build_defs(resources)
    tracking = resources["mlflow_tracking"]
    before = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert requested(before) == []

    # No champion yet: a clear failure, not a crash.
    failed = predict(project, "alpha", DATES[0])
    assert not failed.success
    assert "training_job" in str(failed.get_step_failure_events()[0].event_specific_data.error)

    build(project)
    weak = train_and_evaluate(project, min_miou=0.0, epochs=1, max_steps_per_epoch=1, lr=1e-7, seed=3)
    assert weak.success
    first = str(tracking.alias_version(CHAMPION).version)
    assert [m.asset_key for m in weak.get_asset_materialization_events()][-1] == dg.AssetKey("champion_model")
    after_first = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=before.cursor)
    assert requested(after_first) == PARTITIONS  # every partition with a scene, nothing else

    run = predict(project, "alpha", DATES[1], write_probabilities=True, min_area_m2=500.0)
    assert run.success
    meta = run.asset_materializations_for_node("predictions")[0].metadata
    assert meta["model_version"].value == first
    store = resources["data_store"]
    classes = store.path("predictions", {"region": "alpha", "date": DATES[1]}, "classes.tif")
    scene = store.path("scenes", {"region": "alpha", "date": DATES[1]}, "scene.tif")
    with rasterio.open(classes) as out, rasterio.open(scene) as src:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        valid = (src.read() != 0).all(axis=0)
        data = out.read(1)
        assert (data[~valid] == 255).all() and (data[valid] != 255).all()
    km2 = sum(meta["area_km2"].value.values())
    assert abs(km2 - meta["valid_pixels"].value * 100 / 1e6) < 1e-3  # 10 m pixels
    assert abs(sum(meta["class_share"].value.values()) - 1) < 1e-3
    polygons = gpd.read_file(meta["polygons_path"].value)
    assert len(polygons) == meta["polygons"].value > 0 and polygons["area_m2"].min() >= 500.0
    assert polygons.crs == rasterio.open(scene).crs
    assert "data:image/png;base64" in meta["overlay"].value
    record = json.loads(store.path("predictions", {"region": "alpha", "date": DATES[1]}, "prediction.json").read_text())
    assert record["model_version"] == first and record["windows_forwarded"] <= record["windows"]
    assert rasterio.open(meta["probabilities_path"].value).count == 6
    assert meta["runtime"].value == "torch (the model has no ONNX export)" and meta["window_px"].value == "576 x 576"

    # A better challenger is promoted: champion_model moves and every prediction is stale again.
    settled = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=after_first.cursor)
    better = train_and_evaluate(project, min_miou=0.0, epochs=3, max_steps_per_epoch=6, seed=3, export_onnx=True)
    assert better.success
    evaluation = better.asset_materializations_for_node("model_evaluation")[0].metadata
    assert evaluation["promoted"].value is True, evaluation["promotion_reason"].value
    second = str(tracking.alias_version(CHAMPION).version)
    assert second != first
    stale = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=settled.cursor)
    assert requested(stale) == PARTITIONS
    rerun = predict(project, "alpha", DATES[1])
    rerun_meta = rerun.asset_materializations_for_node("predictions")[0].metadata
    assert rerun_meta["model_version"].value == second
    assert not store.path("predictions", {"region": "alpha", "date": DATES[1]}, "probabilities.tif").exists()
    # The new champion has an ONNX export: on the CPU, ONNX Runtime predicts, after checking the export against
    # the registered weights; the torch runtime, asked for, draws the same map.
    assert rerun_meta["runtime"].value.startswith("onnxruntime (max |logit difference| to torch")
    with rasterio.open(classes) as out:
        by_onnx = out.read(1)
    assert predict(project, "alpha", DATES[1], runtime="torch").success
    with rasterio.open(classes) as out:
        assert (out.read(1) == by_onnx).mean() > 0.999

    # A challenger that is not promoted leaves predictions alone.
    calm = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=stale.cursor)
    rejected = train_and_evaluate(project, min_miou=0.0, epochs=1, max_steps_per_epoch=1, lr=1e-7, seed=4)
    assert rejected.success
    assert rejected.asset_materializations_for_node("model_evaluation")[0].metadata["promoted"].value is False
    assert dg.AssetKey("champion_model") not in [m.asset_key for m in rejected.get_asset_materialization_events()]
    assert requested(dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=calm.cursor)) == []


def test_a_scene_that_does_not_match_the_training_data_is_skipped_with_the_reason(project):
    """Integrity gate: a scene recorded with another band order (or count), i.e. another product than the champion's,
    is an expected skip, not a red run: the run succeeds, nothing is materialized or written, and an observation of
    the partition names the file, the problem and the fix."""
    _, _, instance, resources = project
    if resources["mlflow_tracking"].alias_version(CHAMPION) is None:
        build(project)
        assert train_and_evaluate(project, min_miou=0.0).success
    store = resources["data_store"]
    dims = {"region": "beta", "date": DATES[0]}
    key = str(partition_key(dims["region"], dims["date"]))
    record_path = store.path("scenes", dims, "scene.json")
    original = record_path.read_text()
    try:
        for bands, check in ((["G", "B", "R", "NIR"], "band_order"), (["B", "G", "R"], "band_count")):
            record = json.loads(original)
            record["band_names"] = bands
            record_path.write_text(json.dumps(record))
            run = predict(project, **dims)
            assert run.success
            assert run.asset_materializations_for_node("predictions") == []
            (observation,) = [e.asset_observation_data.asset_observation for e in run.all_events
                              if e.event_type == dg.DagsterEventType.ASSET_OBSERVATION]
            assert observation.asset_key == PREDICTIONS and observation.partition == key
            reason = observation.metadata["skipped"].value
            assert str(store.path("scenes", dims, "scene.tif")) in reason and f"[{check}]" in reason
            assert "Fix:" in reason
            assert observation.metadata["integrity_issues"].value[0]["check"] == check
            assert not store.path("predictions", dims, "classes.tif").exists()
            record = instance.get_run_record_by_id(run.run_id)
            assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
    finally:
        record_path.write_text(original)


def ensure_champion(project):
    if project[3]["mlflow_tracking"].alias_version(CHAMPION) is None:
        build(project)
        assert train_and_evaluate(project, min_miou=0.0).success


def test_prediction_drift_model_quality_and_feedback_labels(project):
    """Reports on the champion's predictions, and active learning: predictions become auto/test labels for
    review without touching the valid ones."""
    _, _, instance, resources = project
    ensure_champion(project)
    for date in DATES:
        assert predict(project, "beta", date).success
    job = build_defs(resources).resolve_job_def("monitoring_job")
    run = job.execute_in_process(partition_key=partition_key("beta", DATES[1]), instance=instance,
                                 asset_selection=[dg.AssetKey("prediction_drift_report")])
    meta = run.asset_materializations_for_node("prediction_drift_report")[0].metadata
    assert abs(sum(meta["predicted_shares"].value.values()) - 1) < 1e-6
    assert abs(sum(meta["training_shares"].value.values()) - 1) < 1e-6
    assert meta["previous_date"].value == DATES[0] and isinstance(meta["previous_date_drift"].value, bool)
    assert "class" in open(meta["report_html"].value).read()

    quality = dg.materialize([build_defs(resources).get_assets_def("model_quality_report")], instance=instance,
                             resources=resources)
    q = quality.asset_materializations_for_node("model_quality_report")[0].metadata
    champion = resources["mlflow_tracking"].alias_version(CHAMPION)
    assert q["champion_version"].value == str(champion.version) and q["versions"].value >= 1
    assert "beta/" + DATES[0] in q["live_partitions"].value  # beta has labels: live quality is measured
    assert 0 <= q["live_miou"].value <= 1
    html = open(q["report_html"].value).read()
    assert f"v{champion.version}" in html and "test mIoU" in html

    store = resources["label_store"]
    valid_before = store.labels("beta", statuses=("valid",))
    feedback = build_defs(resources).resolve_job_def("feedback_job")
    config = dg.RunConfig(ops={"feedback_labels": {"config": {"partitions": [f"beta/{DATES[1]}"]}}})
    assert feedback.execute_in_process(instance=instance, run_config=config).success
    review = store.labels("beta", date=DATES[1], statuses=("test",))
    polygons = gpd.read_file(resources["data_store"].path("predictions", {"region": "beta", "date": DATES[1]},
                                                          "polygons.gpkg"))
    assert len(review) == len(polygons) > 0
    assert set(review["source"]) == {"auto"} and set(review["annotator"]) == {f"geoseg-segmenter v{champion.version}"}
    assert store.labels("beta", date=DATES[0], statuses=("test",)).empty  # review labels hold for their date only
    valid_after = store.labels("beta", statuses=("valid",))
    assert len(valid_after) == len(valid_before)
    assert valid_after.geometry.equals(valid_before.geometry)
    assert feedback.execute_in_process(instance=instance, run_config=config).success  # idempotent per model version
    assert len(store.labels("beta", date=DATES[1], statuses=("test",))) == len(review)
    bad = dg.RunConfig(ops={"feedback_labels": {"config": {"partitions": ["../etc/2024-06-15"]}}})
    failed = feedback.execute_in_process(instance=instance, run_config=bad, raise_on_error=False)
    assert not failed.success and "region" in str(failed.get_step_failure_events()[0].event_specific_data.error)


def test_a_tampered_champion_artifact_fails_prediction_and_keeps_the_earlier_predictions(project):
    """Someone with write access to the artifact store alters the champion's weights: prediction_job refuses
    to load them (checksum recorded at registration), names the version and the fix, is not retried, and the
    partition's earlier predictions stay byte-identical; once the bytes are restored it predicts again."""
    from urllib.parse import urlparse

    from geoseg_assets.geo.scene_io import sha256_file

    ensure_champion(project)
    _, _, _, resources = project
    tracking, store = resources["mlflow_tracking"], resources["data_store"]
    dims = {"region": "alpha", "date": DATES[0]}
    assert predict(project, **dims).success
    outputs = sorted(p for p in store.partition_dir("predictions", dims).iterdir() if p.is_file())
    before = {p: sha256_file(p) for p in outputs}
    champion = tracking.alias_version(CHAMPION)
    weights = urlparse(champion.source).path + "/weights.safetensors"
    good = open(weights, "rb").read()
    try:
        with open(weights, "r+b") as fh:
            fh.seek(len(good) - 7)
            fh.write(bytes(b ^ 0x5A for b in good[-7:]))
        run = predict(project, **dims)
        assert not run.success
        message = str(run.get_step_failure_events()[0].event_specific_data.error)
        assert f"geoseg-segmenter v{champion.version}" in message and "altered after registration" in message
        assert "re-run training_job" in message
        assert not [e for e in run.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
        assert {p: sha256_file(p) for p in outputs} == before
    finally:
        with open(weights, "wb") as fh:
            fh.write(good)
    assert predict(project, **dims).success


def test_outputs_are_published_together_or_not_at_all(project):
    """`predictions` publishes its class COG, overlay, record and polygons as one set: when the polygons cannot be
    put in place (a folder sits where polygons.gpkg belongs), the run fails without a retry, names that path and
    the fix, and the earlier run's class COG, overlay and record are untouched (same inode, same bytes), so a new
    map never sits beside an old record; with the folder gone the same run succeeds."""
    import shutil

    from geoseg_assets.geo.scene_io import sha256_file

    ensure_champion(project)
    store = project[3]["data_store"]
    dims = {"region": "beta", "date": DATES[1]}
    assert predict(project, **dims, vectorize=False).success
    folder = store.partition_dir("predictions", dims)
    outputs = sorted(p for p in folder.iterdir() if p.is_file())
    assert {p.name for p in outputs} >= {"classes.tif", "overlay.png", "prediction.json"}
    before = {p: (p.stat().st_ino, sha256_file(p)) for p in outputs}
    blocker = folder / "polygons.gpkg"
    blocker.mkdir()
    (blocker / "notes.txt").write_text("someone else's")
    try:
        run = predict(project, **dims, vectorize=True, overlap=0)
        assert not run.success
        message = str(run.get_step_failure_events()[0].event_specific_data.error)
        assert str(blocker) in message and "Fix: make that path a writable file" in message
        assert not [e for e in run.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
        assert {p: (p.stat().st_ino, sha256_file(p)) for p in outputs} == before
        assert (blocker / "notes.txt").read_text() == "someone else's"
        assert sorted(p.name for p in folder.iterdir()) == sorted([p.name for p in outputs] + ["polygons.gpkg"])
    finally:
        shutil.rmtree(blocker)
    run = predict(project, **dims, vectorize=True, overlap=0)
    assert run.success and (folder / "polygons.gpkg").is_file()
    assert json.loads((folder / "prediction.json").read_text())["inference"]["overlap"] == 0


def test_the_stac_catalog_describes_every_output_and_links_predictions_to_their_scene_and_model(project):
    """`catalog_job` on the pipeline's store: every scene, mask and prediction is an item that pystac validates
    offline (core, projection, raster, classification), whose hrefs open the real rasters with the CRS, grid and shape
    the item states; a prediction links to its scene item and to its model's item, which carries the registry's run
    and weights checksum. A second run rewrites nothing; a corrupt scene record leaves its partition out, with the
    reason, while the other partitions stay in the catalog, and the check says which scene is missing."""
    import pystac

    from geoseg_assets.geo.stac_validation import validate_catalog
    from resources.catalog import PREDICTION_RECORD, SCENE_RECORD
    from resources.mlflow_tracking import SHA_TAG

    _, _, instance, resources = project
    ensure_champion(project)
    assert predict(project, "alpha", DATES[0]).success
    store, tracking = resources["data_store"], resources["mlflow_tracking"]
    job = build_defs(resources).resolve_job_def("catalog_job")

    result = job.execute_in_process(instance=instance)
    assert result.success
    meta = result.asset_materializations_for_node("stac_catalog")[0].metadata
    (check,) = result.get_asset_check_evaluations()
    assert check.passed, check.metadata
    root = Path(store.root) / "stac"
    assert meta["catalog_path"].value == str(root / "catalog.json") and meta["skipped_partitions"].value == {}
    assert validate_catalog(root) == []

    items = {item.id: item for item in pystac.Catalog.from_file(str(root / "catalog.json")).get_items(recursive=True)}
    scenes = store.partitions_with(SCENE_RECORD)
    predicted = store.partitions_with(PREDICTION_RECORD)
    assert {i for i in items if i.startswith("scene-")} == {f"scene-{d['region']}-{d['date']}" for d in scenes}
    assert {i for i in items if i.startswith("prediction-")} == {f"prediction-{d['region']}-{d['date']}"
                                                                 for d in predicted}
    assert meta["items"].value["masks"] == len([i for i in items if i.startswith("mask-")]) == len(scenes)
    for dims in predicted:
        item = items[f"prediction-{dims['region']}-{dims['date']}"]
        record = store.prediction_record(dims)
        with rasterio.open(item.assets["data"].get_absolute_href()) as src:  # the item's href, as a client opens it
            assert src.crs.to_string() == item.properties["proj:code"] == store.scene_record(dims)["crs"]
            assert list(src.transform)[:6] == item.properties["proj:transform"]
            assert [src.height, src.width] == item.properties["proj:shape"]
        raw = json.loads(Path(item.get_self_href()).read_text())
        classes = raw["assets"]["data"]["raster:bands"][0]["classification:classes"]
        assert [c["name"] for c in classes] == list(record["class_pixels"])
        derived = {Path(link.get_absolute_href()).stem for link in item.links if link.rel == "derived_from"}
        model_id = f"model-{record['model_name']}-v{record['model_version']}"
        assert derived == {f"scene-{dims['region']}-{dims['date']}", model_id}
        version = tracking.model_version(record["model_version"])
        assert items[model_id].properties["geoseg:mlflow_run_id"] == version.run_id == record["mlflow_run_id"]
        assert items[model_id].properties["geoseg:weights_sha256"] == version.tags[SHA_TAG]

    again = job.execute_in_process(instance=instance)
    assert again.asset_materializations_for_node("stac_catalog")[0].metadata["files_written"].value == 0

    bad = {"region": "beta", "date": DATES[1]}
    record_path = store.file(SCENE_RECORD, bad)
    original = record_path.read_text()
    record_path.write_text("{truncated")
    try:
        run = job.execute_in_process(instance=instance)
        assert run.success  # one bad record does not stop the others
        skipped = run.asset_materializations_for_node("stac_catalog")[0].metadata["skipped_partitions"].value
        assert list(skipped) == [f"beta|{DATES[1]}"] and str(record_path) in skipped[f"beta|{DATES[1]}"]
        (check,) = run.get_asset_check_evaluations()
        assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
        assert check.metadata["scenes_not_in_catalog"].value == [f"beta|{DATES[1]}"]
        assert not (root / "scenes" / "beta" / DATES[1]).exists()
        assert (root / "scenes" / "alpha" / DATES[0] / f"scene-alpha-{DATES[0]}.json").exists()
        assert validate_catalog(root) == []
    finally:
        record_path.write_text(original)
    assert job.execute_in_process(instance=instance).success


@pytest.mark.postgres
def test_two_prediction_runs_launched_at_once_take_turns_in_the_model_compute_pool(project, tmp_path, monkeypatch):
    """Two run processes started together on the production instance (the repo's dagster.yaml, a throwaway
    PostgreSQL database): their `predictions` steps, each a network over a whole scene, never overlap; the second
    waits for the slot instead of sharing the CPU. Not on SQLite: Dagster claims a slot there with a read then a
    write, which two processes can interleave (both steps started within 6 ms, once in a full suite); PostgreSQL
    locks the slot's row (`SELECT ... FOR UPDATE SKIP LOCKED`). The pool's limit row is created first, as
    `make ui-prod` does (geoseg_assets/pools.py)."""
    from geoseg_assets.definitions import REPO_ROOT
    from geoseg_assets.pools import MODEL_COMPUTE_POOL, create_pools

    _, _, _, resources = project
    tracking = resources["mlflow_tracking"]
    if tracking.alias_version(CHAMPION) is None:
        build(project)
        assert train_and_evaluate(project, min_miou=0.0, epochs=1, max_steps_per_epoch=1, lr=1e-7, seed=3).success
    job = build_defs(resources).resolve_job_def("prediction_job")
    assert job.graph.node_named("predictions").definition.pool == MODEL_COMPUTE_POOL
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    with throwaway_database() as db:
        for var, value in {"DAGSTER_HOME": str(home), **dagster_pg_env(db)}.items():
            monkeypatch.setenv(var, value)
        with dg.DagsterInstance.from_config(str(home)) as instance:  # the schema, before the two processes start
            assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
            create_pools(instance)  # as `make ui-prod` does: two first claims at once would race to create the pool
            instance.add_dynamic_partitions("region", ["alpha", "beta"])
        runs = _predict_in_two_processes_at_once(resources, ("alpha", "beta"), DATES[0])
        with dg.DagsterInstance.from_config(str(home)) as instance:
            spans = [span[:2] for span in step_spans(instance, runs, {"predictions"})]
            assert instance.event_log_storage.get_concurrency_info(MODEL_COMPUTE_POOL).slot_count == 1
    first, second = sorted(spans)
    print(f"predictions steps: {first[1] - first[0]:.1f} s, then {second[1] - second[0]:.1f} s starting "
          f"{second[0] - first[1]:.2f} s after the first ended")
    assert first[1] <= second[0], spans  # one network at a time


def _predict_in_two_processes_at_once(resources, regions, date) -> list[str]:
    """`prediction_job` of each region's partition, each in its own process on the instance of DAGSTER_HOME (this
    process's environment), started together; the ids of the two successful runs."""
    import os
    import subprocess
    import sys

    from geoseg_assets.definitions import REPO_ROOT

    tracking = resources["mlflow_tracking"]
    code = (
        "import sys, dagster as dg\n"
        "from geoseg_assets.definitions import build_defs\n"
        "from geoseg_assets.partitions import partition_key\n"
        "from resources.data_store import DataStore\n"
        "from resources.mlflow_tracking import MlflowTracking\n"
        "from resources.landing_source import LandingFolderSource\n"
        "from tests.support.pipeline import with_test_resources\n"
        "store, uri, artifacts, region, date = sys.argv[1:]\n"
        "resources = with_test_resources({'data_store': DataStore(root=store), 'mlflow_tracking': "
        "MlflowTracking(tracking_uri=uri, artifact_location=artifacts), 'scene_source': LandingFolderSource(root=store)})\n"
        "with dg.DagsterInstance.get() as instance:\n"
        "    run = build_defs(resources).resolve_job_def('prediction_job').execute_in_process(\n"
        "        partition_key=partition_key(region, date), instance=instance, raise_on_error=False)\n"
        "print('RUN', run.run_id, run.success)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, resources["data_store"].root, tracking.tracking_uri,
                               tracking.artifact_location, region, date], cwd=REPO_ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))
             for region in regions]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    runs = [line.split()[1:] for out in outputs for line in out.splitlines() if line.startswith("RUN ")]
    assert len(runs) == 2 and all(ok == "True" for _, ok in runs), "\n".join(o[-3000:] for o in outputs)
    return [run_id for run_id, _ in runs]
