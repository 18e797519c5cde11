"""DvcStore against the real dvc CLI and a real local remote: versions, push/pull round trips, clones, bad input."""

import hashlib
import shutil

import pytest

from resources.dvc_store import DvcError, DvcStore, dvc_dir_hash
from tests.support.repos import DATASET, digests, dvc, git, new_git_repo, write_npy_dataset


def tmp_remote(repo):
    return repo.parent / "remote"


def test_version_follows_the_bytes(tracked):
    store, repo, first = tracked
    assert first.md5.endswith(".dir") and len(first.md5) == 36
    assert first.pointer == repo / "dvc.lock" and first.nfiles == 3
    assert store.version("dataset") == first.md5
    assert store.commit("dataset").md5 == first.md5  # same bytes, same version
    masks = repo / DATASET / "masks.npy"
    data = bytearray(masks.read_bytes())
    data[-1] ^= 1
    masks.write_bytes(bytes(data))
    changed = store.commit("dataset")
    assert changed.md5 != first.md5 and store.version("dataset") == changed.md5
    # dvc.lock is committable (the data root is ignored) and git does not see the data itself.
    status = git(repo, "status", "--porcelain", "--untracked-files=all")
    assert status.count("data/store") == 0 and "dvc.lock" in status
    config = (repo / ".dvc" / "config").read_text()
    assert "analytics = false" in config and "url = ../data/dvc-remote" in config  # no machine paths committed
    assert str(tmp_remote(repo)) in (repo / ".dvc" / "config.local").read_text()


def test_each_version_is_recorded_in_git_and_the_code_commit_stays_clean(tracked, tmp_path):
    """`record` keeps a version restorable after dvc.lock moves on, and our own dvc.lock write is not a code change."""
    store, repo, first = tracked
    assert dvc_dir_hash(repo / DATASET) == first.md5  # the same hash DVC computed, without DVC
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "code, DVC config and the first dataset's lock")
    head = git(repo, "rev-parse", "HEAD").strip()
    assert store.commit_of_code("dataset") == head
    write_npy_dataset(repo / DATASET, seed=1)
    second = store.commit("dataset")  # rewrites dvc.lock in the working tree
    assert store.commit_of_code("dataset") == f"{head}-dirty" and store.record_of("dataset") is None
    record = store.record("dataset")
    assert record.version == second.md5 and record.ref == f"refs/geoseg/datasets/{second.md5[:-4]}"
    assert store.record_of("dataset").commit == record.commit
    assert store.commit_of_code("dataset") == head  # the lock is the recorded one
    assert store.commit_of_code() == f"{head}-dirty"  # without the stage, any change counts, as before
    assert store.push_record(record).status == "no-remote"
    assert store.remote_location() == str(tmp_path / "remote")
    assert store.cache_location() == repo / ".dvc" / "cache"


def test_pull_restores_dataset_and_cache_byte_for_byte(tracked, tmp_path):
    store, repo, version = tracked
    before = digests(repo / DATASET)
    assert len(list((tmp_path / "remote").rglob("*.dir"))) == 1  # pushed to the real remote
    shutil.rmtree(repo / DATASET)
    shutil.rmtree(repo / ".dvc" / "cache")
    store.pull("dataset")
    assert digests(repo / DATASET) == before
    assert (repo / ".dvc" / "cache" / "files" / "md5" / version.md5[:2] / version.md5[2:]).is_file()
    # Local edits are not overwritten silently; force=True restores the recorded bytes.
    (repo / DATASET / "manifest.json").write_text("{}")
    with pytest.raises(DvcError, match="force=True"):
        store.pull("dataset")
    store.pull("dataset", force=True)
    assert digests(repo / DATASET) == before


def test_fresh_clone_pulls_the_same_bytes(tracked, tmp_path):
    store, repo, version = tracked
    before = digests(repo / DATASET)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "track dataset")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert not (clone / DATASET).exists()
    # A teammate points the clone at the shared remote (config.local), then runs plain `dvc pull`.
    dvc(clone, "remote", "add", "--local", "-f", "-d", "local", str(tmp_path / "remote"))
    dvc(clone, "pull", "dataset")
    assert digests(clone / DATASET) == before
    assert DvcStore(repo_dir=str(clone), remote_url=str(tmp_path / "remote")).version("dataset") == version.md5


