"""The label store interface: review statuses, sources, import options and the validity-window filter.

Rows follow a labelling team's review flow: status `unlabeled` -> `test` -> `valid`, and only
`valid` labels train. Each row keeps its class, source (`manual`, `osm`, `auto`), annotator,
region, update time and an optional validity window (valid_from / valid_to dates). Imports are
all-or-nothing. The stores: `geopackage_labels.py` (embedded default) and `postgis_labels.py`.
"""

import datetime as dt
from dataclasses import dataclass
from typing import Literal, get_args

import geopandas as gpd
from dagster import ConfigurableResource

from geoseg_assets.geo.classmap import ClassMap
from geoseg_assets.geo.labels import LabelReport, prepare_labels, read_label_file
from resources.data_store import check_partition_value

Status = Literal["unlabeled", "test", "valid"]  # config fields of these types accept only these values (a Dagster enum)
Source = Literal["manual", "osm", "auto", "synthetic"]
STATUSES = get_args(Status)
SOURCES = get_args(Source)
COLUMNS = ["label_id", "class_id", "class_name", "status", "source", "annotator", "region",
           "updated_at", "valid_from", "valid_to"]


@dataclass(frozen=True)
class ImportOptions:
    """How imported features enter the store."""

    status: Status = "valid"
    source: Source = "manual"
    annotator: str | None = None
    valid_from: str | None = None
    valid_to: str | None = None
    class_column: str = "class"
    default_class: str | None = None
    replace: bool = False  # replace the region's labels instead of adding to them

    def check(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")
        if self.source not in SOURCES:
            raise ValueError(f"source {self.source!r} is not one of {SOURCES}")
        dates = {}
        for key in ("valid_from", "valid_to"):
            value = getattr(self, key)
            if value is None:
                continue
            try:
                if not isinstance(value, str) or len(value) != 10:
                    raise ValueError
                dates[key] = dt.date.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{key} {value!r} is not a date written YYYY-MM-DD (e.g. 2024-06-01)") from None
        if len(dates) == 2 and dates["valid_from"] > dates["valid_to"]:
            raise ValueError(f"valid_from {self.valid_from} is after valid_to {self.valid_to}: the labels would "
                             "never be valid on any date; swap the two dates")


class LabelStore(ConfigurableResource):
    """Interface of label stores."""

    def import_file(self, path: str, region: str, crs, class_map: ClassMap, options: ImportOptions = ImportOptions(),
                    footprint=None) -> LabelReport:
        """Read, check, repair and reproject a label file, then add it to `region` in one transaction.

        `crs` is the region's scene CRS; `footprint` (bounds in that CRS), when given, must be
        touched by at least one label, which catches files with a wrong CRS declaration.
        """
        from geoseg_assets.geo.labels import require_overlap

        options.check()
        check_partition_value(region, "region")
        prepared, report = prepare_labels(read_label_file(path), path, class_map, crs,
                                          class_column=options.class_column, default_class=options.default_class)
        if footprint is not None:
            require_overlap(prepared, footprint, path, f"the scene footprint of region {region!r}")
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        rows = prepared.assign(status=options.status, source=options.source, annotator=options.annotator,
                               region=region, updated_at=now, valid_from=options.valid_from, valid_to=options.valid_to)
        self._write(region, rows, replace=options.replace)
        return report

    def labels(self, region: str, date: str | None = None, statuses=("valid",)) -> gpd.GeoDataFrame:
        """Labels of a region with one of `statuses`, valid on `date` when given."""
        raise NotImplementedError

    def regions(self) -> list[str]:
        raise NotImplementedError

    def fingerprint(self, region: str) -> str:
        """Changes whenever any label row of the region changes (geometry, class, status, dates)."""
        raise NotImplementedError

    def set_status(self, region: str, label_ids: list[int], status: str) -> int:
        """Move labels through the review flow; returns how many rows changed."""
        raise NotImplementedError

    def _write(self, region: str, rows: gpd.GeoDataFrame, replace: bool) -> None:
        raise NotImplementedError


def filter_valid_on(frame: gpd.GeoDataFrame, date: str | None, statuses) -> gpd.GeoDataFrame:
    """Rows with a status in `statuses` whose validity window contains `date`."""
    keep = frame["status"].isin(list(statuses))
    if date is not None:
        vf = frame["valid_from"].fillna("0000-00-00").astype(str)
        vt = frame["valid_to"].fillna("9999-99-99").astype(str)
        keep &= (vf <= date) & (vt >= date)
    return frame[keep].reset_index(drop=True)
