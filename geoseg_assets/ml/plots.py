"""Small PNG figures for humans: training curves and a worst-tiles gallery (matplotlib, no pyplot)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def curves_png(history: Sequence[dict]) -> bytes:
    """Train/val loss and val mIoU per epoch."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2), dpi=100)
    epochs = [h["epoch"] for h in history]
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [h.get("train_loss") for h in history], label="train loss")
    ax1.plot(epochs, [h.get("val_loss") for h in history], label="val loss")
    ax1.set_xlabel("epoch"), ax1.legend(), ax1.set_title("loss")
    ax2.plot(epochs, [h.get("val_miou") for h in history], color="tab:green")
    ax2.set_xlabel("epoch"), ax2.set_ylim(0, 1), ax2.set_title("val mIoU")
    fig.tight_layout()
    return _png(fig)


def gallery_png(rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], palette: np.ndarray) -> bytes:
    """One row per tile: RGB image, truth and prediction (class indices coloured by `palette`, (K+1, 3)
    with the last row for ignore)."""
    from matplotlib.figure import Figure

    n = max(1, len(rows))
    fig = Figure(figsize=(9, 3 * n), dpi=80)
    axes = np.atleast_2d(fig.subplots(n, 3))
    for r, (title, rgb, truth, pred) in enumerate(rows):
        for c, (img, name) in enumerate(((rgb, "image"), (palette[truth], "truth"), (palette[pred], "prediction"))):
            ax = axes[r, c]
            ax.imshow(img)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{name}\n{title}" if c == 0 else name, fontsize=8, loc="left" if c == 0 else "center")
    fig.tight_layout()
    return _png(fig)
