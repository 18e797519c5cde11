"""The STAC catalog builder (geoseg_assets/geo/stac_catalog.py, validated by stac_validation.py) on hand-made partitions: offline validation with
pystac, relative links a client can follow, the scene footprint in WGS84, a bad record skipped without stopping the
others, items rewritten only when they change, and items of outputs that are gone deleted. The catalog of a real
pipeline run is tested in tests/assets/test_predictions.py."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pystac
import pystac.validation
import pytest

from geoseg_assets.geo.classmap import ClassDef, ClassMap
from geoseg_assets.geo.stac_catalog import ModelVersion, PartitionOutputs, write_catalog
from geoseg_assets.geo.stac_validation import (CLASSIFICATION, PROJECTION, StacCatalogError, validate, validate_catalog,
                                               validator)

CLASSES = ClassMap((ClassDef("vegetation", 1, (40, 160, 40)), ClassDef("water", 2, (0, 90, 255)),
                    ClassDef("built_up", 3, (200, 30, 30))))
MODEL = ModelVersion(name="geoseg-segmentation", version="3", run_id="abc123", source="file:///srv/mlflow/1/abc123/artifacts/model",
                     created=datetime(2026, 12, 1, 12, 0, tzinfo=UTC), weights_sha256="f" * 64)


def scene_record(crs="EPSG:32633", left=543000.0, top=5115000.0, size=512, res=10.0) -> dict:
    return {"crs": crs, "crs_wkt": "", "transform": [res, 0.0, left, 0.0, -res, top], "width": size, "height": size,
            "count": 4, "dtype": "uint16", "nodata": 0.0, "bounds": [left, top - size * res, left + size * res, top],
            "band_names": ["B", "G", "R", "NIR"], "band_min": [1, 1, 1, 1], "band_max": [1600, 1700, 2000, 2900],
            "fingerprint": "ff00", "source_sha256": ["aa"]}


def partition(store: Path, region: str, date: str, record: dict | str, mask=True, prediction: dict | None = None):
    folder = store / "scenes" / f"region={region}" / f"date={date}"
    folder.mkdir(parents=True)
    (folder / "scene.json").write_text(record if isinstance(record, str) else json.dumps(record))
    (folder / "scene.tif").write_bytes(b"cog")
    files = {"data": folder / "scene.tif", "metadata": folder / "scene.json"}
    mask_files = {}
    if mask:
        mask_dir = store / "masks" / f"region={region}" / f"date={date}"
        mask_dir.mkdir(parents=True)
        (mask_dir / "mask.tif").write_bytes(b"cog")
        mask_files = {"data": mask_dir / "mask.tif"}
    prediction_record, prediction_files = None, {}
    if prediction is not None:
        pred_dir = store / "predictions" / f"region={region}" / f"date={date}"
        pred_dir.mkdir(parents=True)
        (pred_dir / "classes.tif").write_bytes(b"cog")
        prediction_record = pred_dir / "prediction.json"
        prediction_record.write_text(json.dumps(prediction))
        prediction_files = {"data": pred_dir / "classes.tif"}
    return PartitionOutputs(region=region, date=date, scene_record=folder / "scene.json", scene_files=files,
                            mask_files=mask_files, mask_classes=CLASSES, prediction_record=prediction_record,
                            prediction_files=prediction_files, prediction_classes=CLASSES)


PREDICTION = {"model_name": MODEL.name, "model_version": MODEL.version, "mlflow_run_id": MODEL.run_id,
              "area_km2": {"water": 1.5}, "scene_fingerprint": "ff00"}


def test_a_catalog_validates_offline_and_links_predictions_to_their_scene_and_model(tmp_path):
    store, root = tmp_path / "store", tmp_path / "store" / "stac"
    parts = [partition(store, "alpha", "2024-04-15", scene_record(), prediction=PREDICTION),
             partition(store, "beta", "1972-08-01", scene_record(left=300000.0, res=60.0), mask=False)]
    summary = write_catalog(root, parts, {(MODEL.name, MODEL.version): MODEL})
    assert summary.items == {"scenes": 2, "masks": 1, "predictions": 1, "models": 1}
    assert summary.skipped == {} and summary.unchanged == 0 and summary.written == 5 + 5  # items, collections, root
    assert validate_catalog(root) == []
    for path in root.rglob("*.json"):  # pystac's own validator (the bundled extension schemas added) agrees
        pystac.validation.validate_dict(json.loads(path.read_text()), href=str(path), validator=validator())

    catalog = pystac.Catalog.from_file(str(root / "catalog.json"))  # what a client sees, crawling from the root
    items = {item.id: item for item in catalog.get_items(recursive=True)}
    assert set(items) == {"scene-alpha-2024-04-15", "scene-beta-1972-08-01", "mask-alpha-2024-04-15",
                          "prediction-alpha-2024-04-15", "model-geoseg-segmentation-v3"}
    scene, prediction = items["scene-alpha-2024-04-15"], items["prediction-alpha-2024-04-15"]
    assert scene.properties["proj:code"] == "EPSG:32633" and scene.properties["proj:shape"] == [512, 512]
    assert PROJECTION in scene.stac_extensions
    west, south, east, north = scene.bbox  # UTM 33N, 543-548 km E, 5110-5115 km N: near 15.6 E, 46.2 N
    assert 15.55 < west < east < 15.63 and 46.14 < south < north < 46.19
    assert Path(scene.assets["data"].get_absolute_href()) == store / "scenes/region=alpha/date=2024-04-15/scene.tif"
    assert scene.assets["data"].extra_fields["raster:bands"][3] == {
        "name": "NIR", "spatial_resolution": 10.0, "data_type": "uint16", "nodata": 0.0,
        "statistics": {"minimum": 1, "maximum": 2900}}
    assert items["scene-beta-1972-08-01"].datetime == datetime(1972, 8, 1, tzinfo=UTC)  # Landsat 1's era

    derived = {Path(link.get_absolute_href()).name for link in prediction.links if link.rel == "derived_from"}
    assert derived == {"scene-alpha-2024-04-15.json", "model-geoseg-segmentation-v3.json"}
    assert prediction.properties["geoseg:model_version"] == "3"
    # pystac migrates extensions to its own versions on read: the file itself is checked here.
    written = json.loads(Path(prediction.get_self_href()).read_text())
    assert CLASSIFICATION in written["stac_extensions"]
    band = written["assets"]["data"]["raster:bands"][0]
    assert band["classification:classes"][1] == {"value": 2, "name": "water", "description": "water",
                                                 "color_hint": "005AFF"}
    assert band["nodata"] == 255  # the class rasters' nodata: the class map's ignore id
    model = items["model-geoseg-segmentation-v3"]
    assert model.geometry is None and model.properties["geoseg:weights_sha256"] == "f" * 64
    assert model.assets["model"].href == MODEL.source
    assert model.properties["geoseg:model_uri"] == "models:/geoseg-segmentation/3"  # what mlflow loads

    again = write_catalog(root, parts, {(MODEL.name, MODEL.version): MODEL})  # nothing changed: nothing rewritten
    assert again.written == 0 and again.unchanged == 10


def test_a_bad_record_skips_its_partition_and_a_gone_output_loses_its_item(tmp_path):
    store, root = tmp_path / "store", tmp_path / "store" / "stac"
    good = partition(store, "alpha", "2024-04-15", scene_record(), prediction=PREDICTION)
    write_catalog(root, [good], {(MODEL.name, MODEL.version): MODEL})
    assert (root / "predictions/alpha/2024-04-15/prediction-alpha-2024-04-15.json").exists()

    corrupt = partition(store, "beta", "2024-04-15", "{not json")
    no_crs = partition(store, "gamma", "2024-04-15", {**scene_record(), "crs": None})
    unregistered = partition(store, "delta", "2024-04-15", scene_record(),
                             prediction={**PREDICTION, "model_version": "9"})
    without_prediction = PartitionOutputs(**{**good.__dict__, "prediction_record": None, "prediction_files": {}})
    summary = write_catalog(root, [without_prediction, corrupt, no_crs, unregistered],
                            {(MODEL.name, MODEL.version): MODEL})
    assert sorted(summary.skipped) == ["beta|2024-04-15", "delta|2024-04-15", "gamma|2024-04-15"]
    assert "scenes/region=beta/date=2024-04-15/scene.json: unreadable record" in summary.skipped["beta|2024-04-15"]
    assert "no crs" in summary.skipped["gamma|2024-04-15"] and "re-materialize" in summary.skipped["gamma|2024-04-15"]
    assert "v9 is not in the registry" in summary.skipped["delta|2024-04-15"]
    assert summary.items == {"scenes": 1, "masks": 1, "predictions": 0, "models": 0}
    assert summary.deleted == 2  # the prediction's item and the model's, whose only prediction is gone
    assert not (root / "predictions/alpha").exists() and not (root / "models/geoseg-segmentation-v3").exists()
    assert validate_catalog(root) == []
    with pytest.raises(StacCatalogError, match="unreadable record"):
        write_catalog(root, [corrupt], {}, skip_bad=False)


def test_a_crs_without_epsg_code_is_described_by_its_wkt_and_broken_objects_fail_validation(tmp_path):
    from rasterio.crs import CRS

    wkt = CRS.from_proj4("+proj=laea +lat_0=52 +lon_0=10 +x_0=4321000 +y_0=3210000 +ellps=GRS80 +units=m").to_wkt()
    record = {**scene_record(crs=wkt, left=4321000.0, top=3210000.0), "crs_wkt": wkt}
    store, root = tmp_path / "store", tmp_path / "store" / "stac"
    write_catalog(root, [partition(store, "laea", "2024-04-15", record, mask=False)], {})
    item = pystac.Item.from_file(str(root / "scenes/laea/2024-04-15/scene-laea-2024-04-15.json"))
    assert "proj:code" not in item.properties and item.properties["proj:wkt2"] == wkt
    west, south, east, north = item.bbox  # the projection's origin, 10 E 52 N
    assert 9.9 < west < east < 10.2 and 51.9 < south < north < 52.1

    broken = json.loads((root / "scenes/laea/2024-04-15/scene-laea-2024-04-15.json").read_text())
    broken["properties"]["proj:shape"] = "512x512"
    with pytest.raises(StacCatalogError, match=r"broken.json: not valid STAC: .*projection/v2.0.0.* properties/proj:shape"):
        validate(broken, "broken.json")
    with pytest.raises(pystac.errors.STACValidationError):  # pystac's own validator agrees
        pystac.validation.validate_dict(broken, validator=validator())
    with pytest.raises(StacCatalogError, match="no bundled schema"):
        validate({**broken, "stac_extensions": ["https://example.com/ext/v1.0.0/schema.json"]}, "other.json")
