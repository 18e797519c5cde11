"""Tile statistics equal an independent numpy computation over the same windows."""

import numpy as np
import pytest
import rasterio

from geoseg_assets.geo.scene_checks import SceneSpec
from geoseg_assets.geo.scene_io import write_scene_cog
from geoseg_assets.geo.tiling import compute_tiles, tile_row_bands
from geoseg_assets.geo.windows import tile_grid
from tests.support.rasters import random_scene, write_tif


# Bytes per read: one tile per read (a tile row wider than that is cut into columns), two tiles, two tile rows
# (bands overlap: 32 px overlap), the whole scene.
@pytest.mark.parametrize("band_bytes", [1, 128 * 224 * 4 * 2, 224 * 520 * 4 * 2, 2**30])
def test_tile_stats_match_numpy_on_valid_pixels(tmp_path, band_bytes):
    data = random_scene(height=300, width=520, seed=7)
    data[:, 250:, :] = 0  # bottom rows nodata
    src = write_tif(tmp_path / "in.tif", data)
    cog = write_scene_cog([str(src)], str(tmp_path / "scene.tif"), SceneSpec()).path
    records = compute_tiles(cog, ["B", "G", "R", "NIR"], size=128, overlap=32, id_prefix="x", band_bytes=band_bytes)
    assert len({r.tile_id for r in records}) == len(records)
    assert [(r.row, r.col) for r in records] == [(int(w.row_off), int(w.col_off)) for w in tile_grid(520, 300, 128, 32)]
    bands = tile_row_bands(tile_grid(520, 300, 128, 32), 4 * 2, band_bytes)
    assert [tile for _, tiles in bands for tile in tiles] == tile_grid(520, 300, 128, 32)
    assert len(bands) == {1: 18, 128 * 224 * 4 * 2: 9, 224 * 520 * 4 * 2: 2, 2**30: 1}[band_bytes]
    assert all(c.width * c.height * 4 * 2 <= max(band_bytes, 128 * 128 * 4 * 2) for c, _ in bands)
    for r in records:
        block = data[:, r.row : r.row + r.height, r.col : r.col + r.width]
        valid = (block != 0).all(axis=0)
        assert r.valid_fraction == pytest.approx(valid.mean())
        if not valid.any():
            assert np.isnan(r.stats["B_mean"])
            continue
        for b, name in enumerate(["B", "G", "R", "NIR"]):
            vals = block[b][valid].astype(float)
            assert r.stats[f"{name}_mean"] == pytest.approx(vals.mean())
            assert r.stats[f"{name}_std"] == pytest.approx(vals.std())
            assert r.stats[f"{name}_min"] == vals.min() and r.stats[f"{name}_max"] == vals.max()
            assert r.stats[f"{name}_p2"] == pytest.approx(np.percentile(vals, 2))
            assert r.stats[f"{name}_p98"] == pytest.approx(np.percentile(vals, 98))
    with rasterio.open(cog) as ds:
        first = records[0]
        assert first.bounds == pytest.approx((ds.bounds.left, ds.bounds.top - 128 * 10, ds.bounds.left + 128 * 10, ds.bounds.top))


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_fast_percentiles_equal_numpy(dtype):
    from geoseg_assets.geo.tiling import percentiles

    rng = np.random.default_rng(1)
    for n in (1, 2, 7, 1000, 65536):
        values = (rng.gamma(2.0, 300.0, size=n) - (100 if dtype == "int16" else 0)).clip(
            np.iinfo(dtype).min if dtype != "float32" else -1e9, np.iinfo(dtype).max if dtype != "float32" else 1e9
        ).astype(dtype)
        np.testing.assert_allclose(percentiles(values, (0, 2, 50, 98, 100)), np.percentile(values, [0, 2, 50, 98, 100]))
