"""`masks` [region x date]: the region's valid labels rasterized on the scene grid, and label import."""

import dagster as dg
from pydantic import Field

from geoseg_assets import metadata as md
from geoseg_assets.assets.scenes import fail_on_bad_input, scenes, upstream_scene
from geoseg_assets.geo.classmap import ClassMap
from geoseg_assets.geo.errors import ClassMapError, LabelError
from geoseg_assets.geo.labels import LabelReport
from geoseg_assets.geo.masks import overlay_image, write_mask_cog
from geoseg_assets.geo.preview import png_bytes, quicklook_image
from geoseg_assets.partitions import FOLLOW_UPSTREAM, region_date_partitions
from resources.catalog import MASK, MASK_OVERLAY, SCENE_RECORD
from resources.class_map import ClassMapResource
from resources.data_store import DataStore, check_partition_value
from resources.label_store import ImportOptions, LabelStore, Source, Status

MASK_FILE = MASK.name  # benchmarks/bench_model_quality.py imports it from here
LABEL_FINGERPRINT_TAG = "geoseg/label_fingerprint"


def resolve_class_map(class_map: ClassMapResource, region: str | None = None) -> ClassMap:
    """The class map of `region` (None: the project's) from its file or config, read now; a bad class-map file
    fails the run without retries (a retry reads the same file), naming the file and the fix."""
    try:
        return class_map.for_region(region) if region is not None else class_map.project_map()
    except ClassMapError as exc:
        raise fail_on_bad_input(exc) from exc


@dg.asset(
    partitions_def=region_date_partitions,
    deps=[scenes],
    kinds={"raster", "cog"},
    group_name="labels",
    automation_condition=FOLLOW_UPSTREAM,
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5),
    description="The region's `valid` labels (valid on this date) rasterized pixel for pixel on the scene grid: "
    "one uint8 COG with the class colours, 255 where unlabelled or nodata.",
)
def masks(context: dg.AssetExecutionContext, data_store: DataStore, label_store: LabelStore,
          class_map: ClassMapResource) -> dg.MaterializeResult:
    dims, scene_path, scene = upstream_scene(context, data_store)
    mask_path = data_store.file(MASK, dims)
    classes = resolve_class_map(class_map, dims["region"])
    labels = label_store.labels(dims["region"], date=dims["date"])
    if len(labels) and labels.crs is not None and labels.crs.to_wkt() != scene["crs_wkt"]:
        labels = labels.to_crs(scene["crs_wkt"])
    fingerprint = label_store.fingerprint(dims["region"])
    if len(labels) == 0:
        context.log.warning(f"region {dims['region']!r} has no valid labels for {dims['date']}: the mask is all ignore")
    with data_store.publishing() as outputs:  # the mask and its overlay replace the old ones together, or neither
        staged_mask = str(outputs.path(mask_path))
        summary = write_mask_cog(str(scene_path), labels, classes, staged_mask, tmp_dir=str(data_store.tmp_dir()))
        quicklook, _ = quicklook_image(str(scene_path), scene["band_names"], max_side=512)
        png = png_bytes(overlay_image(quicklook, staged_mask, classes))
        overlay_path = outputs.write_bytes(data_store.file(MASK_OVERLAY, dims), png)
    total = summary.width * summary.height
    labelled = sum(summary.class_pixels.values())
    return dg.MaterializeResult(
        metadata={
            "path": md.path(mask_path),
            "labelled_fraction": dg.MetadataValue.float(round(labelled / total, 6)),
            "class_pixels": summary.class_pixels,
            "class_shares": {k: round(v / labelled, 6) if labelled else 0.0 for k, v in summary.class_pixels.items()},
            "label_count": len(labels),
            "class_map": {c.name: c.id for c in classes.classes},
            "class_map_source": classes.source,
            "label_fingerprint": fingerprint,
            "scene_fingerprint": scene.get("fingerprint", ""),
            "overlay": md.image(png, "mask over quicklook"),
            "overlay_path": md.path(overlay_path),
            "viewer": md.viewer_map(data_store.viewer_url, dims),
        },
        data_version=dg.DataVersion(f"{scene.get('fingerprint', '')[:16]}-{fingerprint[:16]}"),
    )


def scene_grid_of_region(data_store: DataStore, region: str) -> dict:
    """The JSON record of one materialized scene of the region (its CRS and footprint check labels)."""
    dates = data_store.dates_with(SCENE_RECORD, check_partition_value(region, "region"))
    if not dates:
        raise LabelError(data_store.partition_dir(SCENE_RECORD.asset, {"region": region}), f"region {region!r} has no "
                         "materialized scene", "materialize `scenes` for the region first, so labels can be checked "
                         "against its CRS and footprint")
    return data_store.scene_record({"region": region, "date": dates[-1]})


def import_region_labels(path: str, region: str, options: ImportOptions, *, data_store: DataStore,
                         label_store: LabelStore, class_map: ClassMapResource) -> LabelReport:
    """Import a label file for a region: reprojected to the region's scene CRS, checked against its footprint."""
    scene = scene_grid_of_region(data_store, region)
    return label_store.import_file(path, region, scene["crs_wkt"], class_map.for_region(region), options,
                                   footprint=scene["bounds"])


class ImportLabelsConfig(dg.Config):
    """A label file to import (GeoJSON, GeoPackage or Shapefile) and how its features enter the store."""

    path: str = Field(description="Label file to import.")
    region: str = Field(description="Region the labels belong to.")
    class_column: str = Field(default="class", description="Column holding class names or ids.")
    default_class: str | None = Field(default=None, description="Class of every feature when the file has no class column.")
    status: Status = Field(default="valid", description="unlabeled, test or valid (only valid trains).")
    source: Source = Field(default="manual", description="manual, osm, auto or synthetic.")
    annotator: str | None = Field(default=None, description="Who drew the labels (a person or a tool), kept with each feature.")
    valid_from: str | None = Field(default=None, description="First date (YYYY-MM-DD) the labels describe.")
    valid_to: str | None = Field(default=None, description="Last date (YYYY-MM-DD) the labels describe.")
    replace: bool = Field(default=False, description="Replace the region's labels instead of adding to them.")


@dg.op(description="Import a label file into the label store (all or nothing).")
def import_labels(context: dg.OpExecutionContext, config: ImportLabelsConfig, data_store: DataStore,
                  label_store: LabelStore, class_map: ClassMapResource) -> None:
    options = ImportOptions(status=config.status, source=config.source, annotator=config.annotator,
                            valid_from=config.valid_from, valid_to=config.valid_to, class_column=config.class_column,
                            default_class=config.default_class, replace=config.replace)
    try:
        options.check()
    except ValueError as exc:
        raise dg.Failure(f"import_labels config: {exc}", allow_retries=False) from exc
    try:
        report = import_region_labels(config.path, config.region, options, data_store=data_store,
                                      label_store=label_store, class_map=class_map)
    except (LabelError, ClassMapError) as exc:
        raise fail_on_bad_input(exc) from exc
    if report.overlaps:
        context.log.warning(report.overlap_note)
    context.log.info(
        f"imported {report.features} label(s) into region {config.region!r}: {report.class_counts}; "
        f"{report.repaired} repaired, {report.dropped_empty} empty dropped"
        + (f", reprojected from {report.reprojected_from}" if report.reprojected_from else "")
    )


@dg.job(description="Import a label file (set its path and region in the launchpad); masks follow via label_change_sensor.")
def import_labels_job():
    import_labels()
