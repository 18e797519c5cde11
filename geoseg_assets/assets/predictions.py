"""`predictions` [region x date]: the champion's class map of the whole scene (COG with a colour
table, optional probability COG) and its polygons (GeoPackage), recomputed when the champion changes."""

import json
import tempfile
import time
from collections.abc import Iterator
from functools import partial

import dagster as dg
from pydantic import Field

from geoseg_assets import metadata as md
from geoseg_assets.assets.masks import resolve_class_map
from geoseg_assets.assets.models import CHAMPION_ASSET
from geoseg_assets.assets.scenes import fail_on_bad_input, scenes, upstream_scene
from geoseg_assets.markdown import markdown_table
from geoseg_assets.ml.options import Runtime
from geoseg_assets.pools import MODEL_COMPUTE_POOL
from geoseg_assets.geo.classmap import IGNORE_ID, ClassDef, ClassMap
from geoseg_assets.geo.errors import SceneError
from geoseg_assets.geo.masks import overlay_image
from geoseg_assets.geo.preview import png_bytes, quicklook_image
from geoseg_assets.monitoring.integrity import describe, input_integrity
from geoseg_assets.partitions import FOLLOW_UPSTREAM, region_date_partitions
from resources.catalog import (
    PREDICTED_CLASSES,
    PREDICTED_POLYGONS,
    PREDICTED_PROBABILITIES,
    PREDICTION_OVERLAY,
    PREDICTION_RECORD,
)
from resources.class_map import ClassMapResource
from resources.compute import ComputeDevice
from resources.data_store import DataStore
from resources.mlflow_tracking import CHAMPION, ONNX_DIR, ONNX_FILE, PREPROCESSING_FILE, MlflowTracking, load_registered

CLASSES_FILE = PREDICTED_CLASSES.name  # benchmarks/bench_model_quality.py imports it from here


class PredictionConfig(dg.Config):
    """Sliding-window geometry, blending and vector output."""

    window: int = Field(default=768, description="Largest window side in pixels (a multiple of 32): each axis is cut "
                        "into the fewest equal windows no wider. Larger windows forward fewer overlap pixels.")
    overlap: int = Field(default=64, description="Pixels shared by neighbouring windows (a multiple of 4, <= window/2).")
    blend: str = Field(default="ramp", description="ramp, hann or center (centre cropping).")
    batch_size: int | None = Field(default=None, gt=0, description="Windows per forward pass (None: about one "
                                   "megapixel of windows, at least one).")
    runtime: Runtime = Field(default="auto", description="auto (ONNX Runtime on CPU when the champion has a verified "
                             "ONNX export, else torch), torch or onnxruntime.")
    reader_threads: int = Field(default=2, gt=0, description="Threads reading windows ahead of the network.")
    write_probabilities: bool = Field(default=False, description="Also write a per-class probability COG (uint8, 0..250).")
    vectorize: bool = Field(default=True, description="Write the class map as polygons to a GeoPackage.")
    simplify_pixels: float = Field(default=1.0, ge=0, description="Polygon simplification tolerance in pixels (0 = none).")
    min_area_m2: float = Field(default=0.0, ge=0, description="Drop polygons smaller than this.")


def model_class_map(preprocessing: dict, colours: ClassMap) -> ClassMap:
    """The model's classes (from its preprocessing record) with the project's colours where names match."""
    palette = {c.name: c.color for c in colours.classes}
    classes = sorted((int(cid), name) for name, cid in preprocessing["class_map"]["classes"].items())
    return ClassMap(tuple(ClassDef(name, cid, tuple(palette.get(name, (128, 128, 128)))) for cid, name in classes),
                    int(preprocessing["class_map"].get("ignore_id", IGNORE_ID)))


