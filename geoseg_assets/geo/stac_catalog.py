"""A static STAC catalog of the data store's outputs: one item per materialized scene, mask and prediction, and one per
model version a prediction came from, so that QGIS, the viewer and any STAC client can browse them.

Layout, under `<data root>/stac/` (every href relative, so the data root can be copied or synced as a whole):

    catalog.json
    scenes/collection.json        scenes/<region>/<date>/scene-<region>-<date>.json
    masks/collection.json         masks/<region>/<date>/mask-<region>-<date>.json
    predictions/collection.json   predictions/<region>/<date>/prediction-<region>-<date>.json
    models/collection.json        models/<name>-v<version>/model-<name>-v<version>.json

Items carry the projection (v2.0.0), raster (v1.1.0) and classification (v1.1.0) extensions. A mask or prediction
lies on its scene's grid, so its projection comes from the scene record: building the catalog opens no raster. A
mask and a prediction link to their scene item (`derived_from`), a prediction also to its model item, and the model
item names the registered version, its MLflow run and its weights' checksum.

`write_catalog` builds every object in memory and validates it against the bundled schemas (`stac_validation.py`,
offline) before it writes anything; then it writes the items that changed, each whole (an atomic rename on disk, a
published object in a bucket: `catalog_files.py`), the collections and the root after them, and deletes the items of
outputs that are gone last, so a reader crawling from catalog.json never meets a missing file. No Dagster here:
`geoseg_assets/assets/catalog.py` wraps it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePath

from .classmap import ClassMap
from .catalog_files import CatalogFiles, LocalFiles
from .stac_validation import CLASSIFICATION, PROJECTION, RASTER, CompiledSchemas, StacCatalogError, validate

STAC_VERSION = "1.1.0"
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
CATALOG_ID = "geoseg"
COLLECTIONS = {
    "scenes": "Scenes: the landed imagery as Cloud-Optimized GeoTIFFs, one item per region x date partition.",
    "masks": "Label masks: class ids rasterized on their scene's grid from the label store.",
    "predictions": "Predictions: the champion model's class map of a whole scene, with the model version.",
    "models": "Model versions from the MLflow registry that produced the predictions in this catalog.",
}
LOCAL = LocalFiles()
_RASTER_DATA_TYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16", "float32",
                      "float64", "cint16", "cint32", "cfloat32", "cfloat64"}


@dataclass(frozen=True)
class PartitionOutputs:
    """What one region x date partition has in the data store: its scene record (required: every item hangs off the
    scene) and the files of each output that exists."""

    region: str
    date: str
    scene_record: PurePath
    scene_files: Mapping[str, PurePath]  # asset key in the item -> file ("data", "thumbnail", "metadata")
    mask_files: Mapping[str, PurePath] = field(default_factory=dict)  # empty: no mask
    mask_classes: ClassMap | None = None
    prediction_record: PurePath | None = None
    prediction_files: Mapping[str, PurePath] = field(default_factory=dict)
    prediction_classes: ClassMap | None = None


@dataclass(frozen=True)
class ModelVersion:
    """A registered model version as the catalog describes it."""

    name: str
    version: str
    run_id: str
    created: datetime
    source: str  # the version's artifact URI
    weights_sha256: str = ""


@dataclass
class CatalogSummary:
    """What a `write_catalog` call did: items per collection, files written and deleted, partitions skipped."""

    root: PurePath
    items: dict[str, int]
    written: int
    deleted: int
    unchanged: int
    skipped: dict[str, str]  # "region|date" -> why


def read_record(path: PurePath, files: CatalogFiles = LOCAL) -> dict:
    """A JSON record the assets wrote, or StacCatalogError naming it."""
    try:
        record = json.loads(files.read_bytes(path))
    except (OSError, ValueError) as exc:
        raise StacCatalogError(f"{path}: unreadable record ({exc}); re-materialize its partition") from exc
    if not isinstance(record, dict):
        raise StacCatalogError(f"{path}: not a JSON object; re-materialize its partition")
    return record


def _need(record: dict, keys: Iterable[str], path: PurePath) -> None:
    missing = [k for k in keys if record.get(k) in (None, "")]
    if missing:
        raise StacCatalogError(f"{path}: no {', '.join(missing)}; re-materialize its partition with this version")


def _footprint(record: dict, path: PurePath) -> tuple[dict, list[float]]:
    """The scene's outline in WGS84 (its four corners reprojected, densified along the edges) and its bbox."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError
    from rasterio.warp import transform_geom

    left, bottom, right, top = record["bounds"]
    ring = [[left, bottom], [right, bottom], [right, top], [left, top], [left, bottom]]
    try:
        crs = CRS.from_user_input(record.get("crs_wkt") or record["crs"])
        geometry = transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]},
                                  antimeridian_cutting=True, precision=7)
    except (CRSError, ValueError) as exc:
        raise StacCatalogError(f"{path}: cannot reproject the scene's bounds to WGS84 ({exc})") from exc
    xs, ys = [], []
    _coordinates(geometry["coordinates"], xs, ys)
    return geometry, [min(xs), min(ys), max(xs), max(ys)]


