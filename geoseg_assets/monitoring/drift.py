"""Data drift of tile features and of class shares, tested with Evidently's DataDriftPreset.

Evidently picks a test per column (Kolmogorov-Smirnov p-value for up to 1000 numeric rows,
normed Wasserstein distance above; chi-square or Jensen-Shannon for categories) and calls the
dataset drifted when the share of drifted columns reaches `drift_share`. The numbers are read
from the snapshot's metric and test results (`snapshot.dict()`), never parsed from its HTML.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..geo.publish import atomic_file

MIN_ROWS = 5  # fewer rows than this on either side cannot support a distribution test
VALUE_DRIFT = "evidently:metric_v2:ValueDrift"
DRIFTED_COLUMNS = "evidently:metric_v2:DriftedColumnsCount"


@dataclass
class DriftResult:
    """What Evidently concluded: share of drifted columns, verdict, and per-column score/method/threshold."""

    drift_share: float  # share of tested columns that drifted
    dataset_drift: bool  # drift_share >= drift_share_threshold (Evidently's rule)
    drifted_columns: list[str]
    column_scores: dict[str, dict]  # column -> {score, method, threshold, drifted}
    reference_rows: int
    current_rows: int
    html_path: str | None = None
    drift_share_threshold: float = 0.5
    reference_shares: dict[str, float] = field(default_factory=dict)  # class_share_drift only
    current_shares: dict[str, float] = field(default_factory=dict)  # class_share_drift only

    def to_dict(self) -> dict:
        """Plain JSON-able form (asset metadata, MLflow)."""
        return asdict(self)


def _check_rows(reference: pd.DataFrame, current: pd.DataFrame, what: str) -> None:
    if len(reference) < MIN_ROWS or len(current) < MIN_ROWS:
        raise ValueError(
            f"too few {what} with data to test drift: reference has {len(reference)}, current has {len(current)} "
            f"(need at least {MIN_ROWS} each); use a smaller tile size, or check the scene is not mostly nodata"
        )


def _run_report(reference: pd.DataFrame, current: pd.DataFrame, numerical: Sequence[str],
                categorical: Sequence[str], drift_share: float, method: str | None, threshold: float | None):
    """The Evidently snapshot of a DataDriftPreset over the given columns (tests included, for the verdicts)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = [*numerical, *categorical]
    definition = DataDefinition(numerical_columns=list(numerical), categorical_columns=list(categorical))
    ref = Dataset.from_pandas(reference[columns].reset_index(drop=True), data_definition=definition)
    cur = Dataset.from_pandas(current[columns].reset_index(drop=True), data_definition=definition)
    preset = DataDriftPreset(columns=columns, drift_share=drift_share, method=method, threshold=threshold)
    with warnings.catch_warnings():  # scipy's note that K-S fell back to its asymptotic p-value
        warnings.filterwarnings("ignore", message="ks_2samp: Exact calculation unsuccessful", category=RuntimeWarning)
        return Report([preset], include_tests=True).run(current_data=cur, reference_data=ref)


def _extract(snapshot, drift_share: float) -> tuple[float, bool, dict[str, dict]]:
    """(share of drifted columns, dataset verdict, per-column scores) from the snapshot's metrics and tests."""
    data = snapshot.dict()
    share, verdict, scores = None, None, {}
    for metric in data["metrics"]:
        config = metric.get("config", {})
        if config.get("type") == DRIFTED_COLUMNS:
            share = float(metric["value"]["share"])
        elif config.get("type") == VALUE_DRIFT:
            scores[config["column"]] = {"score": float(metric["value"]), "method": config.get("method"),
                                        "threshold": config.get("threshold"), "drifted": None}
    for test in data["tests"]:
        params = test.get("metric_config", {}).get("params", {})
        failed = str(test.get("status", "")).upper().endswith("FAIL")
        if params.get("type") == VALUE_DRIFT and params.get("column") in scores:
            scores[params["column"]]["drifted"] = failed
        elif params.get("type") == DRIFTED_COLUMNS:
            verdict = failed  # the "share of drifted columns < drift_share" test
    if share is None or any(s["drifted"] is None for s in scores.values()):
        names = [m.get("metric_name") for m in data["metrics"]]
        raise RuntimeError(f"unexpected Evidently snapshot layout: metrics {names}, tests {len(data['tests'])}")
    if verdict is None:
        verdict = share >= drift_share
    return share, bool(verdict), scores


