"""DvcStore: version a dataset folder with the real `dvc` CLI so anyone can `dvc pull` the exact bytes.

Layout, and why (checked against dvc 3.67.1):

* The dataset lives under the git-ignored data root (default `<repo>/data/store/dataset`). Plain
  `dvc add data/store/dataset` refuses there with "bad DVC file name 'data/store/dataset.dvc' is
  git-ignored": the pointer would sit next to the data, inside the ignored folder. dvc 3.x has no
  `--file` option any more, and `dvc add --out` copies the data to a new place instead.
* So the pointer is a small `.dvc` file written by us in a committed folder,
  `<repo>/datasets/<name>.dvc`, holding `outs: [{path: ../data/store/dataset}]`. DVC accepts out
  paths relative to the `.dvc` file that climb with `..` (as long as they stay inside the repo), and
  `dvc commit --force <pointer>` hashes the folder, fills in `md5: <hash>.dir`, `size` and `nfiles`,
  and copies the files into the cache. `dvc push`/`dvc pull <pointer>` (or a bare `dvc pull` in a
  fresh clone) then move exactly those bytes. A `dvc.yaml` stage would work too, but needs a `cmd`
  and shares a file the pipeline owns; the standalone pointer keeps the two independent (do not also
  list the same folder as a stage output: DVC rejects overlapping outputs).
* The remote is the project default in the committed `.dvc/config`, so a fresh `git clone` pulls
  with no setup. Local folders are stored as absolute paths: `dvc remote add` rewrites a relative
  path relative to `.dvc/`, which in a clone would point at the clone's own, empty, ignored data
  root. Any DVC URL works, e.g. `s3://bucket/datasets`; for MinIO also run
  `dvc remote modify <name> endpointurl http://minio:9000` and keep keys out of git with
  `dvc remote modify --local <name> access_key_id ...` (or the AWS_* environment variables).
* The cache is DVC's default `<repo>/.dvc/cache`; deleting it and the dataset is safe once pushed,
  `pull` restores both. Analytics are off in the committed config and in every call's environment.
"""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from dagster import ConfigurableResource
from pydantic import Field

STDERR_TAIL = 1500
# Never phone home: no usage analytics, no DVC Studio; stdin is closed so a prompt fails instead of hanging.
QUIET_ENV = {"DVC_NO_ANALYTICS": "1", "DVC_STUDIO_OFFLINE": "1"}


class DvcError(RuntimeError):
    """A dvc command or a DVC layout problem, with the command or path and how to fix it."""


@dataclass(frozen=True)
class DvcVersion:
    """One recorded version of a tracked folder: DVC's content hash (`<md5>.dir`) and its pointer file."""

    md5: str
    pointer: Path
    size: int | None = None
    nfiles: int | None = None


def _is_url(remote: str) -> bool:
    return "://" in remote


def _hint(args: list[str], stderr: str) -> str:
    """How to fix a failed dvc call, from the known error texts first, then by sub-command."""
    text = stderr.lower()
    if "unable to acquire lock" in text:
        return "another dvc process holds the repo lock; wait for it, or delete .dvc/tmp/lock if none is running"
    if "unsaved files" in text or "use `--force`" in text:
        return "the workspace copy has local changes; call pull(path, force=True) to overwrite them"
    if "missing cache files" in text or "missing-files" in text:
        return ("the remote lacks these bytes: run track()/`dvc push` where the dataset was made, "
                "and check that remote_url is the same remote")
    if "tracked by scm" in text or "tracked by git" in text:
        return "the folder is committed to git; `git rm -r --cached <folder>` and git-ignore it"
    if args[:1] == ["push"]:
        return "check that remote_url exists, is writable and (for s3/MinIO) that credentials and endpointurl are set"
    if args[:1] == ["pull"]:
        return "check that remote_url is reachable and holds the pushed data"
    return "run the command by hand in repo_dir with -v for details"


