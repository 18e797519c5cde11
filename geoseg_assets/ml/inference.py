"""Sliding-window inference over a whole scene, seamless and memory-bounded (pure torch + numpy).

Each axis is cut into the fewest equal windows of at most `window` pixels (a multiple of 32) that
overlap by `overlap` pixels and reach `overlap // 2` pixels beyond both borders; pixels outside the
scene are filled by reflection, so border pixels get context from both sides like any other pixel.
Equal windows waste at most 31 pixels per window on an axis, where a fixed window with a last one
flush with the border forwards up to a whole window again. Overlapping predictions are blended with a
weight profile that is (nearly) zero on each window's outer `overlap // 4` pixels, where the network
sees its own zero padding, and sums to one across the rest of the overlap. A network whose receptive
field radius is below `overlap // 4` therefore gives the same probabilities as one window over the
whole scene.

Windows are read by a background thread pool while the network runs. Probabilities are
accumulated in a strip buffer of one window's height and the scene's width; rows are handed to the
sink, a block at a time, as soon as no later window touches them, so memory is bounded by the window
size and the scene width, never by the scene's area. Input preparation is `Normalizer.prepare`, the
one implementation training uses. Nodata pixels stay nodata; windows without a valid pixel are never
forwarded.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from ..geo.classmap import IGNORE_ID as NODATA_CLASS
from .normalize import Normalizer
from .runtimes import TorchNetwork, WindowNetwork

BLEND_MODES = ("ramp", "hann", "center")
WINDOW_MULTIPLE = 32  # smp encoders downsample by up to 2**5
EPSILON_WEIGHT = 1e-6  # weight of the pixels a window's neighbours predict better (never 0: scene corners)
BATCH_PIXELS = 1 << 20  # pixels per forward batch when batch_size is None: 16 windows of 256², 1 of 1024²
EMIT_ROWS = 64  # rows handed to the sink at a time: the finishing arrays stay small next to the strip buffer

# read(col, row, width, height) -> (raw bands (C, h, w) in the normalizer's band order, valid (h, w) bool)
WindowReader = Callable[[int, int, int, int], tuple[np.ndarray, np.ndarray]]
# sink(row0, classes (h, W) uint8 class ids with NODATA_CLASS, probabilities (K, h, W) float32 or None)
RowSink = Callable[[int, np.ndarray, np.ndarray | None], None]


@dataclass(frozen=True)
class InferenceConfig:
    """How a scene is cut into windows and stitched back."""

    window: int = 768  # the largest window side; each axis gets equal windows no larger
    overlap: int = 64
    blend: str = "ramp"
    batch_size: int | None = None  # None: as many windows as fit in BATCH_PIXELS (at least one)
    reader_threads: int = 2
    prefetch_batches: int = 2

    def __post_init__(self):
        if self.window <= 0 or self.window % WINDOW_MULTIPLE:
            raise ValueError(f"window must be a positive multiple of {WINDOW_MULTIPLE} (encoder downsampling), got {self.window}")
        if not 0 <= self.overlap < self.window // 2 + 1 or self.overlap % 4:
            raise ValueError(f"overlap must be a multiple of 4 between 0 and window/2 ({self.window // 2}), got {self.overlap}")
        if self.blend not in BLEND_MODES:
            raise ValueError(f"blend must be one of {BLEND_MODES}, got {self.blend!r}")
        if (self.batch_size is not None and self.batch_size <= 0) or self.reader_threads <= 0 or self.prefetch_batches <= 0:
            raise ValueError("batch_size, reader_threads and prefetch_batches must be positive")

    @property
    def pad(self) -> int:
        """Pixels the window grid reaches beyond each scene border (filled by reflection)."""
        return self.overlap // 2

    def windows_per_batch(self, height: int, width: int) -> int:
        """Windows of height x width per forward: `batch_size`, or as many as fit in BATCH_PIXELS (at least one)."""
        return self.batch_size or max(1, BATCH_PIXELS // (height * width))


@dataclass
class InferenceResult:
    """What a scene prediction produced."""

    class_pixels: dict[int, int]  # class id -> pixels predicted
    valid_pixels: int
    nodata_pixels: int
    windows_total: int
    windows_forwarded: int
    seconds_forward: float = 0.0
    window_shape: tuple[int, int] = (0, 0)  # (height, width) of every window
    runtime: str = ""
    notes: list[str] = field(default_factory=list)


def blend_profile(window: int, overlap: int, mode: str = "ramp") -> np.ndarray:
    """1-D weights along a window: ~0 on the outer `overlap // 4` pixels, a ramp (linear, Hann or a
    step for centre cropping) over the rest of the overlap, 1 inside. Neighbours' profiles sum to 1
    across a regular overlap."""
    if mode not in BLEND_MODES:
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {mode!r}")
    d = np.minimum(np.arange(window), np.arange(window)[::-1]).astype(np.float64)  # distance to the nearer edge
    if overlap == 0:
        return np.ones(window, dtype=np.float32)
    if mode == "center":
        w = (d >= overlap // 2).astype(np.float64)
    else:
        margin = overlap // 4
        t = np.clip((d - margin + 1) / (overlap - 2 * margin + 1), 0.0, 1.0)
        t[d < margin] = 0.0
        w = t if mode == "ramp" else np.sin(0.5 * math.pi * t) ** 2
    return np.maximum(w, EPSILON_WEIGHT).astype(np.float32)


@dataclass(frozen=True)
class AxisWindows:
    """The windows along one axis: `size` pixels each, starting at `starts` (the first at `-pad`)."""

    size: int
    starts: tuple[int, ...]

    @property
    def seams(self) -> list[float]:
        """Positions halfway through each overlap, where one window hands over to the next."""
        return [(a + self.size + b) / 2 for a, b in zip(self.starts, self.starts[1:])]


def axis_windows(length: int, config: InferenceConfig) -> AxisWindows:
    """The fewest equal windows (a multiple of 32, at most `config.window`) overlapping by `config.overlap`
    that cover [-pad, length + pad); every pair of neighbours overlaps by exactly `config.overlap`."""
    total = length + 2 * config.pad
    count = max(1, math.ceil((total - config.overlap) / (config.window - config.overlap)))
    size = math.ceil((total + (count - 1) * config.overlap) / count / WINDOW_MULTIPLE) * WINDOW_MULTIPLE
    stride = size - config.overlap
    return AxisWindows(size, tuple(i * stride - config.pad for i in range(count)))


def window_grid(width: int, height: int, config: InferenceConfig) -> tuple[AxisWindows, AxisWindows]:
    """(rows, cols): the windows along each axis; the scene's windows are their product, row-major (the
    order rows are finished in)."""
    return axis_windows(height, config), axis_windows(width, config)


def _reflect_window(read: WindowReader, col: int, row: int, shape: tuple[int, int], width: int, height: int):
    """The window's raw pixels and validity, parts outside the scene filled by reflection."""
    c0, r0 = max(col, 0), max(row, 0)
    c1, r1 = min(col + shape[1], width), min(row + shape[0], height)
    raw, valid = read(c0, r0, c1 - c0, r1 - r0)
    pads = ((r0 - row, row + shape[0] - r1), (c0 - col, col + shape[1] - c1))
    if any(p for pair in pads for p in pair):
        raw = np.pad(raw, ((0, 0), *pads), mode="reflect" if min(raw.shape[1:]) > 1 else "edge")
        valid = np.pad(valid, pads, mode="reflect" if min(valid.shape) > 1 else "edge")
    return raw, valid


