"""Atomic publishing: an output is written under a temp name next to its target and renamed over it only
once complete, so a reader never sees a partial file and a failure leaves the earlier output as it was.

One file (`atomic_file`), several files of one step that replace their targets together or not at all
(`Publication`), and whole folders (`atomic_dir`, `swap_dir`). No Dagster here: geo/, ml/, monitoring/ and
the resources all publish through this module.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


class PublishError(RuntimeError):
    """A staged output could not be renamed over its target; every target was put back as it was."""


def temp_path(target: str | os.PathLike) -> Path:
    """An unused dot-name next to `target`: the same folder (which must exist), so the final rename is atomic,
    and the same suffix, so a writer that picks its format by suffix still does. Nothing exists at the path."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    os.unlink(tmp)
    return Path(tmp)


def remove(path: str | os.PathLike) -> None:
    """Delete a file or folder if it is there (a failed write's leftovers)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to `target` to write the new content to; when the block succeeds it is renamed
    over `target`, when it fails it is deleted and `target` keeps its earlier bytes."""
    target = Path(target)
    tmp = temp_path(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        remove(tmp)


@contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty folder next to `target` to build in; when the block succeeds it replaces `target`
    (`swap_dir`), when it fails it is deleted and `target` stays as it was."""
    target = Path(target)
    tmp = temp_path(target)
    tmp.mkdir()
    try:
        yield tmp
        with swap_dir(target, tmp):
            pass
    finally:
        remove(tmp)


@contextmanager
def swap_dir(target: str | os.PathLike, staged: str | os.PathLike,
             keep: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Put the complete folder `staged` in place of `target` while the block runs (a step that must see the
    final path, e.g. `dvc commit` + `dvc push`); the earlier `target` waits aside as `.<name>.previous`. If the
    rename or the block fails, the earlier `target` and the bytes of the `keep` files (e.g. dvc.lock) are put
    back, so outputs and their records stay in step."""
    target, staged = Path(target), Path(staged)
    backup = target.with_name(f".{target.name}.previous")
    if backup.exists():  # left by a killed run: keep the current target, or put the backup back if there is none
        if target.exists():
            shutil.rmtree(backup)
        else:
            os.replace(backup, target)
    saved = {Path(p): Path(p).read_bytes() if Path(p).exists() else None for p in keep}
    had_target = target.exists()
    if had_target:
        os.replace(target, backup)
    try:
        os.replace(staged, target)
        yield target
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # the new folder, if the rename got that far
        if had_target:
            os.replace(backup, target)
        for path, data in saved.items():
            if data is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(data)
        raise
    if had_target:
        shutil.rmtree(backup, ignore_errors=True)


class Publication:
    """Temp files next to their targets (same filesystem, so each rename is atomic), renamed over the
    targets together by `commit`, or deleted by `discard`."""

    def __init__(self, on_new_folder: Callable[[Path], object] | None = None) -> None:
        self.staged: dict[Path, Path] = {}
        self.on_new_folder = on_new_folder  # called once per target folder before its first temp file

    def path(self, target: str | os.PathLike) -> Path:
        """The temp path to write `target`'s new content to (the same one if asked twice)."""
        target = Path(target)
        if target not in self.staged:
            target.parent.mkdir(parents=True, exist_ok=True)
            if self.on_new_folder is not None and all(t.parent != target.parent for t in self.staged):
                self.on_new_folder(target.parent)
            self.staged[target] = temp_path(target)
        return self.staged[target]

    def write_bytes(self, target: str | os.PathLike, data: bytes) -> Path:
        """Stage `data` as `target`'s new content; returns `target` (where it will be once published)."""
        self.path(target).write_bytes(data)
        return Path(target)

    def commit(self) -> None:
        """Rename every staged file over its target. If one rename fails (a target turned into a folder, a
        full or read-only disk), the targets already replaced get their earlier bytes back (kept as hard
        links until the end), so the step's outputs are all new or all old: PublishError says which."""
        missing = [str(t) for t, tmp in self.staged.items() if not tmp.exists()]
        if missing:
            self.discard()
            raise FileNotFoundError(f"staged outputs were never written: {missing}")
        previous: dict[Path, Path | None] = {}
        current = None
        try:
            for target, tmp in self.staged.items():
                current = target
                previous[target] = _keep_previous(target)
                os.replace(tmp, target)
        except BaseException as exc:
            for target, kept in previous.items():
                if kept is not None:
                    os.replace(kept, target)
                elif target.is_file() and not self.staged[target].exists():
                    target.unlink()  # created by this commit: there was nothing before
            self.discard()
            if isinstance(exc, OSError):
                raise PublishError(f"{current}: cannot be replaced by the step's new output ({exc.strerror or exc}); "
                                   "every output of the step was kept as it was. Fix: make that path a writable file "
                                   "(move away a folder of that name, free disk space) and re-run") from exc
            raise
        finally:
            for kept in previous.values():
                if kept is not None:
                    kept.unlink(missing_ok=True)
        self.staged.clear()

    def discard(self) -> None:
        for tmp in self.staged.values():
            remove(tmp)
        self.staged.clear()


def _keep_previous(target: Path) -> Path | None:
    """A hard link (a copy where links are not supported) to the file at `target`, or None if none."""
    if not target.is_file():
        return None
    kept = target.with_name(f".{target.name}.previous-{os.getpid()}")
    kept.unlink(missing_ok=True)
    try:
        os.link(target, kept)
    except OSError:
        shutil.copy2(target, kept)
    return kept
