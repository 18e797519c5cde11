"""Sliding-window inference: seamless blending, nodata handling, bounded row streaming."""

import numpy as np
import pytest
import torch

from geoseg_assets.ml.normalize import Normalizer
from geoseg_assets.ml.inference import (
    NODATA_CLASS,
    InferenceConfig,
    blend_profile,
    predict_scene,
    window_grid,
)

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


def run(read, height, width, config, net=None, probs=True):
    sink = Collector(height, width)
    result = predict_scene(net or small_rf_net(), NORMALIZER, CLASS_IDS, width, height, read, sink, config,
                           with_probabilities=probs)
    return sink, result


@pytest.mark.parametrize("mode", ["ramp", "hann", "center"])
def test_blend_profiles_sum_to_one_across_a_regular_overlap(mode):
    window, overlap = 64, 32
    p = blend_profile(window, overlap, mode)
    stride = window - overlap
    total = np.zeros(window + 3 * stride)
    for k in range(4):
        total[k * stride:k * stride + window] += p
    interior = total[window:window + stride]  # covered by two windows
    np.testing.assert_allclose(interior, 1.0, atol=1e-5)
    assert p[: overlap // 4].max() <= 1e-5  # the network's zero-padded margin barely counts


@pytest.mark.parametrize("mode", ["ramp", "hann", "center"])
def test_windows_blend_to_the_one_window_prediction(mode):
    """A network with a receptive field smaller than the overlap margin: tiled == whole scene."""
    height, width = 300, 260
    _, _, read = array_scene(height, width)
    tiled, tiled_result = run(read, height, width, InferenceConfig(window=64, overlap=32, blend=mode, batch_size=3))
    whole, whole_result = run(read, height, width, InferenceConfig(window=352, overlap=32, batch_size=1))
    assert whole_result.windows_total == 1 and tiled_result.windows_total > 50
    np.testing.assert_allclose(tiled.probs, whole.probs, atol=1e-4)
    assert (tiled.classes == whole.classes).mean() > 0.9999
    assert set(np.unique(tiled.classes)) <= set(CLASS_IDS)


def test_a_model_that_sees_window_edges_leaves_visible_seams_without_blending():
    """Control: the same comparison fails for plain centre-less tiling (overlap 0), so the test above can fail."""
    height, width = 300, 260
    _, _, read = array_scene(height, width)
    tiled, _ = run(read, height, width, InferenceConfig(window=64, overlap=0))
    whole, _ = run(read, height, width, InferenceConfig(window=352, overlap=32, batch_size=1))
    assert np.abs(tiled.probs - whole.probs).max() > 1e-2


def test_rows_are_streamed_once_each_in_order_with_a_bounded_buffer():
    height, width = 300, 260
    _, _, read = array_scene(height, width)
    config = InferenceConfig(window=64, overlap=16)
    sink, _ = run(read, height, width, config, probs=False)
    rows = [r for r, _ in sink.blocks]
    assert rows == sorted(rows) and rows[0] == 0
    assert sum(n for _, n in sink.blocks) == height
    assert all(b[0] + b[1] == nxt[0] for b, nxt in zip(sink.blocks, sink.blocks[1:]))
    assert max(n for _, n in sink.blocks) <= config.window  # never more than one window of rows held


def test_nodata_stays_nodata_and_empty_windows_are_not_forwarded():
    height, width = 200, 256
    image, valid, read = array_scene(height, width, nodata_cols=100)
    image[:, 50:60, 150:160] = 0  # a hole inside the data
    valid = (image != 0).all(axis=0)
    sink, result = run(read, height, width, InferenceConfig(window=64, overlap=16))
    assert (sink.classes[~valid] == NODATA_CLASS).all()
    assert (sink.classes[valid] != NODATA_CLASS).all()
    assert result.nodata_pixels == int((~valid).sum())
    assert result.windows_forwarded < result.windows_total  # the all-nodata windows on the left
    assert sum(result.class_pixels.values()) == int(valid.sum())
    assert np.all(sink.probs[:, ~valid] == 0)


def test_an_all_nodata_scene_gives_an_empty_prediction_with_a_note():
    height, width = 96, 128
    _, _, read = array_scene(height, width, nodata_cols=width)
    sink, result = run(read, height, width, InferenceConfig(window=64, overlap=16))
    assert (sink.classes == NODATA_CLASS).all()
    assert result.valid_pixels == 0 and result.windows_forwarded == 0
    assert "no valid pixel" in result.notes[0]


def test_scenes_smaller_than_a_window_are_reflect_padded():
    height, width = 40, 23
    _, valid, read = array_scene(height, width)
    sink, result = run(read, height, width, InferenceConfig(window=64, overlap=16))
    assert result.windows_total == 1
    assert (sink.classes != NODATA_CLASS).all() and np.isfinite(sink.probs).all()
    np.testing.assert_allclose(sink.probs.sum(axis=0), 1.0, atol=1e-5)


def test_the_grid_covers_every_pixel_including_borders():
    config = InferenceConfig(window=64, overlap=32)
    grid = window_grid(250, 130, config)
    covered = np.zeros((130, 250), dtype=int)
    for col, row in grid:
        covered[max(row, 0):max(row + 64, 0), max(col, 0):max(col + 64, 0)] += 1
    assert covered.min() >= 1
    assert min(c for c, _ in grid) == -config.pad and min(r for _, r in grid) == -config.pad


@pytest.mark.parametrize("bad", [dict(window=100), dict(overlap=200), dict(overlap=6), dict(blend="max"),
                                 dict(batch_size=0)])
def test_bad_configs_are_refused(bad):
    with pytest.raises(ValueError):
        InferenceConfig(**bad)
