"""Class maps as project data: a region's `classes.json` (next to its region.json) drives label import, masks,
the dataset manifest and what training and predictions read from it, with the resource given only the folder
(no run config); a bad class-map file fails naming the file and the fix."""

import json

import dagster as dg
import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import box

from geoseg_assets.assets.predictions import model_class_map
from geoseg_assets.definitions import build_defs
from geoseg_assets.geo.classmap import DEFAULT_CLASS_MAP, read_class_map
from geoseg_assets.geo.errors import ClassMapError
from geoseg_assets.ml.normalize import class_table
from resources.class_map import ClassMapResource, ClassSpec
from tests.support.pipeline import materialize_partition, with_test_resources
from tests.support.rasters import random_scene, write_tif
from tests.support.runs import failure_text

REGION, DATE = "delta", "2024-06-15"
DELTA_CLASSES = {
    "classes": [
        {"name": "reed", "id": 10, "color": [40, 160, 60]},
        {"name": "sand", "id": 20, "color": [230, 210, 150]},
        {"name": "mudflat", "id": 30, "color": [110, 90, 70]},
    ],
    "ignore_id": 255,
}
# The scene: 512 x 512 px of 10 m from (500000, 5000000) in EPSG:32633 (conftest's write_tif default grid);
# three vertical strips of 170, 170 and 172 columns, one class each.
STRIPS = {"reed": (500000, 501700), "sand": (501700, 503400), "mudflat": (503400, 505120)}


def write_labels(path) -> str:
    frame = gpd.GeoDataFrame({"class": list(STRIPS)},
                             geometry=[box(x0, 4994880, x1, 5000000) for x0, x1 in STRIPS.values()], crs="EPSG:32633")
    frame.to_file(path, driver="GeoJSON")
    return str(path)


