"""The output catalog: every file an asset keeps in the DataStore, named once (asset folder + file name).

Assets and checks name an output by its entry here and ask the DataStore for its path, record or partitions
(`DataStore.file`, `scene_record`, `dataset_manifest`, `previous_date`, `partitions_with`), instead of spelling
file names or reading the folders themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from geoseg_assets.geo.dataset_layout import MANIFEST_FILE


@dataclass(frozen=True)
class OutputFile:
    """One file of an asset's output, in `<root>/<asset>/<partition folders>/<name>`."""

    asset: str
    name: str


SCENE_COG = OutputFile("scenes", "scene.tif")
SCENE_RECORD = OutputFile("scenes", "scene.json")
QUICKLOOK = OutputFile("scenes", "quicklook.png")

TILE_TABLE = OutputFile("tiles", "tiles.parquet")
GRID_PREVIEW = OutputFile("tiles", "grid.png")

MASK = OutputFile("masks", "mask.tif")
MASK_OVERLAY = OutputFile("masks", "overlay.png")

DATASET = "dataset"  # one folder: shards + manifest, versioned as a whole by DVC
DATASET_MANIFEST = OutputFile(DATASET, MANIFEST_FILE)
MODELS = "models"  # training checkpoints under models/checkpoints/<key>

PREDICTED_CLASSES = OutputFile("predictions", "classes.tif")
PREDICTED_PROBABILITIES = OutputFile("predictions", "probabilities.tif")
PREDICTED_POLYGONS = OutputFile("predictions", "polygons.gpkg")
PREDICTION_OVERLAY = OutputFile("predictions", "overlay.png")
PREDICTION_RECORD = OutputFile("predictions", "prediction.json")

STAC_CATALOG = OutputFile("stac", "catalog.json")  # the static STAC catalog's root; its collections and items beside it

REPORT_HTML, REPORT_JSON = "report.html", "report.json"
DATA_QUALITY_HTML = OutputFile("data_quality_report", REPORT_HTML)
DATA_QUALITY_JSON = OutputFile("data_quality_report", REPORT_JSON)
DATA_DRIFT_HTML = OutputFile("data_drift_report", REPORT_HTML)
DATA_DRIFT_JSON = OutputFile("data_drift_report", REPORT_JSON)
DATA_DRIFT_CHART = OutputFile("data_drift_report", "chart.png")
PREDICTION_DRIFT_HTML = OutputFile("prediction_drift_report", REPORT_HTML)
PREDICTION_DRIFT_JSON = OutputFile("prediction_drift_report", REPORT_JSON)
PREDICTION_DRIFT_PREVIOUS_HTML = OutputFile("prediction_drift_report", "vs_previous_date.html")
MODEL_QUALITY_HTML = OutputFile("model_quality_report", REPORT_HTML)
MODEL_QUALITY_JSON = OutputFile("model_quality_report", REPORT_JSON)
DRIFT_REFERENCE_CACHE = "monitoring_reference"  # cached training-set features, one parquet per version/scope/tile
