"""GeoPackage output of complete polygons: measured (m²), filtered, simplified, mapped to the raster CRS and
streamed as Arrow record batches into one layer, so memory follows the batch size, not the output size."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyogrio
import shapely
from pyproj import CRS, Transformer
from rasterio.transform import Affine

from .block_polygons import Polygons

EQUAL_AREA_CRS = "EPSG:6933"  # cylindrical equal-area: parallels/meridians stay straight, so pixel polygons are exact
BATCH_FEATURES = 50_000  # a record batch is written once it holds this many polygons ...
BATCH_VERTICES = 1_000_000  # ... or this many vertices (a few regions can be huge)
SCHEMA = pa.schema([
    pa.field("class_id", pa.int32()),
    pa.field("class_name", pa.string()),
    pa.field("area_m2", pa.float64()),
    pa.field("geometry", pa.binary(), metadata={"ARROW:extension:name": "geoarrow.wkb"}),
])


@dataclass
class VectorSummary:
    """What was written: feature count, per class name {"count", "area_m2"}, and small polygons dropped."""

    path: str
    features: int
    per_class: dict[str, dict] = field(default_factory=dict)
    dropped_small: int = 0


SQLITE_SIDECARS = ("-journal", "-wal", "-shm")


def remove_gpkg(path: Path, suffixes: tuple[str, ...] = ("", *SQLITE_SIDECARS)) -> None:
    """Delete a GeoPackage and any SQLite sidecar files it may have left behind (only the sidecars when
    `suffixes` is SQLITE_SIDECARS)."""
    for suffix in suffixes:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


class Output:
    """Turns complete pixel-space polygons into GeoPackage record batches (measured, filtered, simplified),
    keeping the per-class tallies for the summary."""

    def __init__(self, transform: Affine, crs: CRS, class_names: Mapping[int, str], ignore_id: int,
                 simplify_tolerance: float | None, min_area_m2: float):
        self.transform = transform
        self.names = {int(k): str(v) for k, v in class_names.items() if int(k) != ignore_id}
        self.simplify_tolerance = simplify_tolerance
        self.min_area_m2 = min_area_m2
        self.area_m2 = _area_function(crs, transform)
        self.features = 0
        self.dropped_small = 0
        self.counts: dict[int, int] = {}
        self.areas: dict[int, float] = {}

    def batches(self, polygons: Iterator[Polygons]) -> Iterator[pa.RecordBatch]:
        """Record batches of bounded size (polygons and vertices), so memory does not follow the output size."""
        buffer, features, vertices = [], 0, 0
        for polys in polygons:
            buffer.append(polys)
            features += len(polys)
            vertices += int(shapely.get_num_coordinates(polys.geoms).sum())
            if features >= BATCH_FEATURES or vertices >= BATCH_VERTICES:
                yield self.record_batch(Polygons.concat_all(buffer))
                buffer, features, vertices = [], 0, 0
        if features:
            yield self.record_batch(Polygons.concat_all(buffer))

    def record_batch(self, polys: Polygons) -> pa.RecordBatch:
        """One batch of rows: small polygons dropped, areas from the pixels, geometry in the raster CRS."""
        areas = self.area_m2(polys.geoms)
        keep = areas >= self.min_area_m2
        self.dropped_small += int((~keep).sum())
        polys, areas = polys.take(keep), areas[keep]
        uniq, inverse = np.unique(polys.ids, return_inverse=True)
        self._tally(uniq, np.bincount(inverse, minlength=len(uniq)), np.bincount(inverse, areas, len(uniq)))
        geoms = _to_map(polys.geoms, self.transform)
        if self.simplify_tolerance:
            geoms = shapely.simplify(geoms, self.simplify_tolerance, preserve_topology=True)
        names = np.array([self.name(c) for c in uniq], dtype=object)[inverse]
        return pa.record_batch([pa.array(polys.ids.astype(np.int32)), pa.array(names, pa.string()),
                                pa.array(areas, pa.float64()), pa.array(shapely.to_wkb(geoms), pa.binary())],
                               schema=SCHEMA)

    def _tally(self, ids: np.ndarray, counts: np.ndarray, areas: np.ndarray) -> None:
        for cid, n, area in zip(ids.tolist(), counts.tolist(), areas.tolist()):
            self.counts[cid] = self.counts.get(cid, 0) + n
            self.areas[cid] = self.areas.get(cid, 0.0) + area
            self.features += n

    def name(self, cid: int) -> str:
        return self.names.get(int(cid), f"class_{int(cid)}")

    def summary(self, path: str) -> VectorSummary:
        ids = sorted(set(self.names) | set(self.counts))
        per_class = {self.name(c): {"count": self.counts.get(c, 0), "area_m2": self.areas.get(c, 0.0)} for c in ids}
        return VectorSummary(path=path, features=self.features, per_class=per_class, dropped_small=self.dropped_small)


def write_layer(batches: Iterator[pa.RecordBatch], path: str, layer: str, crs: CRS) -> None:
    """Stream `batches` into a new GeoPackage layer through one open dataset (GDAL then builds the spatial
    index once at the end instead of updating it per row); an error while producing them is re-raised as is."""
    failure: list[BaseException] = []

    def guarded() -> Iterator[pa.RecordBatch]:
        try:
            yield from batches
        except BaseException as exc:
            failure.append(exc)
            raise

    reader = pa.RecordBatchReader.from_batches(SCHEMA, guarded())
    try:
        pyogrio.write_arrow(reader, path, layer=layer, driver="GPKG", geometry_type="Polygon", crs=crs.to_wkt())
    except Exception:
        if failure:
            raise failure[0] from None
        raise


def _to_map(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """Pixel-space polygons in map coordinates (vectorized over all their vertices at once)."""
    a, b, c, d, e, f = tuple(transform)[:6]

    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([a * x + b * y + c, d * x + e * y + f])

    return shapely.transform(geoms, apply)


def _area_function(crs: CRS, transform: Affine):
    """Area in m² of pixel-space polygons: pixel area times the raster's cell area, or, for a
    geographic CRS, the map polygon measured in an equal-area CRS."""
    if crs.is_geographic:
        to_equal_area = Transformer.from_crs(crs, EQUAL_AREA_CRS, always_xy=True)

        def project(xy: np.ndarray) -> np.ndarray:
            return np.column_stack(to_equal_area.transform(xy[:, 0], xy[:, 1]))

        return lambda geoms: shapely.area(shapely.transform(_to_map(geoms, transform), project))
    unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    cell = abs(transform.determinant) * unit * unit
    return lambda geoms: shapely.area(geoms) * cell