def _coordinates(node, xs: list[float], ys: list[float]) -> None:
    if node and isinstance(node[0], (int, float)):
        xs.append(float(node[0]))
        ys.append(float(node[1]))
        return
    for child in node:
        _coordinates(child, xs, ys)


def _projection(record: dict) -> dict:
    """Projection extension fields of the scene grid (shared by its mask and prediction)."""
    crs = str(record["crs"])
    fields = {"proj:shape": [int(record["height"]), int(record["width"])],
              "proj:transform": [float(v) for v in record["transform"][:6]],
              "proj:bbox": [float(v) for v in record["bounds"]]}
    if crs.upper().startswith("EPSG:"):
        fields["proj:code"] = crs.upper()
    else:  # a CRS without an EPSG code: the WKT says it all
        fields["proj:wkt2"] = record.get("crs_wkt") or crs
    return fields


def _item(item_id: str, collection: str, date: str, geometry, bbox, properties: dict, extensions: list[str]) -> dict:
    return {"type": "Feature", "stac_version": STAC_VERSION, "stac_extensions": sorted(extensions), "id": item_id,
            "geometry": geometry, "bbox": bbox,
            "properties": {"datetime": f"{date}T00:00:00Z", **properties},
            "links": [], "assets": {}, "collection": collection}


def _asset(href: str, media_type: str, title: str, roles: list[str], **fields) -> dict:
    return {"href": href, "type": media_type, "title": title, "roles": roles, **fields}


def _classes(class_map: ClassMap) -> list[dict]:
    return [{"value": c.id, "name": c.name, "description": c.name.replace("_", " "),
             "color_hint": "".join(f"{v:02X}" for v in c.color)} for c in class_map.classes]


def _media_type(path: PurePath) -> str:
    return {".tif": COG_TYPE, ".png": "image/png", ".json": "application/json",
            ".gpkg": "application/geopackage+sqlite3"}.get(path.suffix, "application/octet-stream")


ROLES = {"data": ["data"], "thumbnail": ["thumbnail"], "overlay": ["overview"], "metadata": ["metadata"],
         "probabilities": ["data"], "polygons": ["data"]}


def _file_assets(files: Mapping[str, PurePath], item_dir: PurePath, titles: Mapping[str, str]) -> dict:
    return {key: _asset(os.path.relpath(path, item_dir), _media_type(path), titles.get(key, key), ROLES.get(key, []))
            for key, path in files.items()}


def _class_band(class_map: ClassMap, spatial_resolution: float) -> dict:
    return {"data_type": "uint8", "nodata": class_map.ignore_id, "spatial_resolution": spatial_resolution,
            "classification:classes": _classes(class_map)}


