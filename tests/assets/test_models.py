"""`model` + `model_evaluation` through Dagster, DVC and a real MLflow store: lineage tags, promotion,
the blocking minimum-mIoU check, and the failure notification."""

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from geoseg_assets.sensors.failures import run_failure_notifier
from resources.mlflow_tracking import CHAMPION
from resources.notifier import Notifier
from tests.support.project import build, train_and_evaluate
from tests.support.repos import git

pytestmark = pytest.mark.slow(minutes=1.5)  # wall time alone on 2 cores: started first (tests/conftest.py)


def test_training_records_lineage_and_promotes_only_past_the_floor(project):
    repo, _, instance, resources = project
    build(project)
    tracking = resources["mlflow_tracking"]
    result = train_and_evaluate(project, min_miou=0.0, export_onnx=True)
    assert result.success
    meta = result.asset_materializations_for_node("model")[0].metadata
    assert "max |ONNX Runtime - torch|" in meta["onnx"].value
    artifacts = [a.path for a in tracking.client().list_artifacts(meta["mlflow_run_id"].value, "onnx")]
    assert artifacts == ["onnx/model.onnx"]
    evaluation = result.asset_materializations_for_node("model_evaluation")[0].metadata
    run = tracking.client().get_run(meta["mlflow_run_id"].value)
    assert run.data.tags["geoseg.dataset_version"] == resources["dvc"].version("dataset")
    assert run.data.tags["geoseg.git_commit"].startswith(git(repo, "rev-parse", "HEAD").strip())
    record = resources["dvc"].record_of("dataset")
    assert (run.data.tags["geoseg.dataset_ref"], run.data.tags["geoseg.dataset_commit"]) == (record.ref, record.commit)
    assert meta["restore_dataset"].value == (f"```bash\npython -m geoseg_assets.reproduce {tracking.model_name} "
                                             f"{meta['model_version'].value}\n```")
    assert run.data.tags["geoseg.dagster_run_id"] == result.run_id
    assert run.data.params["encoder"] == "resnet18" and "val_miou" in run.data.metrics
    assert run.data.metrics["onnx_max_abs_diff"] < 1e-3
    assert evaluation["promoted"].value is True and "no champion yet" in evaluation["promotion_reason"].value
    assert str(tracking.alias_version(CHAMPION).version) == meta["model_version"].value
    assert round(run.data.metrics["test_miou"], 4) == evaluation["test_miou"].value  # metadata shows 4 decimals
    assert round(run.data.metrics["test_miou_all_classes"], 4) == evaluation["test_miou_all_classes"].value
    assert evaluation["test_miou_all_classes"].value <= evaluation["test_miou"].value
    assert evaluation["miou_classes"].value.startswith("mIoU over the ")
    table = evaluation["per_class"].value.splitlines()
    assert table[0] == "| class | support px | share | IoU | F1 | precision | recall | predicted px |"
    per_class = tracking.client().download_artifacts(run.info.run_id, "evaluation/per_class.json")
    gallery = tracking.client().download_artifacts(run.info.run_id, "evaluation/worst_tiles.png")
    inline = base64.b64decode(evaluation["worst_tiles_gallery"].value.split("base64,")[1].rstrip(")"))
    with Image.open(io.BytesIO(inline)) as shown, Image.open(gallery) as logged:  # MLflow re-encodes its copy
        # Once per model: inline at full size, not a thumbnail.
        assert shown.size == logged.size and np.array_equal(np.asarray(shown), np.asarray(logged))
    rows = json.load(open(per_class))
    assert len(table) == 2 + len(rows) and sum(r["support"] for r in rows) > 0
    assert all((r["iou"] is None) == (not r["present"]) for r in rows)  # absent classes are not scored as 0
    for r, line in zip(rows, table[2:]):  # one line per class with its support; "absent" where it has none
        assert line.startswith(f"| {r['class']} | {r['support']} | ") and ("absent" in line) == (not r["present"])
    passed = result.get_asset_check_evaluations()[0]
    assert passed.passed and passed.description == (f"test mIoU {evaluation['test_miou'].value:.4f} (present "
                                                    "classes) reaches the floor min_miou=0.0000")

    # A challenger below the floor: the blocking check fails the run, saying the score, the floor and the fix;
    # the champion stays.
    failed = train_and_evaluate(project, min_miou=1.0, seed=1)
    assert not failed.success
    checks = {e.check_name: e.passed for e in failed.get_asset_check_evaluations()}
    assert checks == {"min_test_miou": False}
    assert str(tracking.alias_version(CHAMPION).version) == meta["model_version"].value
    weak = failed.asset_materializations_for_node("model_evaluation")[0].metadata
    score = weak["test_miou"].value
    expected = (f"test mIoU {score:.4f} (present classes) is below the floor min_miou=1.0000; lower `min_miou` in the "
                "model_evaluation config or improve the model (more labels, more steps)")
    failed_check = failed.get_asset_check_evaluations()[0]
    assert failed_check.description == expected
    assert (failed_check.metadata["test_miou"].value, failed_check.metadata["min_miou"].value) == (score, 1.0)
    assert weak["promoted"].value is False and weak["promotion_reason"].value == expected
    [step_failure] = failed.get_step_failure_events()
    assert step_failure.step_key == "model_evaluation"
    assert step_failure.event_specific_data.user_failure_data.description == f"min_test_miou failed: {expected}"

    # The failure sensor tells people, naming job, assets and run.
    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    failure = next(e for e in failed.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_notifier", dagster_event=failure, dagster_instance=instance,
        dagster_run=instance.get_run_by_id(failed.run_id), resources={
            "notifier": Notifier(webhook_url=f"http://127.0.0.1:{server.server_port}/hook")},
    ).for_run_failure()
    run_failure_notifier(context)
    thread.join(timeout=10)
    server.server_close()
    assert len(received) == 1
    text = received[0]["text"]
    assert "training_job" in text and failed.run_id in text and "min_test_miou" in text
    assert f"test mIoU {score:.4f}" in text and "min_miou=1.0000" in text  # the notification carries the numbers too


