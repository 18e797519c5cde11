"""The code location loads cleanly (no ML framework, no warning, `dg check defs`) and keeps geo/ free of Dagster; a real
webserver serving it is tested in tests/ops (test_webserver.py, test_demo.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from tests.support.paths import REPO



def test_loading_the_code_location_imports_no_ml_framework():
    """Every run worker, code server, daemon and step process loads the definitions: torch, ONNX Runtime,
    evidently and mlflow stay out of that import (torch alone added 2 s of CPU to each, and made the suite 25 %
    slower); the assets import them when they run."""
    code = ("import sys; import geoseg_assets.definitions; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'evidently', 'mlflow', 'segmentation_models_pytorch') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_definitions_load_without_deprecation_warnings():
    code = (
        "import warnings; warnings.simplefilter('always');\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    from geoseg_assets.definitions import defs\n"
        "    defs.get_repository_def().get_all_jobs()\n"
        "import json; print(json.dumps([(w.category.__name__, str(w.message)) for w in caught]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    caught = json.loads(out.stdout.strip().splitlines()[-1])
    deprecations = [w for w in caught if "Deprecat" in w[0] or "deprecat" in w[1].lower()]
    assert deprecations == []


def test_loading_the_code_location_prints_no_warning():
    """Every code server, run worker and step process loads the definitions: even with every warning shown, none
    comes out (the partitioned checks' PreviewWarning, a choice documented in checks.py, is silenced exactly)."""
    code = "import geoseg_assets.definitions as d; d.defs.get_repository_def().get_all_jobs()"
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert out.stderr == "" and out.stdout == ""


def test_dg_check_defs_passes(tmp_path):
    """`make check` (`dg check defs` over [tool.dg] in pyproject.toml) validates the code location."""
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "VIRTUAL_ENV": str(Path(sys.executable).parent.parent)}
    out = subprocess.run([str(Path(sys.executable).parent / "dg"), "check", "defs"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "All definitions loaded successfully" in out.stdout + out.stderr


def test_graph_has_the_assets_checks_sensors_and_lineage():
    from geoseg_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        "scenes", "tiles", "masks", "dataset", "model", "model_evaluation", "champion_model", "predictions",
        "data_quality_report", "data_drift_report", "prediction_drift_report", "model_quality_report", "stac_catalog"}
    parents = {k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys} for k in graph.get_all_asset_keys()}
    assert parents["model_evaluation"] == {"model"} and parents["champion_model"] == {"model_evaluation"}
    assert parents["dataset"] == {"tiles", "masks"}
    assert parents["tiles"] == parents["masks"] == parents["data_quality_report"] == {"scenes"}
    assert parents["predictions"] == {"scenes", "champion_model"}
    assert parents["data_drift_report"] == {"scenes", "dataset"}
    assert parents["prediction_drift_report"] == {"predictions", "dataset"}
    assert parents["model_quality_report"] == {"champion_model", "predictions", "masks"}
    assert parents["stac_catalog"] == {"scenes", "masks", "predictions"}
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert checks == {("scenes", "scene_integrity"), ("tiles", "tile_stats_sanity"), ("masks", "label_geometries_valid"),
                      ("dataset", "dataset_no_leakage"), ("dataset", "dataset_class_coverage"),
                      ("model_evaluation", "min_test_miou"), ("data_quality_report", "data_quality_passes"),
                      ("stac_catalog", "stac_catalog_valid")}
    assert {s.name for s in defs.sensors} == {"new_scene_sensor", "label_change_sensor", "geoseg_automation_sensor",
                                              "run_failure_notifier", "drift_sensor"}
    assert defs.resolve_sensor_def("geoseg_automation_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    # The catalog's hourly refresh is there to switch on, not running behind a user's back.
    assert [(s.name, s.default_status) for s in defs.schedules] == [("stac_catalog_hourly",
                                                                     dg.DefaultScheduleStatus.STOPPED)]


def test_exactly_the_steps_that_run_a_network_share_the_model_compute_pool():
    """Training, evaluation and inference hold the pool's slot (one network at a time on an instance, whoever
    launched the run); nothing else waits for it."""
    from geoseg_assets.definitions import defs
    from geoseg_assets.pools import MODEL_COMPUTE_POOL

    graph = defs.resolve_asset_graph()
    ops = {graph.get(k).assets_def.get_op_def_for_asset_key(k) for k in graph.get_all_asset_keys()}
    assert {op.name for op in ops if op.pool == MODEL_COMPUTE_POOL} == {"model", "model_evaluation", "predictions"}


def test_sensor_intervals_come_from_one_setting_and_bad_ones_are_refused():
    from geoseg_assets.definitions import build_defs, default_resources
    from geoseg_assets.sensors import SensorIntervals

    defaults = {s.name: s.minimum_interval_seconds for s in build_defs(default_resources(REPO / "data")).sensors}
    assert defaults == {"new_scene_sensor": 30, "label_change_sensor": 60, "drift_sensor": 300,
                        "geoseg_automation_sensor": 30, "run_failure_notifier": 30}
    fast = build_defs(default_resources(REPO / "data"), SensorIntervals.parse(" drift_sensor=7,new_scene_sensor=2 "))
    assert {s.name: s.minimum_interval_seconds for s in fast.sensors} == {**defaults, "drift_sensor": 7,
                                                                           "new_scene_sensor": 2}
    for bad in ("drift=10", "drift_sensor=0", "drift_sensor=1.5", "drift_sensor"):
        with pytest.raises(ValueError, match="GEOSEG_SENSOR_INTERVALS=.*drift_sensor=10,new_scene_sensor=5"):
            SensorIntervals.parse(bad)
    # the code location reads the setting once, at load
    code = ("from geoseg_assets.definitions import defs; "
            "print({s.name: s.minimum_interval_seconds for s in defs.sensors}['label_change_sensor'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "GEOSEG_SENSOR_INTERVALS": "label_change_sensor=3"})
    assert out.stdout.strip().splitlines()[-1] == "3"


@pytest.mark.parametrize("package", ["geo", "ml", "monitoring"])
def test_pure_code_does_not_import_dagster(package):
    code = (
        f"import sys, pkgutil, importlib, geoseg_assets.{package} as g\n"
        f"for m in pkgutil.iter_modules(g.__path__): importlib.import_module(f'geoseg_assets.{package}.{{m.name}}')\n"
        "print('dagster' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_batch_job_carries_a_runtime_limit_run_monitoring_enforces():
    """`dagster/max_runtime` on each job (read by the daemon's run monitoring, which both instances enable),
    so a hung read or pathological input cannot hold a worker forever."""
    import yaml

    from geoseg_assets.definitions import MAX_RUNTIME_S, defs

    for name, seconds in MAX_RUNTIME_S.items():
        assert defs.resolve_job_def(name).tags["dagster/max_runtime"] == str(seconds) and seconds >= 3600
    assert yaml.safe_load((REPO / "dagster.yaml").read_text())["run_monitoring"]["enabled"] is True
