"""Offline validation of geoseg's STAC catalog against the STAC core schemas pystac ships and the published schemas of
the extensions the catalog uses, bundled in `stac_schemas/` (pystac would fetch those over HTTP), and a crawl from
catalog.json as a client does, checking that every link and local asset resolves."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePath

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
    """pystac's own JSON-schema validator with the bundled extension schemas (offline): the reference the compiled
    schemas below are tested against (`pystac.validation.validate_dict(d, validator=validator())`)."""
    from pystac.validation import JsonSchemaSTACValidator

    checker = JsonSchemaSTACValidator()
    for uri, name in SCHEMA_FILES.items():
        checker.schema_cache[uri] = json.loads((SCHEMA_DIR / name).read_text())
    return checker


class CompiledSchemas:
    """The schemas `validator()` uses (pystac's core schemas and the bundled extensions), each compiled once into a
    jsonschema validator. pystac checks every schema again on each call, two thirds of its 10 ms per object here;
    a catalog check crawls every object, so the pipeline validates with these (tests check that pystac agrees)."""

    def __init__(self) -> None:
        from jsonschema.validators import Draft7Validator, validator_for
        from pystac.validation.local_validator import get_local_schema_cache
        from pystac.validation.schema_uri_map import DefaultSchemaUriMap
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT7

        self._schemas = {**get_local_schema_cache(),
                         **{uri: json.loads((SCHEMA_DIR / name).read_text()) for uri, name in SCHEMA_FILES.items()}}
        self._registry = Registry().with_resources(
            (uri, Resource.from_contents(schema, default_specification=DRAFT7)) for uri, schema in self._schemas.items())
        self._core = DefaultSchemaUriMap()
        self._validator_for = lambda schema: validator_for(schema, default=Draft7Validator)
        self._compiled: dict[str, object] = {}

    def errors(self, stac_dict: dict) -> list[str]:
        """What is wrong with one STAC object (empty when it is valid): its core schema, then each extension's."""
        from jsonschema.exceptions import best_match
        from pystac import STACObjectType

        kind = {"Feature": STACObjectType.ITEM, "Collection": STACObjectType.COLLECTION,
                "Catalog": STACObjectType.CATALOG}.get(stac_dict.get("type"))
        if kind is None:
            return [f"type {stac_dict.get('type')!r} is not a STAC Item, Collection or Catalog"]
        uris = [self._core.get_object_schema_uri(kind, str(stac_dict.get("stac_version"))),
                *stac_dict.get("stac_extensions", [])]
        problems = []
        for uri in uris:
            if uri not in self._schemas:
                problems.append(f"no bundled schema for {uri}")
                continue
            if uri not in self._compiled:
                schema = self._schemas[uri]
                self._compiled[uri] = self._validator_for(schema)(schema, registry=self._registry)
            error = best_match(self._compiled[uri].iter_errors(stac_dict))  # the deepest, most specific error
            if error is not None:
                where = "/".join(map(str, error.absolute_path)) or "the root"
                problems.append(f"{uri}: at {where}, {error.message[:300]}")
        return problems


def validate(stac_dict: dict, href: str, checker: CompiledSchemas | None = None) -> None:
    """Validate one STAC object against the core and extension schemas, offline: StacCatalogError naming the file
    and what is wrong (an extension without a bundled schema included: never a download)."""
    problems = (checker or CompiledSchemas()).errors(stac_dict)
    if problems:
        raise StacCatalogError(f"{href}: not valid STAC: {'; '.join(problems[:5])}")


def validate_catalog(root: PurePath, files=None) -> list[str]:
    """Crawl the catalog from `root/catalog.json` as a client would (pystac, reading through `files`: the local disk by
    default, or an object store's `CatalogFiles`), validate every object offline and check that every link and local
    asset href resolves; the problems found, empty when none."""
    import pystac

    from .catalog_files import LocalFiles

    files = files or LocalFiles()

    class FilesStacIO(pystac.StacIO):
        """pystac's reads through `files` (a `/vsis3/` href is a path to it, not a local file)."""

        def read_text(self, source, *args, **kwargs) -> str:
            return files.read_bytes(PurePath(str(source))).decode()

        def write_text(self, dest, txt, *args, **kwargs) -> None:
            raise NotImplementedError("the catalog is only read here")

    checker = CompiledSchemas()
    problems: list[str] = []
    stac_io = FilesStacIO()
    catalog = pystac.Catalog.from_file(str(PurePath(root) / "catalog.json"), stac_io=stac_io)
    for obj in [catalog, *catalog.get_children(), *catalog.get_items(recursive=True)]:
        href = obj.get_self_href()
        try:
            raw = json.loads(stac_io.read_text(href))
            validate(raw, href, checker)
        except Exception as exc:  # noqa: BLE001 (every problem is reported, not only the first)
            problems.append(f"{href}: {exc}")
            continue
        folder = PurePath(href).parent
        targets = [(f"{link['rel']} link", link["href"]) for link in raw.get("links", [])]
        targets += [(f"asset {key}", asset["href"]) for key, asset in raw.get("assets", {}).items()]
        for what, target in targets:
            resolved = PurePath(os.path.normpath(folder / target))
            if not _SCHEME.match(target) and not files.exists(resolved):
                problems.append(f"{href}: {what} points at missing {resolved}")
    return problems
