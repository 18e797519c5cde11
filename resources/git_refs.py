"""Git records of dataset versions: one commit per DVC output hash on `refs/geoseg/datasets/<md5>`.

Why: `dvc.lock` pins the dataset, but materializing `dataset` rewrites it in the working tree, and the code
commit a model was trained on holds another dataset's lock (or none). So every committed dataset version
gets a commit of its own, made with git plumbing only:

* tree = the tree of HEAD (the code) with `dvc.yaml` and `dvc.lock` replaced by their working-tree bytes,
  built in a temporary index (`GIT_INDEX_FILE`), so the user's branch, index and working tree are never
  touched; parent = HEAD, so `git checkout refs/geoseg/datasets/<md5>` gives that code plus that lock and
  `dvc pull dataset` restores the bytes;
* the ref is named by the DVC hash (content-addressed): recording the same version again with the same
  lock is a no-op; a lock that differs for the same output (other dep hashes) makes a new commit whose
  second parent is the earlier record, so the ref only moves forward and every record stays reachable;
* `push_record` pushes the ref (and with it the code commit under it) to the git remote when there is one.

`code_commit` is the `geoseg.git_commit` lineage tag: HEAD, with `-dirty` for local changes to tracked
files, except a file whose bytes equal the given blob (our own `dvc.lock` write, recorded above).

Pure git (no Dagster, no DVC): every call runs `git` with a timeout, closed stdin and no prompts, and a
failure raises GitError naming the command and the fix.
"""

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

RECORD_PREFIX = "refs/geoseg/datasets/"
RECORDED_FILES = ("dvc.yaml", "dvc.lock")  # what `dvc pull <stage>` reads and a dataset build may change
DEFAULT_TIMEOUT_S = 120.0
STDERR_TAIL = 1500
_VERSION = re.compile(r"^([0-9a-f]{32})\.dir$")
# Used only when git knows no identity for this repo (a server account): the record is a machine's commit.
FALLBACK_IDENTITY = {"GIT_AUTHOR_NAME": "geoseg", "GIT_AUTHOR_EMAIL": "geoseg@localhost",
                     "GIT_COMMITTER_NAME": "geoseg", "GIT_COMMITTER_EMAIL": "geoseg@localhost"}
# Never wait for a password: a remote that needs one fails at once (the push is then a warning). No
# opportunistic index refresh either (`git status`/`diff` would rewrite the stat cache of the user's index).
QUIET_ENV = {"GIT_TERMINAL_PROMPT": "0", "GCM_INTERACTIVE": "never", "GIT_OPTIONAL_LOCKS": "0"}


class GitError(RuntimeError):
    """A git command failed or a record is not what it should be; the message names the command and the fix."""


@dataclass(frozen=True)
class DatasetRecord:
    """The git record of one dataset version."""

    version: str            # DVC hash of the output folder, `<md5>.dir`
    ref: str                # refs/geoseg/datasets/<md5>
    commit: str             # the record commit (tree: code + that dvc.lock)
    code_commit: str | None  # its first parent: HEAD when it was recorded (None in a repo without commits)
    created: bool = True    # False when an identical record already existed


@dataclass(frozen=True)
class PushResult:
    status: str   # "pushed", "no-remote" or "failed"
    message: str

    @property
    def ok(self) -> bool:
        return self.status == "pushed"


def record_ref(version: str) -> str:
    """`refs/geoseg/datasets/<md5>` for a DVC directory hash `<md5>.dir` (anything else is refused: the
    value may come from a tag or a command line and becomes a ref name)."""
    match = _VERSION.match(str(version))
    if not match:
        raise GitError(f"{version!r} is not a DVC dataset version (32 hex digits + '.dir', as in dvc.lock and the "
                       "`geoseg.dataset_version` tag); pass the version exactly as recorded")
    return RECORD_PREFIX + match.group(1)


def git(repo, *args: str, env: dict | None = None, timeout: float = DEFAULT_TIMEOUT_S, check: bool = True,
        fix: str = "run the command by hand in the repository for details") -> subprocess.CompletedProcess:
    """Run `git <args>` in `repo`; raise GitError naming the command, its exit code, stderr and `fix`."""
    shown = "git " + " ".join(args)
    try:
        done = subprocess.run(["git", *args], cwd=repo, env={**os.environ, **QUIET_ENV, **(env or {})},
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise GitError(f"`{shown}` in {repo} took longer than {timeout:.0f} s; {fix}") from err
    except OSError as err:
        raise GitError(f"`{shown}` in {repo} could not start ({err.strerror}); install git and check that "
                       f"{repo} exists") from err
    if check and done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip())[-STDERR_TAIL:]
        raise GitError(f"`{shown}` in {repo} failed with exit code {done.returncode}:\n{tail}\nFix: {fix}")
    return done


