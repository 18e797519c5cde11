"""MLflow registry through MlflowTracking (real local SQLite store): champion/challenger promotion,
loading back by alias, and weights-only artifacts that refuse tampering."""

import pytest
import torch

from geoseg_assets.ml.promotion import check_floor, comparable_scores, decide_promotion
from geoseg_assets.monitoring.model_quality import version_history
from resources.mlflow_tracking import CHALLENGER, CHAMPION, MlflowTracking
from tests.support.models import SPEC, tiny_model


def log_and_register(tracking, model, score, all_classes=None):
    """A registered version whose run logged `test_miou` (and `test_miou_all_classes` unless None: a version
    evaluated before that figure existed)."""
    import mlflow

    with tracking.run("test", {"geoseg.dataset_version": "abc.dir"}) as run:
        mlflow.log_metric("test_miou", score)
        if all_classes is not None:
            mlflow.log_metric("test_miou_all_classes", all_classes)
        uri, sha = tracking.log_model(model, SPEC)
    return run.info.run_id, tracking.register(uri, run.info.run_id, sha, CHALLENGER)


def promote(tracking, version, score, margin=0.01):
    champion = tracking.alias_version(CHAMPION)
    champion_score = None
    if champion is not None:
        champion_score = tracking.client().get_run(champion.run_id).data.metrics["test_miou"]
    decision = decide_promotion(score, champion_score, margin)
    if decision.promote:
        tracking.set_alias(CHAMPION, version)
    return decision


def test_first_model_is_champion_worse_is_not_better_is(tmp_path):
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "artifacts"))
    first = tiny_model(0)
    run1, v1 = log_and_register(tracking, first, 0.80)
    assert promote(tracking, v1, 0.80).promote
    _, v2 = log_and_register(tracking, tiny_model(1), 0.805)  # within the margin: not better
    decision = promote(tracking, v2, 0.805)
    assert not decision.promote and "does not beat" in decision.reason
    assert str(tracking.alias_version(CHAMPION).version) == v1
    assert str(tracking.alias_version(CHALLENGER).version) == v2
    third = tiny_model(2)
    _, v3 = log_and_register(tracking, third, 0.85)
    assert promote(tracking, v3, 0.85).promote
    assert str(tracking.alias_version(CHAMPION).version) == v3

    loaded = tracking.load(CHAMPION)
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), third(x))
    assert tracking.client().get_run(run1).data.tags["geoseg.dataset_version"] == "abc.dir"


@pytest.mark.parametrize("challenger,champion,margin,expected", [
    (0.5, None, 0.01, True), (0.9, 0.8, 0.01, True), (0.805, 0.8, 0.01, False), (float("nan"), None, 0.0, False),
])
def test_promotion_gate(challenger, champion, margin, expected):
    assert decide_promotion(challenger, champion, margin).promote is expected


def test_rejection_and_promotion_reasons_print_both_scores_and_the_margin():
    kept = decide_promotion(0.61, 0.63, 0.005)
    assert not kept.promote
    assert kept.reason == ("challenger test mIoU 0.6100 does not beat champion 0.6300 by more than margin 0.005 "
                           "(difference -0.0200)")
    beaten = decide_promotion(0.7, 0.63, 0.005)
    assert beaten.promote and beaten.reason == ("challenger test mIoU 0.7000 beats champion 0.6300 by more than "
                                                "margin 0.005 (difference +0.0700)")


def test_floor_message_carries_value_threshold_and_fix():
    low = check_floor(0.258, 0.5)
    assert not low.passed
    assert low.message == ("test mIoU 0.2580 (present classes) is below the floor min_miou=0.5000; lower `min_miou` in "
                           "the model_evaluation config or improve the model (more labels, more steps)")
    assert check_floor(0.258, 0.1).passed and "0.2580" in check_floor(0.258, 0.1).message
    nothing = check_floor(float("nan"), 0.1)
    assert not nothing.passed and "no labelled pixel" in nothing.message and "min_miou=0.1000" in nothing.message


