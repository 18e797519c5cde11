"""Helpers that turn outputs into Dagster metadata the UI renders (images, paths, tables)."""

from __future__ import annotations

import base64

import dagster as dg


def image(png: bytes, alt: str = "preview") -> dg.MetadataValue:
    """Inline PNG shown in the asset's metadata panel."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def path(p) -> dg.MetadataValue:
    return dg.MetadataValue.path(str(p))
