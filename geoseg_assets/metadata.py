"""Helpers that turn outputs into Dagster metadata the UI renders (images, paths, tables)."""

from __future__ import annotations

import base64

import dagster as dg

from geoseg_assets.geo.object_store import object_url_of
from geoseg_assets.geo.preview import thumbnail_png
from geoseg_assets.viewer.links import map_url, report_url

# The most bytes of PNG one inline image adds to a materialization. Dagster stores output metadata three times
# (STEP_OUTPUT, ASSET_MATERIALIZATION and the asset's latest materialization), and the daemon, sensors and UI read it
# back: with full 512 px previews inline, each of these records of a synthetic 512^2 scene's `scenes` or `tiles` was
# ~0.66 MB, ~4 MB written per partition's run. Larger previews are shown as a thumbnail; the full-size PNG is linked
# next to it (`*_path`, MLflow).
INLINE_IMAGE_BYTES = 48_000


def image(png: bytes, alt: str = "preview", max_bytes: int | None = INLINE_IMAGE_BYTES) -> dg.MetadataValue:
    """Inline PNG shown in the asset's metadata panel: `png`, or a thumbnail of it within `max_bytes` (None: as is,
    for an image materialized once per model rather than once per partition)."""
    inline = png if max_bytes is None else thumbnail_png(png, max_bytes)
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(inline).decode()})")


def path(p) -> dg.MetadataValue:
    """A file of the data store: its local path, or an object's s3:// URL."""
    return dg.MetadataValue.path(object_url_of(str(p)))


def viewer_map(viewer_url: str, dims: dict) -> dg.MetadataValue:
    """Link to the partition's map in the geoseg viewer (scene, mask, prediction, legend, reports)."""
    return dg.MetadataValue.url(map_url(viewer_url, dims["region"], dims["date"]))


def viewer_report(viewer_url: str, report: str, dims: dict | None = None) -> dg.MetadataValue:
    """Link to a report page in the geoseg viewer (a browser cannot open the file path from the UI)."""
    if dims is None:
        return dg.MetadataValue.url(report_url(viewer_url, report))
    return dg.MetadataValue.url(report_url(viewer_url, report, dims["region"], dims["date"]))
