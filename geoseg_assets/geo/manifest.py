"""The dataset's manifest.json: what a training run needs to load the shards and to know exactly what went into
them, written as byte-reproducible JSON (read back by `ml.shard_dataset.load_manifest`)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .dataset_layout import SPLITS
from .scene_io import sha256_file

if TYPE_CHECKING:
    from .dataset_inputs import PartitionInput, TileRef
    from .shards import ShardReport

FORMAT_VERSION = 1
FLOAT_DIGITS = 12  # significant digits of floats in the manifest (hides last-ulp noise)


def stable_json(obj) -> object:
    """`obj` with numpy scalars made plain and floats rounded to FLOAT_DIGITS significant digits,
    so last-ulp differences in summation never change the manifest's bytes."""
    if isinstance(obj, Mapping):
        return {str(k): stable_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [stable_json(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        if not math.isfinite(value):
            raise ValueError(f"non-finite number {value} cannot go into the manifest")
        return float(f"{value:.{FLOAT_DIGITS}g}") + 0.0  # + 0.0 turns -0.0 into 0.0
    return obj


def write_manifest(path: str | os.PathLike, manifest: Mapping) -> Path:
    """Write the manifest as sorted-key, indented JSON with stable floats (byte-reproducible)."""
    path = Path(path)
    text = json.dumps(stable_json(manifest), sort_keys=True, indent=2, allow_nan=False, ensure_ascii=True)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def class_distribution(counts: np.ndarray, class_map: Mapping[str, int], ignore_id: int) -> dict:
    """Pixel count and share (of labelled pixels) per class name, plus ignored pixels (incl. padding)."""
    pixels = {name: int(counts[cid]) for name, cid in class_map.items()}
    labelled = sum(pixels.values())
    return {
        "pixels": pixels,
        "share": {name: (n / labelled if labelled else 0.0) for name, n in pixels.items()},
        "labelled_pixels": labelled,
        "ignored_pixels": int(counts[ignore_id]),
    }


def build_manifest(
    *,
    parts: Sequence[PartitionInput],
    infos: Mapping[tuple[str, str], dict],
    kept: Mapping[tuple[str, str], Sequence[TileRef]],
    split_tiles: Mapping[str, Sequence[TileRef]],
    report: ShardReport,
    distribution: Mapping[str, dict],
    class_map: Mapping[str, int],
    band_names: Sequence[str],
    seed: int,
    fractions: Sequence[float],
    block_size_m: float,
    min_labelled_fraction: float,
    tiles_per_shard: int,
    ignore_id: int,
    tile_shape: tuple[int, int],
    dtype: str,
) -> dict:
    """Everything a training run needs to load the dataset and to know exactly what went into it.

    Holds no paths outside the dataset, times or host names, so equal inputs give equal bytes."""
    splits = {}
    for s in SPLITS:
        splits[s] = {
            "tile_count": len(split_tiles[s]),
            "block_count": len({t.block for t in split_tiles[s]}),
            "shards": report.shards[s],
            "tiles": [
                {"tile_id": t.tile_id, "region": t.region, "date": t.date, "block": t.block, "shard": shard,
                 "offset": offset, "row": t.row, "col": t.col, "width": t.width, "height": t.height,
                 "labelled_fraction": t.labelled_fraction}
                for t, (shard, offset) in zip(split_tiles[s], report.placements[s])
            ],
        }
    return {
        "format_version": FORMAT_VERSION,
        "layout": {"images": "N, C, H, W", "masks": "N, H, W", "image_pad_value": 0, "mask_pad_value": ignore_id},
        "dtype": dtype,
        "tile_shape": list(tile_shape),
        "band_names": list(band_names),
        "class_map": {"classes": dict(class_map), "ignore_id": ignore_id},
        "seed": int(seed),
        "fractions": dict(zip(SPLITS, fractions)),
        "block_size_m": float(block_size_m),
        "min_labelled_fraction": float(min_labelled_fraction),
        "tiles_per_shard": int(tiles_per_shard),
        "partitions": [
            {"region": p.region, "date": p.date, "scene_sha256": p.scene_sha256, "mask_sha256": p.mask_sha256 or sha256_file(p.mask_path),
             "width": infos[p.key]["width"], "height": infos[p.key]["height"], "tiles_offered": len(p.tiles),
             "tiles_selected": len(kept[p.key])}
            for p in parts
        ],
        "norm": {"split": "train", "mean": report.norm.mean, "std": report.norm.std, "pixels": report.norm.pixels,
                 "pixels_used": "mask != ignore_id and every band valid in the scene"},
        "class_distribution": distribution,
        "tile_counts": {s: len(split_tiles[s]) for s in SPLITS},
        "splits": splits,
    }
