"""new_scene_sensor: new region partitions, one run per new/replaced file, none for the same bytes."""

import dagster as dg

from geoseg_assets.sensors import FINGERPRINT_TAG, new_scene_sensor
from tests.conftest import random_scene, write_tif


def tick(instance, source, cursor):
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"scene_source": source}) as ctx:
        result = new_scene_sensor(ctx)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def test_new_same_and_replaced_files(landing, landing_source):
    instance = dg.DagsterInstance.ephemeral()
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


def test_hostile_folder_names_never_become_partitions(landing, landing_source):
    instance = dg.DagsterInstance.ephemeral()
    write_tif(landing / "..evil" / "2024-06-15" / "scene.tif", random_scene())
    write_tif(landing / "alpha" / "1999-01-01" / "scene.tif", random_scene())  # before the first date partition
    result = tick(instance, landing_source, None)
    assert result.run_requests == []
    assert instance.get_dynamic_partitions("region") == []
