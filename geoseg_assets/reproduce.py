"""Restore the exact dataset bytes a registered model was trained on, from its name and version alone.

    python -m geoseg_assets.reproduce <model-name> <version> [--repo DIR] [--tracking-uri URI]
                                      [--remote-url URL] [--dest DIR] [--git-remote NAME]
    python -m geoseg_assets.reproduce --dataset <md5>.dir [--repo DIR] [--remote-url URL] [--dest DIR]

1. The model version's MLflow run (read through `MlflowTracking`, tags only: nothing is unpickled) names
   `geoseg.dataset_version` (the DVC hash), `geoseg.dataset_ref` (`refs/geoseg/datasets/<md5>`) and
   `geoseg.dataset_commit` (the record commit: the code commit + the dvc.lock of that version).
2. The ref is fetched from the git remote (`origin`) when the clone lacks it: a plain `git clone` does not
   fetch `refs/geoseg/*`.
3. The record is checked out as a detached `git worktree` under `<repo>/data/reproduce/dataset-<md5>`
   (`--dest` to choose): the user's branch, index, working tree, dvc.lock and `data/store/dataset` are
   never touched, and several models' datasets can sit side by side. It uses the repository's DVC remote
   (its `.dvc/config.local`, else the committed default; `--remote-url` to override) and cache.
4. `dvc pull dataset` runs there, and the folder's DVC hash is recomputed and compared with the version the
   model recorded before the path is printed (last line of the output).

By hand, the same is `git fetch origin <ref>:<ref> && git checkout <ref> && dvc pull dataset` in a clean
clone. Errors exit with status 1 and say which input was wrong and how to fix it.
"""

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from resources import git_refs
from resources.dvc_store import DvcError, DvcStore, dvc_dir_hash
from resources.git_refs import GitError

STAGE = "dataset"  # geoseg_assets.assets.datasets.DVC_STAGE (not imported: that pulls in the whole asset graph)
DEST_ROOT = Path("data") / "reproduce"
OLD_WAY = "git checkout {commit} && dvc pull dataset"


class ReproduceError(RuntimeError):
    """An input that cannot be restored, with what was wrong and how to fix it."""


class MissingRecord(ReproduceError):
    """No record of the version in the clone nor on the git remote."""


@dataclass
class Lineage:
    """What a model's run recorded about its data."""

    model: str
    version: str
    run_id: str
    dataset_version: str
    dataset_ref: str | None      # None: trained before records existed
    dataset_commit: str | None
    git_commit: str | None


@dataclass
class Restored:
    version: str
    ref: str
    commit: str
    code_commit: str | None
    worktree: Path
    path: Path
    files: int
    size: int
    notes: list[str] = field(default_factory=list)


def default_tracking_uri(repo: Path) -> str:
    """$MLFLOW_TRACKING_URI, else the embedded profile's store: `<$GEOSEG_DATA_DIR or <repo>/data>/mlflow/mlflow.db`."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    data = Path(os.environ.get("GEOSEG_DATA_DIR", repo / "data")).resolve()
    return f"sqlite:///{data / 'mlflow' / 'mlflow.db'}"


def model_lineage(tracking_uri: str, model: str, version: str) -> Lineage:
    """The dataset tags of a registered model version's run; ReproduceError for an unknown model or version."""
    from dagster import Failure
    from mlflow.exceptions import MlflowException

    from resources.mlflow_tracking import MlflowTracking

    if not str(version).isdigit():
        raise ReproduceError(f"model version {version!r} is not a number; pass the registered version, e.g. 3 "
                             f"(`{model}` versions are listed in the MLflow UI under Models)")
    tracking = MlflowTracking(tracking_uri=tracking_uri, model_name=model)
    try:
        client = tracking.client()
    except Failure as exc:
        raise ReproduceError(f"{exc.description}. Fix: pass --tracking-uri (the MLflow server, or the sqlite:/// "
                             "store the model was trained with) or set MLFLOW_TRACKING_URI") from exc
    try:
        client.get_registered_model(model)
    except MlflowException as exc:
        names = sorted(m.name for m in client.search_registered_models())
        raise ReproduceError(f"no registered model named {model!r} in {tracking_uri}; registered models: "
                             f"{', '.join(names) or 'none'}. Fix: pass one of them, or the --tracking-uri "
                             "the model was registered in") from exc
    try:
        found = client.get_model_version(model, str(version))
    except MlflowException as exc:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{model}'")) \
            if "'" not in model else []
        raise ReproduceError(f"model {model!r} has no version {version} in {tracking_uri}; its versions: "
                             f"{', '.join(map(str, versions)) or 'none'}. Fix: pass one of them") from exc
    try:
        tags = client.get_run(found.run_id).data.tags
    except MlflowException as exc:
        raise ReproduceError(f"{model} v{version}: its MLflow run {found.run_id} cannot be read ({exc}); the run was "
                             "deleted or the tracking store is incomplete: restore the store from a backup") from exc
    dataset_version = tags.get("geoseg.dataset_version")
    if not dataset_version or dataset_version == "unversioned":
        raise ReproduceError(f"{model} v{version} (run {found.run_id}) was trained on a dataset DVC did not version "
                             f"(geoseg.dataset_version={dataset_version!r}): its bytes were never recorded and cannot "
                             "be restored; retrain it on a dataset materialized with version_with_dvc=true")
    ref, commit = tags.get("geoseg.dataset_ref"), tags.get("geoseg.dataset_commit")
    return Lineage(model, str(version), found.run_id, dataset_version,
                   ref if ref and ref != "none" else None, commit if commit and commit != "none" else None,
                   tags.get("geoseg.git_commit"))


