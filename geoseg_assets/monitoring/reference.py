"""What a partition's data drift is measured against, and the cached training-set features.

A scene with the training set's bands is compared with the training set's train tiles (the region's own
when the training set holds the region, else all of them); any other product with the region's previous
date; and the first date of such a product is the baseline later dates are compared with. Features of the
training set are cached per dataset version, scope and feature tile, so every partition does not recompute
them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .features import dataset_partitions, dataset_reference_features, dataset_regions


@dataclass(frozen=True)
class TrainingReference:
    """The training set as a partition's drift reference."""

    version: str  # the dataset's DVC version ("unversioned" when DVC does not track it)
    regions: list[str] | None  # the partition's region when the training set holds it, else None (all regions)
    tile: int  # feature tile side in pixels
    in_training_set: bool  # the partition itself was trained on: data the model has seen, no drift signal

    @property
    def scope(self) -> str:
        return self.regions[0] if self.regions else "all-regions"

    @property
    def cache_name(self) -> str:
        """File name of the cached reference features of this version, scope and tile."""
        return f"features-{self.version[:16]}-{self.scope}-{self.tile}.parquet"

    @property
    def against(self) -> str:
        return f"training set {self.version} ({'train tiles of region ' + self.scope if self.regions else 'all train tiles'})"


def compares_with_training_set(manifest: Mapping | None, band_names: Sequence[str]) -> bool:
    """A scene is compared with the training set when there is one and it has the scene's bands."""
    return manifest is not None and manifest["band_names"] == band_names


def training_reference(manifest: Mapping, region: str, date: str, version: str, tile: int) -> TrainingReference:
    """The training-set reference of partition `region`/`date`."""
    regions = [region] if region in dataset_regions(manifest) else None
    return TrainingReference(version, regions, tile, (region, date) in dataset_partitions(manifest))


def training_features(reference: TrainingReference, dataset_dir: Callable[[], str | os.PathLike], cache: Path,
                      atomic_path: Callable[[Path], AbstractContextManager[Path]],
                      read_bytes: Callable[[Path], bytes]) -> pd.DataFrame:
    """The reference's train-tile features, read from `cache` (through `read_bytes`: a file or an object) when an
    earlier partition computed them, else computed from the training set (`dataset_dir()`, asked only then: an
    object store downloads it) and written there through `atomic_path` (a complete file or none)."""
    try:
        return pd.read_parquet(io.BytesIO(read_bytes(cache)))
    except FileNotFoundError:
        pass
    features = dataset_reference_features(dataset_dir(), "train", tile=reference.tile, regions=reference.regions)
    with atomic_path(cache) as tmp:
        features.to_parquet(tmp)
    return features


def previous_date_against(before: str, region: str) -> str:
    return f"previous date {before} of region {region}"


def baseline_note(manifest: Mapping | None, region: str) -> str:
    """Why a partition has no drift reference: its product is not the training set's and it is the region's
    first date, which later dates are compared with."""
    bands = manifest["band_names"] if manifest else None
    return (f"baseline: the training set has other bands ({bands}) and this is the "
            f"region's first date; later dates of {region} are compared with it")