def partition_items(p: PartitionOutputs, root: PurePath, files: CatalogFiles = LOCAL) -> dict[str, dict]:
    """The items of one partition (collection -> item dict, hrefs relative to each item's file under `root`), and
    of the model its prediction came from under "model_version" (a ModelVersion-free reference: name, version)."""
    scene = read_record(p.scene_record, files)
    _need(scene, ("crs", "transform", "width", "height", "bounds", "dtype", "count"), p.scene_record)
    geometry, bbox = _footprint(scene, p.scene_record)
    proj = _projection(scene)
    resolution = abs(float(scene["transform"][0]))
    common = {"geoseg:region": p.region, "geoseg:date": p.date, **proj}
    items: dict[str, dict] = {}

    scene_id = f"scene-{p.region}-{p.date}"
    scene_dir = item_dir(root, "scenes", p.region, p.date)
    item = _item(scene_id, "scenes", p.date, geometry, bbox,
                 {**common, "gsd": resolution, "geoseg:fingerprint": scene.get("fingerprint", ""),
                  "geoseg:source_sha256": scene.get("source_sha256", [])},
                 [PROJECTION, RASTER])
    item["assets"] = _file_assets(p.scene_files, scene_dir, {"data": "Scene (COG)", "thumbnail": "Quicklook",
                                                             "metadata": "Scene record"})
    if "data" in item["assets"]:
        dtype = str(scene["dtype"])
        names = scene.get("band_names") or [f"band {i + 1}" for i in range(int(scene["count"]))]
        lows, highs = scene.get("band_min") or [], scene.get("band_max") or []
        bands = []
        for i, name in enumerate(names):
            band = {"name": str(name), "spatial_resolution": resolution}
            if dtype in _RASTER_DATA_TYPES:
                band["data_type"] = dtype
            if scene.get("nodata") is not None:
                band["nodata"] = scene["nodata"]
            if i < len(lows) and i < len(highs) and lows[i] is not None and highs[i] is not None:
                band["statistics"] = {"minimum": lows[i], "maximum": highs[i]}
            bands.append(band)
        item["assets"]["data"]["raster:bands"] = bands
    items["scenes"] = item

    derived = {"rel": "derived_from", "type": "application/json", "title": f"Scene {p.region} {p.date}"}
    if p.mask_files and p.mask_classes is not None:
        mask_dir = item_dir(root, "masks", p.region, p.date)
        item = _item(f"mask-{p.region}-{p.date}", "masks", p.date, geometry, bbox, dict(common),
                     [PROJECTION, RASTER, CLASSIFICATION])
        item["assets"] = _file_assets(p.mask_files, mask_dir, {"data": "Class mask (COG)",
                                                               "overlay": "Mask over the scene"})
        if "data" in item["assets"]:
            item["assets"]["data"]["raster:bands"] = [_class_band(p.mask_classes, resolution)]
        item["links"].append({**derived, "href": os.path.relpath(item_path(root, "scenes", scene_id, p.region, p.date),
                                                                 mask_dir)})
        items["masks"] = item

    if p.prediction_record is not None:
        prediction = read_record(p.prediction_record, files)
        _need(prediction, ("model_name", "model_version", "mlflow_run_id"), p.prediction_record)
        classes = p.prediction_classes
        if classes is None:
            raise StacCatalogError(f"{p.prediction_record}: the prediction's classes are unknown")
        pred_dir = item_dir(root, "predictions", p.region, p.date)
        model_id = model_item_id(prediction["model_name"], str(prediction["model_version"]))
        item = _item(f"prediction-{p.region}-{p.date}", "predictions", p.date, geometry, bbox,
                     {**common, "geoseg:model_name": prediction["model_name"],
                      "geoseg:model_version": str(prediction["model_version"]),
                      "geoseg:mlflow_run_id": prediction["mlflow_run_id"],
                      "geoseg:class_area_km2": prediction.get("area_km2", {}),
                      "geoseg:scene_fingerprint": prediction.get("scene_fingerprint", "")},
                     [PROJECTION, RASTER, CLASSIFICATION])
        item["assets"] = _file_assets({**p.prediction_files, "metadata": p.prediction_record}, pred_dir, {
            "data": "Predicted classes (COG)", "probabilities": "Class probabilities (COG)",
            "polygons": "Class polygons", "overlay": "Prediction over the scene", "metadata": "Prediction record"})
        if "data" in item["assets"]:
            item["assets"]["data"]["raster:bands"] = [_class_band(classes, resolution)]
        item["links"].append({**derived, "href": os.path.relpath(item_path(root, "scenes", scene_id, p.region, p.date),
                                                                 pred_dir)})
        item["links"].append({"rel": "derived_from", "type": "application/json",
                              "title": f"Model {prediction['model_name']} v{prediction['model_version']}",
                              "href": os.path.relpath(model_item_path(root, model_id), pred_dir)})
        items["predictions"] = item
    return items


def model_item_id(name: str, version: str) -> str:
    return f"model-{name}-v{version}"


def item_dir(root: PurePath, collection: str, region: str, date: str) -> PurePath:
    return root / collection / region / date


def item_path(root: PurePath, collection: str, item_id: str, region: str, date: str) -> PurePath:
    return item_dir(root, collection, region, date) / f"{item_id}.json"


def model_item_path(root: PurePath, model_id: str) -> PurePath:
    return root / "models" / model_id.removeprefix("model-") / f"{model_id}.json"


def model_item(model: ModelVersion, root: PurePath) -> dict:
    """A registered model version: no footprint (it applies anywhere), its registration time as datetime."""
    model_id = model_item_id(model.name, model.version)
    return {"type": "Feature", "stac_version": STAC_VERSION, "stac_extensions": [], "id": model_id,
            "geometry": None, "collection": "models",
            "properties": {"datetime": model.created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                           "title": f"{model.name} v{model.version}", "geoseg:model_name": model.name,
                           "geoseg:model_version": model.version, "geoseg:mlflow_run_id": model.run_id,
                           "geoseg:weights_sha256": model.weights_sha256,
                           "geoseg:model_uri": f"models:/{model.name}/{model.version}"},
            "links": [], "assets": {} if "://" not in model.source else {  # an URL a client can follow, not models:/
                "model": _asset(model.source, "application/octet-stream",
                                "Registered model files (weights and architecture)", ["model"])}}


