"""Training data from a dataset folder (manifest.json + .npy shards): normalization, tile datasets,
mask-aligned augmentations and seeded loaders.

`Normalizer.prepare` is the ONE place raw pixels become model input (per-band standardization with
the train statistics of the manifest, plus optional spectral indices computed from the raw
reflectances); inference must reuse it so training and serving see identical inputs.

Masks: class ids of the manifest's class map (e.g. water 1 ... bare 6) become contiguous training
indices 0..K-1 in ascending id order (`class_ids[k]` is the id of index k); the ignore id (255: no
label, nodata, padding) stays 255 and is the loss's `ignore_index`. Randomness (shuffle order, crop
positions and augmentations) is a pure function of (seed, epoch, sample index), so loaders are
reproducible and a run resumed at epoch e draws exactly what an uninterrupted run would.

Training draws `samples_per_epoch` random crops from the train split's labelled pixels (`TrainCrops`),
with the tiles put back where they lie in their scenes, so a crop may span neighbouring tiles: the
number of optimizer steps no longer depends on how many tiles a small labelled area cuts into.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..geo.classmap import IGNORE_ID as IGNORE_INDEX
from ..geo.dataset_layout import MANIFEST_FILE, SPLITS
from .indices import check_indices, compute_indices


def load_manifest(dataset_dir: str | os.PathLike) -> dict:
    """The dataset's manifest.json, or a clear error if `dataset_dir` is not a dataset folder."""
    path = Path(dataset_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {dataset_dir} is not a dataset folder (build the `dataset` asset)")
    return json.loads(path.read_text(encoding="utf-8"))


def _seed_of(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy SeedSequence), so nearby inputs give unrelated streams."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


# --------------------------------------------------------------------------------------------
# Normalization (+ indices)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Normalizer:
    """Raw band values -> float32 model input: (x - mean) / std per band, then the requested spectral
    indices (computed from the RAW values, so they stay scale-free) appended as extra channels."""

    band_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    indices: tuple[str, ...] = ()

    def __post_init__(self):
        if not (len(self.band_names) == len(self.mean) == len(self.std)) or not self.band_names:
            raise ValueError(f"need one mean and std per band, got bands {list(self.band_names)}, "
                             f"{len(self.mean)} means, {len(self.std)} stds")
        object.__setattr__(self, "indices", tuple(check_indices(self.band_names, self.indices)))

    @classmethod
    def from_manifest(cls, manifest: Mapping, indices: Sequence[str] = ()) -> Normalizer:
        """The train-split statistics recorded in a dataset manifest."""
        norm = manifest["norm"]
        return cls(tuple(manifest["band_names"]), tuple(map(float, norm["mean"])), tuple(map(float, norm["std"])),
                   tuple(indices))

    def to_dict(self) -> dict:
        """Plain JSON-able form, stored in checkpoints so inference rebuilds the same transform."""
        return {"band_names": list(self.band_names), "mean": list(self.mean), "std": list(self.std),
                "indices": list(self.indices)}

    @classmethod
    def from_dict(cls, data: Mapping) -> Normalizer:
        return cls(tuple(data["band_names"]), tuple(data["mean"]), tuple(data["std"]), tuple(data.get("indices", ())))

    @property
    def in_channels(self) -> int:
        """Channels of the prepared input: bands + indices."""
        return len(self.band_names) + len(self.indices)

    @property
    def channel_names(self) -> list[str]:
        return [*self.band_names, *self.indices]

    def prepare(self, images_raw) -> torch.Tensor:
        """Model input (float32, same device) of raw images (B, C, H, W) or (C, H, W), tensor or numpy."""
        if isinstance(images_raw, np.ndarray):
            images_raw = torch.from_numpy(np.asarray(images_raw, dtype=np.float32))
        x = images_raw.float()
        if x.dim() not in (3, 4) or x.shape[-3] != len(self.band_names):
            raise ValueError(f"expected (B, C, H, W) or (C, H, W) with C = {len(self.band_names)} bands "
                             f"{list(self.band_names)}, got shape {tuple(x.shape)}")
        shape = (-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(shape)
        std = torch.where(std > 0, std, torch.ones_like(std))  # a constant band would divide by 0
        out = (x - mean) / std
        if self.indices:
            out = torch.cat([out, compute_indices(x, self.band_names, self.indices)], dim=-3)
        return out


# --------------------------------------------------------------------------------------------
# Class ids -> training indices
# --------------------------------------------------------------------------------------------


def class_table(manifest: Mapping) -> tuple[tuple[int, ...], tuple[str, ...], int]:
    """(class_ids ascending, their names, ignore id) of the manifest's class map."""
    cmap = manifest["class_map"]
    pairs = sorted((int(cid), str(name)) for name, cid in cmap["classes"].items())
    return tuple(c for c, _ in pairs), tuple(n for _, n in pairs), int(cmap.get("ignore_id", IGNORE_INDEX))


def class_lut(class_ids: Sequence[int]) -> np.ndarray:
    """(256,) uint8 lookup: class id -> training index 0..K-1; every other value (the ignore id, and
    ids not in the class map, which the dataset build refuses anyway) -> IGNORE_INDEX."""
    if len(class_ids) >= IGNORE_INDEX:
        raise ValueError(f"at most {IGNORE_INDEX - 1} classes are supported, got {len(class_ids)}")
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[np.asarray(class_ids, dtype=np.int64)] = np.arange(len(class_ids), dtype=np.uint8)
    return lut


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Augment:
    """Random crop (to `crop` px, if set), horizontal/vertical flips and 90-degree rotations, applied
    identically to an image (C, H, W) and its mask (H, W), drawing only from the given generator."""

    crop: int | None = None
    flips: bool = True
    rotations: bool = True

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator):
        h, w = mask.shape[-2:]
        if self.crop is not None:
            c = int(self.crop)
            if not 0 < c <= min(h, w):
                raise ValueError(f"crop {c} does not fit a {h}x{w} tile")
            top = int(torch.randint(0, h - c + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - c + 1, (1,), generator=generator))
            image, mask = image[..., top:top + c, left:left + c], mask[..., top:top + c, left:left + c]
            h = w = c
        if self.flips:
            flip_h, flip_v = (torch.rand(2, generator=generator) < 0.5).tolist()
            if flip_h:
                image, mask = image.flip(-1), mask.flip(-1)
            if flip_v:
                image, mask = image.flip(-2), mask.flip(-2)
        if self.rotations:
            k = int(torch.randint(0, 4, (1,), generator=generator))
            if h != w:
                k = 2 * (k % 2)  # quarter turns would change a non-square tile's shape
            if k:
                image, mask = torch.rot90(image, k, (-2, -1)), torch.rot90(mask, k, (-2, -1))
        return image.contiguous(), mask.contiguous()


# --------------------------------------------------------------------------------------------
# Dataset, sampler, loaders
# --------------------------------------------------------------------------------------------


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
        self._starts = np.cumsum([0] + [int(s["count"]) for s in self.shards]).tolist()
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
        return self._starts[-1]

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Tile `index` as stored: raw image (C, H, W) in the manifest dtype and mask (H, W) of class ids."""
        if not 0 <= index < len(self):
            raise IndexError(f"tile {index} out of range for {len(self)} tiles of split {self.split!r}")
        shard = bisect.bisect_right(self._starts, index) - 1
        images, masks = self._open()[shard]
        offset = index - self._starts[shard]
        return np.asarray(images[offset]), np.asarray(masks[offset])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.raw(index)
        image = torch.from_numpy(image.astype(np.float32))
        mask = self.lut[torch.from_numpy(mask.astype(np.int64))]
        if self.augment is not None:
            gen = torch.Generator().manual_seed(_seed_of(self.seed, self.epoch, index))
            image, mask = self.augment(image, mask, gen)
        return self.normalizer.prepare(image), mask


class EpochSampler(Sampler[int]):
    """Indices 0..n-1, shuffled (if `shuffle`) by a permutation that depends only on (seed, epoch)."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = int(n), int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        gen = torch.Generator().manual_seed(_seed_of(self.seed, self.epoch, 0x5EED))
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
        starts = ds._starts
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
        gen = torch.Generator().manual_seed(_seed_of(self.seed, self.epoch, index, 0xC209))
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


def default_samples_per_epoch(train_tiles: int, batch_size: int) -> int:
    """One crop per train tile, but at least `MIN_STEPS_PER_EPOCH` batches: a small labelled area still
    gets enough optimizer steps per epoch for BatchNorm statistics and early stopping to mean something."""
    return max(int(train_tiles), MIN_STEPS_PER_EPOCH * int(batch_size))


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
