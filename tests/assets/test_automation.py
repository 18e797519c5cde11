"""Declarative automation: a changed scene re-runs its tiles, for old dates too."""

import dagster as dg

from geoseg_assets.assets.scenes import scenes
from geoseg_assets.definitions import build_defs
from geoseg_assets.partitions import partition_key
from tests.support.pipeline import materialize_partition, with_test_resources

OLD, NEW = "2024-04-15", "2024-06-15"


def requested(result, key):
    return sorted(str(k) for k in result.get_requested_partitions(key))


def test_update_of_an_old_date_propagates_to_tiles_of_that_partition_only(instance, synthetic_source, store):
    resources = {"data_store": store, "scene_source": synthetic_source}
    defs = build_defs(with_test_resources(resources))
    for date in (OLD, NEW):
        assert materialize_partition(instance, resources, "alpha", date).success
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert requested(first, dg.AssetKey("tiles")) == []

    # A replaced scene for the OLD date lands and `scenes` re-runs (as the sensor would ask).
    assert materialize_partition(instance, resources, "alpha", OLD, selection=[scenes.key]).success
    second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert requested(second, dg.AssetKey("tiles")) == [str(partition_key("alpha", OLD))]


def test_failed_blocking_scene_check_holds_tiles_back(instance, synthetic_source, store, monkeypatch):
    """A scene COG that fails its integrity check stops `tiles` in the same run and in automation."""
    import rasterio

    from geoseg_assets.assets import scenes as scenes_module

    resources = {"data_store": store, "scene_source": synthetic_source}
    defs = build_defs(with_test_resources(resources))
    assert materialize_partition(instance, resources, "alpha", OLD).success
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)

    real_writer = scenes_module.write_scene_cog

    def writer_that_loses_a_band(sources, dst_path, *args, **kwargs):
        summary = real_writer(sources, dst_path, *args, **kwargs)
        with rasterio.open(dst_path) as src:  # a faulty writer: 3 of 4 bands, striped, no COG layout
            profile, data = src.profile, src.read([1, 2, 3])
        profile.update(driver="GTiff", count=3, tiled=False, blockysize=1)
        profile.pop("blockxsize", None)
        with rasterio.open(dst_path, "w", **profile) as dst:
            dst.write(data)
        return summary

    monkeypatch.setattr(scenes_module, "write_scene_cog", writer_that_loses_a_band)
    run = materialize_partition(instance, resources, "alpha", OLD, raise_on_error=False)
    checks = {e.check_name: e.passed for e in run.get_asset_check_evaluations()}
    assert checks == {"scene_integrity": False}
    materialized = [e.asset_key for e in run.get_asset_materialization_events()]
    assert materialized == [dg.AssetKey("scenes")]  # tiles was blocked in the run

    second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert requested(second, dg.AssetKey("tiles")) == []


def test_model_quality_report_waits_for_a_champion(instance, synthetic_source, store):
    """New masks or predictions alone do not request the model quality report; with a champion they do."""
    defs = build_defs(with_test_resources({"data_store": store, "scene_source": synthetic_source}))
    report = dg.AssetKey("model_quality_report")
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    instance.add_dynamic_partitions("region", ["alpha"])
    instance.report_runless_asset_event(dg.AssetMaterialization("masks", partition=str(partition_key("alpha", OLD))))
    second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert second.get_num_requested(report) == 0
    instance.report_runless_asset_event(dg.AssetMaterialization("champion_model"))
    third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
    assert third.get_num_requested(report) == 1
