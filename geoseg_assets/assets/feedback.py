"""Active-learning feedback: the champion's polygons of chosen partitions go into the label store as
`auto` labels with status `test`, for human review; `valid` labels are never touched."""

import dagster as dg
from pydantic import Field

from geoseg_assets.assets.scenes import fail_on_bad_input
from geoseg_assets.geo.errors import ClassMapError, LabelError
from resources.catalog import PREDICTED_POLYGONS, PREDICTION_RECORD
from resources.class_map import ClassMapResource
from resources.data_store import DataStore, UnsafePartitionKeyError, check_partition_value
from resources.label_store import ImportOptions, LabelStore
from resources.scene_sources import check_date

AUTO_SOURCE, REVIEW_STATUS = "auto", "test"


class FeedbackConfig(dg.Config):
    """Which predictions become review labels."""

    partitions: list[str] = Field(description="Partitions as region/date, e.g. ['alpha/2024-06-15'].")


def parse_partition(item: str) -> dict[str, str]:
    """'region/date' -> dims, refusing unsafe or malformed keys."""
    region, sep, date = item.partition("/")
    if not sep:
        raise UnsafePartitionKeyError(f"{item!r} is not region/date (e.g. alpha/2024-06-15)")
    return {"region": check_partition_value(region, "region"), "date": check_date(date)}


@dg.op(description="Import the champion's polygons of the chosen partitions as auto/test labels (idempotent per model version).")
def feedback_labels(context: dg.OpExecutionContext, config: FeedbackConfig, data_store: DataStore,
                    label_store: LabelStore, class_map: ClassMapResource) -> None:
    for item in config.partitions:
        try:
            dims = parse_partition(item)
        except (UnsafePartitionKeyError, ValueError) as exc:
            raise fail_on_bad_input(exc, partition=item) from exc
        polygons = data_store.file(PREDICTED_POLYGONS, dims)
        if not data_store.exists(PREDICTED_POLYGONS, dims) or not data_store.exists(PREDICTION_RECORD, dims):
            raise dg.Failure(f"{data_store.display(polygons)}: no predicted polygons for {item}; materialize `predictions` (vectorize on) first",
                             allow_retries=False)
        record = data_store.prediction_record(dims)
        annotator = f"{record['model_name']} v{record['model_version']}"
        existing = label_store.labels(dims["region"], date=dims["date"], statuses=(REVIEW_STATUS,))
        if len(existing) and ((existing["source"] == AUTO_SOURCE) & (existing["annotator"] == annotator)
                              & (existing["valid_from"].astype(str) == dims["date"])).any():
            context.log.info(f"{item}: labels of {annotator} are already in review; nothing to add")
            continue
        options = ImportOptions(status=REVIEW_STATUS, source=AUTO_SOURCE, annotator=annotator, class_column="class_name",
                                valid_from=dims["date"], valid_to=dims["date"])
        scene = data_store.scene_record(dims)
        try:
            with data_store.local_copy(polygons) as local:
                report = label_store.import_file(str(local), dims["region"], scene["crs_wkt"],
                                                 class_map.for_region(dims["region"]), options)
        except (LabelError, ClassMapError) as exc:
            raise fail_on_bad_input(exc) from exc
        context.log.info(f"{item}: {report.features} polygon(s) of {annotator} added for review: {report.class_counts}")


@dg.job(description="Active learning: write chosen partitions' predictions into the label store as auto/test labels "
        "for review (set `partitions` in the launchpad). Valid labels are never overwritten.")
def feedback_job():
    feedback_labels()