def test_default_remote_lives_in_the_checkouts_data_root(tmp_path):
    repo = new_git_repo(tmp_path / "repo")
    store = DvcStore(repo_dir=str(repo))
    write_npy_dataset(repo / DATASET, seed=3)
    before = digests(repo / DATASET)
    version = store.commit("dataset")
    assert list((repo / "data" / "dvc-remote").rglob("*.dir"))[0].name == version.md5[2:]
    shutil.rmtree(repo / DATASET)
    shutil.rmtree(repo / ".dvc" / "cache")
    store.pull("dataset")
    assert digests(repo / DATASET) == before


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
    with pytest.raises(DvcError, match="no stage 'model'"):
        DvcStore(repo_dir=str(repo), remote_url=str(tmp_path / "r")).commit("model")
    with pytest.raises(DvcError, match="does not exist; build the dataset first"):
        DvcStore(repo_dir=str(repo), remote_url=str(tmp_path / "r")).commit("dataset")


def test_config_files_read_as_dvc_reads_them_and_a_broken_one_is_named(tracked, tmp_path):
    """DvcStore reads .dvc/config and .dvc/config.local itself (no dvc process): the same settings `dvc config
    --list` prints, relative paths resolved against .dvc/; a file DVC could not parse names itself and the fix."""
    store, repo, _ = tracked
    for level in ("project", "local"):
        listed = dvc(repo, "config", f"--{level}", "--list")
        assert store._config(level) == dict(line.split("=", 1) for line in listed.splitlines()), level
    assert store._config("project")["remote.local.url"] == str(repo / "data" / "dvc-remote")  # ../data/dvc-remote
    assert DvcStore(repo_dir=str(repo)).remote_location() == str(tmp_path / "remote")  # config.local over config
    (repo / ".dvc" / "config.local").write_text("[core\n  remote = local\n")
    with pytest.raises(DvcError, match=r"config\.local is not a valid DVC config file .*delete it"):
        store.ensure_repo()


def test_pull_from_a_remote_without_the_data_fails_with_command_and_fix(tracked, tmp_path):
    store, repo, _ = tracked
    shutil.rmtree(repo / DATASET)
    shutil.rmtree(repo / ".dvc" / "cache")
    empty = DvcStore(repo_dir=str(repo), remote_url=str(tmp_path / "empty-remote"))
    with pytest.raises(DvcError) as err:
        empty.pull("dataset")
    message = str(err.value)
    assert "dvc pull" in message and "exit code" in message and "remote_url" in message
    assert "empty-remote" in (repo / ".dvc" / "config.local").read_text()


def test_a_corrupted_remote_object_fails_the_pull_clearly_and_never_poisons_the_cache(tracked, tmp_path):
    """One object in the remote rewritten with other bytes (bit rot, a bad sync): the pull re-hashes it,
    fails naming the object and the fix, and neither the cache nor the workspace holds the bad bytes; even
    plain `dvc pull` in a clone verifies, since the committed config turns `verify` on."""
    store, repo, version = tracked
    good = (repo / DATASET / "manifest.json").read_bytes()
    md5 = hashlib.md5(good).hexdigest()
    remote_object = tmp_path / "remote" / "files" / "md5" / md5[:2] / md5[2:]
    assert remote_object.is_file()
    remote_object.write_bytes(b'{"tiles": 4, "seed": 666}')
    shutil.rmtree(repo / DATASET)
    shutil.rmtree(repo / ".dvc" / "cache")
    with pytest.raises(DvcError) as failed:
        store.pull("dataset")
    message = str(failed.value)
    assert "do not match their hash" in message and md5 in message and "dvc push" in message
    cached = repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    assert not cached.exists(), "the corrupted bytes entered the cache under the good hash"
    assert not (repo / DATASET / "manifest.json").exists()
    assert "verify = true" in (repo / ".dvc" / "config").read_text()

    remote_object.write_bytes(good)  # repaired remote: the same call now restores the exact bytes
    store.pull("dataset")
    assert (repo / DATASET / "manifest.json").read_bytes() == good
