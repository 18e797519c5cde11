"""Hand-made dataset folders in the format of geo/dataset.py (shards + manifest.json) for ml/ tests."""

import json
from pathlib import Path

import numpy as np

from geoseg_assets.geo.classmap import IGNORE_ID as IGNORE


BANDS = ["B", "G", "R", "NIR"]


CLASSES = {"water": 1, "built_up": 4, "bare": 6}  # non-contiguous ids on purpose


SPECTRA = {1: (620, 540, 330, 180), 4: (1350, 1400, 1450, 1750), 6: (1050, 1300, 1650, 2100)}


def write_dataset(root: Path, counts=None, size: int = 32, seed: int = 0, per_shard: int = 3,
                  classes=None, coords: bool = False) -> Path:
    """A dataset folder in the format of geo/dataset.py: blocky class layouts, class spectra + noise,
    an ignored (255) strip with nodata (0) pixels, several shards per split, train-only norm stats.

    With `coords`, band 0/1 hold each pixel's row/col and the mask is a function of (row, col)."""
    counts = counts or {"train": 8, "val": 4, "test": 3}
    classes = classes or CLASSES
    ids = sorted(classes.values())
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    splits, moments, class_px = {}, [], {}
    rows, cols = np.mgrid[0:size, 0:size]
    for split, n in counts.items():
        shards, tiles = [], []
        images = np.zeros((n, len(BANDS), size, size), dtype=np.uint16)
        masks = np.zeros((n, size, size), dtype=np.uint8)
        for i in range(n):
            if coords:
                masks[i] = np.asarray(ids, dtype=np.uint8)[(rows // 4 + 2 * (cols // 4) + i) % len(ids)]
                images[i, 0], images[i, 1] = rows + 1, cols + 1
                images[i, 2:] = rng.integers(100, 3000, size=(len(BANDS) - 2, size, size))
            else:
                blocks = rng.choice(ids, size=(size // 8, size // 8)).astype(np.uint8)
                masks[i] = np.kron(blocks, np.ones((8, 8), dtype=np.uint8))
                spectra = np.zeros((len(BANDS), size, size))
                for cid in ids:
                    spectra[:, masks[i] == cid] = np.asarray(SPECTRA[cid], dtype=float)[:, None]
                noise = 1 + 0.05 * rng.standard_normal(spectra.shape)
                images[i] = np.clip(spectra * noise, 1, 60000).astype(np.uint16)
            masks[i, :, : size // 8] = IGNORE  # unlabelled strip ...
            if not coords:
                images[i, :, : size // 16, : size // 8] = 0  # ... part of it nodata
        for s, start in enumerate(range(0, n, per_shard)):
            stop = min(n, start + per_shard)
            names = {k: f"{k}-{split}-{s:05d}.npy" for k in ("images", "masks")}
            np.save(root / names["images"], images[start:stop])
            np.save(root / names["masks"], masks[start:stop])
            shards.append({**names, "count": stop - start})
            tiles += [{"tile_id": f"{split}_{j}", "region": "r", "date": "d", "shard": s, "offset": j - start}
                      for j in range(start, stop)]
        splits[split] = {"shards": shards, "tiles": tiles, "tile_count": n}
        bincount = np.bincount(masks.ravel(), minlength=256)
        class_px[split] = {"pixels": {name: int(bincount[cid]) for name, cid in classes.items()},
                           "ignored_pixels": int(bincount[IGNORE])}
        if split == "train":
            moments = np.moveaxis(images, 1, 0)[:, masks != IGNORE].astype(np.float64)
    return write_manifest(root, size, classes, moments, class_px, splits)


def write_manifest(root: Path, size: int, classes, train_pixels: np.ndarray, class_px: dict, splits: dict) -> Path:
    """manifest.json of a hand-made dataset: norm stats from `train_pixels` (bands, N)."""
    manifest = {
        "format_version": 1, "dtype": "uint16", "band_names": BANDS, "tile_shape": [size, size],
        "class_map": {"classes": classes, "ignore_id": IGNORE},
        "norm": {"split": "train", "mean": train_pixels.mean(axis=1).tolist(), "std": train_pixels.std(axis=1).tolist()},
        "class_distribution": class_px, "splits": splits,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root