def _out(repo, *args: str, **kwargs) -> str:
    return git(repo, *args, **kwargs).stdout.strip()


def resolve(repo, rev: str, timeout: float = DEFAULT_TIMEOUT_S) -> str | None:
    """The commit `rev` names in `repo`, or None if there is none."""
    done = git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False, timeout=timeout)
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def blob_at(repo, commit: str, path: str, timeout: float = DEFAULT_TIMEOUT_S) -> str | None:
    """The blob id of `path` in `commit`, or None if the commit has no such file."""
    done = git(repo, "rev-parse", "--verify", "--quiet", f"{commit}:{path}", check=False, timeout=timeout)
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def show_file(repo, commit: str, path: str, timeout: float = DEFAULT_TIMEOUT_S) -> str | None:
    """The text of `path` in `commit`, or None if the commit has no such file."""
    done = git(repo, "show", f"{commit}:{path}", check=False, timeout=timeout)
    return done.stdout if done.returncode == 0 else None


def toplevel(repo, timeout: float = DEFAULT_TIMEOUT_S) -> Path:
    return Path(_out(repo, "rev-parse", "--show-toplevel", timeout=timeout,
                     fix=f"{repo} must be inside a git repository (`git init` there)"))


def find_record(repo, version: str, timeout: float = DEFAULT_TIMEOUT_S) -> DatasetRecord | None:
    """The local record of `version`, or None."""
    ref = record_ref(version)
    commit = resolve(repo, ref, timeout)
    if commit is None:
        return None
    parent = resolve(repo, f"{commit}^1", timeout)
    return DatasetRecord(version, ref, commit, parent, created=False)


def _identity_env(repo, timeout: float) -> dict:
    """{} when git knows who commits here, else the fallback identity (only for variables not already set)."""
    for var in ("GIT_AUTHOR_IDENT", "GIT_COMMITTER_IDENT"):
        if git(repo, "var", var, check=False, timeout=timeout).returncode != 0:
            return {k: v for k, v in FALLBACK_IDENTITY.items() if k not in os.environ}
    return {}


def record_dataset(repo, version: str, stage: str = "dataset", files: tuple[str, ...] = RECORDED_FILES,
                   timeout: float = DEFAULT_TIMEOUT_S) -> DatasetRecord:
    """Record the working tree's `files` (dvc.yaml, dvc.lock) on top of HEAD as the commit of
    `refs/geoseg/datasets/<md5>`, without touching the branch, the index or the working tree.

    The caller makes sure dvc.lock names `version` (DvcStore.record does). Idempotent: an existing record
    with the same bytes of `files` is returned as it is (`created=False`)."""
    ref = record_ref(version)
    root = toplevel(repo, timeout)
    present = [name for name in files if (root / name).is_file()]
    if "dvc.lock" in files and "dvc.lock" not in present:
        raise GitError(f"{root / 'dvc.lock'} does not exist: nothing to record for {version}; commit the stage "
                       "with DVC first")
    head = resolve(root, "HEAD", timeout)
    existing = resolve(root, ref, timeout)
    blobs = {name: _out(root, "hash-object", "-w", "--", name, timeout=timeout,
                        fix=f"check that {root / '.git'} is writable") for name in present}
    if existing is not None and all(blob_at(root, existing, name, timeout) == blob for name, blob in blobs.items()):
        return DatasetRecord(version, ref, existing, resolve(root, f"{existing}^1", timeout), created=False)
    with tempfile.TemporaryDirectory(prefix="geoseg-record-") as tmp:
        index = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}  # never the user's index
        git(root, "read-tree", *([head] if head else ["--empty"]), env=index, timeout=timeout)
        for name, blob in blobs.items():
            git(root, "update-index", "--add", "--cacheinfo", f"100644,{blob},{name}", env=index, timeout=timeout)
        tree = _out(root, "write-tree", env=index, timeout=timeout)
    parents = list(dict.fromkeys(p for p in (head, existing) if p))
    message = (f"geoseg record: {stage} {version}\n\n"
               f"{' and '.join(present)} pinning the DVC output {version} of stage `{stage}`, on top of code commit "
               f"{head or '(none: the repository had no commit)'}.\n"
               f"Restore the bytes: git checkout {ref} && dvc pull {stage}\n"
               + (f"Earlier record of the same output (other lock): {existing}\n" if existing else "")
               + f"\nGeoseg-Dataset-Version: {version}\nGeoseg-Code-Commit: {head or 'none'}\n")
    commit = _out(root, "commit-tree", tree, *[a for p in parents for a in ("-p", p)], "-m", message,
                  env=_identity_env(root, timeout), timeout=timeout,
                  fix="set an identity (`git config user.name ...`, `git config user.email ...`) and check that the "
                      "repository is writable")
    done = git(root, "update-ref", "-m", f"geoseg: record {stage} {version}", ref, commit, existing or "",
               check=False, timeout=timeout)
    if done.returncode != 0:  # another run recorded the same version meanwhile: theirs stands if it holds our bytes
        again = resolve(root, ref, timeout)
        if again and all(blob_at(root, again, name, timeout) == blob for name, blob in blobs.items()):
            return DatasetRecord(version, ref, again, resolve(root, f"{again}^1", timeout), created=False)
        raise GitError(f"`git update-ref {ref} {commit}` in {root} failed ({done.stderr.strip()[-STDERR_TAIL:]}); "
                       "another process moved the ref meanwhile: materialize the dataset again")
    return DatasetRecord(version, ref, commit, head, created=True)


