"""DvcStore: version pipeline outputs as DVC stage outputs, so anyone can `dvc pull` the exact bytes.

Layout, and why (checked against dvc 3.67.1):

* `dvc.yaml` (committed) declares the `dataset` stage: its command materializes the dataset asset
  through Dagster, its deps are the tiles and masks folders, its out is `data/store/dataset` (under
  the git-ignored data root). `dvc repro` rebuilds it; `dvc.lock` (committed) pins the hashes of
  deps and outs. When Dagster builds the dataset itself, `commit(stage)` runs
  `dvc commit --force <stage>` (hash + cache + dvc.lock) and `dvc push <stage>`; under `dvc repro`
  DVC commits by itself (the command runs with DVC_STAGE set and must not call dvc: repo lock).
  `dvc add` is not used: its pointer file would land inside the ignored data folder, which DVC
  refuses ("bad DVC file name ... is git-ignored").
* The committed `.dvc/config` names the default remote `local` at `../data/dvc-remote`, i.e. each
  checkout's own data root (DVC resolves remote paths relative to `.dvc/`). Another remote (a shared
  folder, or `s3://bucket/prefix` on AWS or any S3-compatible store: dvc-s3 is installed) is set per
  machine in the git-ignored `.dvc/config.local` via `remote_url`, so the committed config never carries
  one machine's paths. An S3 remote's credentials and endpoint come from AWS's standard variables
  (S3_SETTINGS), read by each dvc process: no file or metadata ever holds them.
* The cache is DVC's default `<repo>/.dvc/cache` (or `cache_dir`); once pushed, deleting it and the data
  is safe: `pull` restores both. Analytics are off in the committed config and in every call's environment.
* `dvc.lock` in the working tree only pins the version last built. So that every version stays
  restorable from git alone, `record(stage)` commits dvc.yaml + dvc.lock on top of HEAD as
  `refs/geoseg/datasets/<md5>` (git plumbing in `resources/git_refs.py`: branch, index and working tree
  untouched) and `push_record` pushes that ref to the git remote `git_remote` when the repo has it.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from dagster import ConfigurableResource
from pydantic import Field

from resources import git_refs
from resources.git_refs import DatasetRecord, GitError, PushResult

STDERR_TAIL = 1500
# Never phone home: no usage analytics, no DVC Studio; stdin is closed so a prompt fails instead of hanging.
QUIET_ENV = {"DVC_NO_ANALYTICS": "1", "DVC_STUDIO_OFFLINE": "1"}

# The environment an S3 remote reads (boto's standard variables; never written to any config file or metadata).
S3_SETTINGS = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and, for a store other than AWS, AWS_ENDPOINT_URL_S3"


class DvcError(RuntimeError):
    """A dvc command or a DVC layout problem, with the command or path and how to fix it."""


@dataclass(frozen=True)
class DvcVersion:
    """One recorded version of a stage output: DVC's content hash (`<md5>.dir`) and the lock file holding it."""

    md5: str
    pointer: Path
    size: int | None = None
    nfiles: int | None = None


def _is_url(remote: str) -> bool:
    return "://" in remote


def _hint(args: list[str], stderr: str) -> str:
    """How to fix a failed dvc call, from the known error texts first, then by sub-command."""
    text = stderr.lower()
    corrupted = sorted(set(re.findall(r"corrupted cache file '([^']+)'", stderr)))
    if corrupted:
        names = ", ".join(Path(c).parent.name + Path(c).name for c in corrupted[:3])
        return (f"the remote holds {len(corrupted)} object(s) whose bytes do not match their hash (md5 {names}"
                f"{', ...' if len(corrupted) > 3 else ''}); DVC verified them, dropped them from the cache and "
                "checked nothing out. Push the dataset again from a clone with good data (`dvc push`), or rebuild "
                "it and commit the new dvc.lock")
    if "unable to acquire lock" in text:
        return "another dvc process holds the repo lock; wait for it, or delete .dvc/tmp/lock if none is running"
    if "unsaved files" in text or "use `--force`" in text:
        return "the workspace copy has local changes; call pull(stage, force=True) to overwrite them"
    if "missing cache files" in text or "missing-files" in text:
        return ("the remote lacks these bytes: run commit()/`dvc push` where the dataset was made, "
                "and check that remote_url is the same remote")
    if "dependency" in text and "does not exist" in text:
        return "a dependency listed in dvc.yaml is missing; restore it or fix dvc.yaml"
    if "does not exist" in text and args[:1] == ["commit"]:
        return "build the stage's outputs before committing them"
    object_store = _object_store_hint(text)
    if object_store:
        return object_store
    if "tracked by scm" in text or "tracked by git" in text:
        return "the folder is committed to git; `git rm -r --cached <folder>` and git-ignore it"
    if args[:1] == ["push"]:
        return ("check that remote_url exists and is writable; for an S3 remote, that the bucket exists and "
                f"{S3_SETTINGS} are set")
    if args[:1] == ["pull"]:
        return "check that remote_url is reachable and holds the pushed data"
    return "run the command by hand in repo_dir with -v for details"