def test_crash_mid_training_is_retried_and_resumes_from_the_checkpoint(project, monkeypatch):
    """A crash after epoch 1 fails the step; the RetryPolicy re-runs it and training resumes at epoch 2."""
    import geoseg_assets.ml.train as train_module

    build(project)
    real_train = train_module.train
    calls = []

    def crash_once(config, dataset_dir, on_epoch=None):
        calls.append(config.checkpoint_dir)
        if len(calls) == 1:
            def crash_after_first(epoch, metrics):
                on_epoch(epoch, metrics)
                raise RuntimeError("simulated crash: the worker died after epoch 1")
            return real_train(config, dataset_dir, on_epoch=crash_after_first)
        return real_train(config, dataset_dir, on_epoch=on_epoch)

    monkeypatch.setattr(train_module, "train", crash_once)
    result = train_and_evaluate(project, min_miou=0.0, seed=5, epochs=3)
    assert result.success
    retries = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert len(retries) == 1 and len(calls) == 2 and calls[0] == calls[1]  # same checkpoint folder
    meta = result.asset_materializations_for_node("model")[0].metadata
    assert meta["resumed_from_epoch"].value == 1 and meta["epochs_run"].value == 3


def test_same_seed_same_data_gives_identical_metrics(project):
    build(project)
    tracking = project[3]["mlflow_tracking"]
    histories, keys = [], set()
    for _ in range(2):  # `fresh`: the second run trains from scratch instead of reusing the first's checkpoint
        result = train_and_evaluate(project, min_miou=0.0, seed=11, epochs=2, patience=None, fresh=True)
        meta = result.asset_materializations_for_node("model")[0].metadata
        assert meta["resumed_from_epoch"].value == "none" and meta["epochs_run"].value == 2
        run = tracking.client().get_run(meta["mlflow_run_id"].value)
        keys.add(run.data.tags["geoseg.checkpoint_key"])
        histories.append([(m.step, m.value) for m in tracking.client().get_metric_history(run.info.run_id, "val_miou")])
    assert histories[0] == histories[1] and len(histories[0]) == 2
    assert len(keys) == 2  # one checkpoint folder per fresh run


def test_a_relaunch_of_the_same_config_reuses_the_finished_checkpoint(project):
    """Without `fresh`, launching an identical config on the same dataset does not retrain."""
    build(project)
    first = train_and_evaluate(project, min_miou=0.0, seed=12, epochs=2, patience=None)
    again = train_and_evaluate(project, min_miou=0.0, seed=12, epochs=2, patience=None)
    meta = [r.asset_materializations_for_node("model")[0].metadata for r in (first, again)]
    assert meta[0]["resumed_from_epoch"].value == "none"
    assert meta[1]["resumed_from_epoch"].value == 2 and meta[1]["best_val_miou"].value == meta[0]["best_val_miou"].value