def _collection(name: str, items: list[tuple[PurePath, dict]], root: PurePath) -> dict:
    boxes = [d["bbox"] for _, d in items if d.get("bbox")]
    times = sorted(d["properties"]["datetime"] for _, d in items)
    spatial = ([min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
               if boxes else [-180.0, -90.0, 180.0, 90.0])
    folder = root / name
    return {"type": "Collection", "stac_version": STAC_VERSION, "stac_extensions": [], "id": name,
            "title": name.capitalize(), "description": COLLECTIONS[name], "license": "other",
            "extent": {"spatial": {"bbox": [spatial]},
                       "temporal": {"interval": [[times[0], times[-1]] if times else [None, None]]}},
            "links": [{"rel": "root", "href": "../catalog.json", "type": "application/json"},
                      {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
                      *({"rel": "item", "href": os.path.relpath(path, folder), "type": "application/geo+json"}
                        for path, _ in sorted(items, key=lambda pair: str(pair[0])))]}


def _root_catalog() -> dict:
    return {"type": "Catalog", "stac_version": STAC_VERSION, "stac_extensions": [], "id": CATALOG_ID,
            "title": "geoseg outputs", "description": "Scenes, label masks, predictions and the model versions that "
            "made them, as materialized by geoseg's Dagster assets.",
            "links": [{"rel": "root", "href": "./catalog.json", "type": "application/json"},
                      *({"rel": "child", "href": f"./{name}/collection.json", "type": "application/json",
                         "title": name.capitalize()} for name in COLLECTIONS)]}


def _with_item_links(item: dict, path: PurePath, root: PurePath) -> dict:
    folder = path.parent
    item["links"] = [{"rel": "root", "href": os.path.relpath(root / "catalog.json", folder), "type": "application/json"},
                     {"rel": "parent", "href": os.path.relpath(root / item["collection"] / "collection.json", folder),
                      "type": "application/json"},
                     {"rel": "collection", "href": os.path.relpath(root / item["collection"] / "collection.json", folder),
                      "type": "application/json"},
                     *item["links"]]
    return item


def _encode(stac_dict: dict) -> bytes:
    return (json.dumps(stac_dict, indent=1, sort_keys=False, allow_nan=False) + "\n").encode()


def write_catalog(root: PurePath, partitions: Iterable[PartitionOutputs], models: Mapping[tuple[str, str], ModelVersion],
                  skip_bad: bool = True, files: CatalogFiles = LOCAL) -> CatalogSummary:
    """Bring the catalog under `root` in line with `partitions` and `models`: build every object and validate each one
    that differs from its file first (a partition whose records are bad is skipped and reported, or raises with
    `skip_bad=False`), then write what changed, items before the collections and the root, then delete the items of
    outputs that are gone."""
    checker = CompiledSchemas()
    objects: dict[PurePath, dict] = {}
    per_collection: dict[str, list[tuple[PurePath, dict]]] = {name: [] for name in COLLECTIONS}
    skipped: dict[str, str] = {}
    used_models: set[tuple[str, str]] = set()
    for p in partitions:
        try:
            items = partition_items(p, root, files)
            if "predictions" in items:
                key = (items["predictions"]["properties"]["geoseg:model_name"],
                       items["predictions"]["properties"]["geoseg:model_version"])
                if key not in models:
                    raise StacCatalogError(f"{p.prediction_record}: model {key[0]} v{key[1]} is not in the registry")
                used_models.add(key)
        except StacCatalogError as exc:
            if not skip_bad:
                raise
            skipped[f"{p.region}|{p.date}"] = str(exc)
            continue
        for collection, item in items.items():
            path = item_path(root, collection, item["id"], p.region, p.date)
            objects[path] = _with_item_links(item, path, root)
            per_collection[collection].append((path, item))
    for key in sorted(used_models):
        item = model_item(models[key], root)
        path = model_item_path(root, item["id"])
        objects[path] = _with_item_links(item, path, root)
        per_collection["models"].append((path, item))
    heads = {root / name / "collection.json": _collection(name, per_collection[name], root) for name in COLLECTIONS}
    heads[root / "catalog.json"] = _root_catalog()
    changed: dict[PurePath, bytes] = {}  # items first, then collections and root: a collection never links ahead
    for path, stac_dict in [*objects.items(), *heads.items()]:
        data = _encode(stac_dict)
        if _current(files, path) == data:
            continue  # validated when it was written: an incremental run validates only what changed
        validate(stac_dict, str(path), checker)
        changed[path] = data

    files.write(changed)
    written, unchanged = len(changed), len(objects) + len(heads) - len(changed)
    stale = [path for collection in COLLECTIONS for path in files.json_files(root / collection)
             if path not in objects and path not in heads]
    files.delete(stale)
    return CatalogSummary(root=root, items={name: len(v) for name, v in per_collection.items()}, written=written,
                          deleted=len(stale), unchanged=unchanged, skipped=skipped)


def _current(files: CatalogFiles, path: PurePath) -> bytes | None:
    try:
        return files.read_bytes(path)
    except FileNotFoundError:
        return None