def test_a_champion_evaluated_before_present_class_miou_is_compared_on_the_all_class_figure():
    challenger = {"miou": 0.258, "miou_all_classes": 0.194}
    assert comparable_scores(challenger, None) == (0.258, None, "test mIoU")
    assert comparable_scores(challenger, {"test_miou": 0.25, "test_miou_all_classes": 0.2}) == (0.258, 0.25, "test mIoU")
    # the old champion's `test_miou` was the all-class figure: 0.258 (present) must not beat it by definition alone
    score, champion, metric = comparable_scores(challenger, {"test_miou": 0.2})
    assert (score, champion, metric) == (0.194, 0.2, "all-class test mIoU")
    assert "challenger all-class test mIoU 0.1940 does not beat champion 0.2000" in decide_promotion(
        score, champion, 0.005, metric).reason


def test_version_history_says_which_miou_each_version_recorded(tmp_path):
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "artifacts"))
    _, old = log_and_register(tracking, tiny_model(0), 0.194)  # evaluated when test_miou was the all-class figure
    _, new = log_and_register(tracking, tiny_model(1), 0.258, all_classes=0.194)
    history = version_history(tracking.client(), tracking.model_name, champion_version=new)
    assert [(h["version"], h["test_miou"], h["test_miou_all_classes"], h["champion"]) for h in history] == [
        (old, None, 0.194, False), (new, 0.258, 0.194, True)]


# ---- weights-only artifacts: tampering is refused, nothing is unpickled -----------------------------


def registered_folder(tracking, version: str):
    """The local folder of a registered version's model files (the file-based artifact store)."""
    from pathlib import Path
    from urllib.parse import urlparse

    source = tracking.client().get_model_version(tracking.model_name, version).source
    return Path(urlparse(source).path)


@pytest.fixture
def registered(tmp_path):
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "artifacts"))
    _, version = log_and_register(tracking, tiny_model(0), 0.8)
    return tracking, version


def test_a_registered_model_is_weights_and_json_only_with_its_checksum_in_the_registry(registered):
    import hashlib

    tracking, version = registered
    folder = registered_folder(tracking, version)
    assert sorted(p.name for p in folder.iterdir()) == ["architecture.json", "weights.safetensors"]
    assert b"PK" not in (folder / "weights.safetensors").read_bytes()[:4]  # not a torch zip/pickle archive
    recorded = tracking.client().get_model_version(tracking.model_name, version).tags["geoseg.weights_sha256"]
    digest = hashlib.sha256()
    for name in ("weights.safetensors", "architecture.json"):
        digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
    assert recorded == digest.hexdigest()


def test_altered_weights_are_refused_naming_the_version_and_the_fix(registered):
    import dagster as dg

    from resources.mlflow_tracking import load_registered

    tracking, version = registered
    weights = registered_folder(tracking, version) / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one bit of one tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(dg.Failure) as failure:
        load_registered(tracking, version)
    message = str(failure.value)
    assert f"geoseg-segmenter v{version}" in message and "altered after registration" in message
    assert "re-run training_job" in message and failure.value.allow_retries is False


def test_a_pickle_planted_as_the_weights_is_never_executed(registered, tmp_path):
    """An attacker who can write the artifact store replaces the weights by a pickle whose loading runs
    code; the checksum refuses it, and even with a matching checksum safetensors would not unpickle it."""
    import pickle

    from geoseg_assets.ml import model_artifact

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    tracking, version = registered
    folder = registered_folder(tracking, version)
    (folder / "weights.safetensors").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(model_artifact.ModelArtifactError, match="altered after registration"):
        tracking.load_version(version)
    forged = model_artifact.folder_sha256(folder)  # the attacker also rewrote the registry's tag
    with pytest.raises(model_artifact.ModelArtifactError, match="unreadable model files"):
        model_artifact.load_model(folder, forged, "forged")
    assert not marker.exists()