def test_region_class_map_file_is_used_by_import_masks_dataset_training_and_predictions(instance, tmp_path, landing,
                                                                                       landing_source, store):
    write_tif(landing / REGION / DATE / "scene.tif", random_scene(height=512, width=512))
    region_file = landing / REGION / "classes.json"
    region_file.write_text(json.dumps(DELTA_CLASSES))
    resources = with_test_resources({"data_store": store, "scene_source": landing_source,
                                     "class_map": ClassMapResource(folder=str(landing))})
    assert materialize_partition(instance, resources, REGION, DATE).success

    # Import through the launchpad job: run config names the file and region only, never classes.
    job = build_defs(resources).resolve_job_def("import_labels_job")
    imported = job.execute_in_process(instance=instance, run_config={"ops": {"import_labels": {"config": {
        "path": write_labels(tmp_path / "delta_labels.geojson"), "region": REGION}}}})
    assert imported.success
    rows = resources["label_store"].labels(REGION)
    assert sorted(zip(rows["class_name"], rows["class_id"])) == [("mudflat", 30), ("reed", 10), ("sand", 20)]

    run = materialize_partition(instance, resources, REGION, DATE)
    assert run.success
    meta = run.asset_materializations_for_node("masks")[0].metadata
    assert meta["class_map"].value == {"reed": 10, "sand": 20, "mudflat": 30}
    assert meta["class_map_source"].value == str(region_file)
    assert meta["class_pixels"].value == {"reed": 170 * 512, "sand": 170 * 512, "mudflat": 172 * 512}
    mask_path = store.path("masks", {"region": REGION, "date": DATE}, "mask.tif")
    with rasterio.open(mask_path) as mask:
        pixels = mask.read(1)
        colours = mask.colormap(1)
    assert sorted(np.unique(pixels).tolist()) == [10, 20, 30]
    assert (pixels[:, :170] == 10).all() and (pixels[:, 170:340] == 20).all() and (pixels[:, 340:] == 30).all()
    assert (colours[10], colours[20], colours[30]) == ((40, 160, 60, 255), (230, 210, 150, 255), (110, 90, 70, 255))

    dataset_job = build_defs(resources).resolve_job_def("dataset_job")
    built = dataset_job.execute_in_process(instance=instance, run_config={"ops": {"dataset": {"config": {
        "version_with_dvc": False, "block_size_m": 2560.0}}}})
    assert built.success
    manifest = json.loads((store.partition_dir("dataset") / "manifest.json").read_text())
    assert manifest["class_map"] == {"classes": {"reed": 10, "sand": 20, "mudflat": 30}, "ignore_id": 255}
    # Training takes its classes from the manifest; predictions from the model's copy of it (the model logs the
    # manifest's class map as its preprocessing) with the colours of the region's file.
    assert class_table(manifest) == ((10, 20, 30), ("reed", "sand", "mudflat"), 255)
    predicted = model_class_map({"class_map": manifest["class_map"]}, resources["class_map"].for_region(REGION))
    assert predicted.palette() == {10: (40, 160, 60), 20: (230, 210, 150), 30: (110, 90, 70)}

    # The file is read by every run: broken now, the next masks run fails once (no retry) naming it and the fix,
    # and the good mask stays.
    before = mask_path.read_bytes()
    region_file.write_text(json.dumps({**DELTA_CLASSES, "colour": "blue"}))
    failed = materialize_partition(instance, resources, REGION, DATE, raise_on_error=False)
    assert not failed.success
    message = failure_text(failed)
    assert str(region_file) in message and "unknown key(s) ['colour']" in message and "Fix: remove or rename" in message
    assert not [e for e in failed.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert mask_path.read_bytes() == before


def test_lookup_order_region_file_then_project_file_then_config(tmp_path):
    """region_classes config > `<folder>/<region>/classes.json` > `path` > `<folder>/classes.json` > `classes`."""
    folder = tmp_path / "landing"
    (folder / REGION).mkdir(parents=True)
    assert ClassMapResource(folder=str(folder)).for_region(REGION) == DEFAULT_CLASS_MAP  # no file: built-in
    (folder / "classes.json").write_text(json.dumps({"classes": [{"name": "lake", "id": 7}]}))
    project = ClassMapResource(folder=str(folder))
    assert project.for_region(REGION).names == ["lake"] and project.project_map().names == ["lake"]
    assert project.for_region(REGION).palette() == {7: (128, 128, 128)}  # colour left out: grey
    (folder / REGION / "classes.json").write_text(json.dumps(DELTA_CLASSES))
    assert project.for_region(REGION).names == ["reed", "sand", "mudflat"]
    assert project.for_region("other").names == ["lake"]
    explicit = tmp_path / "project.json"
    explicit.write_text(json.dumps({"classes": [{"name": "sea", "id": 1}]}))
    assert ClassMapResource(path=str(explicit), folder=str(folder)).for_region("other").names == ["sea"]
    configured = ClassMapResource(folder=str(folder), region_classes={REGION: [ClassSpec(name="x", id=3)]})
    assert configured.for_region(REGION).names == ["x"]


CLASS = {"name": "water", "id": 1, "color": [30, 100, 220]}
BAD_FILES = {
    "malformed_json": ('{"classes": [', "is not valid JSON (Expecting value at line 1, column 14)", "fix the JSON"),
    "not_an_object": ("[]", "is not a JSON object with a `classes` list", "write it as {"),
    "no_classes": ({"classes": []}, "has no `classes` list (or an empty one)", "list the classes"),
    "unknown_key": ({"classes": [CLASS], "ignore": 255}, "has unknown key(s) ['ignore']", "remove or rename them"),
    "unknown_class_key": ({"classes": [{**CLASS, "colour": [1, 2, 3]}]}, "class #1 ('water') has unknown key(s) "
                          "['colour']", "remove or rename them"),
    "duplicate_id": ({"classes": [CLASS, {**CLASS, "name": "lake"}]}, "gives id 1 to more than one class",
                     "give every class its own id"),
    "duplicate_name": ({"classes": [CLASS, {**CLASS, "id": 2}]}, "gives name 'water' to more than one class",
                       "give every class its own name"),
    "id_zero": ({"classes": [{**CLASS, "id": 0}]}, "has id 0, outside 1..254", "an id in 1..254"),
    "id_too_large": ({"classes": [{**CLASS, "id": 300}]}, "has id 300, outside 1..254", "an id in 1..254"),
    "id_not_int": ({"classes": [{**CLASS, "id": "1"}]}, "has id '1', not an integer", 'integer "id" in 1..254'),
    "ignore_id_as_class": ({"classes": [{**CLASS, "id": 255}]}, "uses id 255, the ignore id", "another id in 1..254"),
    "other_ignore_id": ({"classes": [CLASS], "ignore_id": 0}, "has ignore_id 0", '"ignore_id": 255 or leave it out'),
    "colour_two_values": ({"classes": [{**CLASS, "color": [1, 2]}]}, "has color [1, 2], not 3 integers 0..255",
                          "write it as RGB"),
    "colour_out_of_range": ({"classes": [{**CLASS, "color": [0, 0, 256]}]}, "has color [0, 0, 256]", "write it as RGB"),
    "colour_name": ({"classes": [{**CLASS, "color": "blue"}]}, "has color 'blue'", "write it as RGB"),
    "missing_file": (None, "class-map file does not exist", "create it"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_class_map_file_names_the_file_and_the_fix(case, tmp_path):
    content, problem, fix = BAD_FILES[case]
    path = tmp_path / "classes.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ClassMapError) as caught:
        ClassMapResource(path=str(path)).for_region(REGION)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and problem in message
    assert fix in message.split("Fix: ", 1)[1]
    with pytest.raises(ClassMapError, match="Fix: "):
        read_class_map(path)
