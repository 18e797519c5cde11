"""Reading a dataset folder (manifest.json + memory-mapped .npy shards): the manifest and the tiles of one
split as training pairs."""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..geo.classmap import IGNORE_ID as IGNORE_INDEX
from ..geo.dataset_layout import MANIFEST_FILE, SPLITS
from .augment import Augment, seed_of
from .normalize import Normalizer, class_lut, class_table


def load_manifest(dataset_dir: str | os.PathLike) -> dict:
    """The dataset's manifest.json, or a clear error if `dataset_dir` is not a dataset folder."""
    path = Path(dataset_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {dataset_dir} is not a dataset folder (build the `dataset` asset)")
    return json.loads(path.read_text(encoding="utf-8"))


class ShardDataset(Dataset):
    """The tiles of one split as (image float32 (C', H, W) prepared by `normalizer`, mask int64 (H, W)
    of training indices with 255 = ignore). Shards are memory-mapped, so memory holds one tile at a
    time; `augment` (train only) draws from a generator seeded by (seed, epoch, index)."""

    def __init__(self, dataset_dir: str | os.PathLike, split: str, normalizer: Normalizer | None = None,
                 augment: Augment | None = None, seed: int = 0, manifest: Mapping | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.dataset_dir = Path(dataset_dir)
        self.manifest = dict(manifest) if manifest is not None else load_manifest(dataset_dir)
        self.split = split
        self.normalizer = normalizer or Normalizer.from_manifest(self.manifest)
        if list(self.normalizer.band_names) != list(self.manifest["band_names"]):
            raise ValueError(f"normalizer bands {list(self.normalizer.band_names)} differ from the dataset's "
                             f"{self.manifest['band_names']}")
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        self.class_ids, self.class_names, self.ignore_id = class_table(self.manifest)  # ignore_id: as stored
        self.ignore_index = IGNORE_INDEX  # the ignore value of the masks this dataset returns
        self.lut = torch.from_numpy(class_lut(self.class_ids).astype(np.int64))
        self.shards = list(self.manifest["splits"][split]["shards"])
        self.tiles = list(self.manifest["splits"][split].get("tiles", []))
        self.starts = np.cumsum([0] + [int(s["count"]) for s in self.shards]).tolist()
        self._arrays: list[tuple[np.ndarray, np.ndarray]] | None = None
        self._open()  # fail now (missing file, wrong count) rather than in the middle of an epoch

    def _open(self) -> list[tuple[np.ndarray, np.ndarray]]:
        if self._arrays is None:
            arrays = []
            for shard in self.shards:
                images = np.load(self.dataset_dir / shard["images"], mmap_mode="r")
                masks = np.load(self.dataset_dir / shard["masks"], mmap_mode="r")
                n = int(shard["count"])
                if images.shape[0] != n or masks.shape[0] != n or images.shape[2:] != masks.shape[1:]:
                    raise ValueError(f"shard {shard['images']}/{shard['masks']} of {self.dataset_dir} holds "
                                     f"{images.shape}/{masks.shape}, the manifest says {n} tiles")
                arrays.append((images, masks))
            self._arrays = arrays
        return self._arrays

    def __getstate__(self):  # worker processes re-open the memory maps instead of pickling pixels
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of `epoch` (the loaders call it through `set_epoch`)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.starts[-1]

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Tile `index` as stored: raw image (C, H, W) in the manifest dtype and mask (H, W) of class ids."""
        if not 0 <= index < len(self):
            raise IndexError(f"tile {index} out of range for {len(self)} tiles of split {self.split!r}")
        shard = bisect.bisect_right(self.starts, index) - 1
        images, masks = self._open()[shard]
        offset = index - self.starts[shard]
        return np.asarray(images[offset]), np.asarray(masks[offset])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.raw(index)
        image = torch.from_numpy(image.astype(np.float32))
        mask = self.lut[torch.from_numpy(mask.astype(np.int64))]
        if self.augment is not None:
            gen = torch.Generator().manual_seed(seed_of(self.seed, self.epoch, index))
            image, mask = self.augment(image, mask, gen)
        return self.normalizer.prepare(image), mask
