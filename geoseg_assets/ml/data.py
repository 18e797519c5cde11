"""Seeded training loaders of a dataset folder and what a training run needs to know about the dataset.

The pieces live next door: normalization and class indices (`normalize.py`), augmentations and seeds
(`augment.py`), the shard reader (`shard_dataset.py`) and the train crops and samplers (`sampling.py`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from ..geo.classmap import IGNORE_ID as IGNORE_INDEX
from ..geo.dataset_layout import SPLITS
from .augment import Augment
from .normalize import Normalizer, class_table
from .sampling import EpochSampler, TrainCrops, default_samples_per_epoch
from .shard_dataset import ShardDataset, load_manifest


@dataclass
class DatasetInfo:
    """What a training run needs to know about a dataset besides its pixels."""

    dataset_dir: str
    normalizer: Normalizer
    class_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    ignore_index: int
    tile_shape: tuple[int, int]
    train_class_pixels: tuple[int, ...]  # labelled train pixels per class, in class_ids order
    split_sizes: dict[str, int] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict, repr=False)

    @property
    def in_channels(self) -> int:
        return self.normalizer.in_channels

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)



def make_loaders(dataset_dir: str | os.PathLike, batch_size: int, indices: Sequence[str] = (), crop: int | None = None,
                 seed: int = 0, num_workers: int = 0, augment: bool = True, samples_per_epoch: int | None = None,
                 context: bool = False):
    """(train_loader, val_loader, test_loader, DatasetInfo) of a dataset folder, deterministic given `seed`.

    Train: `samples_per_epoch` random crops (`TrainCrops`; `crop` px, default the tile size; default
    count `default_samples_per_epoch`) with flips and rotations if `augment`, the last incomplete batch
    dropped (BatchNorm dislikes stray single-crop batches). Val/test: full tiles in manifest order, no
    augmentation. Call `set_epoch(train_loader, e)` before each epoch to get epoch e's crops.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if samples_per_epoch is not None and samples_per_epoch <= 0:
        raise ValueError(f"samples_per_epoch must be positive, got {samples_per_epoch}")
    manifest = load_manifest(dataset_dir)
    normalizer = Normalizer.from_manifest(manifest, indices)
    tile_shape = tuple(int(v) for v in manifest.get("tile_shape") or np.load(
        Path(dataset_dir) / manifest["splits"]["train"]["shards"][0]["masks"], mmap_mode="r").shape[1:])
    if crop is not None and int(crop) <= 0:
        raise ValueError(f"crop must be a positive number of pixels, got {crop}")
    datasets = {s: ShardDataset(dataset_dir, s, normalizer, None, seed, manifest) for s in SPLITS}
    if len(datasets["train"]) == 0:
        raise ValueError(f"the train split of {dataset_dir} holds no tile")
    samples = samples_per_epoch or default_samples_per_epoch(len(datasets["train"]), batch_size)
    train_crops = TrainCrops(datasets["train"], int(crop or min(tile_shape)), samples,
                             Augment() if augment else None, seed,
                             context=[datasets["val"], datasets["test"]] if context else ())
    loaders = [DataLoader(train_crops, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                          drop_last=samples >= batch_size, persistent_workers=False)]
    for s in SPLITS[1:]:
        loaders.append(DataLoader(datasets[s], batch_size=batch_size, sampler=EpochSampler(len(datasets[s]), seed,
                                                                                            shuffle=False),
                                  num_workers=num_workers, persistent_workers=False))
    class_ids, class_names, _ = class_table(manifest)
    counts = manifest.get("class_distribution", {}).get("train", {}).get("pixels", {})
    info = DatasetInfo(
        dataset_dir=str(dataset_dir), normalizer=normalizer, class_ids=class_ids, class_names=class_names,
        ignore_index=IGNORE_INDEX, tile_shape=tile_shape,
        train_class_pixels=tuple(int(counts.get(n, 0)) for n in class_names),
        split_sizes={s: len(datasets[s]) for s in SPLITS}, manifest=manifest,
    )
    return loaders[0], loaders[1], loaders[2], info
