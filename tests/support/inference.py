"""Helpers of the inference tests: a tiny network of known receptive field, array-backed scenes and a row sink."""

import numpy as np
import torch

from geoseg_assets.ml.normalize import Normalizer

BANDS = ("B", "G", "R", "NIR")
CLASS_IDS = (1, 2, 3, 4, 5, 6)


def small_rf_net(seed: int = 0) -> torch.nn.Module:
    """Three 3x3 convolutions: receptive-field radius 3 px, far below a quarter of the overlap."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, len(CLASS_IDS), 3, padding=1),
    ).eval()


def array_scene(height: int, width: int, seed: int = 1, nodata_cols: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.integers(1, 4000, size=(4, height, width)).astype(np.uint16)
    image[:, :, :nodata_cols] = 0
    valid = (image != 0).all(axis=0)

    def read(col, row, w, h):
        data = image[:, row:row + h, col:col + w].copy()
        return data, (data != 0).all(axis=0)

    return image, valid, read


class Collector:
    """A row sink that assembles the scene and records the row blocks it was given."""

    def __init__(self, height, width, k=len(CLASS_IDS)):
        self.classes = np.full((height, width), 77, dtype=np.uint8)
        self.probs = np.full((k, height, width), np.nan, dtype=np.float32)
        self.blocks = []

    def __call__(self, row, classes, probs):
        self.blocks.append((row, classes.shape[0]))
        self.classes[row:row + classes.shape[0]] = classes
        if probs is not None:
            self.probs[:, row:row + classes.shape[0]] = probs


NORMALIZER = Normalizer(BANDS, (2000.0,) * 4, (1000.0,) * 4)
