"""DataStore: the one place asset outputs live, with safe partition paths and atomic writes."""


import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from dagster import ConfigurableResource, Failure
from pydantic import Field

from geoseg_assets.geo.errors import disk_full_error
from geoseg_assets.geo.publish import Publication, PublishError, swap_dir
from resources.catalog import DATASET, DATASET_MANIFEST, PREDICTION_RECORD, SCENE_RECORD, TILE_TABLE, OutputFile

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


def partition_folder(asset: str, partition: Mapping[str, str] | str | None = None) -> PurePosixPath:
    """`<asset>/<dim>=<value>/...` of one asset partition, relative to the store's root, every key checked: one level
    per dimension, region before date (then any other dimension by name), whatever order the mapping has (Dagster's
    multi-partition keys list date first)."""
    path = PurePosixPath(check_partition_value(asset, "asset name"))
    if partition is None:
        return path
    if isinstance(partition, str):
        return path / check_partition_value(partition)
    for dim in sorted(partition, key=lambda d: (DIMENSION_ORDER.index(d) if d in DIMENSION_ORDER else 99, d)):
        check_partition_value(dim, "partition dimension")
        path = path / f"{dim}={check_partition_value(partition[dim], f'{dim} key')}"
    return path


class DataStore(ConfigurableResource):
    """Asset outputs under `root`, laid out as `<asset>/<dim>=<value>/.../<file>`.

    Every partition key is checked before it becomes a path, and `atomic_path` makes writers
    produce a temp file that replaces the target only once complete, so a failed run never
    damages an earlier good output.
    """

    root: str = Field(description="Folder that holds every asset output.")
    viewer_url: str = Field(default="http://127.0.0.1:3100", description="Base URL of the geoseg viewer serving "
                            "this store (`make ui` starts it there): asset metadata links to its maps and reports.")
    stale_temp_seconds: int = Field(
        default=3600, gt=0,
        description="A temp file (dot-name) not modified for this long was left by a killed run: the next write "
        "into its folder deletes it. Live writes touch their files far more often.",
    )

    @property
    def remote(self) -> bool:
        """Whether outputs live elsewhere than on this machine's disk (`ObjectDataStore`)."""
        return False

    def partition_dir(self, asset: str, partition: Mapping[str, str] | str | None = None) -> Path:
        """Folder of one asset partition: one `<dim>=<value>` level per dimension, region before date
        (then any other dimension by name), whatever order the mapping has (Dagster's multi-partition
        keys list date first)."""
        return Path(self.root) / partition_folder(asset, partition)

    def path(self, asset: str, partition: Mapping[str, str] | str | None, filename: str) -> Path:
        """Path of one output file of an asset partition."""
        check_partition_value(filename, "file name")
        return self.partition_dir(asset, partition) / filename

    # ---- the output catalog (resources/catalog.py): what assets ask instead of the file system ----

    def file(self, output: OutputFile, partition: Mapping[str, str] | str | None = None) -> Path:
        """Path of a catalogued output file of one partition (None: an unpartitioned asset)."""
        return self.path(output.asset, partition, output.name)

    def exists(self, output: OutputFile, partition: Mapping[str, str] | str | None = None) -> bool:
        """Whether that output file has been written."""
        return self.file(output, partition).exists()

    def discard(self, output: OutputFile, partition: Mapping[str, str] | str | None = None) -> None:
        """Delete an output file if it is there (an optional output this run does not write, which would no
        longer match the others)."""
        self.file(output, partition).unlink(missing_ok=True)

    def read_json(self, output: OutputFile, partition: Mapping[str, str] | str | None = None) -> dict:
        """A JSON record written by an asset; raises what reading it raises (FileNotFoundError, ValueError)."""
        return json.loads(self.read_bytes(self.file(output, partition)))

    def scene_record(self, partition: Mapping[str, str]) -> dict:
        """The `scenes` record of a partition: grid, CRS, bands, dtype, nodata, source fingerprint."""
        return self.read_json(SCENE_RECORD, partition)

    def tile_table(self, partition: Mapping[str, str]):
        """The `tiles` table of a partition (GeoDataFrame in the scene CRS: windows, validity, band stats)."""
        import geopandas as gpd

        return gpd.read_parquet(self.file(TILE_TABLE, partition))

    def prediction_record(self, partition: Mapping[str, str]) -> dict:
        """The `predictions` record of a partition: model version, class pixels and areas, inference settings."""
        return self.read_json(PREDICTION_RECORD, partition)

    def read_bytes(self, path: str | os.PathLike) -> bytes:
        """The bytes of a file of this store given by its path (`file`, `path`); FileNotFoundError if absent."""
        return Path(path).read_bytes()

    def sha256(self, path: str | os.PathLike) -> str:
        """The SHA-256 of a file of this store given by its path, streamed."""
        from geoseg_assets.geo.scene_io import sha256_file

        return sha256_file(path)

    def path_exists(self, path: str | os.PathLike) -> bool:
        """Whether a file of this store given by its path has been written."""
        return Path(path).is_file()

    def version_of(self, path: str | os.PathLike) -> str:
        """What changes when a file of this store is replaced: its size and modification time."""
        stat = Path(path).stat()
        return f"{stat.st_size}-{stat.st_mtime_ns}"

    @contextmanager
    def local_copy(self, path: str | os.PathLike) -> Iterator[Path]:
        """A local file with the content of a file of this store, for readers that cannot take the store's paths (a
        GeoPackage opened by another GDAL): the file itself here."""
        yield Path(path)

    def location(self) -> str:
        """Where the outputs are, as a user names it: the root folder."""
        return str(self.root)

    def display(self, path: str | os.PathLike) -> str:
        """How a path of this store is shown to a user (metadata, logs): the local path as it is."""
        return str(path)

    def catalog_files(self):
        """Where the STAC catalog's files are read and written (geo/catalog_files.py): this machine's disk."""
        from geoseg_assets.geo.catalog_files import LocalFiles

        return LocalFiles()

    @contextmanager
    def raster_env(self) -> Iterator[None]:
        """The GDAL configuration under which the store's raster paths open (none needed for local files)."""
        yield

    def dataset_dir(self) -> Path | None:
        """The current training set folder, or None when `dataset` was never built."""
        return self.partition_dir(DATASET) if self.exists(DATASET_MANIFEST) else None

    def dataset_manifest(self) -> dict | None:
        """The current training set's manifest, or None when `dataset` was never built."""
        return self.read_json(DATASET_MANIFEST) if self.exists(DATASET_MANIFEST) else None

    def dates_with(self, output: OutputFile, region: str) -> list[str]:
        """The dates of `region` for which `output` has been written, oldest first."""
        folder = self.partition_dir(output.asset, {"region": region})
        return sorted(p.parent.name.removeprefix("date=") for p in folder.glob(f"date=*/{output.name}"))

    def previous_date(self, output: OutputFile, region: str, date: str) -> str | None:
        """The latest date before `date` for which `output` has been written in `region` (or None)."""
        earlier = [d for d in self.dates_with(output, region) if d < date]
        return earlier[-1] if earlier else None

    def partitions_with(self, output: OutputFile) -> list[dict[str, str]]:
        """The region x date partitions for which `output` has been written, in folder order."""
        files = sorted(self.partition_dir(output.asset).glob(f"region=*/date=*/{output.name}"))
        return [{"region": f.parent.parent.name.removeprefix("region="), "date": f.parent.name.removeprefix("date=")}
                for f in files]

    def scratch_dir(self, asset: str, name: str) -> Path:
        """A local folder an asset keeps between attempts of a step (training checkpoints, so a retry resumes)."""
        return self.partition_dir(asset) / check_partition_value(name, "folder name")

    def tmp_dir(self) -> Path:
        """Scratch folder on the same filesystem as the outputs (so renames are atomic), swept of what
        killed runs left there."""
        path = Path(self.root) / ".tmp"
        path.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(path, self.stale_temp_seconds, everything=True)
        return path

    @contextmanager
    def atomic_path(self, target: Path) -> Iterator[Path]:
        """Yield a temp path next to `target`; on success rename it over `target`, on failure delete it
        (`publishing` with one output)."""
        with self.publishing() as outputs:
            yield outputs.path(target)

    def write_bytes(self, target: Path, data: bytes) -> Path:
        """Atomically write bytes to `target`."""
        with self.publishing() as outputs:
            return outputs.write_bytes(target, data)

    @contextmanager
    def publishing(self) -> Iterator["Publication"]:
        """Stage every output of a step; they replace their targets only when the whole block succeeds,
        so a failure after the first file (a preview, a report) leaves all earlier outputs as they were."""
        publication = Publication(lambda folder: sweep_stale_temps(folder, self.stale_temp_seconds))

        def disk_full(exc: Exception) -> Failure | None:
            full = disk_full_error(exc, sorted({t.parent for t in publication.staged}))
            return None if full is None else Failure(
                f"{full}; every earlier output was kept. Fix: free space on that disk or move the data root "
                "(GEOSEG_DATA_DIR) to a larger one, then re-run", allow_retries=False)

        with committed_on_success(publication, disk_full):
            yield publication

    @contextmanager
    def provisional_dir(self, target: Path, staged: Path, keep: tuple[Path, ...] = ()) -> Iterator[Path]:
        """Put the complete folder `staged` in place of `target` while the block runs (a step that must see
        the final path, e.g. `dvc commit` + `dvc push`); if the block fails, the earlier `target` and the
        bytes of the `keep` files (e.g. dvc.lock) are put back, so outputs and their records stay in step."""
        with swap_dir(target, staged, keep) as live:
            yield live


