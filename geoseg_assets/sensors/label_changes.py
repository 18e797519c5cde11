"""Label-change sensor logic: a region whose labels changed re-runs the masks of its scene partitions only."""


import json

import dagster as dg

from geoseg_assets.assets.masks import LABEL_FINGERPRINT_TAG, masks
from geoseg_assets.assets.scenes import scenes
from geoseg_assets.partitions import partition_key
from resources.label_store import LabelStore


def plan_mask_runs(fingerprints: dict[str, str], cursor: dict, scene_partitions: list[str],
                   built_with: dict[str, str] | None = None):
    """Pure planning step: regions whose label fingerprint changed -> their scene partitions' masks.

    `scene_partitions` are materialized `scenes` keys ("date|region"); only partitions of changed
    regions are requested, so one region's label edit never re-runs another region. `built_with`
    (partition -> label fingerprint its current mask was made from) spares masks already up to date,
    e.g. every partition when the sensor is first switched on over finished work.
    """
    built_with = built_with or {}
    seen: dict[str, str] = dict(cursor.get("labels", {}))
    requests: list[dg.RunRequest] = []
    for region, fingerprint in sorted(fingerprints.items()):
        if seen.get(region) == fingerprint:
            continue
        seen[region] = fingerprint
        for key in sorted(scene_partitions):
            date, key_region = key.split("|")
            if key_region == region and built_with.get(key) != fingerprint:
                requests.append(dg.RunRequest(
                    run_key=f"masks:{key}:{fingerprint}",
                    partition_key=partition_key(region, date),
                    tags={LABEL_FINGERPRINT_TAG: fingerprint},
                ))
    return requests, seen


def mask_label_fingerprints(instance: dg.DagsterInstance, partition_keys: list[str]) -> dict[str, str]:
    """The label fingerprint each partition's latest `masks` materialization was made from (its metadata)."""
    built = {}
    for key in partition_keys:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=masks.key, asset_partitions=[key]), limit=1).records
        meta = records[0].asset_materialization.metadata if records else {}
        if "label_fingerprint" in meta:
            built[key] = meta["label_fingerprint"].value
    return built


def scan_label_changes(context: dg.SensorEvaluationContext, label_store: LabelStore) -> dg.SensorResult:
    """label_change_sensor's tick: the masks of the partitions of regions whose labels changed."""
    cursor = json.loads(context.cursor) if context.cursor else {}
    fingerprints = {region: label_store.fingerprint(region) for region in label_store.regions()}
    scene_partitions = [str(k) for k in context.instance.get_materialized_partitions(scenes.key)]
    unseen = {r for r in fingerprints if r not in cursor.get("labels", {})}
    built_with = mask_label_fingerprints(context.instance, [k for k in scene_partitions if k.split("|")[1] in unseen])
    requests, seen = plan_mask_runs(fingerprints, cursor, scene_partitions, built_with)
    return dg.SensorResult(
        run_requests=requests,
        cursor=json.dumps({"labels": seen}, sort_keys=True),
        skip_reason=None if requests else dg.SkipReason("no label changes"),
    )
