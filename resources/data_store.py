"""DataStore: the one place asset outputs live, with safe partition paths and atomic writes."""


import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
MAX_KEY_LENGTH = 64


class UnsafePartitionKeyError(ValueError):
    """A partition key that could escape the data root or break the folder layout."""


def check_partition_value(value: str, what: str = "partition key") -> str:
    """Return `value` if it is safe as one path component, else raise with the rule it broke."""
    if not isinstance(value, str) or value == "":
        raise UnsafePartitionKeyError(f"empty {what}: use a non-empty name such as 'alpha' or '2024-06-01'")
    if len(value) > MAX_KEY_LENGTH:
        raise UnsafePartitionKeyError(f"{what} {value[:20]!r}... is {len(value)} characters; at most {MAX_KEY_LENGTH} allowed")
    if ".." in value or not SAFE_KEY.match(value):
        raise UnsafePartitionKeyError(
            f"unsafe {what} {value!r}: use letters, digits, '_', '-' and '.', starting with a letter or digit, "
            "without '..', '/' or '|'"
        )
    return value


DIMENSION_ORDER = ("region", "date")


class DataStore(ConfigurableResource):
    """Asset outputs under `root`, laid out as `<asset>/<dim>=<value>/.../<file>`.

    Every partition key is checked before it becomes a path, and `atomic_path` makes writers
    produce a temp file that replaces the target only once complete, so a failed run never
    damages an earlier good output.
    """

    root: str = Field(description="Folder that holds every asset output.")

    def partition_dir(self, asset: str, partition: Mapping[str, str] | str | None = None) -> Path:
        """Folder of one asset partition: one `<dim>=<value>` level per dimension, region before date
        (then any other dimension by name), whatever order the mapping has (Dagster's multi-partition
        keys list date first)."""
        check_partition_value(asset, "asset name")
        path = Path(self.root) / asset
        if partition is None:
            return path
        if isinstance(partition, str):
            return path / check_partition_value(partition)
        for dim in sorted(partition, key=lambda d: (DIMENSION_ORDER.index(d) if d in DIMENSION_ORDER else 99, d)):
            check_partition_value(dim, "partition dimension")
            path = path / f"{dim}={check_partition_value(partition[dim], f'{dim} key')}"
        return path

    def path(self, asset: str, partition: Mapping[str, str] | str | None, filename: str) -> Path:
        """Path of one output file of an asset partition."""
        check_partition_value(filename, "file name")
        return self.partition_dir(asset, partition) / filename

    def tmp_dir(self) -> Path:
        """Scratch folder on the same filesystem as the outputs (so renames are atomic)."""
        path = Path(self.root) / ".tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextmanager
    def atomic_path(self, target: Path) -> Iterator[Path]:
        """Yield a temp path next to `target`; on success rename it over `target`, on failure delete it."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix, dir=target.parent)
        os.close(fd)
        os.unlink(tmp)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            os.replace(tmp_path, target)
        finally:
            if tmp_path.exists():
                if tmp_path.is_dir():
                    shutil.rmtree(tmp_path)
                else:
                    tmp_path.unlink()

    def write_bytes(self, target: Path, data: bytes) -> Path:
        """Atomically write bytes to `target`."""
        with self.atomic_path(target) as tmp:
            tmp.write_bytes(data)
        return Path(target)
