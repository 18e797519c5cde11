"""Integrity of a scene against the model's training data: each mismatch named, with its fix."""

import pytest

from geoseg_assets.monitoring.integrity import describe, input_integrity

UTM = 'PROJCS["WGS 84 / UTM zone 33N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",15],PARAMETER["scale_factor",0.9996],PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1],AUTHORITY["EPSG","32633"]]'
MODEL = {"band_names": ["B", "G", "R", "NIR"], "mean": [800, 900, 900, 2000], "std": [300, 300, 400, 900],
         "dtype": "uint16", "crs_wkt": UTM, "resolution": [10.0, 10.0]}
GOOD = {"band_names": ["B", "G", "R", "NIR"], "dtype": "uint16", "crs_wkt": UTM, "resolution": [10.0, 10.0],
        "band_min": [100, 120, 80, 60], "band_max": [2500, 2600, 2900, 5200]}


def checks(scene):
    return [i.check for i in input_integrity(scene, MODEL)]


def test_a_scene_like_the_training_data_has_no_issue():
    assert input_integrity(GOOD, MODEL) == []
    assert checks({**GOOD, "resolution": [11.0, 11.0]}) == []  # within 25 %


@pytest.mark.parametrize("change, expected", [
    ({"band_names": ["G", "B", "R", "NIR"]}, ["band_order"]),
    ({"band_names": ["SWIR1", "NIR", "R", "G"]}, ["bands"]),
    ({"band_names": ["B", "G", "R"], "band_min": [1, 1, 1], "band_max": [9, 9, 9]}, ["band_count"]),
    ({"dtype": "uint8"}, ["dtype"]),
    ({"crs_wkt": "EPSG:4326", "resolution": [0.0003, 0.0003]}, ["crs_family"]),
    ({"resolution": [30.0, 30.0]}, ["resolution"]),
    ({"band_min": [0.01, 0.01, 0.01, 0.01], "band_max": [0.3, 0.3, 0.3, 0.6]}, ["value_range"] * 4),
])
def test_each_mismatch_is_named(change, expected):
    issues = input_integrity({**GOOD, **change}, MODEL)
    assert [i.check for i in issues] == expected and all(i.blocking for i in issues)
    message = describe("/data/scene.tif", issues)
    assert message.startswith("/data/scene.tif:") and "Fix:" in message


def test_old_model_records_without_grid_facts_still_check_bands():
    minimal = {k: MODEL[k] for k in ("band_names", "mean", "std")}
    assert [i.check for i in input_integrity({**GOOD, "dtype": "uint8"}, minimal)] == []
    assert [i.check for i in input_integrity({**GOOD, "band_names": ["NIR", "R", "G", "B"]}, minimal)] == ["band_order"]
