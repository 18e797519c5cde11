"""resources/git_refs.py on throwaway git repositories: a dataset record is a commit on its own ref whose
parent is HEAD, made without touching the branch, the index or the working tree; idempotent; pushed to a
bare `origin` when there is one (a failed push is a warning); the code commit ignores only our own lock."""

import hashlib

import pytest

from resources.git_refs import (GitError, blob_at, code_commit, fetch_record, find_record, git as run_git, has_remote,
                                push_record, record_dataset, record_ref)
from tests.support.repos import git, new_git_repo

OLD = "00000000000000000000000000000000.dir"
V1 = "0123456789abcdef0123456789abcdef.dir"
V2 = "fedcba9876543210fedcba9876543210.dir"


def lock_for(version: str, tiles: str = "11111111111111111111111111111111.dir") -> str:
    """A dvc.lock as `dvc commit dataset` writes it (deps and the out's hash)."""
    return (f"schema: '2.0'\nstages:\n  dataset:\n    cmd: build\n    deps:\n    - path: data/store/tiles\n"
            f"      hash: md5\n      md5: {tiles}\n    outs:\n    - path: data/store/dataset\n      hash: md5\n"
            f"      md5: {version}\n")


@pytest.fixture
def repo(tmp_path):
    """Like the project: code and the dvc.lock of an earlier dataset committed on the branch."""
    path = new_git_repo(tmp_path / "repo")
    (path / "dvc.lock").write_text(lock_for(OLD))
    (path / "code.py").write_text("print('v1')\n")
    git(path, "add", "dvc.lock", "code.py")
    git(path, "commit", "-qm", "code + the lock of an earlier dataset")
    return path


def snapshot(repo):
    """Everything of the user's a record must not change: working tree bytes, index bytes, HEAD, branches, status."""
    files = {p.relative_to(repo).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(repo.rglob("*")) if p.is_file() and ".git" not in p.relative_to(repo).parts}
    return (files, (repo / ".git" / "index").read_bytes(), (repo / ".git" / "HEAD").read_bytes(),
            git(repo, "for-each-ref", "refs/heads"),
            git(repo, "--no-optional-locks", "status", "--porcelain", "--untracked-files=all"))  # no index refresh


def parents(repo, commit):
    return git(repo, "rev-list", "--parents", "-n", "1", commit).split()[1:]


def test_a_record_is_a_commit_on_its_own_ref_on_top_of_head_and_touches_nothing_else(repo):
    head = git(repo, "rev-parse", "HEAD").strip()
    (repo / "dvc.lock").write_text(lock_for(V1))  # what `dvc commit dataset` leaves in the working tree
    before = snapshot(repo)
    record = record_dataset(repo, V1)
    assert snapshot(repo) == before  # branch, index, working tree: byte for byte
    assert record.ref == "refs/geoseg/datasets/0123456789abcdef0123456789abcdef" == record_ref(V1)
    assert record.created and record.code_commit == head and record.version == V1
    assert git(repo, "rev-parse", record.ref).strip() == record.commit
    assert parents(repo, record.commit) == [head]
    assert git(repo, "show", f"{record.commit}:dvc.lock") == lock_for(V1)
    assert git(repo, "show", f"{record.commit}:code.py") == "print('v1')\n"
    assert git(repo, "ls-tree", "-r", "--name-only", record.commit) == git(repo, "ls-tree", "-r", "--name-only", head)
    assert git(repo, "diff", "--name-only", head, record.commit).split() == ["dvc.lock"]
    assert "Geoseg-Dataset-Version: " + V1 in git(repo, "log", "-1", "--format=%B", record.commit)

    again = record_dataset(repo, V1)  # idempotent: same version, same lock -> the same record, not a new one
    assert (again.commit, again.created) == (record.commit, False)
    assert find_record(repo, V1) == again and find_record(repo, V2) is None
    assert snapshot(repo) == before

    # The code commit of a model: our own lock (the recorded one) is not a code change, anything else is.
    ours = {"dvc.lock": blob_at(repo, record.commit, "dvc.lock")}
    assert code_commit(repo, ours) == head
    assert code_commit(repo) == f"{head}-dirty"  # unrecorded, the rewritten lock would count
    (repo / "dvc.lock").write_text(lock_for(V2))
    assert code_commit(repo, ours) == f"{head}-dirty"  # another lock than the recorded one
    (repo / "dvc.lock").write_text(lock_for(V1))
    (repo / "code.py").write_text("print('edited')\n")
    assert code_commit(repo, ours) == f"{head}-dirty"
    assert snapshot(repo)[1] == before[1]  # the dirty check did not even refresh the index's stat cache