def legacy_help(repo: Path, lineage: Lineage) -> str:
    """Why a model trained before records existed cannot be restored here, and the old manual way, checked."""
    sha = (lineage.git_commit or "").removesuffix("-dirty")
    head = (f"{lineage.model} v{lineage.version} was trained before dataset records existed: its MLflow run "
            f"{lineage.run_id} has no `geoseg.dataset_ref` tag, and no record of dataset {lineage.dataset_version} "
            f"exists in {repo} or on its git remote.")
    if not sha or sha == "unknown":
        return head + " Its run names no code commit either: find a commit whose dvc.lock pins that version " \
                      f"(`git log --all -S {lineage.dataset_version[:-4]} -- dvc.lock`), check it out, `dvc pull dataset`."
    old = OLD_WAY.format(commit=sha)
    lock = git_refs.show_file(repo, sha, "dvc.lock")
    if lock is None:
        verdict = (f"here commit {sha[:12]} has no dvc.lock or is not in this clone (`git fetch origin` first), so "
                   "this cannot be checked")
    elif lineage.dataset_version in lock:
        verdict = f"here {sha[:12]}'s dvc.lock does pin {lineage.dataset_version}, so that restores it"
    else:
        verdict = (f"here {sha[:12]}'s dvc.lock pins another dataset, so it would restore the wrong data; look for a "
                   f"commit whose dvc.lock pins it: `git log --all -S {lineage.dataset_version[:-4]} -- dvc.lock`")
    return (f"{head} The old manual way, `{old}`, restores it only if that commit's dvc.lock pins "
            f"{lineage.dataset_version}: {verdict}.")


def pinned_version(lock_text: str | None) -> str | None:
    """The output hash a dvc.lock text records for the dataset stage, or None."""
    try:
        (out,) = yaml.safe_load(lock_text)["stages"][STAGE]["outs"]
        return out["md5"]
    except (TypeError, KeyError, ValueError, yaml.YAMLError):
        return None


