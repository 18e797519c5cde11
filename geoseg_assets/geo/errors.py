"""Errors raised for bad input: each names the offending file, what is wrong and how to fix it."""

from __future__ import annotations


class InputError(ValueError):
    """An input file that cannot be used as it is."""

    def __init__(self, path: str, problem: str, fix: str):
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}. Fix: {fix}")


class SceneError(InputError):
    """A scene raster that cannot be used as it is."""


class LabelError(InputError):
    """A label file (or label set) that cannot be used as it is."""


class ClassMapError(InputError):
    """A class-map file that cannot be used as it is."""


class DiskFullError(OSError):
    """A write failed because the disk holding `folder` is (nearly) full. GDAL/libtiff report that as an
    unrelated write error ("Write error at scanline", "Error fetching directory count") without errno, so
    a failed write is put down to the disk when its free space could not have held the output."""

    def __init__(self, folder, free: int, total: int, need: int | None, cause: BaseException):
        self.folder, self.free, self.total = str(folder), free, total
        needed = f"; the output needs up to {need / 2**20:.1f} MiB" if need else ""
        super().__init__(f"no space left on device under {folder} ({free / 2**20:.1f} MiB free of "
                         f"{total / 2**20:.0f} MiB{needed}) while writing ({cause})")


MIN_FREE_BYTES = 4 << 20  # below this a failed write is taken to be a full disk


def free_bytes(folder) -> int | None:
    import shutil

    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def disk_full_error(exc: BaseException, folders, need: int | None = None,
                    free_before: int | None = None) -> DiskFullError | None:
    """DiskFullError for a failed write `exc` if it was the disk: errno ENOSPC, less than MIN_FREE_BYTES
    free now, or (given the output's worst-case size `need` and the free space `free_before` the write
    started with) an output that could not fit; else None. Bad input stays bad input."""
    import errno
    import shutil

    if isinstance(exc, DiskFullError):
        return exc
    if isinstance(exc, InputError):
        return None
    for folder in folders:
        try:
            usage = shutil.disk_usage(folder)
        except OSError:
            continue
        too_small = need is not None and free_before is not None and free_before < need
        if usage.free < MIN_FREE_BYTES or getattr(exc, "errno", None) == errno.ENOSPC or too_small:
            return DiskFullError(folder, min(usage.free, free_before or usage.free), usage.total, need, exc)
    return None
