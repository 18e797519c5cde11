"""Sliding-window inference: seamless blending, nodata handling, bounded row streaming."""

import numpy as np
import pytest

from geoseg_assets.ml.inference import (
    NODATA_CLASS,
    InferenceConfig,
    axis_windows,
    blend_profile,
    predict_scene,
    window_grid,
)
from tests.support.inference import CLASS_IDS, NORMALIZER, Collector, array_scene, small_rf_net


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
    rows, cols = window_grid(250, 130, config)
    covered = np.zeros((130, 250), dtype=int)
    for row in rows.starts:
        for col in cols.starts:
            covered[max(row, 0):max(row + rows.size, 0), max(col, 0):max(col + cols.size, 0)] += 1
    assert covered.min() >= 1
    assert cols.starts[0] == rows.starts[0] == -config.pad
    assert cols.starts[-1] + cols.size >= 250 + config.pad and rows.starts[-1] + rows.size >= 130 + config.pad


@pytest.mark.parametrize("length", [1, 23, 200, 1000, 1024, 2048, 3808, 8192])
@pytest.mark.parametrize("window,overlap", [(1024, 64), (512, 64), (256, 64), (64, 16), (96, 0)])
def test_each_axis_gets_the_fewest_equal_windows_that_cover_it(length, window, overlap):
    """Equal windows (a multiple of 32, at most `window`), every neighbour overlapping by exactly `overlap`
    (what the blend profiles assume), covering [-pad, length + pad); none could be dropped, and none is
    wider than it must be by 32 px or more."""
    config = InferenceConfig(window=window, overlap=overlap)
    axis = axis_windows(length, config)
    reach = length + 2 * config.pad
    assert axis.size % 32 == 0 and axis.size <= window
    assert all(b - a == axis.size - overlap for a, b in zip(axis.starts, axis.starts[1:]))
    assert axis.starts[0] == -config.pad and axis.starts[-1] + axis.size >= length + config.pad
    n = len(axis.starts)
    assert n == 1 or (n - 1) * (window - overlap) + overlap < reach  # one window fewer could not cover it
    assert n * (axis.size - 32) - (n - 1) * overlap < reach  # 32 px narrower windows could not either


def test_the_demo_scene_takes_two_windows_per_axis_and_forwards_27_percent_more_than_its_area():
    """The default grid on a 1024² scene: 2 x 2 windows of 576², 1.27x the scene's pixels forwarded, where
    256² windows with overlap 64 forwarded 6 x 6 x 256² = 2.25x."""
    rows, cols = window_grid(1024, 1024, InferenceConfig())
    assert rows == cols and rows.size == 576 and len(rows.starts) == 2 and rows.seams == [512.0]
    assert len(rows.starts) ** 2 * rows.size ** 2 / 1024 ** 2 == pytest.approx(1.2656, abs=1e-4)


def test_batches_hold_about_a_megapixel_unless_a_size_is_given():
    assert InferenceConfig().windows_per_batch(256, 256) == 16
    assert InferenceConfig().windows_per_batch(1024, 1024) == 1
    assert InferenceConfig().windows_per_batch(2048, 2048) == 1
    assert InferenceConfig(batch_size=3).windows_per_batch(1024, 1024) == 3


@pytest.mark.parametrize("bad", [dict(window=100), dict(window=256, overlap=200), dict(overlap=6), dict(blend="max"),
                                 dict(batch_size=0)])
def test_bad_configs_are_refused(bad):
    with pytest.raises(ValueError):
        InferenceConfig(**bad)