class _StripBuffer:
    """Weighted probability sums for scene rows [y0, y0 + window height), flushed to the sink block by
    block once no later window reaches them."""

    def __init__(self, weight: np.ndarray, k: int, width: int, height: int, class_ids: np.ndarray, sink: RowSink,
                 with_probabilities: bool):
        self.weight, self.window, self.width, self.height = weight, weight.shape[0], width, height
        self.sums = np.zeros((k, self.window, width), dtype=np.float32)
        self.weights = np.zeros((self.window, width), dtype=np.float32)
        self.valid = np.zeros((self.window, width), dtype=bool)
        self.y0 = 0
        self.lut = np.asarray(class_ids, dtype=np.uint8)
        self.sink = sink
        self.with_probabilities = with_probabilities
        self.class_pixels = np.zeros(256, dtype=np.int64)

    def advance_to(self, row: int) -> None:
        """Emit every row above `row` (they are final) and slide the buffer down."""
        row = min(max(row, 0), self.height)
        n = row - self.y0
        if n <= 0:
            return
        for start in range(0, min(n, self.window), EMIT_ROWS):
            self._emit(start, min(start + EMIT_ROWS, n, self.window))
        keep = self.window - n
        if keep > 0:
            self.sums[:, :keep] = self.sums[:, n:]
            self.weights[:keep] = self.weights[n:]
            self.valid[:keep] = self.valid[n:]
        self.sums[:, max(keep, 0):] = 0
        self.weights[max(keep, 0):] = 0
        self.valid[max(keep, 0):] = False
        self.y0 = row

    def finish(self) -> None:
        self.advance_to(self.height)

    def _emit(self, start: int, stop: int) -> None:
        """Hand buffer rows [start, stop) to the sink as class ids (and probabilities)."""
        stop = min(stop, self.height - self.y0)
        if stop <= start:
            return
        weights = self.weights[start:stop]
        valid = self.valid[start:stop] & (weights > 0)
        probs = self.sums[:, start:stop] / np.where(weights > 0, weights, 1.0)
        classes = self.lut[probs.argmax(axis=0)]
        classes[~valid] = NODATA_CLASS
        self.class_pixels += np.bincount(classes.ravel(), minlength=256)
        if self.with_probabilities:
            probs[:, ~valid] = 0.0
        self.sink(self.y0 + start, classes, probs if self.with_probabilities else None)

    def add(self, col: int, row: int, probs: np.ndarray, valid: np.ndarray) -> None:
        """Accumulate one window's weighted probabilities (K, h, w) over its part inside the scene."""
        h, w = self.weight.shape
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + w, self.width), min(row + h, self.height)
        if c1 <= c0 or r1 <= r0:
            return
        wy, wx = slice(r0 - row, r1 - row), slice(c0 - col, c1 - col)
        by, bx = slice(r0 - self.y0, r1 - self.y0), slice(c0, c1)
        self.sums[:, by, bx] += probs[:, wy, wx]
        self.weights[by, bx] += self.weight[wy, wx]
        self.valid[by, bx] |= valid[wy, wx]