@dg.asset(
    partitions_def=region_date_partitions,
    deps=[scenes, dg.AssetKey(CHAMPION_ASSET)],
    kinds={"pytorch", "cog", "geopackage"},
    group_name="predictions",
    automation_condition=FOLLOW_UPSTREAM,
    retry_policy=dg.RetryPolicy(max_retries=1, delay=5),
    pool=MODEL_COMPUTE_POOL,
    description="The champion model's land-cover map of the whole scene: seamless sliding-window inference "
    "(blended overlaps, nodata kept), a class COG with the class colours, optional probabilities, and polygons. "
    "A scene whose bands, dtype, grid or value scale differ from the champion's training data (another product) is "
    "skipped: the run succeeds, nothing is written, and an observation of the partition records why.",
    output_required=False,
)
def predictions(context: dg.AssetExecutionContext, config: PredictionConfig, data_store: DataStore,
                mlflow_tracking: MlflowTracking, compute: ComputeDevice,
                class_map: ClassMapResource) -> Iterator[dg.MaterializeResult]:
    from geoseg_assets.geo.prediction_io import class_areas, pixel_area_m2, predict_to_cogs
    from geoseg_assets.geo.vectorize import vectorize_classes
    from geoseg_assets.ml.normalize import Normalizer
    from geoseg_assets.ml.inference import InferenceConfig, predict_scene
    from geoseg_assets.ml.runtimes import choose_network

    dims, scene_path, scene = upstream_scene(context, data_store)
    champion = mlflow_tracking.alias_version(CHAMPION)
    if champion is None:
        raise mlflow_tracking.no_alias_failure(CHAMPION, "run training_job so a model is promoted")
    preprocessing = mlflow_tracking.read_json_artifact(champion.run_id, PREPROCESSING_FILE)
    issues = [i for i in input_integrity(scene, preprocessing) if i.blocking]
    if issues:  # another product than the champion's: an expected skip with its reason, not a failed run
        reason = describe(str(scene_path), issues)
        context.log.warning(f"skipped: {reason}")
        context.log_event(dg.AssetObservation(asset_key=context.asset_key, partition=context.partition_key, metadata={
            "skipped": reason, "file": md.path(scene_path), "model_version": str(champion.version),
            "integrity_issues": [i.to_dict() for i in issues]}))
        return
    net = load_registered(mlflow_tracking, str(champion.version))
    normalizer = Normalizer.from_dict(preprocessing)
    classes = model_class_map(preprocessing, resolve_class_map(class_map, dims["region"]))
    try:
        inference = InferenceConfig(window=config.window, overlap=config.overlap, blend=config.blend,
                                    batch_size=config.batch_size, reader_threads=config.reader_threads)
    except ValueError as exc:
        raise dg.Failure(f"invalid prediction config: {exc}", allow_retries=False) from exc
    device = compute.torch_device()
    with tempfile.TemporaryDirectory(dir=data_store.tmp_dir()) as tmp:  # the session holds the graph once built
        onnx_path = (mlflow_tracking.optional_artifact(champion.run_id, f"{ONNX_DIR}/{ONNX_FILE}", tmp)
                     if device.type == "cpu" and config.runtime != "torch" else None)
        try:
            network = choose_network(net, device, config.runtime, normalizer.in_channels, onnx_path)
        except ValueError as exc:
            raise dg.Failure(f"{mlflow_tracking.model_name} v{champion.version}: {exc}", allow_retries=False) from exc
    paths = {output: data_store.file(output, dims) for output in
             (PREDICTED_CLASSES, PREDICTED_PROBABILITIES, PREDICTED_POLYGONS, PREDICTION_OVERLAY, PREDICTION_RECORD)}
    predict = partial(predict_scene, network.network, normalizer, [c.id for c in classes.classes], config=inference,
                      device=device, log=context.log.info)
    # The class COG, probabilities, polygons, overlay and record replace the earlier ones together, or none does:
    # a failure after the class COG (vectorizing, the preview, a blocked target) leaves the partition's earlier
    # outputs as they were, never a new map beside the previous run's polygons.
    with data_store.publishing() as outputs:
        staged_classes = outputs.path(paths[PREDICTED_CLASSES])
        started = time.perf_counter()
        try:
            result = predict_to_cogs(
                predict, str(scene_path), normalizer.band_names, str(staged_classes), classes,
                str(outputs.path(paths[PREDICTED_PROBABILITIES])) if config.write_probabilities else None,
                tmp_dir=str(data_store.tmp_dir()),
            )
        except SceneError as exc:
            raise fail_on_bad_input(exc) from exc
        seconds = time.perf_counter() - started

        area_km2, share = class_areas(result.class_pixels, result.valid_pixels, pixel_area_m2(str(scene_path)), classes)
        vectors = None
        if config.vectorize:
            vectors = vectorize_classes(str(staged_classes), str(outputs.path(paths[PREDICTED_POLYGONS])),
                                        {c.id: c.name for c in classes.classes}, ignore_id=IGNORE_ID,
                                        simplify_tolerance=config.simplify_pixels * abs(scene["resolution"][0]) or None,
                                        min_area_m2=config.min_area_m2, tmp_dir=str(data_store.tmp_dir()))
        quicklook, _ = quicklook_image(str(scene_path), scene["band_names"], max_side=512)
        png = png_bytes(overlay_image(quicklook, str(staged_classes), classes))
        outputs.write_bytes(paths[PREDICTION_OVERLAY], png)
        record = {
            "model_name": mlflow_tracking.model_name, "model_version": str(champion.version),
            "mlflow_run_id": champion.run_id, "scene_fingerprint": scene.get("fingerprint", ""),
            "classes": [{"id": c.id, "name": c.name, "color": list(c.color)} for c in classes.classes],
            "class_pixels": {c.name: result.class_pixels[c.id] for c in classes.classes},
            "area_km2": area_km2, "share": share, "valid_pixels": result.valid_pixels,
            "nodata_pixels": result.nodata_pixels, "windows": result.windows_total,
            "windows_forwarded": result.windows_forwarded, "notes": result.notes, "inference": config.model_dump(),
            "device": str(device), "runtime": network.reason, "window_shape": list(result.window_shape),
            "seconds": round(seconds, 3), "polygons": vectors.features if vectors else None,
        }
        outputs.write_bytes(paths[PREDICTION_RECORD], json.dumps(record, indent=2).encode())
    megapixels = scene["width"] * scene["height"] / 1e6
    for optional, wanted in ((PREDICTED_PROBABILITIES, config.write_probabilities), (PREDICTED_POLYGONS, config.vectorize)):
        if not wanted:  # an earlier run's output would no longer match this model and config
            data_store.discard(optional, dims)
    for note in result.notes:
        context.log.warning(f"{scene_path}: {note}")
    area_table = markdown_table(("class", "km²", "share"),
                                ((name, f"{area_km2[name]:.4f}", f"{share[name]:.1%}") for name in area_km2))
    metadata = {
        "model_name": mlflow_tracking.model_name,
        "model_version": str(champion.version),
        "mlflow_run_id": champion.run_id,
        "classes_path": md.path(paths[PREDICTED_CLASSES]),
        "area_km2": area_km2,
        "class_share": share,
        "area_table": dg.MetadataValue.md(area_table),
        "valid_pixels": result.valid_pixels,
        "nodata_pixels": result.nodata_pixels,
        "windows_forwarded": f"{result.windows_forwarded}/{result.windows_total}",
        "device": str(device),
        "runtime": network.reason,
        "window_px": f"{result.window_shape[0]} x {result.window_shape[1]}",
        "seconds": dg.MetadataValue.float(round(seconds, 2)),
        "megapixels_per_second": dg.MetadataValue.float(round(megapixels / seconds, 3) if seconds else 0.0),
        "overlay": md.image(png, "prediction over imagery"),
        "overlay_path": md.path(paths[PREDICTION_OVERLAY]),
        "viewer": md.viewer_map(data_store.viewer_url, dims),
        "note": "; ".join(result.notes) if result.notes else "ok",
    }
    if vectors is not None:
        metadata.update(polygons_path=md.path(paths[PREDICTED_POLYGONS]), polygons=vectors.features)
    if config.write_probabilities:
        metadata["probabilities_path"] = md.path(paths[PREDICTED_PROBABILITIES])
    context.log.info(f"{dims['region']}/{dims['date']}: {megapixels:.2f} MP in {seconds:.1f}s with "
                     f"{mlflow_tracking.model_name} v{champion.version} on {device}")
    yield dg.MaterializeResult(
        metadata=metadata,
        data_version=dg.DataVersion(f"{scene.get('fingerprint', '')[:16]}-v{champion.version}"),
    )
