"""Evaluate a segmentation network on a dataset split: metrics, per-tile ranking, figures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..geo.bands import band_position
from .metrics import ConfusionAccumulator, confusion_matrix_png, per_tile_metrics, segmentation_metrics
from .models import batch_on, on_device
from .normalize import Normalizer
from .plots import gallery_png
from .shard_dataset import ShardDataset, load_manifest


@dataclass
class EvalReport:
    metrics: dict
    per_tile: list[dict]
    confusion_png: bytes
    gallery_png: bytes


def _rgb(image_raw: np.ndarray, band_names) -> np.ndarray:
    found = [band_position(band_names, b, aliases=False) for b in ("R", "G", "B")]
    idx = found if None not in found else [0, 0, 0]
    rgb = image_raw[idx].astype(np.float32)
    lo, hi = np.percentile(rgb, 2), np.percentile(rgb, 98)
    return np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1).transpose(1, 2, 0)


@torch.no_grad()
def evaluate_split(net: torch.nn.Module, dataset_dir, split: str, indices, gallery_tiles: int = 4,
                   batch_size: int = 8) -> EvalReport:
    """Predict every tile of `split` (inputs prepared exactly as in training) and score them."""
    manifest = load_manifest(dataset_dir)
    normalizer = Normalizer.from_manifest(manifest, indices)
    data = ShardDataset(dataset_dir, split, normalizer=normalizer, manifest=manifest)
    device = next(net.parameters()).device
    net = on_device(net, device).eval()
    k = len(data.class_ids)
    acc = ConfusionAccumulator(list(range(k)), ignore_id=data.ignore_index)
    tiles, preds = [], []
    for start in range(0, len(data), batch_size):
        items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        x = batch_on(torch.stack([im for im, _ in items]), device)
        y = torch.stack([m for _, m in items])
        p = net(x).argmax(1).cpu()
        acc.add(y, p)
        for i, (yy, pp) in enumerate(zip(y, p)):
            tiles.append((data.tiles[start + i]["tile_id"] if data.tiles else str(start + i), yy.numpy(), pp.numpy()))
            preds.append(start + i)
    metrics = segmentation_metrics(acc.matrix, list(data.class_names))
    per_tile = per_tile_metrics(tiles, list(range(k)), ignore_id=data.ignore_index)
    by_id = {t[0]: (n, t[1], t[2]) for n, t in zip(preds, tiles)}
    palette = np.zeros((256, 3), dtype=np.float32)
    colors = {c: tuple(v) for c, v in zip(range(k), _class_colors(k))}
    for c, col in colors.items():
        palette[c] = col
    palette[data.ignore_index] = (1, 1, 1)
    rows = []
    for t in per_tile[:gallery_tiles]:
        n, truth, pred = by_id[t["tile_id"]]
        raw, _ = data.raw(n)
        rows.append((f"{t['tile_id']}\nmIoU {t['miou']:.2f}", _rgb(raw, manifest["band_names"]), truth, pred))
    return EvalReport(metrics=metrics, per_tile=per_tile,
                      confusion_png=confusion_matrix_png(acc.matrix, list(data.class_names)),
                      gallery_png=gallery_png(rows, palette))


def _class_colors(k: int) -> list[tuple[float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [tuple(cmap(i % 10)[:3]) for i in range(k)]
