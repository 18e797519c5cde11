"""Sensor ticks as the daemon runs them, against a real instance."""

import dagster as dg

from geoseg_assets.sensors import new_scene_sensor


def tick(instance, source, cursor):
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"scene_source": source}) as ctx:
        result = new_scene_sensor(ctx)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result
