import numpy as np
import pytest

from geoseg_assets.geo.windows import iter_blocks, tile_grid


def coverage(windows, width, height):
    hits = np.zeros((height, width), dtype=int)
    for w in windows:
        hits[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
    return hits


@pytest.mark.parametrize("width,height,block", [(1000, 700, 256), (256, 256, 256), (5, 3, 1024)])
def test_blocks_cover_every_pixel_exactly_once(width, height, block):
    hits = coverage(list(iter_blocks(width, height, block)), width, height)
    assert (hits == 1).all()


def test_tile_grid_without_overlap_is_a_partition_with_full_size_tiles():
    wins = tile_grid(1024, 512, 256, 0)
    assert len(wins) == 8
    assert {(w.width, w.height) for w in wins} == {(256, 256)}
    assert (coverage(wins, 1024, 512) == 1).all()


def test_tile_grid_with_overlap_and_ragged_edge_shifts_last_tile_inside():
    wins = tile_grid(700, 300, 256, 64)
    assert {(w.width, w.height) for w in wins} == {(256, 256)}
    cols = sorted({w.col_off for w in wins})
    rows = sorted({w.row_off for w in wins})
    assert cols == [0, 192, 384, 444]  # stride 192, last flush with the right edge
    assert rows == [0, 44]
    assert (coverage(wins, 700, 300) >= 1).all()
    # Neighbours share at least the configured overlap.
    assert all(b - a <= 256 - 64 for a, b in zip(cols, cols[1:]))


def test_scene_smaller_than_a_tile_gives_one_clipped_tile():
    (win,) = tile_grid(100, 80, 256, 0)
    assert (win.col_off, win.row_off, win.width, win.height) == (0, 0, 100, 80)


@pytest.mark.parametrize("size,overlap", [(0, 0), (256, 256), (256, -1)])
def test_tile_grid_rejects_bad_geometry(size, overlap):
    with pytest.raises(ValueError):
        tile_grid(100, 100, size, overlap)
