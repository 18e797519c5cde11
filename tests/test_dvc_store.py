"""DvcStore against the real dvc CLI and a real local remote: versions, push/pull round trips, clones, bad input."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from resources.dvc_store import DvcError, DvcStore

DATASET = "data/store/dataset"


def git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def new_git_repo(path):
    path.mkdir(parents=True)
    git(path, "init", "-q")
    git(path, "config", "user.name", "geoseg tests")
    git(path, "config", "user.email", "tests@geoseg.invalid")
    (path / ".gitignore").write_text("/data/\n")  # the data root is git-ignored, like the real repo
    git(path, "add", ".gitignore")
    git(path, "commit", "-qm", "init")
    return path


def write_dataset(folder, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    np.save(folder / "images.npy", rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8))
    np.save(folder / "masks.npy", rng.integers(0, 5, size=(4, 32, 32), dtype=np.uint8))
    (folder / "manifest.json").write_text(json.dumps({"tiles": 4, "seed": seed}))


def digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def tracked(tmp_path):
    """A git repo with a tracked, pushed dataset; the remote lives outside the repo so clones share it."""
    repo = new_git_repo(tmp_path / "repo")
    store = DvcStore(repo_dir=str(repo), remote_url=str(tmp_path / "remote"))
    store.ensure_repo()
    write_dataset(repo / DATASET)
    return store, repo, store.track(DATASET)


def test_version_follows_the_bytes(tracked):
    store, repo, first = tracked
    assert first.md5.endswith(".dir") and len(first.md5) == 36
    assert first.pointer == repo / "datasets" / "dataset.dvc" and first.nfiles == 3
    assert store.version(DATASET) == first.md5
    assert store.track(DATASET).md5 == first.md5  # same bytes, same version
    masks = repo / DATASET / "masks.npy"
    data = bytearray(masks.read_bytes())
    data[-1] ^= 1
    masks.write_bytes(bytes(data))
    changed = store.track(DATASET)
    assert changed.md5 != first.md5 and store.version(DATASET) == changed.md5
    # The pointer is committable (the data root is ignored) and git does not see the data itself.
    assert git(repo, "status", "--porcelain", "--untracked-files=all").count("data/store") == 0
    assert "datasets/dataset.dvc" in git(repo, "status", "--porcelain", "--untracked-files=all")
    assert "analytics = false" in (repo / ".dvc" / "config").read_text()


def test_pull_restores_dataset_and_cache_byte_for_byte(tracked, tmp_path):
    store, repo, version = tracked
    before = digests(repo / DATASET)
    assert len(list((tmp_path / "remote").rglob("*.dir"))) == 1  # pushed to the real remote
    shutil.rmtree(repo / DATASET)
    shutil.rmtree(repo / ".dvc" / "cache")
    store.pull(DATASET)
    assert digests(repo / DATASET) == before
    assert (repo / ".dvc" / "cache" / "files" / "md5" / version.md5[:2] / version.md5[2:]).is_file()
    # Local edits are not overwritten silently; force=True restores the recorded bytes.
    (repo / DATASET / "manifest.json").write_text("{}")
    with pytest.raises(DvcError, match="force=True"):
        store.pull(DATASET)
    store.pull(DATASET, force=True)
    assert digests(repo / DATASET) == before


def test_fresh_clone_pulls_the_same_bytes(tracked, tmp_path):
    store, repo, version = tracked
    before = digests(repo / DATASET)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "track dataset")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert not (clone / DATASET).exists()
    # Plain `dvc pull`, as a user would run it: the committed .dvc/config knows the remote.
    subprocess.run([sys.executable, "-m", "dvc", "pull"], cwd=clone, check=True, capture_output=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert digests(clone / DATASET) == before
    assert DvcStore(repo_dir=str(clone), remote_url=str(tmp_path / "remote")).version(DATASET) == version.md5


def test_bad_repo_and_remote_name_the_path_and_the_fix(tmp_path):
    plain = tmp_path / "not-a-repo"
    plain.mkdir()
    with pytest.raises(DvcError, match=r"not-a-repo.*git init"):
        DvcStore(repo_dir=str(plain), remote_url=str(tmp_path / "r")).ensure_repo()
    with pytest.raises(DvcError, match=r"missing.*does not exist"):
        DvcStore(repo_dir=str(tmp_path / "missing"), remote_url=str(tmp_path / "r")).ensure_repo()
    repo = new_git_repo(tmp_path / "repo")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(DvcError, match=r"a-file/remote.*remote_url"):
        DvcStore(repo_dir=str(repo), remote_url=str(tmp_path / "a-file" / "remote")).ensure_repo()
    with pytest.raises(DvcError, match="not inside the repository"):
        DvcStore(repo_dir=str(repo), remote_url=str(tmp_path / "r")).track(tmp_path)


def test_pull_from_a_remote_without_the_data_fails_with_command_and_fix(tracked, tmp_path):
    store, repo, _ = tracked
    shutil.rmtree(repo / DATASET)
    shutil.rmtree(repo / ".dvc" / "cache")
    empty = DvcStore(repo_dir=str(repo), remote_url=str(tmp_path / "empty-remote"))
    with pytest.raises(DvcError) as err:
        empty.pull(DATASET)
    message = str(err.value)
    assert "dvc pull" in message and "exit code" in message and "remote_url" in message
    assert "empty-remote" in (repo / ".dvc" / "config").read_text()
