"""new_scene_sensor: new region partitions, one run per new/replaced file, none for the same bytes."""

import datetime as dt
import json

import dagster as dg

from geoseg_assets.partitions import DATE_START, date_partitions
from geoseg_assets.sensors.new_scenes import FINGERPRINT_TAG, plan_scene_runs
from resources.data_store import DataStore
from resources.landing_source import REGION_SPEC_FILE
from resources.scene_sources import ScanResult, SceneRef
from tests.support.paths import DATA
from tests.support.pipeline import land, materialize_partition
from tests.support.rasters import random_scene, write_tif
from tests.support.sensors import tick


def test_new_same_and_replaced_files(instance, landing, landing_source):
    path = write_tif(landing / "alpha" / "2024-06-15" / "scene.tif", random_scene(seed=1))

    first = tick(instance, landing_source, None)
    assert len(first.run_requests) == 1
    request = first.run_requests[0]
    assert request.partition_key == dg.MultiPartitionKey({"region": "alpha", "date": "2024-06-15"})
    assert [r.partition_keys for r in first.dynamic_partitions_requests] == [["alpha"]]
    assert instance.get_dynamic_partitions("region") == ["alpha"]

    same = tick(instance, landing_source, first.cursor)
    assert same.run_requests == [] and same.dynamic_partitions_requests == []

    write_tif(path, random_scene(seed=2))  # replaced file, same name
    replaced = tick(instance, landing_source, same.cursor)
    assert len(replaced.run_requests) == 1
    assert replaced.run_requests[0].run_key != request.run_key
    assert replaced.run_requests[0].tags[FINGERPRINT_TAG] != request.tags[FINGERPRINT_TAG]
    assert replaced.dynamic_partitions_requests == []  # region already known

    write_tif(landing / "beta" / "2024-06-16" / "scene.tif", random_scene(seed=3))
    new_region = tick(instance, landing_source, replaced.cursor)
    assert [str(r.partition_key) for r in new_region.run_requests] == ["2024-06-16|beta"]
    assert sorted(instance.get_dynamic_partitions("region")) == ["alpha", "beta"]


def test_hostile_folder_names_never_become_partitions(instance, landing, landing_source):
    write_tif(landing / "..evil" / "2024-06-15" / "scene.tif", random_scene())
    write_tif(landing / "alpha" / "1971-12-31" / "scene.tif", random_scene())  # before the first date partition
    result = tick(instance, landing_source, None)
    assert result.run_requests == []
    assert instance.get_dynamic_partitions("region") == []


def test_a_1985_scene_lands_while_future_and_misnamed_dates_are_skipped_in_the_same_tick(instance, landing, landing_source,
                                                                                        tmp_path, capfd):
    """Archive dates from 1972 on run; a future date folder or one that is no YYYY-MM-DD date is skipped with a
    message naming the file and the fix, and never stops the other scenes of the tick."""
    # A real Landsat scene (SWIR1, NIR, R, G like Landsat 5 TM) filed under a 1985 acquisition date.
    land(landing, "pucallpa", "1985-07-01", DATA / "landsat_drift/pucallpa_2010.tif")
    (landing / "pucallpa" / REGION_SPEC_FILE).write_text(json.dumps({"band_names": ["SWIR1", "NIR", "R", "G"],
                                                                    "dtype": "uint8"}))
    write_tif(landing / "alpha" / "2024-06-15" / "scene.tif", random_scene(seed=1))
    future = (dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=400)).isoformat()
    write_tif(landing / "alpha" / future / "scene.tif", random_scene(seed=2))
    write_tif(landing / "alpha" / "2024-13-45" / "scene.tif", random_scene(seed=3))
    write_tif(landing / "alpha" / "20240616" / "scene.tif", random_scene(seed=4))  # fromisoformat would read it

    result = tick(instance, landing_source, None)
    assert sorted(str(r.partition_key) for r in result.run_requests) == ["1985-07-01|pucallpa", "2024-06-15|alpha"]
    assert sorted(instance.get_dynamic_partitions("region")) == ["alpha", "pucallpa"]
    log = capfd.readouterr().err
    assert (f"{landing / 'alpha' / future / 'scene.tif'}: skipped, the date folder {future} is in the future"
            in log and "rename it to the acquisition date" in log)
    assert f"{landing / 'alpha' / '2024-13-45'}: skipped, date '2024-13-45' is not a calendar date YYYY-MM-DD" in log
    assert f"{landing / 'alpha' / '20240616'}: skipped, date '20240616' is not written YYYY-MM-DD" in log
    assert log.count("name date folders like 2024-06-01") == 2

    # The skipped files stay skipped on the next tick (nothing else changed), with the reason shown.
    again = tick(instance, landing_source, result.cursor)
    assert again.run_requests == [] and "3 skipped" in again.skip_reason.skip_message
    assert "is in the future" in again.skip_reason.skip_message

    run = materialize_partition(instance, {"data_store": DataStore(root=str(tmp_path / "store")),
                                           "scene_source": landing_source}, "pucallpa", "1985-07-01")
    assert run.success
    assert run.asset_materializations_for_node("scenes")[0].metadata["bands"].value == ["SWIR1", "NIR", "R", "G"]
    assert run.asset_materializations_for_node("tiles")[0].metadata["tile_count"].value > 0


def test_first_and_last_date_partitions():
    """The date axis runs from Landsat 1's launch to today (UTC): both ends are requested, one day beyond is not."""
    today = dt.date(2026, 3, 1)
    days = ["1972-07-22", DATE_START, "2026-03-01", "2026-03-02"]
    scan = ScanResult(refs=[SceneRef("alpha", d, (f"/landing/alpha/{d}/s.tif",), f"fp{d}") for d in days])
    _, requests, _, problems = plan_scene_runs(scan, {}, set(), today=today)
    assert [r.partition_key.keys_by_dimension["date"] for r in requests] == [DATE_START, "2026-03-01"]
    assert problems == [
        "/landing/alpha/1972-07-22/s.tif: skipped, date 1972-07-22 is before the first date partition 1972-07-23 "
        "(Landsat 1's launch): rename the date folder to the acquisition date",
        "/landing/alpha/2026-03-02/s.tif: skipped, the date folder 2026-03-02 is in the future (today is 2026-03-01 "
        "UTC): rename it to the acquisition date",
    ]
    assert date_partitions.get_first_partition_key() == "1972-07-23"
    assert date_partitions.get_last_partition_key() == dt.datetime.now(dt.timezone.utc).date().isoformat()
