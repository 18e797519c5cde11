"""What a training epoch draws: random train crops over the train split, the epoch-seeded sampler of the
val/test tiles, and `set_epoch` that points a loader at an epoch.

Training draws `samples_per_epoch` random crops from the train split's labelled pixels (`TrainCrops`),
with the tiles put back where they lie in their scenes, so a crop may span neighbouring tiles: the
number of optimizer steps no longer depends on how many tiles a small labelled area cuts into.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .augment import Augment, seed_of
from .shard_dataset import ShardDataset


class EpochSampler(Sampler[int]):
    """Indices 0..n-1, shuffled (if `shuffle`) by a permutation that depends only on (seed, epoch)."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = int(n), int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        gen = torch.Generator().manual_seed(seed_of(self.seed, self.epoch, 0x5EED))
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


MIN_STEPS_PER_EPOCH = 8  # default epoch length for small datasets: at least this many batches


class TrainCrops(Dataset):
    """`samples_per_epoch` random `crop`-px windows over the tiles of one split, pasted back where they
    lie in their scenes (manifest `row`/`col`), so a crop may span neighbouring tiles of the split.

    A crop is centred on a pixel drawn uniformly from the split's labelled pixels (a tile is chosen
    with probability proportional to its labelled pixels, then a pixel in it), then moved inside the
    bounding box of that scene's tiles. Pixels no tile of the split covers are ignored (mask 255) and
    filled with the train mean (0 after normalization), unless a `context` dataset (the val and test
    splits) has a tile there: then its pixels are shown, its labels never read, so the network sees
    the scene around a split border as it will at inference. Tiles without a position (older
    manifests) are canvases of their own. Flips and rotations follow (`augment`). Sample i of epoch e
    depends only on (seed, e, i).
    """

    def __init__(self, tiles: ShardDataset, crop: int, samples_per_epoch: int, augment: Augment | None = None,
                 seed: int = 0, context: Sequence[ShardDataset] = ()):
        if crop <= 0 or samples_per_epoch <= 0:
            raise ValueError(f"crop and samples_per_epoch must be positive, got {crop} and {samples_per_epoch}")
        if len(tiles) == 0:
            raise ValueError(f"the {tiles.split} split holds no tile to crop from")
        self.tiles, self.crop, self.samples = tiles, int(crop), int(samples_per_epoch)
        self.sources = [tiles, *context]  # tile i of source s: pixels; only source 0's labels are read
        self.augment = Augment(crop=None, flips=augment.flips, rotations=augment.rotations) if augment else None
        self.seed, self.epoch = int(seed), 0
        self.fill = np.asarray(tiles.normalizer.mean, dtype=np.float32)[:, None, None]
        height, width = (int(v) for v in tiles.raw(0)[1].shape)
        self.cell = (height, width)
        # place (source, index) -> (canvas, row, col); canvas -> bounding box of its (train and context) tiles;
        # (canvas, cell row, cell col) -> places whose tile touches that cell
        self.places: dict[tuple[int, int], tuple[object, int, int]] = {}
        weights = []
        for source, ds in enumerate(self.sources):
            for index, entry in enumerate(self._entries(ds)):
                if "row" in entry and "col" in entry:
                    place = ((entry.get("region"), entry.get("date")), int(entry["row"]), int(entry["col"]))
                elif source:
                    continue  # a context tile without a position cannot be placed next to anything
                else:
                    place = (("tile", index), 0, 0)
                self.places[(source, index)] = place
                if not source:
                    weights.append(max(float(entry.get("labelled_fraction", 1.0)), 1e-6))
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.bounds: dict[object, list[int]] = {}
        self.grid: dict[tuple[object, int, int], list[tuple[int, int]]] = {}
        for key, (canvas, row, col) in self.places.items():
            box = self.bounds.setdefault(canvas, [row, col, row + height, col + width])
            box[:] = [min(box[0], row), min(box[1], col), max(box[2], row + height), max(box[3], col + width)]
            for cr in range(row // height, (row + height - 1) // height + 1):
                for cc in range(col // width, (col + width - 1) // width + 1):
                    self.grid.setdefault((canvas, cr, cc), []).append(key)

    @staticmethod
    def _entries(ds: ShardDataset) -> list[dict]:
        """The manifest's tile entries of `ds` in dataset index order (shard, then offset)."""
        entries = list(ds.tiles)
        if len(entries) != len(ds):
            return [{} for _ in range(len(ds))]
        starts = ds.starts
        ordered: list[dict] = [{}] * len(ds)
        for position, entry in enumerate(entries):
            if "shard" in entry and "offset" in entry:
                ordered[starts[int(entry["shard"])] + int(entry["offset"])] = entry
            else:
                ordered[position] = entry
        return ordered

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples

    def window(self, index: int, generator: torch.Generator) -> tuple[object, int, int]:
        """(canvas, top row, left col) of sample `index`'s crop, drawn from `generator`."""
        tile = int(torch.multinomial(self.weights, 1, generator=generator))
        canvas, row, col = self.places[(0, tile)]
        dy, dx = (int(v) for v in torch.randint(0, 1 << 30, (2,), generator=generator))
        top = row + dy % self.cell[0] - self.crop // 2
        left = col + dx % self.cell[1] - self.crop // 2
        r0, c0, r1, c1 = self.bounds[canvas]
        top = max(r0, min(top, r1 - self.crop)) if r1 - r0 >= self.crop else r0 - (self.crop - (r1 - r0)) // 2
        left = max(c0, min(left, c1 - self.crop)) if c1 - c0 >= self.crop else c0 - (self.crop - (c1 - c0)) // 2
        return canvas, top, left

    def read(self, canvas, top: int, left: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw image (C, crop, crop) float32 and mask of class ids of a window of `canvas`: train tiles give
        pixels and labels, context tiles (drawn first, so train tiles win where they overlap) pixels only."""
        c, (h, w) = self.crop, self.cell
        image = np.broadcast_to(self.fill, (self.fill.shape[0], c, c)).copy()
        mask = np.full((c, c), self.tiles.ignore_id, dtype=np.uint8)
        keys = {key for cr in range(top // h, (top + c - 1) // h + 1) for cc in range(left // w, (left + c - 1) // w + 1)
                for key in self.grid.get((canvas, cr, cc), ())}
        for source, index in sorted(keys, key=lambda k: (-k[0], k[1])):
            _, row, col = self.places[(source, index)]
            y0, y1 = max(top, row), min(top + c, row + h)
            x0, x1 = max(left, col), min(left + c, col + w)
            if y0 >= y1 or x0 >= x1:
                continue
            tile_image, tile_mask = self.sources[source].raw(index)
            image[:, y0 - top:y1 - top, x0 - left:x1 - left] = tile_image[:, y0 - row:y1 - row, x0 - col:x1 - col]
            if not source:
                mask[y0 - top:y1 - top, x0 - left:x1 - left] = tile_mask[y0 - row:y1 - row, x0 - col:x1 - col]
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed_of(self.seed, self.epoch, index, 0xC209))
        image, mask = self.read(*self.window(index, gen))
        image_t = torch.from_numpy(image)
        mask_t = self.tiles.lut[torch.from_numpy(mask.astype(np.int64))]
        if self.augment is not None:
            image_t, mask_t = self.augment(image_t, mask_t, gen)
        return self.tiles.normalizer.prepare(image_t), mask_t


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Point a loader's sampler and dataset at `epoch` (shuffle order and augmentations)."""
    for part in (loader.sampler, loader.dataset):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)



def default_samples_per_epoch(train_tiles: int, batch_size: int) -> int:
    """One crop per train tile, but at least `MIN_STEPS_PER_EPOCH` batches: a small labelled area still
    gets enough optimizer steps per epoch for BatchNorm statistics and early stopping to mean something."""
    return max(int(train_tiles), MIN_STEPS_PER_EPOCH * int(batch_size))
