"""Inline previews: a PNG too large for a run event becomes a palette thumbnail within the byte budget."""

import io

import numpy as np
from PIL import Image

from geoseg_assets.geo.preview import png_bytes, quicklook_image, thumbnail_png
from tests.support.paths import REPO

RNG = np.random.default_rng(7)


def decoded(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_a_png_within_the_budget_is_kept_byte_for_byte():
    png = png_bytes(Image.new("RGB", (512, 512), (30, 120, 60)))
    assert len(png) < 5_000 and thumbnail_png(png, 48_000) is png


def test_noise_shrinks_to_the_largest_side_that_fits():
    png = png_bytes(Image.fromarray(RNG.integers(0, 255, (512, 512, 3), dtype=np.uint8)))
    assert len(png) > 700_000
    thumb = thumbnail_png(png, 48_000)
    image = decoded(thumb)
    assert len(thumb) <= 48_000 and image.format == "PNG" and image.mode == "P"
    assert image.size == (192, 192)  # 256^2 palette noise takes ~62 KB: the next side down


def test_a_real_quicklook_keeps_its_aspect_and_colours():
    scene = REPO / "tests/data/landsat_drift/pucallpa_2010.tif"
    quicklook, _ = quicklook_image(str(scene), ["R", "G", "B"], max_side=512)
    png = png_bytes(quicklook)
    thumb = decoded(thumbnail_png(png, 48_000))
    assert len(png) > 48_000 and thumb.size == (256, 139)  # 512 x 277 scaled to a 256 px long side
    full = np.asarray(quicklook.resize(thumb.size, Image.Resampling.LANCZOS), dtype=float)
    assert np.abs(np.asarray(thumb.convert("RGB"), dtype=float) - full).mean() < 6  # 256 colours, no smear


def test_transparency_survives_and_a_tiny_budget_gives_the_smallest_side():
    rgba = RNG.integers(0, 255, (300, 900, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(np.arange(900) < 450, 0, 255)[None, :]
    thumb = decoded(thumbnail_png(png_bytes(Image.fromarray(rgba, "RGBA")), 1_000))
    assert max(thumb.size) == 64 and thumb.size == (64, 21)
    alpha = np.asarray(thumb.convert("RGBA"))[..., 3]
    assert alpha[:, :28].max() == 0 and alpha[:, 36:].min() >= 250  # the palette keeps alpha to a few levels
