"""Exact semantic-segmentation metrics from a confusion matrix, ignoring an ignore id.

Conventions (shared by every function here):
- The confusion matrix has rows = truth, columns = prediction, in the order of `class_ids`; pixels
  whose truth is `ignore_id` are left out whatever their prediction.
- A truth or prediction id that is neither a class nor (for truth) the ignore id raises ValueError:
  such pixels are never silently dropped (a wrong class map or an argmax -> id bug must surface).
- Any 0/0 ratio is NaN ("undefined"), never 0 and never a warning. So a class absent from both truth
  and prediction has NaN IoU/F1; a class predicted but absent from truth has IoU 0 and F1 0, precision 0
  and recall NaN.
- `miou` and `mean_dice` are macro means over the classes PRESENT in the truth (support > 0), the
  torchmetrics / mmseg "ignore NaN" convention: a class the evaluated pixels do not hold cannot be
  scored, so it is left out instead of counting 0. Its false positives still count, as false
  negatives of the present classes they were taken from. `miou_all_classes` is the stricter figure
  that also counts every class predicted but absent from the truth as IoU 0 (classes absent from
  both truth and prediction stay out: nothing was there to get wrong).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable, Sequence

import numpy as np

from ..geo.classmap import IGNORE_ID
from ..markdown import markdown_table


def _to_numpy(x) -> np.ndarray:
    """A numpy view of a numpy array or a (CPU or CUDA) torch tensor; torch is never imported here."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _class_lut(class_ids: Sequence[int]) -> np.ndarray:
    """Lookup table id -> index 0..K-1 (-1 for ids that are not classes), so mapping is one gather."""
    ids = np.asarray(list(class_ids))
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"class_ids must be a non-empty sequence of ints, got {class_ids!r}")
    if ids.min() < 0 or len(np.unique(ids)) != ids.size:
        raise ValueError(f"class_ids must be distinct non-negative ints, got {list(class_ids)}")
    lut = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
    lut[ids] = np.arange(ids.size)
    return lut


def _to_index(values: np.ndarray, lut: np.ndarray, what: str) -> np.ndarray:
    """Class indices of `values` (1-D ints); raises on ids that are not classes rather than dropping them."""
    if values.size == 0:
        return values.astype(np.int64)
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= lut.size:
        bad = np.unique(values[(values < 0) | (values >= lut.size)])
        raise ValueError(f"{what} holds ids {bad[:10].tolist()} that are not class ids")
    idx = lut[values]
    if (idx < 0).any():
        raise ValueError(f"{what} holds ids {np.unique(values[idx < 0])[:10].tolist()} that are not class ids")
    return idx