def _object_store_hint(text: str) -> str | None:
    """How to fix an S3 remote's failure (dvc-s3 / botocore error texts), or None for any other error."""
    if "could not connect to the endpoint url" in text:
        return ("the object store is not reachable: check that it is up and that AWS_ENDPOINT_URL_S3 (an S3-compatible "
                "store such as MinIO) or the remote's endpointurl names it")
    if "nosuchbucket" in text or "bucket does not exist" in text:
        return "the bucket of remote_url does not exist: create it, or fix the bucket name in remote_url"
    if any(s in text for s in ("unable to locate credentials", "invalidaccesskeyid", "signaturedoesnotmatch",
                               "access denied", "accessdenied", "forbidden")):
        return f"the object store refused the credentials: set {S3_SETTINGS} for an account that may write the bucket"
    return None


DEFAULT_REMOTE = "data/dvc-remote"  # relative to the repo root; stored as ../data/dvc-remote in .dvc/config
NAMED_SECTION = re.compile(r'^(\w+)\s+"(.+)"$')  # `remote "local"` in DVC's config files
PATH_OPTIONS = {"url", "dir"}  # DVC resolves these against the config file's folder when they are relative paths


class DvcStore(ConfigurableResource):
    """Commits and pushes DVC stage outputs of a git repository, and pulls them back byte for byte."""

    repo_dir: str = Field(description="Root of the git repository that is (or becomes) the DVC repository.")
    remote_url: str | None = Field(
        default=None,
        description="DVC remote for this machine (a URL such as s3://bucket/path, or a local folder). None uses the "
                    "committed project default, `<repo>/data/dvc-remote`. Set here, it goes to .dvc/config.local.",
    )
    remote_name: str = Field(default="local", description="Name of the default DVC remote.")
    timeout_s: float = Field(default=1800.0, description="Longest any single dvc call may run, in seconds.")
    cache_dir: str | None = Field(
        default=None,
        description="DVC cache folder for this checkout (None: DVC's default `<repo>/.dvc/cache`). Set here, it goes "
                    "to .dvc/config.local; `python -m geoseg_assets.reproduce` points its restore worktrees at the "
                    "repository's cache this way, so no object is downloaded or stored twice.",
    )
    git_remote: str = Field(default="origin", description="Git remote that dataset records "
                            "(`refs/geoseg/datasets/<md5>`) are pushed to and fetched from, when the repository has it.")
    git_timeout_s: float = Field(default=120.0, description="Longest any single git call may run, in seconds.")
    cache_type: str = Field(
        default="copy",
        description="How DVC links cache and workspace. `copy` is safe everywhere. `reflink,copy` is as safe and "
                    "faster on copy-on-write filesystems (XFS, btrfs). `hardlink,copy` roughly halves commit/pull "
                    "time (benchmarks/bench_dataset.py) but an in-place edit of a dataset file then silently "
                    "corrupts the cache (read-only protection does not stop root).",
    )

    def _root(self) -> Path:
        return Path(self.repo_dir).expanduser().resolve()

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

    def _config(self, level: str) -> dict[str, str]:
        """One DVC config file (`project`: .dvc/config, `local`: .dvc/config.local) as `dvc config --<level> --list`
        prints it (`remote.<name>.url=...`, local paths made absolute against .dvc/), read in this process: half of
        the dvc processes a commit or pull started were these reads."""
        from configobj import ConfigObj, ConfigObjError

        path = self._root() / ".dvc" / ("config" if level == "project" else "config.local")
        if not path.is_file():
            return {}
        try:
            sections = ConfigObj(str(path), list_values=False, interpolation=False, encoding="utf-8")
        except (ConfigObjError, UnicodeDecodeError) as err:
            raise DvcError(f"{path} is not a valid DVC config file ({err}); fix it, or restore it from git "
                           "(.dvc/config) or delete it (.dvc/config.local: ensure_repo writes it again)") from err
        flat = {}
        for section, options in sections.items():
            named = NAMED_SECTION.match(section.lower())
            prefix = f"{named[1]}.{named[2]}" if named else section.lower()
            for key, value in (options.items() if isinstance(options, dict) else ()):
                if key.lower() in PATH_OPTIONS and not _is_url(value) and not Path(value).expanduser().is_absolute():
                    value = os.path.normpath(path.parent / value)
                flat[f"{prefix}.{key.lower()}"] = value
        return flat

    def ensure_repo(self) -> None:
        """Make repo_dir a DVC repo with analytics off and a default remote; idempotent, and it only
        writes the committed config when something is missing."""
        root = self._root()
        if not root.is_dir():
            raise DvcError(f"repo_dir {root} does not exist; set repo_dir to the git repository root")
        if not (root / ".git").exists():
            raise DvcError(f"repo_dir {root} is not the root of a git repository; run `git init` there or set "
                           "repo_dir to the repository root (dvc.yaml and dvc.lock must be committable)")
        if not (root / ".dvc").is_dir():
            self._dvc("init", "--quiet")
        project = self._config("project")
        if project.get("core.analytics") != "false":
            self._dvc("config", "--project", "core.analytics", "false")
        if project.get("cache.type") != self.cache_type:
            self._dvc("config", "--project", "cache.type", self.cache_type)
        if project.get(f"remote.{self.remote_name}.verify") != "true" and f"remote.{self.remote_name}.url" in project:
            # re-hash every pulled object against dvc.lock: a corrupted remote object fails the pull instead
            # of poisoning the cache under the good hash
            self._dvc("remote", "modify", "--project", self.remote_name, "verify", "true")
        if f"remote.{self.remote_name}.url" not in project:
            self._check_local_remote(root / DEFAULT_REMOTE)
            self._dvc("remote", "add", "--project", "--default", "--force", self.remote_name, DEFAULT_REMOTE)
            self._dvc("remote", "modify", "--project", self.remote_name, "verify", "true")
        if self.cache_dir is not None:
            cache = str(Path(self.cache_dir).expanduser().resolve())
            if self._config("local").get("cache.dir") != cache:
                self._dvc("config", "--local", "cache.dir", cache)
        if self.remote_url is not None:
            remote = self.remote_url if _is_url(self.remote_url) else str(Path(self.remote_url).expanduser().resolve())
            if not _is_url(remote):
                self._check_local_remote(Path(remote))
            if self._config("local").get(f"remote.{self.remote_name}.url") != remote:
                self._dvc("remote", "add", "--local", "--default", "--force", self.remote_name, remote)
        else:
            self._check_local_remote(root / DEFAULT_REMOTE)

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

    def _stage_entries(self, stage: str, field: str) -> list[str]:
        """The paths or URLs a dvc.yaml stage lists under `deps` or `outs` (a dict entry by its key)."""
        dvc_yaml = self._root() / "dvc.yaml"
        try:
            entries = yaml.safe_load(dvc_yaml.read_text())["stages"][stage][field]
            return [e if isinstance(e, str) else next(iter(e)) for e in entries]
        except (OSError, yaml.YAMLError, KeyError, TypeError, StopIteration) as err:
            raise DvcError(f"{dvc_yaml} has no stage {stage!r} with a list of {field} ({err!r}); "
                           "restore dvc.yaml from git") from err

    def stage_out(self, stage: str) -> Path:
        """The single output folder the stage declares in dvc.yaml."""
        outs = self._stage_entries(stage, "outs")
        if len(outs) != 1:
            raise DvcError(f"{self._root() / 'dvc.yaml'} stage {stage!r} lists {len(outs)} outs, expected exactly one; "
                           "restore dvc.yaml from git")
        return self._root() / outs[0]

    def stage_deps(self, stage: str) -> list[str]:
        """What the stage depends on per dvc.yaml: repository paths, or URLs of an object store's folders."""
        return self._stage_entries(stage, "deps")

    def commit(self, stage: str, push: bool = True) -> DvcVersion:
        """Record the stage's current outputs (hash, cache, dvc.lock) and push them to the remote."""
        self.ensure_repo()
        out = self.stage_out(stage)
        if not out.exists():
            raise DvcError(f"nothing to commit: {out} does not exist; build the {stage} first")
        self._dvc("commit", "--force", stage)
        if push:
            self._dvc("push", stage)
        return self._read_version(stage)

    def pull(self, stage: str, force: bool = False) -> Path:
        """Restore the stage's outputs (and the cache) from the remote exactly as dvc.lock records them."""
        self.ensure_repo()
        if self.version(stage) is None:
            raise DvcError(f"{self._root() / 'dvc.lock'} records no version of {stage!r}; build and commit it first, "
                           "or `git pull` the commit that has it")
        self._dvc("pull", "--verbose", *(["--force"] if force else []), stage)  # verbose: names corrupted objects
        return self.stage_out(stage)

    def commit_of_code(self, stage: str | None = None) -> str:
        """The git commit of repo_dir (the code that builds and trains), for lineage tags: HEAD, `-dirty` when
        tracked files have local changes. With `stage`, a dvc.lock byte-identical to the record of the stage's
        current version is not a local change: it is our own write, and the record holds it."""
        record = self.record_of(stage) if stage is not None else None
        ignore = {}
        if record is not None:
            blob = git_refs.blob_at(self._root(), record.commit, "dvc.lock", self.git_timeout_s)
            if blob is not None:
                ignore["dvc.lock"] = blob
        return git_refs.code_commit(self._root(), ignore, self.git_timeout_s)

    def record(self, stage: str) -> DatasetRecord:
        """Record the stage's current version (dvc.yaml + dvc.lock on top of HEAD) as the git commit of
        `refs/geoseg/datasets/<md5>`, without touching the branch, index or working tree; idempotent. Does not
        push (see push_record). Raises DvcError naming the git command and the fix."""
        version = self._read_version(stage).md5
        try:
            return git_refs.record_dataset(self._root(), version, stage=stage, timeout=self.git_timeout_s)
        except GitError as err:
            raise DvcError(f"recording {stage} {version} in git failed: {err}") from err

    def record_of(self, stage: str) -> DatasetRecord | None:
        """The git record of the stage's current version (dvc.lock), or None (not versioned, or not recorded)."""
        version = self.version(stage)
        if version is None:
            return None
        try:
            return git_refs.find_record(self._root(), version, self.git_timeout_s)
        except GitError:
            return None

    def push_record(self, record: DatasetRecord) -> PushResult:
        """Push a record's ref to `git_remote` if the repository has that remote; a failure is returned as a
        warning naming the ref and the command that pushes it by hand, never raised."""
        try:
            return git_refs.push_record(self._root(), record.ref, self.git_remote, self.git_timeout_s)
        except GitError as err:  # a bad remote name or no git at all: still only a warning
            return PushResult("failed", f"{record.ref} was not pushed: {err}")

    def remote_location(self) -> str:
        """Where the default DVC remote is for this checkout (config.local over the committed config), as an
        absolute path or URL, e.g. to point another checkout of the same repository at it."""
        if self.remote_url is not None:
            return self.remote_url if _is_url(self.remote_url) else str(Path(self.remote_url).expanduser().resolve())
        merged = {**self._config("project"), **self._config("local")}  # DVC's precedence: config.local wins
        url = merged.get(f"remote.{merged.get('core.remote')}.url")
        if url is None:
            raise DvcError(f"{self._root()} has no default DVC remote; set remote_url, or "
                           "`dvc remote add --local -d <name> <url>` there")
        return url

    def cache_location(self) -> Path:
        """The DVC cache folder of this checkout."""
        return Path(self._dvc("cache", "dir").strip())

    def version(self, stage: str) -> str | None:
        """The hash dvc.lock records for the stage's output (no re-hashing), or None if never committed."""
        try:
            return self._read_version(stage).md5
        except DvcError:
            return None

    def lock_path(self) -> Path:
        """dvc.lock: the record of each stage's output hash (committed to git)."""
        return self._root() / "dvc.lock"

    def _read_version(self, stage: str) -> DvcVersion:
        lock = self.lock_path()
        try:
            (out,) = yaml.safe_load(lock.read_text())["stages"][stage]["outs"]
            return DvcVersion(md5=out["md5"], pointer=lock, size=out.get("size"), nfiles=out.get("nfiles"))
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as err:
            raise DvcError(f"{lock} has no recorded output of stage {stage!r} ({err!r}); commit the stage first") from err


def git_commit(repo_dir: str | Path) -> str:
    """HEAD commit of the repository (with `-dirty` when tracked files have local changes), or "unknown"."""
    return git_refs.code_commit(repo_dir)


def dvc_dir_hash(folder: str | Path) -> str:
    """DVC 3's hash of a folder (`<md5>.dir`), computed here without DVC: the md5 of the JSON list of
    {"md5": <file md5>, "relpath": <posix path>} sorted by path (dvc_data's Tree.as_bytes), so a restored
    folder can be checked against the version a model recorded."""
    folder = Path(folder)
    entries = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest = hashlib.md5()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            entries.append({"md5": digest.hexdigest(), "relpath": path.relative_to(folder).as_posix()})
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"