def _check_remote_name(remote: str) -> None:
    if not remote or remote.startswith("-"):
        raise GitError(f"{remote!r} is not a git remote name; use a name from `git remote -v`, e.g. origin")


def has_remote(repo, remote: str, timeout: float = DEFAULT_TIMEOUT_S) -> bool:
    _check_remote_name(remote)
    return git(repo, "remote", "get-url", remote, check=False, timeout=timeout).returncode == 0


def push_command(ref: str, remote: str) -> str:
    return f"git push {remote} {ref}:{ref}"


def fetch_command(ref: str, remote: str) -> str:
    return f"git fetch {remote} {ref}:{ref}"


def push_record(repo, ref: str, remote: str = "origin", timeout: float = DEFAULT_TIMEOUT_S) -> PushResult:
    """Push the record ref (and the code commit under it) to `remote`. Never raises for the push itself: a
    missing remote or a failed push is returned with the command that pushes it by hand."""
    by_hand = f"push it by hand from {repo}: `{push_command(ref, remote)}`"
    if not has_remote(repo, remote, timeout):
        return PushResult("no-remote", f"{ref} stays local: the repository has no git remote `{remote}`; once it "
                                       f"has one, {by_hand}")
    try:
        git(repo, "push", "--quiet", remote, f"{ref}:{ref}", timeout=timeout)
    except GitError as err:
        return PushResult("failed", f"{ref} was recorded but not pushed to `{remote}`: {err}\n"
                                    f"Without it a fresh clone cannot restore this dataset; {by_hand}")
    return PushResult("pushed", f"{ref} pushed to `{remote}`")


def fetch_record(repo, version: str, remote: str = "origin", timeout: float = DEFAULT_TIMEOUT_S) -> str | None:
    """Fetch `refs/geoseg/datasets/<md5>` from `remote` into the same local ref; returns its commit, or None
    when the remote does not have it. Other failures (unreachable remote) raise GitError."""
    ref = record_ref(version)
    _check_remote_name(remote)
    done = git(repo, "fetch", "--quiet", "--no-tags", remote, f"{ref}:{ref}", check=False, timeout=timeout)
    if done.returncode != 0:
        text = done.stderr.lower()
        if "couldn't find remote ref" in text or "could not find remote ref" in text:
            return None
        raise GitError(f"`{fetch_command(ref, remote)}` in {repo} failed with exit code {done.returncode}:\n"
                       f"{done.stderr.strip()[-STDERR_TAIL:]}\nFix: check that the git remote `{remote}` is "
                       f"reachable (`git remote -v`, credentials); if the local {ref} was rejected, it differs from "
                       f"the remote's: `git update-ref -d {ref}` and fetch again (both name the same bytes)")
    return resolve(repo, ref, timeout)


def code_commit(repo, ignore: dict[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """HEAD of the repository, with `-dirty` when a tracked file differs from it, or "unknown" (no git, no
    commit). A changed file listed in `ignore` ({path: blob id}) does not count while its working-tree bytes
    hash to that blob: that is how our own dvc.lock write, recorded as the dataset's record, keeps a model's
    code commit clean; any other change, or another dvc.lock, still makes it dirty."""
    try:
        root = toplevel(repo, timeout)
        sha = _out(root, "rev-parse", "--verify", "HEAD", timeout=timeout)
        status = git(root, "status", "--porcelain=v1", "-z", "--untracked-files=no", "--no-renames",
                     timeout=timeout).stdout  # not `git diff`: it rewrites the index's stat cache
        changed = [entry[3:] for entry in status.split("\0") if entry]
        for path in changed:
            expected = (ignore or {}).get(path)
            if expected is None or not (root / path).is_file():
                return f"{sha}-dirty"
            if _out(root, "hash-object", "--", path, timeout=timeout) != expected:
                return f"{sha}-dirty"
    except GitError:
        return "unknown"
    return sha