class DvcStore(ConfigurableResource):
    """Tracks dataset folders of a git repository with DVC and keeps their bytes on a DVC remote.

    `track` records the folder's content hash in `<pointer_dir>/<folder name>.dvc` (commit that file
    to git) and pushes the bytes; `pull` restores them, byte for byte, in any clone.
    """

    repo_dir: str = Field(description="Root of the git repository that is (or becomes) the DVC repository.")
    remote_url: str = Field(
        default="data/store/dvc-remote",
        description="DVC remote: a URL such as s3://bucket/path, or a local folder (relative to repo_dir; "
                    "stored absolute so clones on this machine find it).",
    )
    remote_name: str = Field(default="local", description="Name of the default DVC remote in .dvc/config.")
    pointer_dir: str = Field(default="datasets",
                             description="Committed folder, relative to repo_dir, for the .dvc pointer files.")
    timeout_s: float = Field(default=1800.0, description="Longest any single dvc call may run, in seconds.")

    # ---- paths -------------------------------------------------------------------------------
    def _root(self) -> Path:
        return Path(self.repo_dir).expanduser().resolve()

    def _remote(self) -> str:
        """The remote URL as written to .dvc/config: URLs unchanged, local folders absolute."""
        if _is_url(self.remote_url):
            return self.remote_url
        path = Path(self.remote_url).expanduser()
        return str(path if path.is_absolute() else (self._root() / path).resolve())

    def _dataset(self, path: str | Path) -> Path:
        """Absolute dataset path, checked to lie strictly inside the repository and outside .git/.dvc."""
        root = self._root()
        target = Path(path).expanduser()
        target = (target if target.is_absolute() else root / target).resolve()
        if target == root or root not in target.parents:
            raise DvcError(f"{target} is not inside the repository {root}: DVC only tracks folders in its repo; "
                           "write the dataset under repo_dir (e.g. data/store/dataset)")
        if target.relative_to(root).parts[0] in (".git", ".dvc"):
            raise DvcError(f"{target} is inside .git/.dvc; track a data folder instead")
        return target

    def pointer_path(self, path: str | Path) -> Path:
        """The committed pointer file of a dataset folder: `<repo>/<pointer_dir>/<folder name>.dvc`."""
        return self._root() / self.pointer_dir / f"{self._dataset(path).name}.dvc"

    # ---- the dvc CLI -------------------------------------------------------------------------
    def _dvc(self, *args: str) -> str:
        """Run `python -m dvc <args>` in repo_dir; return stdout or raise DvcError with command, code and stderr."""
        cmd = [sys.executable, "-m", "dvc", *args]
        shown = "dvc " + " ".join(args)
        try:
            done = subprocess.run(cmd, cwd=self._root(), env={**os.environ, **QUIET_ENV}, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=self.timeout_s)
        except subprocess.TimeoutExpired as err:
            raise DvcError(f"`{shown}` in {self._root()} took longer than {self.timeout_s:.0f} s; "
                           "check the remote's reachability or raise timeout_s") from err
        if done.returncode != 0:
            tail = (done.stderr.strip() or done.stdout.strip())[-STDERR_TAIL:]
            raise DvcError(f"`{shown}` in {self._root()} failed with exit code {done.returncode}:\n{tail}\n"
                           f"Fix: {_hint(list(args), done.stderr + done.stdout)}")
        return done.stdout

    def ensure_repo(self) -> None:
        """Make repo_dir a DVC repo with remote_url as its default remote and analytics off; idempotent."""
        root = self._root()
        if not root.is_dir():
            raise DvcError(f"repo_dir {root} does not exist; set repo_dir to the git repository root")
        if not (root / ".git").exists():
            raise DvcError(f"repo_dir {root} is not the root of a git repository; run `git init` there or set "
                           "repo_dir to the repository root (pointer files must be committable)")
        remote = self._remote()
        if not _is_url(remote):
            self._check_local_remote(Path(remote))
        if not (root / ".dvc").is_dir():
            self._dvc("init", "--quiet")
        current = dict(line.split("=", 1) for line in self._dvc("config", "--project", "--list").splitlines() if "=" in line)
        if current.get("core.analytics") != "false":
            self._dvc("config", "--project", "core.analytics", "false")
        if current.get("core.remote") != self.remote_name or current.get(f"remote.{self.remote_name}.url") != remote:
            self._dvc("remote", "add", "--project", "--default", "--force", self.remote_name, remote)

    @staticmethod
    def _check_local_remote(path: Path) -> None:
        """Create a local remote folder now, so a bad path fails here with its name rather than mid-push."""
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DvcError(f"cannot create the DVC remote folder {path}: {err.strerror}; "
                           "set remote_url to a writable folder or a remote URL") from err
        if not os.access(path, os.W_OK | os.X_OK):
            raise DvcError(f"the DVC remote folder {path} is not writable; fix its permissions or change remote_url")

    # ---- the API -----------------------------------------------------------------------------
    def track(self, path: str | Path, push: bool = True) -> DvcVersion:
        """Record the folder's current bytes in its pointer file (cached in .dvc/cache) and push them to the remote."""
        self.ensure_repo()
        target = self._dataset(path)
        if not target.exists():
            raise DvcError(f"nothing to track: {target} does not exist; write the dataset first")
        remote = self._remote()
        if not _is_url(remote) and (Path(remote) == target or target in Path(remote).parents):
            raise DvcError(f"the DVC remote {remote} is inside the tracked folder {target}; move remote_url elsewhere")
        pointer = self.pointer_path(target)
        created = not pointer.exists()
        if created:
            pointer.parent.mkdir(parents=True, exist_ok=True)
            pointer.write_text(yaml.safe_dump({"outs": [{"path": os.path.relpath(target, pointer.parent)}]}))
        else:
            self._check_pointer(pointer, target)
        rel = str(pointer.relative_to(self._root()))
        try:
            self._dvc("commit", "--force", rel)
        except DvcError:
            if created:
                pointer.unlink()
            raise
        if push:
            self._dvc("push", "--remote", self.remote_name, rel)
        return self._read_version(pointer)

    def pull(self, path: str | Path, force: bool = False) -> Path:
        """Restore the folder (and the cache) from the remote exactly as its pointer records; force overwrites local edits."""
        self.ensure_repo()
        target = self._dataset(path)
        pointer = self.pointer_path(target)
        if not pointer.exists():
            raise DvcError(f"no pointer file {pointer} for {target}; track() it first or `git pull` the commit that has it")
        self._check_pointer(pointer, target)
        rel = str(pointer.relative_to(self._root()))
        self._dvc("pull", "--remote", self.remote_name, *(["--force"] if force else []), rel)
        return target

    def version(self, path: str | Path) -> str | None:
        """The hash recorded in the folder's pointer file (no re-hashing), or None if it was never tracked."""
        pointer = self.pointer_path(path)
        if not pointer.exists():
            return None
        self._check_pointer(pointer, self._dataset(path))
        return self._read_version(pointer).md5

    # ---- pointer files -----------------------------------------------------------------------
    @staticmethod
    def _out(pointer: Path) -> dict:
        try:
            data = yaml.safe_load(pointer.read_text())
            (out,) = data["outs"]
            return out
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as err:
            raise DvcError(f"{pointer} is not a single-output .dvc file ({err}); restore it from git or delete it "
                           "and track() again") from err

    def _check_pointer(self, pointer: Path, target: Path) -> None:
        """Refuse a pointer that belongs to another folder with the same name."""
        recorded = (pointer.parent / self._out(pointer)["path"]).resolve()
        if recorded != target:
            raise DvcError(f"{pointer} already tracks {recorded}, not {target}; rename one of the folders "
                           "or use another pointer_dir")

    def _read_version(self, pointer: Path) -> DvcVersion:
        out = self._out(pointer)
        if not out.get("md5"):
            raise DvcError(f"{pointer} has no recorded hash; run track() on its folder")
        return DvcVersion(md5=out["md5"], pointer=pointer, size=out.get("size"), nfiles=out.get("nfiles"))
