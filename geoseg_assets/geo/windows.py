"""Window arithmetic: block iteration for streaming I/O and the overlapping tile grid."""

from __future__ import annotations

from collections.abc import Iterator

from rasterio.windows import Window


def iter_blocks(width: int, height: int, block: int = 1024) -> Iterator[Window]:
    """Non-overlapping windows of at most `block` x `block` pixels covering the raster, row-major."""
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    for row in range(0, height, block):
        for col in range(0, width, block):
            yield Window(col, row, min(block, width - col), min(block, height - row))


def axis_starts(length: int, size: int, stride: int) -> list[int]:
    """Start offsets along one axis: regular stride, plus a last start flush with the edge ([0] when
    one window covers it all)."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def tile_grid(width: int, height: int, size: int = 256, overlap: int = 0) -> list[Window]:
    """Tile windows of `size` pixels with `overlap` pixels shared by neighbours.

    Every pixel is covered; tiles are full-size (the last row/column is shifted back to stay
    inside the raster) unless the raster itself is smaller than one tile.
    """
    if size <= 0:
        raise ValueError(f"tile size must be positive, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in [0, size), got {overlap} for size {size}")
    stride = size - overlap
    rows = axis_starts(height, size, stride)
    cols = axis_starts(width, size, stride)
    return [
        Window(col, row, min(size, width - col), min(size, height - row))
        for row in rows
        for col in cols
    ]
