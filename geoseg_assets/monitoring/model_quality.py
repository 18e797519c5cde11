"""Model quality over time: test scores of every registered version (from MLflow), and live quality of
predictions on partitions that have labels (streamed by window)."""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import rasterio

from geoseg_assets.geo.classmap import IGNORE_ID
from geoseg_assets.geo.scene_io import raster_env
from geoseg_assets.geo.windows import iter_blocks
from geoseg_assets.ml.metrics import ConfusionAccumulator, segmentation_metrics
from geoseg_assets.ml.plots import _png
from geoseg_assets.ml.promotion import recorded_test_miou


def version_history(client, model_name: str, champion_version: str | None = None) -> list[dict]:
    """Every registered version, oldest first: its run, test mIoU (present classes) and all-class test mIoU,
    per-class test IoU, promotion tag. A version evaluated before present-class mIoU was logged has only its
    all-class figure (its `test_miou` was that figure), so its present-class test mIoU is None."""
    rows = []
    for mv in client.search_model_versions(f"name = '{model_name}'"):
        run = client.get_run(mv.run_id)
        metrics = run.data.metrics
        test_miou, test_miou_all = recorded_test_miou(metrics)
        rows.append({
            "version": str(mv.version), "run_id": mv.run_id, "created": int(mv.creation_timestamp or 0),
            "test_miou": test_miou, "test_miou_all_classes": test_miou_all, "best_val_miou": metrics.get("best_val_miou"),
            "per_class_iou": {k.removeprefix("test_iou_"): v for k, v in sorted(metrics.items()) if k.startswith("test_iou_")},
            "promotion": run.data.tags.get("geoseg.promotion", "not evaluated"),
            "champion": str(mv.version) == str(champion_version),
            "dataset_version": run.data.tags.get("geoseg.dataset_version"),
        })
    return sorted(rows, key=lambda r: int(r["version"]))


def live_quality(pairs: Sequence[tuple[str, str, str]], class_ids: Sequence[int], class_names: Sequence[str],
                 block: int = 1024) -> dict:
    """mIoU of predictions against masks for (partition, prediction COG, mask COG) triples, per partition
    and pooled; unlabelled (255) pixels and nodata are ignored. `miou` averages the classes present in
    the labels, `miou_all_classes` also counts classes predicted but absent from them as 0."""
    pooled = ConfusionAccumulator(class_ids, IGNORE_ID)
    partitions = []
    with raster_env():
        for name, prediction, mask in pairs:
            acc = ConfusionAccumulator(class_ids, IGNORE_ID)
            with rasterio.open(prediction) as p, rasterio.open(mask) as m:
                if (p.width, p.height, p.transform) != (m.width, m.height, m.transform):
                    raise ValueError(f"{prediction} and {mask} are not on the same grid")
                for win in iter_blocks(p.width, p.height, block):
                    truth, pred = m.read(1, window=win), p.read(1, window=win)
                    keep = (truth != IGNORE_ID) & (pred != IGNORE_ID)
                    acc.add(truth[keep], pred[keep])
            metrics = segmentation_metrics(acc.matrix, list(class_names))
            partitions.append({"partition": name, "miou": metrics["miou"], "miou_all_classes": metrics["miou_all_classes"],
                               "pixel_accuracy": metrics["pixel_accuracy"], "labelled_pixels": metrics["counts"]["pixels"]})
            pooled = pooled.merge(acc)
    metrics = segmentation_metrics(pooled.matrix, list(class_names))
    return {"miou": metrics["miou"] if partitions else float("nan"),
            "miou_all_classes": metrics["miou_all_classes"] if partitions else float("nan"),
            "pixel_accuracy": metrics["pixel_accuracy"],
            "per_class_iou": {n: v["iou"] for n, v in metrics["per_class"].items() if v["present"]}, "partitions": partitions}


def history_png(history: Sequence[dict]) -> bytes:
    """Test mIoU (present classes; dashed: all classes) per registered version (champion starred) and per-class
    IoU lines."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2), dpi=100)
    ax = fig.subplots()
    versions = [h["version"] for h in history]
    x = np.arange(len(history))
    ax.plot(x, [h["test_miou"] if h["test_miou"] is not None else np.nan for h in history], "o-", color="black",
            label="test mIoU (present classes)", linewidth=2)
    ax.plot(x, [h["test_miou_all_classes"] if h["test_miou_all_classes"] is not None else np.nan for h in history],
            "o--", color="grey", label="test mIoU (all classes)")
    classes = sorted({c for h in history for c in h["per_class_iou"]})
    for c in classes:
        ax.plot(x, [h["per_class_iou"].get(c, np.nan) for h in history], "-", alpha=0.5, label=c)
    for i, h in enumerate(history):
        star = h["test_miou"] if h["test_miou"] is not None else h["test_miou_all_classes"]
        if h["champion"] and star is not None:
            ax.plot([i], [star], "*", color="gold", markersize=16, markeredgecolor="black")
    ax.set_xticks(x, [f"v{v}" for v in versions])
    ax.set_ylim(0, 1), ax.set_ylabel("IoU"), ax.set_title("model versions (star: champion)")
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    return _png(fig)


def model_quality_html(history: Sequence[dict], live: dict, png: bytes, model_name: str) -> str:
    """A self-contained page: version table, the history chart and live quality per partition."""
    import base64

    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))

    rows = "".join(
        f"<tr{' class=champion' if h['champion'] else ''}><td>v{h['version']}</td><td>{cell(h['test_miou'])}</td>"
        f"<td>{cell(h['test_miou_all_classes'])}</td><td>{cell(h['best_val_miou'])}</td><td>{html.escape(h['promotion'])}</td>"
        f"<td>{html.escape(str(h['dataset_version']))}</td><td>{html.escape(h['run_id'])}</td></tr>" for h in history)
    live_rows = "".join(
        f"<tr><td>{html.escape(p['partition'])}</td><td>{cell(p['miou'])}</td><td>{cell(p['miou_all_classes'])}</td>"
        f"<td>{cell(p['pixel_accuracy'])}</td><td>{p['labelled_pixels']}</td></tr>" for p in live["partitions"]) or "<tr><td colspan=5>no labelled partition predicted by the champion</td></tr>"
    image = base64.b64encode(png).decode()
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>model quality: {html.escape(model_name)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}
tr.champion{{background:#fff6cc}}</style></head><body>
<h1>Model quality: {html.escape(model_name)}</h1>
<h2>Registered versions (test mIoU, best val mIoU, promotion)</h2>
<p>test mIoU averages the classes present in the test truth; all classes also counts classes predicted but absent
from it as 0 (versions evaluated before both were logged have only the all-class figure).</p>
<table><tr><th>version</th><th>test mIoU (present classes)</th><th>test mIoU (all classes)</th><th>best val mIoU</th><th>promotion</th><th>dataset version</th><th>MLflow run</th></tr>{rows}</table>
<p><img src="data:image/png;base64,{image}" alt="mIoU per version"></p>
<h2>Live quality of the champion on labelled partitions (pooled mIoU {cell(live['miou'])}, classes present in the labels)</h2>
<table><tr><th>partition</th><th>mIoU (present classes)</th><th>mIoU (all classes)</th><th>pixel accuracy</th><th>labelled pixels</th></tr>{live_rows}</table>
</body></html>"""
