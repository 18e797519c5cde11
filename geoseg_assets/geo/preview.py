"""PNG previews for humans: scene quicklooks (from COG overviews) and tile-grid overlays."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import rasterio
from PIL import Image, ImageDraw
from rasterio.enums import Resampling

from .bands import band_position

RGB = ("R", "G", "B")


def rgb_band_indexes(band_names: Sequence[str], count: int) -> list[int]:
    """1-based band indexes to show as RGB: named R/G/B bands if present, else the first 3 (or 1 grey)."""
    picked = [band_position(band_names, band) for band in RGB]
    if None not in picked:
        return [i + 1 for i in picked]
    return [1, 2, 3] if count >= 3 else [1]


def read_overview(path: str, max_side: int = 768, indexes: Sequence[int] | None = None):
    """Read a decimated copy of a raster (served from its overviews) and its validity mask."""
    with rasterio.open(path) as src:
        scale = max(src.width, src.height) / max_side
        scale = max(scale, 1.0)
        shape = (max(1, int(round(src.height / scale))), max(1, int(round(src.width / scale))))
        idx = list(indexes) if indexes else list(range(1, src.count + 1))
        data = src.read(idx, out_shape=(len(idx), *shape), resampling=Resampling.nearest)
        mask = src.read_masks(1, out_shape=shape, resampling=Resampling.nearest) > 0
        return data, mask, src.width / shape[1]


def stretch_to_uint8(data: np.ndarray, valid: np.ndarray, low: float = 2, high: float = 98) -> np.ndarray:
    """Per-band percentile stretch of valid pixels to 0..255; invalid pixels become 0."""
    out = np.zeros(data.shape, dtype=np.uint8)
    for b in range(data.shape[0]):
        vals = data[b][valid]
        if vals.size == 0:
            continue
        lo, hi = np.percentile(vals, [low, high])
        if hi <= lo:
            hi = lo + 1
        scaled = (data[b].astype(np.float32) - lo) / (hi - lo)
        out[b] = np.where(valid, np.clip(scaled * 255, 0, 255), 0).astype(np.uint8)
    return out


def quicklook_image(path: str, band_names: Sequence[str], max_side: int = 768) -> tuple[Image.Image, float]:
    """RGB quicklook of a scene COG and the number of scene pixels per preview pixel."""
    with rasterio.open(path) as src:
        indexes = rgb_band_indexes(band_names, src.count)
    data, valid, scale = read_overview(path, max_side, indexes)
    rgb = stretch_to_uint8(data, valid)
    if rgb.shape[0] == 1:
        rgb = np.repeat(rgb, 3, axis=0)
    return Image.fromarray(np.moveaxis(rgb, 0, -1), mode="RGB"), scale


def draw_tile_grid(image: Image.Image, scale: float, kept, dropped) -> Image.Image:
    """Outline tile windows (col, row, width, height in scene pixels): kept in yellow, dropped in red."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out, "RGBA")
    for windows, colour in ((dropped, (230, 40, 40, 200)), (kept, (255, 230, 0, 200))):
        for col, row, w, h in windows:
            box = [col / scale, row / scale, (col + w) / scale - 1, (row + h) / scale - 1]
            draw.rectangle(box, outline=colour, width=1)
    return out


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


THUMBNAIL_SIDES = (384, 256, 192, 128, 96, 64)


def thumbnail_png(png: bytes, max_bytes: int) -> bytes:
    """`png` itself when it has at most `max_bytes`, else the largest 256-colour PNG thumbnail of it (longest side
    from THUMBNAIL_SIDES) that does, or the smallest one. For previews embedded in run events, which every reader
    of the event log loads again; the full-size PNG stays a file."""
    if len(png) <= max_bytes:
        return png
    with Image.open(io.BytesIO(png)) as source:  # a PNG this package rendered, not user input
        image = source.convert("RGBA" if "A" in source.getbands() or "transparency" in source.info else "RGB")
    sides = [side for side in THUMBNAIL_SIDES if side < max(image.size)] or [THUMBNAIL_SIDES[-1]]
    # A palette PNG of imagery takes up to ~1 byte per pixel: start at the largest side within that estimate.
    first = next((i for i, side in enumerate(sides) if _thumbnail_pixels(image.size, side) <= max_bytes), len(sides) - 1)
    thumb = png
    for side in sides[first:]:
        small = image.copy()
        small.thumbnail((side, side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        small.quantize(256, method=Image.Quantize.FASTOCTREE).save(buf, format="PNG")
        thumb = buf.getvalue()
        if len(thumb) <= max_bytes:
            break
    return thumb


def _thumbnail_pixels(size: tuple[int, int], side: int) -> int:
    scale = side / max(size)
    return max(1, round(size[0] * scale)) * max(1, round(size[1] * scale))
