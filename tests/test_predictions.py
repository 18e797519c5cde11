"""`predictions` through Dagster with a real MLflow registry: the champion predicts every partition,
outputs are georeferenced and described, and a new champion makes every prediction stale."""

import json

import dagster as dg
import geopandas as gpd
import rasterio

from geoseg_assets.definitions import build_defs
from geoseg_assets.partitions import partition_key
from resources.mlflow_tracking import CHAMPION
from tests.test_dataset_asset import DATES, build, project  # noqa: F401  (module fixture reused)
from tests.test_models import train_and_evaluate

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

    # A better challenger is promoted: champion_model moves and every prediction is stale again.
    settled = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=after_first.cursor)
    better = train_and_evaluate(project, min_miou=0.0, epochs=3, max_steps_per_epoch=6, seed=3)
    assert better.success
    evaluation = better.asset_materializations_for_node("model_evaluation")[0].metadata
    assert evaluation["promoted"].value is True, evaluation["promotion_reason"].value
    second = str(tracking.alias_version(CHAMPION).version)
    assert second != first
    stale = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=settled.cursor)
    assert requested(stale) == PARTITIONS
    rerun = predict(project, "alpha", DATES[1])
    assert rerun.asset_materializations_for_node("predictions")[0].metadata["model_version"].value == second

    # A challenger that is not promoted leaves predictions alone.
    calm = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=stale.cursor)
    rejected = train_and_evaluate(project, min_miou=0.0, epochs=1, max_steps_per_epoch=1, lr=1e-7, seed=4)
    assert rejected.success
    assert rejected.asset_materializations_for_node("model_evaluation")[0].metadata["promoted"].value is False
    assert dg.AssetKey("champion_model") not in [m.asset_key for m in rejected.get_asset_materialization_events()]
    assert requested(dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=calm.cursor)) == []