def _valid_pairs(y_true, y_pred, ignore_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Flattened truth/prediction of the pixels whose truth is not the ignore id."""
    t, p = _to_numpy(y_true), _to_numpy(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true shape {t.shape} != y_pred shape {p.shape}")
    for name, a in (("y_true", t), ("y_pred", p)):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise TypeError(f"{name} must hold integer class ids, got dtype {a.dtype}")
    t, p = t.reshape(-1), p.reshape(-1)
    t, p = (a.astype(np.uint8) if a.dtype == np.bool_ else a for a in (t, p))  # bools would index as masks
    if ignore_id is not None:
        keep = t != ignore_id
        t, p = t[keep], p[keep]
    return t, p


def confusion_matrix(y_true, y_pred, class_ids: Sequence[int], ignore_id: int | None = IGNORE_ID) -> np.ndarray:
    """(K, K) int64 counts, rows = truth, cols = prediction, in `class_ids` order, over pixels whose truth
    is not `ignore_id` (None = keep all). Any shape, numpy or torch; one bincount, so fast on big arrays.

    Raises ValueError if a kept pixel has a truth or prediction id outside `class_ids`."""
    lut = _class_lut(class_ids)
    if ignore_id is not None and ignore_id < lut.size and lut[ignore_id] >= 0:
        raise ValueError(f"ignore_id {ignore_id} is also a class id")
    t, p = _valid_pairs(y_true, y_pred, ignore_id)
    k = len(class_ids)
    flat = _to_index(t, lut, "y_true") * k + _to_index(p, lut, "y_pred")
    return np.bincount(flat, minlength=k * k).reshape(k, k).astype(np.int64)


class ConfusionAccumulator:
    """Running confusion matrix over batches (e.g. a validation loop), so metrics stay exact over a split."""

    def __init__(self, class_ids: Sequence[int], ignore_id: int | None = IGNORE_ID):
        self.class_ids = tuple(int(c) for c in class_ids)
        self.ignore_id = ignore_id
        _class_lut(self.class_ids)  # validate early
        self._cm = np.zeros((len(self.class_ids), len(self.class_ids)), dtype=np.int64)

    def add(self, y_true, y_pred) -> ConfusionAccumulator:
        """Count one batch (numpy or torch, CPU or CUDA); returns self for chaining."""
        self._cm += confusion_matrix(y_true, y_pred, self.class_ids, self.ignore_id)
        return self

    def merge(self, other: ConfusionAccumulator) -> ConfusionAccumulator:
        """A new accumulator holding both counts (e.g. from two workers); neither input changes."""
        if (other.class_ids, other.ignore_id) != (self.class_ids, self.ignore_id):
            raise ValueError("cannot merge accumulators with different class_ids or ignore_id")
        merged = ConfusionAccumulator(self.class_ids, self.ignore_id)
        merged._cm = self._cm + other._cm
        return merged

    def reset(self) -> None:
        """Forget every counted pixel."""
        self._cm[:] = 0

    @property
    def matrix(self) -> np.ndarray:
        """A copy of the counts so far (rows = truth, cols = prediction)."""
        return self._cm.copy()


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den == 0, without a division warning."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den != 0)


def _nanmean(x: np.ndarray) -> float:
    """Mean of the non-NaN values, NaN (without a warning) if there are none."""
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def _class_stats(cm) -> dict[str, np.ndarray]:
    """Per-class tp/support/predicted and IoU/F1/precision/recall arrays of a confusion matrix."""
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    tp = np.diag(cm)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    union = support + predicted - tp
    return dict(tp=tp, support=support, predicted=predicted, iou=_ratio(tp, union),
                f1=_ratio(2 * tp, support + predicted), precision=_ratio(tp, predicted), recall=_ratio(tp, support))


def _headline(cm: np.ndarray, s: dict[str, np.ndarray]) -> dict[str, float]:
    """mIoU (present classes), all-class mIoU, fwIoU, mean Dice and pixel accuracy from the per-class stats
    (NaN when nothing was counted); see the module docstring for which classes each mean covers."""
    total = int(s["support"].sum())
    in_truth = s["support"] > 0
    return dict(
        miou=_nanmean(s["iou"][in_truth]),
        miou_all_classes=_nanmean(s["iou"]),
        fwiou=float((s["support"][in_truth] * s["iou"][in_truth]).sum() / total) if total else float("nan"),
        mean_dice=_nanmean(s["f1"][in_truth]),
        pixel_accuracy=float(np.trace(cm) / total) if total else float("nan"),
    )


def segmentation_metrics(cm, class_names: Sequence[str]) -> dict:
    """Headline and per-class metrics of a confusion matrix (rows = truth), as plain Python numbers.

    `miou` and `mean_dice` are macro means over the classes present in the truth; `miou_all_classes` also
    counts classes predicted but absent from the truth as 0; fwIoU weights IoU by truth pixels; per-class
    F1 equals per-class Dice. Per class: `support` (truth pixels), `share` (support / labelled pixels),
    `predicted` (predicted pixels) and `present` (support > 0). `counts` says how many classes each mean
    covers: `classes_present` for `miou`, plus `classes_predicted_only` for `miou_all_classes`."""
    cm = np.asarray(cm, dtype=np.int64)
    s = _class_stats(cm)
    if len(class_names) != cm.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {cm.shape[0]}-class confusion matrix")
    share = _ratio(s["support"], s["support"].sum())
    per_class = {
        name: dict(iou=float(s["iou"][i]), f1=float(s["f1"][i]), precision=float(s["precision"][i]),
                   recall=float(s["recall"][i]), support=int(s["support"][i]), share=float(share[i]),
                   predicted=int(s["predicted"][i]), true_positives=int(s["tp"][i]), present=bool(s["support"][i] > 0))
        for i, name in enumerate(class_names)
    }
    in_truth = s["support"] > 0
    counts = dict(pixels=int(cm.sum()), correct=int(np.trace(cm)), classes_present=int(in_truth.sum()),
                  classes_predicted_only=int((~in_truth & (s["predicted"] > 0)).sum()), classes=int(cm.shape[0]))
    return {**_headline(cm, s), "per_class": per_class, "counts": counts}


RATES = ("iou", "f1", "precision", "recall")


def _round4(x: float) -> float | None:
    """`x` rounded to 4 digits, None when undefined (NaN), so tables and JSON never show a NaN."""
    return None if x != x else round(float(x), 4)


def per_class_rows(metrics: dict) -> list[dict]:
    """One row per class of a `segmentation_metrics` result, for tables and JSON: support and predicted pixels,
    share of the labelled pixels and IoU/F1/precision/recall rounded to 4 digits. A class absent from the
    truth was not scored, so its rates are None rather than a 0 that reads like a failure."""
    return [{"class": name, "support": c["support"], "share": _round4(c["share"]), "predicted": c["predicted"],
             "present": c["present"], **{k: _round4(c[k]) if c["present"] else None for k in RATES}}
            for name, c in metrics["per_class"].items()]


def per_class_markdown(metrics: dict) -> str:
    """Markdown table of `per_class_rows`: a class absent from the truth reads "absent" in its share and rates;
    a present class's undefined rate (precision of a class never predicted) reads "n/a"."""
    def cell(row: dict, key: str) -> str:
        if not row["present"]:
            return "absent"
        return "n/a" if row[key] is None else f"{row[key]:.4f}"

    return markdown_table(
        ("class", "support px", "share", "IoU", "F1", "precision", "recall", "predicted px"),
        ([r["class"], r["support"], *(cell(r, k) for k in ("share", *RATES)), r["predicted"]]
         for r in per_class_rows(metrics)))


def miou_note(metrics: dict) -> str:
    """One sentence saying which classes `miou` and `miou_all_classes` average, naming the classes left out."""
    per_class = metrics["per_class"]
    absent = [n for n, c in per_class.items() if not c["present"]]
    predicted_only = [n for n in absent if per_class[n]["predicted"] > 0]
    note = f"mIoU over the {metrics['counts']['classes_present']} classes present in the truth"
    note += f" (absent: {', '.join(absent)})" if absent else " (every class is present)"
    if predicted_only:
        return note + (f"; the all-class mIoU also counts {', '.join(predicted_only)} (predicted, absent from the "
                       "truth) as IoU 0")
    return note + "; the all-class mIoU equals it (no absent class was predicted)"


def _compact(n: int) -> str:
    """Short count label for a heat-map cell (1234 -> 1.2k)."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.1f}{suffix}"
    return str(n)


def _normalized(cm: np.ndarray, normalize: str | None) -> np.ndarray:
    """Counts scaled per truth row ("true"), per prediction column ("pred"), overall ("all") or as is (None);
    empty rows/columns give 0 rather than NaN so the picture stays readable."""
    if normalize is None:
        return cm.astype(np.float64)
    axis = {"true": 1, "pred": 0, "all": None}
    if normalize not in axis:
        raise ValueError(f"normalize must be 'true', 'pred', 'all' or None, got {normalize!r}")
    den = cm.sum(axis=axis[normalize], keepdims=axis[normalize] is not None)
    return np.nan_to_num(_ratio(cm, den), nan=0.0)


def confusion_matrix_png(cm, class_names: Sequence[str], normalize: str | None = "true",
                         title: str = "Confusion matrix") -> bytes:
    """PNG (600x500 px) heat map of the normalized confusion matrix, each cell annotated with its share and
    count. Uses a private Figure + Agg canvas, so pyplot and the global backend are left untouched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or len(class_names) != cm.shape[0]:
        raise ValueError(f"need a square matrix with one name per class, got {cm.shape} and {len(class_names)} names")
    shares = _normalized(cm, normalize)
    k = cm.shape[0]
    fig = Figure(figsize=(6, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(shares.max()), 1.0)
    im = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fontsize = max(4, min(9, int(60 / k)))
    for i in range(k):
        for j in range(k):
            label = f"{100 * shares[i, j]:.1f}%\n{_compact(int(cm[i, j]))}" if normalize else _compact(int(cm[i, j]))
            colour = "white" if shares[i, j] > 0.5 * vmax else "black"
            ax.text(j, i, label, ha="center", va="center", color=colour, fontsize=fontsize)
    ax.set_xticks(range(k), labels=list(class_names), rotation=45, ha="right", fontsize=fontsize + 1)
    ax.set_yticks(range(k), labels=list(class_names), fontsize=fontsize + 1)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    how = {None: "counts", "true": "share of each true class", "pred": "share of each prediction",
           "all": "share of all"}
    ax.set_title(f"{title} ({how[normalize]})", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def per_tile_metrics(tiles: Iterable[tuple], class_ids: Sequence[int], ignore_id: int | None = IGNORE_ID) -> list[dict]:
    """mIoU (over the classes present in the tile's truth) and pixel accuracy of each (tile_id, y_true, y_pred),
    worst first (lowest mIoU, ties by tile id), to point reviewers at the tiles to look at. Tiles with no
    labelled pixel (NaN) come last."""
    rows = []
    for tile_id, y_true, y_pred in tiles:
        cm = confusion_matrix(y_true, y_pred, class_ids, ignore_id)
        head = _headline(cm, _class_stats(cm))
        rows.append(dict(tile_id=tile_id, miou=head["miou"], pixel_accuracy=head["pixel_accuracy"],
                         pixels=int(cm.sum())))
    return sorted(rows, key=lambda r: (np.isnan(r["miou"]), 0.0 if np.isnan(r["miou"]) else r["miou"], r["tile_id"]))