def test_a_version_registered_without_a_checksum_is_refused_with_the_fix(registered):
    tracking, version = registered
    tracking.client().delete_model_version_tag(tracking.model_name, version, "geoseg.weights_sha256")
    with pytest.raises(ValueError, match=f"v{version}: the registry records no weights checksum.*re-run training_job"):
        tracking.load_version(version)


def test_deleted_model_files_are_a_clear_error(registered):
    import shutil

    tracking, version = registered
    shutil.rmtree(registered_folder(tracking, version))
    with pytest.raises(ValueError, match=f"v{version}: "):
        tracking.load_version(version)


def test_a_deleted_mlflow_database_is_named_with_the_fix_and_never_recreated_empty_by_a_read(registered, tmp_path):
    import dagster as dg

    from resources.mlflow_tracking import load_registered

    tracking, version = registered
    store = tmp_path / "mlflow.db"
    store.unlink()
    assert tracking.alias_version(CHALLENGER) is None  # no registry, no alias
    with pytest.raises(dg.Failure) as raised:
        load_registered(tracking, version)
    no_alias = tracking.no_alias_failure(CHAMPION, "run training_job so a model is promoted")
    for message in (str(raised.value), str(no_alias)):
        assert f"the MLflow store {store} does not exist" in message and "restore it from a backup" in message
    assert str(no_alias).startswith("geoseg-segmenter has no `champion` version: run training_job so a model is promoted; ")
    assert raised.value.allow_retries is False and no_alias.allow_retries is False
    assert not store.exists(), "a read created an empty registry in place of the deleted one"


def test_a_deleted_run_artifact_is_a_clear_failure(tmp_path):
    import shutil

    import dagster as dg
    import mlflow

    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "artifacts"))
    with tracking.run("test", {}) as run:
        mlflow.log_dict({"band_names": ["B"]}, "preprocessing.json")
    assert tracking.read_json_artifact(run.info.run_id, "preprocessing.json") == {"band_names": ["B"]}
    shutil.rmtree(tmp_path / "artifacts")
    with pytest.raises(dg.Failure, match=f"MLflow run {run.info.run_id}: its artifact preprocessing.json cannot be read"):
        tracking.read_json_artifact(run.info.run_id, "preprocessing.json")


def test_a_read_only_mlflow_store_fails_before_training_naming_it(tmp_path):
    """A real read-only bind mount of the store's folder (root ignores file modes, not a read-only mount)."""
    import subprocess

    import dagster as dg

    folder = tmp_path / "mlflow"
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{folder}/mlflow.db", artifact_location=str(folder / "artifacts"))
    with tracking.run("first", {}):
        pass
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount read-only here: {mounted.stderr.strip()}")
    try:
        before = (folder / "mlflow.db").read_bytes()
        with pytest.raises(dg.Failure) as failure:
            with tracking.run("second", {}):
                pass
        assert f"the MLflow store {folder}" in str(failure.value) and "is read-only" in str(failure.value)
        assert "point tracking_uri / artifact_location at a writable store" in str(failure.value)
        assert (folder / "mlflow.db").read_bytes() == before
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_run_page_links_to_the_mlflow_ui_when_there_is_one(tmp_path):
    """Model metadata links to the run in the MLflow UI: `ui_url` (what `make ui` serves the embedded store at),
    else an http(s) tracking server; a local store without a UI gets no link rather than a dead one."""
    store = f"sqlite:///{tmp_path}/mlflow.db"
    tracking = MlflowTracking(tracking_uri=store, artifact_location=str(tmp_path / "artifacts"))
    run_id, _ = log_and_register(tracking, tiny_model(0), 0.8)
    experiment_id = tracking.client().get_run(run_id).info.experiment_id
    assert tracking.run_page(run_id) is None
    with_ui = tracking.model_copy(update={"ui_url": "http://127.0.0.1:5000/"})
    assert with_ui.run_page(run_id) == f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}"