def predict_scene(
    net: torch.nn.Module | WindowNetwork,
    normalizer: Normalizer,
    class_ids: Sequence[int],
    width: int,
    height: int,
    read: WindowReader,
    sink: RowSink,
    config: InferenceConfig = InferenceConfig(),
    device: torch.device | str = "cpu",
    with_probabilities: bool = False,
    log: Callable[[str], None] | None = None,
) -> InferenceResult:
    """Predict a `width` x `height` scene window by window and hand finished rows to `sink`.

    `net` is a torch module (run on `device`) or a `WindowNetwork` (e.g. ONNX Runtime). `read` returns
    raw band values (in `normalizer.band_names` order) and validity for an in-scene window; it is called
    from `config.reader_threads` threads at once, so it must be thread-safe. Output class ids are
    `class_ids[argmax]`; nodata pixels (and only they) get NODATA_CLASS.
    """
    import time

    network = TorchNetwork(net, device) if isinstance(net, torch.nn.Module) else net
    k = len(class_ids)
    rows, cols = window_grid(width, height, config)
    shape = (rows.size, cols.size)
    grid = [(c, r) for r in rows.starts for c in cols.starts]
    weight_np = np.outer(blend_profile(rows.size, config.overlap, config.blend),
                         blend_profile(cols.size, config.overlap, config.blend))
    weight = torch.from_numpy(weight_np)
    buffer = _StripBuffer(weight_np, k, width, height, np.asarray(class_ids), sink, with_probabilities)
    batch_size = config.windows_per_batch(*shape)

    def load(offset: tuple[int, int]):
        col, row = offset
        raw, valid = _reflect_window(read, col, row, shape, width, height)
        if not valid.any():
            return col, row, None, valid
        return col, row, normalizer.prepare(raw), valid

    forwarded = 0
    forward_seconds = 0.0
    ahead = batch_size * config.prefetch_batches
    with ThreadPoolExecutor(max_workers=config.reader_threads, thread_name_prefix="geoseg-read") as pool:
        pending: deque = deque()
        queue = iter(grid)
        for offset in queue:
            pending.append(pool.submit(load, offset))
            if len(pending) >= ahead:
                break
        batch: list = []

        def run(batch_items: list) -> None:
            nonlocal forwarded, forward_seconds
            forwardable = [item for item in batch_items if item[2] is not None]
            probs = None
            if forwardable:
                t0 = time.perf_counter()
                probs = (network(torch.stack([item[2] for item in forwardable])) * weight).numpy()
                forward_seconds += time.perf_counter() - t0
                forwarded += len(forwardable)
            i = 0
            for col, row, prepared, valid in batch_items:
                buffer.advance_to(row)
                if prepared is not None:  # an all-nodata window adds nothing: its pixels stay nodata
                    buffer.add(col, row, probs[i], valid)
                    i += 1

        while pending:
            batch.append(pending.popleft().result())
            nxt = next(queue, None)
            if nxt is not None:
                pending.append(pool.submit(load, nxt))
            if len(batch) == batch_size:
                run(batch)
                batch = []
        if batch:
            run(batch)
    buffer.finish()
    counts = buffer.class_pixels
    nodata = int(counts[NODATA_CLASS])
    result = InferenceResult(
        class_pixels={int(c): int(counts[c]) for c in class_ids}, valid_pixels=int(width * height - nodata),
        nodata_pixels=nodata, windows_total=len(grid), windows_forwarded=forwarded, seconds_forward=forward_seconds,
        window_shape=shape, runtime=network.description,
    )
    if result.valid_pixels == 0:
        result.notes.append("the scene holds no valid pixel: the prediction is entirely nodata")
    if log:
        log(f"predicted {width}x{height} px with {forwarded}/{len(grid)} windows of {shape[0]}x{shape[1]} px forwarded "
            f"(overlap {config.overlap}, {config.blend} blending, {network.description}) in {forward_seconds:.1f}s of forward")
    return result
