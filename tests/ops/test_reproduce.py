"""Issue 20: any model's dataset back from the model alone. Two datasets and two models in a repository laid out
like this one (DVC config and a dvc.lock committed, code on a shared `origin`), then a fresh `git clone` with no
data and no DVC cache restores each model's exact bytes with `python -m geoseg_assets.reproduce <model> <version>`,
and plain `git checkout <ref> && dvc pull dataset` still works underneath; neither model's code commit is
`-dirty` because of our own dvc.lock write. Plus the command's errors, each naming the input and the fix."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from geoseg_assets.assets.models import dataset_record
from geoseg_assets.definitions import build_defs
from geoseg_assets.reproduce import main as reproduce
from resources.mlflow_tracking import MlflowTracking
from tests.support.models import SPEC, tiny_model
from tests.support.paths import REPO
from tests.support.pipeline import materialize_partition
from tests.support.project import DATES, QUICK, build
from tests.support.repos import DATASET, digests, dvc, git

pytestmark = pytest.mark.slow(minutes=1)  # wall time alone on 2 cores: started first (tests/conftest.py)

TINY = {**QUICK, "epochs": 1, "max_steps_per_epoch": 1, "crop": 64, "patience": None}
DVC_ENV = {"DVC_NO_ANALYTICS": "1"}


def train(project) -> tuple[str, dict]:
    """Train and register a tiny model on the current dataset; its version and its MLflow run's tags."""
    _, _, instance, resources = project
    job = build_defs(resources).resolve_job_def("training_job")
    result = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("model")],
                                    run_config=dg.RunConfig(ops={"model": {"config": TINY}}))
    assert result.success
    meta = result.asset_materializations_for_node("model")[0].metadata
    return meta["model_version"].value, resources["mlflow_tracking"].client().get_run(meta["mlflow_run_id"].value).data.tags


