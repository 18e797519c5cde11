"""Bad input through the real asset graph: the run fails naming the input, and the earlier good
COG of the partition is left intact."""

import shutil

import dagster as dg
import numpy as np
import pytest

from geoseg_assets.geo.scene_io import sha256_file
from tests.support.pipeline import materialize_partition
from tests.support.rasters import random_scene, write_tif
from tests.support.runs import failure_text

DIMS = {"region": "alpha", "date": "2024-06-15"}


def _truncate(path):
    good = write_tif(path.with_name("full.tif"), random_scene(height=512, width=512, seed=5), tiled=True,
                     blockxsize=256, blockysize=256)
    raw = good.read_bytes()
    good.unlink()
    path.write_bytes(raw[: len(raw) // 2])


BAD_INPUTS = {
    "truncated": (_truncate, "truncated or corrupt"),
    "no_crs": (lambda p: write_tif(p, random_scene(), crs=None), "has no CRS"),
    "three_bands": (lambda p: write_tif(p, random_scene(bands=3)), "3 band(s), expected 4"),
    "all_nodata": (lambda p: write_tif(p, np.zeros((4, 128, 128), dtype="uint16")), "no valid pixels"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_scene_fails_run_and_keeps_previous_cog(instance, case, landing, landing_source, store):
    resources = {"data_store": store, "scene_source": landing_source}
    folder = landing / DIMS["region"] / DIMS["date"]
    write_tif(folder / "scene.tif", random_scene(seed=1))
    assert materialize_partition(instance, resources, **DIMS).success
    cog = store.path("scenes", DIMS, "scene.tif")
    tiles = store.path("tiles", DIMS, "tiles.parquet")
    before = sha256_file(cog), sha256_file(tiles)

    shutil.rmtree(folder)
    folder.mkdir(parents=True)
    bad_file = folder / f"{case}.tif"
    make, expected = BAD_INPUTS[case]
    make(bad_file)
    result = materialize_partition(instance, resources, **DIMS, raise_on_error=False)
    assert not result.success
    message = failure_text(result)
    assert str(bad_file) in message and expected in message and "Fix:" in message
    assert (sha256_file(cog), sha256_file(tiles)) == before
    assert not [p for p in cog.parent.iterdir() if p.name.startswith(".")], "temp files left behind"
    # The failure is final (bad input), not retried.
    assert len([e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]) == 0


@pytest.mark.parametrize("hostile", ["../x", "..", "a..b"])
def test_hostile_partition_key_fails_with_the_rule_and_writes_nothing(instance, hostile, landing_source, store, tmp_path):
    resources = {"data_store": store, "scene_source": landing_source}
    result = materialize_partition(instance, resources, hostile, "2024-06-15", raise_on_error=False)
    assert not result.success
    message = failure_text(result)
    assert "unsafe region key" in message and repr(hostile) in message
    assert not (tmp_path / "x").exists()
    assert not list(tmp_path.rglob("*.tif"))
