"""Throwaway git repositories laid out like geoseg's (a git-ignored data root, dvc.yaml) and file digests."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from tests.support.paths import REPO


DATASET = "data/store/dataset"


def git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def dvc(cwd, *args) -> str:
    """A plain `dvc` command in `cwd`, as a user runs it (this environment's dvc, analytics off); its stdout."""
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"}).stdout


DVC_YAML = """stages:
  dataset:
    cmd: python -c "print('built by the pipeline')"
    deps:
      - data/store/tiles
    outs:
      - data/store/dataset
"""


def new_git_repo(path):
    """A git repo laid out like geoseg's: ignored data root, a dvc.yaml with the dataset stage."""
    path.mkdir(parents=True)
    git(path, "init", "-q")
    git(path, "config", "user.name", "geoseg tests")
    git(path, "config", "user.email", "tests@geoseg.invalid")
    (path / ".gitignore").write_text("/data/\n")  # the data root is git-ignored, like the real repo
    (path / "dvc.yaml").write_text(DVC_YAML)
    (path / "data" / "store" / "tiles").mkdir(parents=True)
    (path / "data" / "store" / "tiles" / "tiles.parquet").write_bytes(b"tiles")
    git(path, "add", ".gitignore", "dvc.yaml")
    git(path, "commit", "-qm", "init")
    return path


def write_npy_dataset(folder, seed=0):
    """A small dataset folder of random arrays and a manifest: DVC versions bytes, whatever they hold."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    np.save(folder / "images.npy", rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8))
    np.save(folder / "masks.npy", rng.integers(0, 5, size=(4, 32, 32), dtype=np.uint8))
    (folder / "manifest.json").write_text(json.dumps({"tiles": 4, "seed": seed}))


def digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def new_project_repo(repo: Path, ignore: str = "/data/\n", store_url: str | None = None) -> Path:
    """`repo` as a committed git repository laid out like this one for the DVC dataset stage: `ignore` in its
    .gitignore (the data root), this dvc.yaml and the code files its `dataset` stage depends on (its deps outside the
    data root, so `dvc commit dataset` finds every dependency it hashes). With `store_url` (s3://bucket/prefix, an
    `ObjectDataStore`'s), the stage depends on the store's tiles and masks folders instead of local ones."""
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q")
    git(repo, "config", "user.name", "geoseg tests")
    git(repo, "config", "user.email", "tests@geoseg.invalid")
    (repo / ".gitignore").write_text(ignore)
    dvc_yaml = (REPO / "dvc.yaml").read_text()
    if store_url is not None:
        for folder in ("tiles", "masks"):
            dvc_yaml = dvc_yaml.replace(f"- data/store/{folder}\n", f"- {store_url.rstrip('/')}/{folder}\n")
    (repo / "dvc.yaml").write_text(dvc_yaml)
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["dataset"]
    for dep in stage["deps"]:
        if not dep.startswith("data/"):
            (repo / dep).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / dep, repo / dep)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    return repo
