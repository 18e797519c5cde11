"""`masks` through the asset graph and `label_change_sensor`: labels -> aligned masks, only
changed regions re-run."""

import dagster as dg
import numpy as np
import rasterio
from rasterio.features import rasterize

from geoseg_assets.assets.masks import ImportLabelsConfig, import_labels_job
from geoseg_assets.geo import synthetic
from geoseg_assets.sensors import label_change_sensor
from resources.geopackage_labels import GeoPackageLabelStore
from tests.support.pipeline import import_truth, materialize_partition, with_test_resources

DATES = ["2024-04-15", "2024-06-15"]


def setup(instance, tmp_path, synthetic_source, store):
    label_store = GeoPackageLabelStore(path=str(tmp_path / "labels.gpkg"))
    resources = with_test_resources({"data_store": store, "scene_source": synthetic_source, "label_store": label_store})
    for region in ("alpha", "beta"):
        for date in DATES:
            assert materialize_partition(instance, resources, region, date).success
    return resources, label_store


def test_mask_equals_the_ground_truth_on_the_scene_grid(instance, tmp_path, synthetic_source, store):
    resources, _ = setup(instance, tmp_path, synthetic_source, store)
    report = import_truth("alpha", synthetic_source, resources)
    assert report.features > 10 and set(report.class_counts) == set(synthetic.CLASSES)
    result = materialize_partition(instance, resources, "alpha", DATES[0])
    meta = result.asset_materializations_for_node("masks")[0].metadata
    dims = {"region": "alpha", "date": DATES[0]}
    with rasterio.open(store.path("masks", dims, "mask.tif")) as mask, rasterio.open(store.path("scenes", dims, "scene.tif")) as scene:
        assert (mask.crs, mask.transform, mask.shape) == (scene.crs, scene.transform, scene.shape)
        m = mask.read(1)
        valid = scene.read_masks(1) > 0
        polys = synthetic.to_world(synthetic.land_cover("alpha", 512, 512, 0), scene.transform)
        truth = rasterize([(g, synthetic.CLASSES[n]) for n in synthetic.PRIORITY for g in polys[n]],
                          out_shape=scene.shape, transform=scene.transform, fill=255, dtype="uint8")
    truth[~valid] = 255
    assert (m == truth).mean() > 0.999  # identical up to a few boundary pixels
    assert (m[~valid] == 255).all()  # the nodata margin is ignored
    assert (m[valid] == 255).sum() == (truth[valid] == 255).sum() <= 2  # the labels cover the rest
    assert meta["labelled_fraction"].value == np.round((m != 255).mean(), 6)
    assert meta["class_pixels"].value["water"] == int((m == synthetic.CLASSES["water"]).sum())
    assert meta["overlay"].value.startswith("![mask over quicklook](data:image/png;base64,")


def test_label_change_in_one_region_reruns_only_its_masks(instance, tmp_path, synthetic_source, store):
    resources, label_store = setup(instance, tmp_path, synthetic_source, store)
    import_truth("alpha", synthetic_source, resources)
    import_truth("beta", synthetic_source, resources)

    def tick(cursor):
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"label_store": label_store}) as ctx:
            return label_change_sensor(ctx)

    first = tick(None)
    assert sorted(str(r.partition_key) for r in first.run_requests) == sorted(f"{d}|{r}" for d in DATES for r in ("alpha", "beta"))
    assert tick(first.cursor).run_requests == []  # nothing changed
    ids = label_store.labels("beta")["label_id"].tolist()[:3]
    assert label_store.set_status("beta", ids, "test") == 3  # a reviewer sends 3 labels back
    changed = tick(first.cursor)
    assert sorted(str(r.partition_key) for r in changed.run_requests) == [f"{d}|beta" for d in DATES]


def test_switching_the_sensor_on_over_up_to_date_masks_runs_nothing(instance, tmp_path, synthetic_source, store):
    """A sensor switched on late (empty cursor) compares with what each mask was made from: masks built
    from the current labels are not re-run, masks of a region edited since are."""
    resources, label_store = setup(instance, tmp_path, synthetic_source, store)
    import_truth("alpha", synthetic_source, resources)
    import_truth("beta", synthetic_source, resources)
    for region in ("alpha", "beta"):
        for date in DATES:
            assert materialize_partition(instance, resources, region, date, selection=[dg.AssetKey("masks")]).success
    ids = label_store.labels("alpha")["label_id"].tolist()[:2]
    assert label_store.set_status("alpha", ids, "test") == 2  # edited after alpha's masks were made

    with dg.build_sensor_context(instance=instance, cursor=None, resources={"label_store": label_store}) as ctx:
        first = label_change_sensor(ctx)
    assert sorted(str(r.partition_key) for r in first.run_requests) == [f"{d}|alpha" for d in DATES]
    with dg.build_sensor_context(instance=instance, cursor=first.cursor, resources={"label_store": label_store}) as ctx:
        assert label_change_sensor(ctx).run_requests == []


def test_import_labels_job_refuses_a_region_without_scenes(instance, tmp_path, synthetic_source, store):
    resources, label_store = setup(instance, tmp_path, synthetic_source, store)
    from geoseg_assets.definitions import build_defs

    job = build_defs(resources).resolve_job_def(import_labels_job.name)
    config = ImportLabelsConfig(path=str(synthetic_source.labels_path("alpha")), region="gamma", class_column="class_name")
    result = job.execute_in_process(instance=instance, raise_on_error=False,
                                    run_config=dg.RunConfig(ops={"import_labels": config}))
    assert not result.success
    assert label_store.regions() == []
    ok = job.execute_in_process(instance=instance, run_config=dg.RunConfig(
        ops={"import_labels": ImportLabelsConfig(path=str(synthetic_source.labels_path("alpha")), region="alpha",
                                                 class_column="class_name", source="synthetic")}))
    assert ok.success and label_store.regions() == ["alpha"]
