"""`dataset` through Dagster and DVC in a throwaway git repo laid out like this one: deterministic
versions, seed-dependent spatial splits, no leakage, and `dvc pull` restoring the exact bytes."""

import hashlib
import shutil
import subprocess
from pathlib import Path

import dagster as dg

from geoseg_assets.definitions import build_defs
from resources.data_store import DataStore
from resources.dvc_store import DvcStore
from tests.support.project import build



def git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def digests(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def split_of(manifest) -> dict:
    return {(t["region"], t["date"], t["tile_id"]): split for split, c in manifest["splits"].items() for t in c["tiles"]}


def test_dataset_versions_splits_and_round_trips_through_dvc(project):
    repo, tmp, _, _ = project
    meta, checks, manifest = build(project)
    assert checks == {"dataset_no_leakage": True, "dataset_class_coverage": True}
    lock = (repo / "dvc.lock").read_text()
    version = meta["dataset_version"].value
    assert version.endswith(".dir") and version in lock
    # recorded in git on its own ref (code commit + this lock), shown with the command that restores it
    assert meta["dataset_ref"].value == f"refs/geoseg/datasets/{version[:-4]}"
    assert git(repo, "rev-parse", meta["dataset_ref"].value).strip() == meta["dataset_commit"].value
    assert git(repo, "show", f"{meta['dataset_commit'].value}:dvc.lock") == lock
    assert f"python -m geoseg_assets.reproduce --dataset {version}" in meta["restore_command"].value
    assert "no git remote `origin`" in meta["dataset_ref_pushed"].value
    counts = manifest["tile_counts"]
    assert sum(counts.values()) == 4 * 16 and min(counts.values()) > 0  # 1024 px -> 16 tiles per partition, all labelled
    assert {meta["tiles_train"].value, meta["tiles_val"].value, meta["tiles_test"].value} <= set(counts.values())
    assert len(split_of(manifest)) == 64  # no tile id in two splits
    first_bytes = digests(repo / "data/store/dataset")

    again, _, _ = build(project)
    assert again["dataset_version"].value == version  # same inputs, same DVC hash
    other, _, other_manifest = build(project, seed=7)
    assert other["dataset_version"].value != version
    assert split_of(other_manifest) != split_of(manifest)
    back, _, _ = build(project)
    assert back["dataset_version"].value == version and digests(repo / "data/store/dataset") == first_bytes

    # `dvc pull` after losing the data and the cache gives the same bytes ...
    shutil.rmtree(repo / "data/store/dataset")
    shutil.rmtree(repo / ".dvc/cache")
    DvcStore(repo_dir=str(repo), remote_url=str(tmp / "remote")).pull("dataset")
    assert digests(repo / "data/store/dataset") == first_bytes
    # ... and so does a second clone of the repository pointed at the same remote.
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "dataset version")
    clone = tmp / "clone"
    git(tmp, "clone", "-q", str(repo), str(clone))
    DvcStore(repo_dir=str(clone), remote_url=str(tmp / "remote")).pull("dataset")
    assert digests(clone / "data/store/dataset") == first_bytes


def test_dataset_outside_the_dvc_stage_out_fails_clearly(project, tmp_path):
    _, _, instance, resources = project
    moved = {**resources, "data_store": DataStore(root=str(tmp_path / "elsewhere"))}
    job = build_defs(moved).resolve_job_def("dataset_job")
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE][0]
    assert "dvc.yaml" in failure.event_specific_data.error.message and "version_with_dvc" in failure.event_specific_data.error.message


def test_a_failed_dvc_push_keeps_the_earlier_dataset_and_dvc_lock_byte_identical(project, tmp_path):
    """A new dataset replaces the old one only with its version recorded and pushed: when `dvc push` fails
    (a remote whose `files` entry is a file, not a folder), the old folder and dvc.lock come back unchanged,
    so the next model cannot record a version whose bytes are not the ones on disk."""
    repo, _, instance, resources = project
    build(project)
    before, lock = digests(repo / "data/store/dataset"), (repo / "dvc.lock").read_bytes()
    records = git(repo, "for-each-ref", "refs/geoseg")
    broken = tmp_path / "broken-remote"
    broken.mkdir()
    (broken / "files").write_text("not a folder")
    job = build_defs({**resources, "dvc": DvcStore(repo_dir=str(repo), remote_url=str(broken))}).resolve_job_def(
        "dataset_job")
    result = job.execute_in_process(instance=instance, raise_on_error=False,
                                    run_config=dg.RunConfig(ops={"dataset": {"config": {"seed": 7}}}))
    assert not result.success
    failure = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE][0]
    message = failure.event_specific_data.error.message
    assert "push" in message and "were kept as they were" in message and str(repo / "dvc.lock") in message
    assert not [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert digests(repo / "data/store/dataset") == before and (repo / "dvc.lock").read_bytes() == lock
    assert git(repo, "for-each-ref", "refs/geoseg") == records  # no record of a version that was not published
    assert not [p.name for p in (repo / "data/store").iterdir() if p.name.startswith(".dataset")]
    assert not list((repo / "data/store/.tmp").glob("dataset-*")), "the aside build was left behind"


def test_a_record_that_cannot_be_pushed_is_a_warning_not_a_failed_dataset(project, tmp_path):
    """The git record is pushed to `origin` when there is one; an unreachable origin leaves the record local and
    says how to push it, and the dataset is published all the same."""
    repo = project[0]
    git(repo, "remote", "add", "origin", str(tmp_path / "gone.git"))
    try:
        meta, _, _ = build(project, seed=3)
    finally:
        git(repo, "remote", "remove", "origin")
    ref, pushed = meta["dataset_ref"].value, meta["dataset_ref_pushed"].value
    assert f"{ref} was recorded but not pushed to `origin`" in pushed and f"git push origin {ref}:{ref}" in pushed
    assert git(repo, "rev-parse", ref).strip() == meta["dataset_commit"].value