def prepare_worktree(root: Path, dest: Path, target: str, version: str) -> list[str]:
    """A detached worktree of `target` at `dest`; an existing restore of the same version is reused."""
    if dest.exists():
        if (dest / ".git").is_file() and pinned_version(_read(dest / "dvc.lock")) == version:
            return [f"reused the earlier restore at {dest}"]
        raise ReproduceError(f"{dest} exists and is not a restore of {version}; remove it (`git worktree remove "
                             f"--force {dest}` if it is a worktree) or pass another --dest")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        git_refs.git(root, "worktree", "add", "--quiet", "--detach", str(dest), target,
                     fix=f"pass a --dest outside {root}'s tracked files, on a writable disk")
    except GitError as err:
        raise ReproduceError(str(err)) from err
    return []


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def restore(repo, version: str, *, commit: str | None = None, dest=None, remote_url: str | None = None,
            git_remote: str = "origin", what: str | None = None) -> Restored:
    """Check out the record of dataset `version` (preferring `commit`, the exact record a model names) in a
    detached worktree and `dvc pull` it; the folder's DVC hash is verified against `version`."""
    what = what or f"dataset {version}"
    try:
        ref = git_refs.record_ref(version)
        root = git_refs.toplevel(repo)
    except GitError as err:
        raise ReproduceError(f"{what}: {err}") from err
    notes = []
    try:
        tip = git_refs.resolve(root, ref)
        if tip is None or (commit and git_refs.resolve(root, commit) is None):
            if git_refs.has_remote(root, git_remote):
                tip = git_refs.fetch_record(root, version, git_remote) or tip
                notes.append(f"fetched {ref} from `{git_remote}`")
        if tip is None:
            remote = f"the git remote `{git_remote}`" if git_refs.has_remote(root, git_remote) else \
                f"a git remote (this clone has no `{git_remote}`)"
            raise MissingRecord(f"{what}: no record {ref} in {root} nor on {remote}. It was recorded where the "
                                f"dataset was built but not pushed: there, run `{git_refs.push_command(ref, git_remote)}`"
                                "; or pass --git-remote naming the remote that has it")
        target = tip
        if commit:
            if git_refs.resolve(root, commit) is not None:
                target = commit
            else:
                notes.append(f"record commit {commit[:12]} is not in this clone; used {ref} at {tip[:12]}, which "
                             "records the same DVC output")
        pinned = pinned_version(git_refs.show_file(root, target, "dvc.lock"))
    except GitError as err:
        raise ReproduceError(f"{what}: {err}") from err
    if pinned != version:
        raise ReproduceError(f"{what}: the record {target[:12]} ({ref}) pins {pinned} instead; the ref was moved by "
                             f"hand: delete it (`git update-ref -d {ref}`) and fetch it again from `{git_remote}`")
    dest = Path(dest).expanduser().resolve() if dest else root / DEST_ROOT / f"dataset-{version[:12]}"
    source = DvcStore(repo_dir=str(root))
    try:
        remote = remote_url or source.remote_location()
        cache = source.cache_location()
    except DvcError as err:
        raise ReproduceError(f"{what}: cannot read the DVC remote or cache of {root}: {err}\nFix: pass --remote-url, "
                             "or run from a clone of the project (its .dvc/config is committed)") from err
    notes += prepare_worktree(root, dest, target, version)
    store = DvcStore(repo_dir=str(dest), remote_url=remote, cache_dir=str(cache))
    try:
        out = store.pull(STAGE, force=True)
    except DvcError as err:
        raise ReproduceError(f"{what}: `dvc pull {STAGE}` from the DVC remote {remote} failed: {err}\nIf the remote "
                             f"lacks the bytes, push them where the dataset was built (`git checkout {ref} && dvc push "
                             f"{STAGE}` there), or pass --remote-url <the remote they were pushed to>") from err
    got = dvc_dir_hash(out)
    if got != version:
        raise ReproduceError(f"{what}: the restored folder {out} hashes to {got}, not {version}: it holds files DVC did "
                             f"not restore; remove {dest} (`git worktree remove --force {dest}`) and run again")
    files = [p for p in out.rglob("*") if p.is_file()]
    return Restored(version, ref, target, git_refs.resolve(root, f"{target}^1"), dest, out, len(files),
                    sum(p.stat().st_size for p in files), notes)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m geoseg_assets.reproduce",
        description="Restore the exact dataset bytes a registered model was trained on (or a dataset version) into a "
                    "detached git worktree, verified against the recorded DVC hash. Your branch, working tree and "
                    "data/store/dataset are not touched.")
    parser.add_argument("model", nargs="?", help="registered model name, e.g. geoseg-segmenter")
    parser.add_argument("version", nargs="?", help="registered model version, e.g. 3")
    parser.add_argument("--dataset", help="restore this DVC dataset version (<md5>.dir) instead of a model's")
    parser.add_argument("--repo", default=os.environ.get("GEOSEG_DVC_REPO", "."),
                        help="the git + DVC repository (a clone of the project; default $GEOSEG_DVC_REPO, else the "
                             "current directory)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else the embedded "
                                               "store <data>/mlflow/mlflow.db)")
    parser.add_argument("--remote-url", help="DVC remote holding the bytes (default: the repository's own remote, "
                                             ".dvc/config.local over the committed config)")
    parser.add_argument("--dest", help="worktree to restore into (default <repo>/data/reproduce/dataset-<md5>)")
    parser.add_argument("--git-remote", default="origin", help="git remote to fetch the record from (default origin)")
    args = parser.parse_args(argv)
    if bool(args.dataset) == bool(args.model):
        parser.error("pass a model name and version, or --dataset <md5>.dir")
    if args.model and not args.version:
        parser.error(f"pass the version of {args.model!r} too, e.g. `{args.model} 3`")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    repo = Path(args.repo).expanduser().resolve()
    lineage = None
    try:
        if args.dataset:
            restored = restore(repo, args.dataset, dest=args.dest, remote_url=args.remote_url,
                               git_remote=args.git_remote)
        else:
            lineage = model_lineage(args.tracking_uri or default_tracking_uri(repo), args.model, args.version)
            restored = restore(repo, lineage.dataset_version, commit=lineage.dataset_commit, dest=args.dest,
                               remote_url=args.remote_url, git_remote=args.git_remote,
                               what=f"{lineage.model} v{lineage.version} (dataset {lineage.dataset_version})")
    except MissingRecord as err:
        message = legacy_help(repo, lineage) if lineage is not None and lineage.dataset_ref is None else str(err)
        print(f"error: {message}", file=sys.stderr)
        return 1
    except ReproduceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    subject = f"{lineage.model} v{lineage.version} was trained on dataset" if lineage else "dataset"
    print(f"{subject} {restored.version}: record {restored.ref} at {restored.commit[:12]} "
          f"(code commit {(restored.code_commit or 'none')[:12]}).")
    if lineage is not None and lineage.dataset_ref is None:
        print(f"note: the run predates dataset records (no geoseg.dataset_ref tag); a later record of the same DVC "
              f"hash was used")
    for note in restored.notes:
        print(f"note: {note}")
    print(f"restored {restored.files} files ({restored.size} bytes), DVC hash verified, in the detached worktree "
          f"{restored.worktree} (remove it with `git worktree remove --force {restored.worktree}`):")
    print(restored.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
