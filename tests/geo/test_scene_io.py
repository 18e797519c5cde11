"""COG writing and scene validation on small rasters."""

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine, from_origin
from rio_cogeo.cogeo import cog_validate

from geoseg_assets.geo.errors import SceneError
from geoseg_assets.geo.scene_checks import SceneSpec
from geoseg_assets.geo.scene_io import sha256_file, write_scene_cog
from tests.support.rasters import random_scene, write_tif

SPEC4 = SceneSpec(band_names=("B", "G", "R", "NIR"), dtype="uint16")


def test_cog_has_same_pixels_grid_and_band_names_and_is_valid(tmp_path):
    data = random_scene(height=700, width=900)
    data[:, :, :100] = 0  # nodata margin
    src = write_tif(tmp_path / "in.tif", data)
    summary = write_scene_cog([str(src)], str(tmp_path / "out" / "scene.tif"), SPEC4, block=256)
    valid, errors, _ = cog_validate(summary.path, quiet=True)
    assert valid, errors
    with rasterio.open(summary.path) as out, rasterio.open(src) as ref:
        assert out.crs == ref.crs and out.transform == ref.transform
        assert (out.width, out.height, out.count, out.dtypes[0]) == (900, 700, 4, "uint16")
        np.testing.assert_array_equal(out.read(), data)
        assert out.descriptions == ("B", "G", "R", "NIR")
        assert out.overviews(1), "COG should carry overviews"
        assert out.profile["blockxsize"] == 512 and out.compression is not None
    assert summary.nodata_fraction == pytest.approx(100 / 900)
    assert summary.band_min == [float(data[b][:, 100:].min()) for b in range(4)]
    assert summary.band_max == [float(data[b].max()) for b in range(4)]


def test_reprojection_to_a_target_crs_and_resolution(tmp_path):
    src = write_tif(tmp_path / "in.tif", random_scene(height=200, width=200))
    summary = write_scene_cog([str(src)], str(tmp_path / "scene.tif"), SPEC4, target_crs="EPSG:4326",
                              target_resolution=0.0002)
    with rasterio.open(summary.path) as out, rasterio.open(src) as ref:
        assert out.crs.to_epsg() == 4326
        assert out.res == pytest.approx((0.0002, 0.0002))
        from rasterio.warp import transform_bounds
        expected = transform_bounds(ref.crs, "EPSG:4326", *ref.bounds, densify_pts=21)
        assert out.bounds.left == pytest.approx(expected[0], abs=0.0002)
        assert out.bounds.top == pytest.approx(expected[3], abs=0.0002)
    assert 0 < summary.nodata_fraction < 0.2  # the rotated footprint leaves nodata corners


def test_two_files_of_one_partition_are_mosaicked(tmp_path):
    data = random_scene(height=200, width=300)
    t = from_origin(500000, 5000000, 10, 10)
    left = write_tif(tmp_path / "a.tif", data[:, :, :160].copy(), transform=t)
    right = write_tif(tmp_path / "b.tif", data[:, :, 140:].copy(), transform=t @ Affine.translation(140, 0))
    summary = write_scene_cog([str(left), str(right)], str(tmp_path / "scene.tif"), SPEC4)
    with rasterio.open(summary.path) as out:
        assert (out.width, out.height) == (300, 200)
        np.testing.assert_array_equal(out.read(), data)
    assert summary.valid_pixels == 300 * 200


def _assert_names_file(err, path):
    assert str(path) in str(err.value)
    assert "Fix:" in str(err.value)


def test_truncated_tiff_fails_naming_the_file(tmp_path):
    good = write_tif(tmp_path / "good.tif", random_scene(height=512, width=512, seed=3), tiled=True,
                     blockxsize=256, blockysize=256)
    raw = good.read_bytes()
    bad = tmp_path / "truncated.tif"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SceneError) as err:
        write_scene_cog([str(bad)], str(tmp_path / "scene.tif"), SPEC4)
    _assert_names_file(err, bad)
    assert "truncated or corrupt" in str(err.value)


def test_garbage_file_fails_naming_the_file(tmp_path):
    bad = tmp_path / "notatiff.tif"
    bad.write_bytes(b"this is not a tiff at all")
    with pytest.raises(SceneError) as err:
        write_scene_cog([str(bad)], str(tmp_path / "scene.tif"), SPEC4)
    _assert_names_file(err, bad)


def test_missing_crs_fails_naming_the_file(tmp_path):
    bad = write_tif(tmp_path / "nocrs.tif", random_scene(), crs=None)
    with pytest.raises(SceneError) as err:
        write_scene_cog([str(bad)], str(tmp_path / "scene.tif"), SPEC4)
    _assert_names_file(err, bad)
    assert "no CRS" in str(err.value)


def test_wrong_band_count_fails_naming_the_file(tmp_path):
    bad = write_tif(tmp_path / "three.tif", random_scene(bands=3))
    with pytest.raises(SceneError) as err:
        write_scene_cog([str(bad)], str(tmp_path / "scene.tif"), SPEC4)
    _assert_names_file(err, bad)
    assert "3 band(s), expected 4" in str(err.value)


def test_wrong_dtype_fails(tmp_path):
    bad = write_tif(tmp_path / "bytes.tif", random_scene(dtype="uint8"))
    with pytest.raises(SceneError, match="dtype"):
        write_scene_cog([str(bad)], str(tmp_path / "scene.tif"), SPEC4)


def test_all_nodata_scene_fails(tmp_path):
    bad = write_tif(tmp_path / "empty.tif", np.zeros((4, 64, 64), dtype="uint16"))
    with pytest.raises(SceneError) as err:
        write_scene_cog([str(bad)], str(tmp_path / "scene.tif"), SPEC4)
    _assert_names_file(err, bad)
    assert "no valid pixels" in str(err.value)


def test_rotated_transform_fails(tmp_path):
    rotated = from_origin(500000, 5000000, 10, 10) @ Affine.rotation(15)
    bad = write_tif(tmp_path / "rotated.tif", random_scene(height=64, width=64), transform=rotated)
    with pytest.raises(SceneError, match="rotated"):
        write_scene_cog([str(bad)], str(tmp_path / "scene.tif"), SPEC4)


def test_failed_write_leaves_the_previous_cog_intact(tmp_path):
    dst = tmp_path / "scene.tif"
    good = write_tif(tmp_path / "good.tif", random_scene())
    write_scene_cog([str(good)], str(dst), SPEC4)
    before = sha256_file(dst)
    empty = write_tif(tmp_path / "empty.tif", np.zeros((4, 64, 64), dtype="uint16"))
    with pytest.raises(SceneError):
        write_scene_cog([str(empty)], str(dst), SPEC4)
    assert sha256_file(dst) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.tif", "good.tif", "scene.tif"]