def test_uncommitted_code_changes_still_record_the_lock_on_top_of_the_committed_code(repo):
    head = git(repo, "rev-parse", "HEAD").strip()
    (repo / "code.py").write_text("print('edited, not committed')\n")
    (repo / "staged.py").write_text("x = 1\n")
    git(repo, "add", "staged.py")
    (repo / "dvc.lock").write_text(lock_for(V1))
    before = snapshot(repo)
    record = record_dataset(repo, V1)
    assert snapshot(repo) == before
    assert parents(repo, record.commit) == [head]
    assert git(repo, "show", f"{record.commit}:code.py") == "print('v1')\n"  # HEAD's code, not the edit
    assert "staged.py" not in git(repo, "ls-tree", "-r", "--name-only", record.commit)
    assert git(repo, "show", f"{record.commit}:dvc.lock") == lock_for(V1)


def test_the_same_output_with_another_lock_moves_the_ref_forward_and_keeps_the_first_record(repo):
    (repo / "dvc.lock").write_text(lock_for(V1))
    first = record_dataset(repo, V1)
    (repo / "notes.md").write_text("a code commit\n")
    git(repo, "add", "notes.md")
    git(repo, "commit", "-qm", "code moves on")
    head = git(repo, "rev-parse", "HEAD").strip()
    assert record_dataset(repo, V1).commit == first.commit  # same lock bytes: still the first record
    (repo / "dvc.lock").write_text(lock_for(V1, tiles="22222222222222222222222222222222.dir"))  # same bytes, other deps
    second = record_dataset(repo, V1)
    assert second.created and second.commit != first.commit and second.code_commit == head
    assert parents(repo, second.commit) == [head, first.commit]  # fast-forward; the first record stays reachable
    assert git(repo, "rev-parse", first.ref).strip() == second.commit


def test_a_repository_without_commits_gets_a_root_record(tmp_path):
    repo = tmp_path / "empty"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "dvc.lock").write_text(lock_for(V1))
    record = record_dataset(repo, V1)
    assert record.code_commit is None and parents(repo, record.commit) == []
    assert git(repo, "ls-tree", "-r", "--name-only", record.commit).split() == ["dvc.lock"]
    assert code_commit(repo) == "unknown"


def test_the_record_is_pushed_to_a_bare_origin_with_its_code_commit(repo, tmp_path):
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(origin))
    git(repo, "remote", "add", "origin", str(origin))
    (repo / "dvc.lock").write_text(lock_for(V1))
    record = record_dataset(repo, V1)
    pushed = push_record(repo, record.ref)
    assert pushed.ok and pushed.message == f"{record.ref} pushed to `origin`"
    assert git(origin, "rev-parse", record.ref).strip() == record.commit
    git(origin, "cat-file", "-e", f"{record.code_commit}^{{commit}}")  # no branch was pushed: the ref brought it
    assert push_record(repo, record.ref).ok  # again: nothing to do, still fine

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    assert find_record(clone, V1) is None  # a plain clone does not fetch refs/geoseg/*
    assert fetch_record(clone, V1) == record.commit and find_record(clone, V1).commit == record.commit
    assert fetch_record(clone, V2) is None  # not on the remote: None, not an error


def test_a_failing_push_is_a_warning_naming_the_ref_and_the_command(repo, tmp_path):
    (repo / "dvc.lock").write_text(lock_for(V1))
    record = record_dataset(repo, V1)
    assert push_record(repo, record.ref).status == "no-remote"  # no origin: stays local, nothing failed
    git(repo, "remote", "add", "origin", str(tmp_path / "gone.git"))
    failed = push_record(repo, record.ref)
    assert failed.status == "failed" and not failed.ok
    assert record.ref in failed.message and f"git push origin {record.ref}:{record.ref}" in failed.message
    assert find_record(repo, V1).commit == record.commit  # the local record stands


def test_bad_input_names_the_value_and_the_fix(repo, tmp_path):
    with pytest.raises(GitError, match="not a DVC dataset version"):
        record_ref("../../heads/main")
    with pytest.raises(GitError, match="not a DVC dataset version"):
        record_dataset(repo, "0123456789abcdef0123456789abcdef")  # a file hash, not a folder's
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(GitError, match=r"(?s)git rev-parse --show-toplevel.*git init"):
        record_dataset(plain, V1)
    (repo / "dvc.lock").unlink()
    with pytest.raises(GitError, match="dvc.lock does not exist"):
        record_dataset(repo, V1)
    with pytest.raises(GitError, match="not a git remote name"):
        has_remote(repo, "--upload-pack=touch /tmp/x")
    with pytest.raises(GitError, match="took longer than"):
        run_git(repo, "status", timeout=1e-9)