def reproduce_cli(*args) -> subprocess.CompletedProcess:
    """The documented command, as a user runs it (a new process, this checkout's code)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "GEOSEG_DVC_REPO")}
    return subprocess.run([sys.executable, "-m", "geoseg_assets.reproduce", *args], capture_output=True, text=True,
                          env={**env, **DVC_ENV, "PYTHONPATH": str(REPO)}, timeout=600)


def test_each_model_gets_its_exact_dataset_back_on_a_fresh_clone(project):
    repo, tmp, instance, resources = project
    tracking, labels = resources["mlflow_tracking"], resources["label_store"]
    resources["dvc"].ensure_repo()
    shutil.copy(REPO / "dvc.lock", repo / "dvc.lock")  # committed, like this repository's (the demo's dataset)
    git(repo, "add", ".dvc/config", ".dvc/.gitignore", ".dvcignore", "dvc.lock")
    git(repo, "commit", "-qm", "DVC config and a dvc.lock")
    origin = tmp / "origin.git"
    git(tmp, "init", "-q", "--bare", str(origin))
    git(repo, "remote", "add", "origin", str(origin))
    branch = git(repo, "branch", "--show-current").strip()
    git(repo, "push", "-q", "origin", branch)
    code1 = git(repo, "rev-parse", "HEAD").strip()

    # dataset v1 (recorded on its ref, pushed with the code commit under it), model v1
    meta1, _, _ = build(project)
    v1, ref1, record1 = (meta1[k].value for k in ("dataset_version", "dataset_ref", "dataset_commit"))
    bytes1 = digests(repo / DATASET)
    assert meta1["dataset_ref_pushed"].value == f"{ref1} pushed to `origin`"
    assert git(origin, "rev-parse", ref1).strip() == record1
    assert git(repo, "rev-list", "--parents", "-n", "1", record1).split()[1:] == [code1]
    assert git(repo, "status", "--porcelain").strip() == "M dvc.lock"  # our write sits in the working tree ...
    assert v1 not in git(repo, "show", "HEAD:dvc.lock")  # ... and the code commit pins another dataset
    model1, tags1 = train(project)
    assert tags1["geoseg.git_commit"] == code1  # not `-dirty` because of the dataset write
    assert (tags1["geoseg.dataset_version"], tags1["geoseg.dataset_ref"], tags1["geoseg.dataset_commit"]) == \
        (v1, ref1, record1)

    # The code moves on; a reviewer sends labels of alpha back, its masks are re-made: dataset v2, model v2.
    (repo / "CHANGES.md").write_text("a code change\n")
    git(repo, "add", "CHANGES.md")
    git(repo, "commit", "-qm", "a code change")
    git(repo, "push", "-q", "origin", branch)
    code2 = git(repo, "rev-parse", "HEAD").strip()
    ids = labels.labels("alpha")["label_id"].tolist()[:10]
    assert labels.set_status("alpha", ids, "test") == 10
    for date in DATES:
        assert materialize_partition(instance, resources, "alpha", date, selection=[dg.AssetKey("masks")]).success
    meta2, _, _ = build(project)
    v2, ref2, record2 = (meta2[k].value for k in ("dataset_version", "dataset_ref", "dataset_commit"))
    bytes2 = digests(repo / DATASET)
    assert v2 != v1 and bytes2 != bytes1
    assert git(repo, "rev-list", "--parents", "-n", "1", record2).split()[1:] == [code2]
    model2, tags2 = train(project)
    assert tags2["geoseg.git_commit"] == code2
    assert (tags2["geoseg.dataset_version"], tags2["geoseg.dataset_commit"]) == (v2, record2)
    assert model1 != model2

    # Lose the data and the DVC cache; a fresh clone has neither, nor any dataset ref; a teammate points it at
    # the shared DVC remote (README), then restores each model's dataset from its name and version alone.
    shutil.rmtree(repo / DATASET)
    shutil.rmtree(repo / ".dvc" / "cache")
    clone = tmp / "clone"
    git(tmp, "clone", "-q", "--branch", branch, str(origin), str(clone))
    assert not (clone / "data").exists() and not (clone / ".dvc" / "cache").exists()
    assert git(clone, "for-each-ref", "refs/geoseg") == ""
    dvc(clone, "remote", "add", "--local", "-f", "-d", "local", str(tmp / "remote"))
    for version, dataset, expected in ((model1, v1, bytes1), (model2, v2, bytes2)):
        done = reproduce_cli(tracking.model_name, version, "--repo", str(clone), "--tracking-uri", tracking.tracking_uri)
        assert done.returncode == 0, done.stderr
        path = Path(done.stdout.strip().splitlines()[-1])
        assert path == clone / "data" / "reproduce" / f"dataset-{dataset[:12]}" / DATASET
        assert digests(path) == expected  # sha256 of every file
        assert f"{tracking.model_name} v{version} was trained on dataset {dataset}" in done.stdout
    # the clone's branch, HEAD and working tree were left alone
    assert git(clone, "branch", "--show-current").strip() == branch and git(clone, "rev-parse", "HEAD").strip() == code2
    assert git(clone, "status", "--porcelain") == ""

    # Underneath, the plain way still works: the dataset's restore_command, by hand, from an empty cache.
    shutil.rmtree(clone / ".dvc" / "cache")
    block = meta1["restore_command"].value.split("```bash\n")[1].split("```")[0]
    for line in block.strip().splitlines():
        command = line.split("#")[0].split()
        command = [sys.executable, "-m", "dvc", *command[1:]] if command[0] == "dvc" else command
        subprocess.run(command, cwd=clone, check=True, capture_output=True, env={**os.environ, **DVC_ENV})
    assert digests(clone / DATASET) == bytes1


def legacy_version(tracking: MlflowTracking, tags: dict) -> str:
    """A registered version whose run carries only the tags models had before dataset records."""
    with tracking.run("legacy", tags=tags) as run:
        uri, sha = tracking.log_model(tiny_model(0), SPEC)
    return tracking.register(uri, run.info.run_id, sha)


def test_restore_errors_name_the_input_and_the_fix(tracked, tmp_path, capsys):  # noqa: F811
    store, repo, version = tracked
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "code, DVC config and a dataset")
    head = git(repo, "rev-parse", "HEAD").strip()
    store.record("dataset")
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                              artifact_location=str(tmp_path / "artifacts"))
    unrecorded = "f" * 32 + ".dir"
    legacy = legacy_version(tracking, {"geoseg.dataset_version": unrecorded, "geoseg.git_commit": f"{head}-dirty"})
    old_but_recorded = legacy_version(tracking, {"geoseg.dataset_version": version.md5, "geoseg.git_commit": head})
    unversioned = legacy_version(tracking, {"geoseg.dataset_version": "unversioned", "geoseg.git_commit": head})
    common = ["--repo", str(repo), "--tracking-uri", tracking.tracking_uri]

    def fails(*args) -> str:
        assert reproduce([*args]) == 1
        return capsys.readouterr().err

    assert "no registered model named 'nope'" in fails("nope", "1", *common)
    assert f"has no version 99 in {tracking.tracking_uri}; its versions: 1, 2, 3" in fails(tracking.model_name, "99", *common)
    assert "does not exist" in fails(tracking.model_name, "1", "--repo", str(repo), "--tracking-uri",
                                     f"sqlite:///{tmp_path / 'gone.db'}")
    assert "was trained on a dataset DVC did not version" in fails(tracking.model_name, unversioned, *common)
    message = fails(tracking.model_name, legacy, *common)  # trained before records, and none of its dataset exists
    assert "was trained before dataset records existed" in message and "no `geoseg.dataset_ref` tag" in message
    assert f"`git checkout {head} && dvc pull dataset`" in message and "pins another dataset" in message
    assert f"git log --all -S {unrecorded[:-4]} -- dvc.lock" in message
    assert "not a DVC dataset version" in fails("--dataset", "latest", "--repo", str(repo))
    message = fails("--dataset", unrecorded, "--repo", str(repo))
    assert f"no record refs/geoseg/datasets/{unrecorded[:-4]}" in message and "git push origin" in message
    shutil.rmtree(repo / ".dvc" / "cache")  # the restore shares the repository's cache: only the remote has the bytes
    empty = tmp_path / "empty-remote"
    message = fails("--dataset", version.md5, "--repo", str(repo), "--remote-url", str(empty))
    assert "dvc pull dataset" in message and "the remote lacks these bytes" in message and "--remote-url" in message

    # A model trained before records, whose dataset was recorded since (same DVC hash): restored, with a note.
    assert reproduce([tracking.model_name, old_but_recorded, *common]) == 0
    out = capsys.readouterr().out
    assert "predates dataset records" in out
    restored = Path(out.strip().splitlines()[-1])
    assert restored == repo / "data" / "reproduce" / f"dataset-{version.md5[:12]}" / DATASET
    assert digests(restored) == digests(repo / DATASET)


def test_a_version_without_a_record_is_recorded_when_a_model_trains_on_it(tracked):  # noqa: F811
    """A dataset `dvc repro` built (DVC commits it, the asset does not record it): the model records it."""
    store, repo, version = tracked
    assert store.record_of("dataset") is None
    record = dataset_record(dg.build_asset_context(), store)
    assert record.version == version.md5 and record.created
    assert store.record_of("dataset").commit == record.commit
    assert git(repo, "show", f"{record.commit}:dvc.lock") == (repo / "dvc.lock").read_text()