def _save_html(snapshot, html_path: str) -> str:
    """Write the snapshot's HTML report to `html_path` through a temporary file, so it is never partial."""
    Path(html_path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(html_path) as tmp:
        snapshot.save_html(str(tmp))
    return str(Path(html_path))


def _result(snapshot, reference: pd.DataFrame, current: pd.DataFrame, drift_share: float,
            html_path: str | None) -> DriftResult:
    share, verdict, scores = _extract(snapshot, drift_share)
    written = _save_html(snapshot, html_path) if html_path else None
    return DriftResult(
        drift_share=share, dataset_drift=verdict, drifted_columns=[c for c, s in scores.items() if s["drifted"]],
        column_scores=scores, reference_rows=len(reference), current_rows=len(current), html_path=written,
        drift_share_threshold=float(drift_share),
    )


def data_drift(reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str], *, drift_share: float = 0.5,
               html_path: str | None = None, method: str | None = None,
               threshold: float | None = None) -> DriftResult:
    """Evidently data drift of the numeric `columns` (e.g. tile features) between reference and current
    rows; `method`/`threshold` override Evidently's per-column choice. Writes the HTML report if asked."""
    columns = list(columns)
    missing = [c for c in columns if c not in reference.columns or c not in current.columns]
    if not columns or missing:
        raise ValueError(f"columns {missing or columns} missing from the reference or current frame")
    _check_rows(reference, current, "tiles")
    ref, cur = reference[columns].astype(float), current[columns].astype(float)
    snapshot = _run_report(ref, cur, columns, [], drift_share, method, threshold)
    return _result(snapshot, ref, cur, drift_share, html_path)


def _class_frame(ids: np.ndarray, class_names: Mapping[int, str]) -> pd.DataFrame:
    names = {int(k): str(v) for k, v in class_names.items()}
    values = np.asarray(ids).ravel().astype(np.int64)
    return pd.DataFrame({"class": [names.get(int(v), f"id_{int(v)}") for v in values]})


def class_shares(frame: pd.DataFrame, names: Sequence[str]) -> dict[str, float]:
    """Share of each class name in a one-column "class" frame (0.0 for absent classes), summing to 1."""
    counts = frame["class"].value_counts()
    total = float(counts.sum())
    return {n: (float(counts.get(n, 0)) / total if total else 0.0) for n in names}


def class_share_drift(reference_ids: np.ndarray, current_ids: np.ndarray, class_names: Mapping[int, str], *,
                      html_path: str | None = None, method: str | None = None,
                      threshold: float | None = None) -> DriftResult:
    """Evidently drift of the categorical column "class" (class names of sampled pixels), plus the
    reference and current class shares (same class order, absent classes at 0)."""
    ref, cur = _class_frame(reference_ids, class_names), _class_frame(current_ids, class_names)
    _check_rows(ref, cur, "class samples")
    known = [str(class_names[k]) for k in sorted(class_names)]
    names = known + sorted((set(ref["class"]) | set(cur["class"])) - set(known))
    snapshot = _run_report(ref, cur, [], ["class"], 0.5, method, threshold)
    result = _result(snapshot, ref, cur, 0.5, html_path)
    result.reference_shares = class_shares(ref, names)
    result.current_shares = class_shares(cur, names)
    return result


def drift_chart_png(result: DriftResult, title: str) -> bytes:
    """Horizontal bars of the per-column drift scores with each column's threshold (black tick);
    drifted columns in red. Scores are p-values (drift below) or distances (drift above) per method."""
    from matplotlib.figure import Figure

    from ..ml.plots import _png

    columns = list(result.column_scores)
    scores = [result.column_scores[c]["score"] for c in columns]
    fig = Figure(figsize=(6.4, 0.8 + 0.32 * max(1, len(columns))), dpi=100)
    ax = fig.subplots()
    colors = ["tab:red" if result.column_scores[c]["drifted"] else "tab:blue" for c in columns]
    y = np.arange(len(columns))
    ax.barh(y, scores, color=colors)
    for i, c in enumerate(columns):
        thr = result.column_scores[c]["threshold"]
        if thr is not None:
            ax.plot([thr, thr], [i - 0.4, i + 0.4], color="black", linewidth=1.5)
    ax.set_yticks(y, columns, fontsize=8)
    ax.invert_yaxis()
    methods = sorted({str(s["method"]) for s in result.column_scores.values()})
    ax.set_xlabel(f"drift score ({', '.join(methods)}); black: threshold", fontsize=8)
    ax.set_title(f"{title}\ndrifted {len(result.drifted_columns)}/{len(columns)} columns "
                 f"(share {result.drift_share:.2f}, dataset drift: {result.dataset_drift})", fontsize=9)
    fig.tight_layout()
    return _png(fig)
