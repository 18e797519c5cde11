"""Offline validation of geoseg's STAC catalog: pystac's JSON-schema validator with the published schemas of the
extensions the catalog uses, bundled in `stac_schemas/` (pystac ships only the core schemas and would fetch these over
HTTP), and a crawl from catalog.json as a client does, checking that every link and local asset resolves."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
CLASSIFICATION = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
SCHEMA_FILES = {PROJECTION: "projection-v2.0.0.json", RASTER: "raster-v1.1.0.json",
                CLASSIFICATION: "classification-v1.1.0.json"}
SCHEMA_DIR = Path(__file__).with_name("stac_schemas")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # an URI (http:, s3:, models:), not a relative path


class StacCatalogError(ValueError):
    """A STAC object cannot be written or checked (a partition's unreadable or incomplete records, an extension
    without a bundled schema); names the file."""


def validator():
    """pystac's JSON-schema validator with the bundled extension schemas: validates offline."""
    from pystac.validation import JsonSchemaSTACValidator

    checker = JsonSchemaSTACValidator()
    for uri, name in SCHEMA_FILES.items():
        checker.schema_cache[uri] = json.loads((SCHEMA_DIR / name).read_text())
    return checker


def validate(stac_dict: dict, href: str, checker=None) -> None:
    """Validate one STAC object against the core and extension schemas (pystac), offline: an extension without a
    bundled schema is an error here, not a download."""
    import pystac.validation

    unknown = [uri for uri in stac_dict.get("stac_extensions", []) if uri not in SCHEMA_FILES]
    if unknown:
        raise StacCatalogError(f"{href}: no bundled schema for {', '.join(unknown)}")
    pystac.validation.validate_dict(stac_dict, href=href, validator=checker or validator())


def validate_catalog(root: Path) -> list[str]:
    """Crawl the catalog from `root/catalog.json` as a client would (pystac), validate every object offline and check
    that every link and local asset href resolves; the problems found, empty when none."""
    import pystac

    checker = validator()
    problems: list[str] = []
    catalog = pystac.Catalog.from_file(str(Path(root) / "catalog.json"))
    for obj in [catalog, *catalog.get_children(), *catalog.get_items(recursive=True)]:
        href = obj.get_self_href()
        try:
            raw = json.loads(Path(href).read_text())
            validate(raw, href, checker)
        except Exception as exc:  # noqa: BLE001 (every problem is reported, not only the first)
            problems.append(f"{href}: {exc}")
            continue
        folder = Path(href).parent
        targets = [(f"{link['rel']} link", link["href"]) for link in raw.get("links", [])]
        targets += [(f"asset {key}", asset["href"]) for key, asset in raw.get("assets", {}).items()]
        for what, target in targets:
            if not _SCHEME.match(target) and not (folder / target).exists():
                problems.append(f"{href}: {what} points at missing {os.path.normpath(folder / target)}")
    return problems