@contextmanager
def committed_on_success(publication, failure_of: Callable[[Exception], Failure | None] = lambda exc: None):
    """Run a step's block around its publication (a folder's `Publication` or a bucket's `ObjectPublication`): commit
    it when the block succeeds, discard it when it fails (raising `failure_of(error)` instead, when that gives a
    Failure); a commit that cannot complete becomes a non-retryable Failure naming the output."""
    try:
        yield publication
    except Exception as exc:
        failure = failure_of(exc)
        publication.discard()
        if failure is not None:
            raise failure from exc
        raise
    except BaseException:
        publication.discard()
        raise
    try:
        publication.commit()
    except PublishError as exc:
        raise Failure(str(exc), allow_retries=False) from exc.__cause__


def sweep_stale_temps(folder: Path, older_than_s: float, everything: bool = False) -> list[Path]:
    """Delete the temp files and folders (names starting with '.', or anything when `everything`) in
    `folder` not modified for `older_than_s` seconds: what killed runs left behind. Returns what went."""
    import time

    cutoff = time.time() - older_than_s
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not (everything or entry.name.startswith(".")):
            continue
        try:
            if _newest_mtime(entry) >= cutoff:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:  # another process removed or is using it: leave it
            continue
    return removed


def _newest_mtime(entry: Path) -> float:
    """Modification time of a file, or of the newest file in a folder (a build writing into it is live)."""
    newest = entry.lstat().st_mtime
    if entry.is_dir() and not entry.is_symlink():
        for parent, _, files in os.walk(entry):
            for name in files:
                try:
                    newest = max(newest, os.lstat(os.path.join(parent, name)).st_mtime)
                except OSError:
                    continue
    return newest
