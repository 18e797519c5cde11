"""The project's class map as a resource: classes from a file or config, per region, read on every lookup.

Kept apart from the label stores because masks, datasets, predictions and reports need the class map
without any labels.
"""

from pathlib import Path

from dagster import Config, ConfigurableResource
from pydantic import Field

from geoseg_assets.geo.classmap import CLASS_MAP_FILE, IGNORE_ID, ClassDef, ClassMap, DEFAULT_CLASS_MAP, read_class_map
from resources.data_store import check_partition_value


class ClassSpec(Config):
    """One class of the class map."""

    name: str = Field(description="Class name as labels and reports show it.")
    id: int = Field(description="Pixel value in masks and predictions, 1..254 (0 is nodata, 255 ignore).")
    color: list[int] = Field(default_factory=lambda: [128, 128, 128], description="RGB colour, 0..255 each, in previews and the class COG's colour table.")


class ClassMapResource(ConfigurableResource):
    """The project's class map (names, ids, colours, ignore id), with optional per-region maps.

    Class maps are project data: files (`geo/classmap.py` format) read each time a map is resolved, so every
    run (imports, masks, dataset, predictions, reports) uses the current file without run config. Lookup for
    a region: `region_classes` config, else `<folder>/<region>/classes.json`, else the project map; the project
    map: the `path` file, else `<folder>/classes.json`, else `classes` config (default: built-in classes).
    """

    path: str | None = Field(default=None, description="Project class-map file (JSON). Set, it must exist and "
                             "replaces `classes` and `ignore_id`; None: `<folder>/classes.json` if present, else `classes`.")
    folder: str | None = Field(default=None, description="Folder of optional class-map files: `<folder>/classes.json` "
                               "(the project's) and `<folder>/<region>/classes.json` (a region's, next to its region.json), "
                               "each used when present. The default code location sets the landing folder.")
    classes: list[ClassSpec] = Field(
        default_factory=lambda: [ClassSpec(name=c.name, id=c.id, color=list(c.color)) for c in DEFAULT_CLASS_MAP.classes],
        description="Classes when there is no class-map file (default: the built-in land-cover classes).",
    )
    ignore_id: int = Field(default=IGNORE_ID, description="Ignore id of `classes` (unlabelled and nodata pixels).")
    region_classes: dict[str, list[ClassSpec]] = Field(default_factory=dict, description="Per-region class maps "
                                                       "(config; win over the region's class-map file).")

    def _from_config(self, specs: list[ClassSpec], source: str) -> ClassMap:
        """A class map from config specs, `source` naming the field it came from (recorded in mask metadata)."""
        return ClassMap(tuple(ClassDef(s.name, s.id, tuple(s.color)) for s in specs), self.ignore_id, source=source)

    def project_map(self) -> ClassMap:
        """The project's class map: the `path` file, else `<folder>/classes.json` if present, else `classes`.
        A bad file raises ClassMapError naming it and the fix."""
        if self.path:
            return read_class_map(self.path)
        if self.folder and (Path(self.folder) / CLASS_MAP_FILE).is_file():
            return read_class_map(Path(self.folder) / CLASS_MAP_FILE)
        return self._from_config(self.classes, "ClassMapResource.classes")

    def for_region(self, region: str) -> ClassMap:
        """A region's class map: `region_classes` config, else `<folder>/<region>/classes.json` if present, else
        the project's. A bad file raises ClassMapError naming it and the fix."""
        if region in self.region_classes:
            return self._from_config(self.region_classes[region], f"ClassMapResource.region_classes[{region!r}]")
        if self.folder:
            region_file = Path(self.folder) / check_partition_value(region, "region") / CLASS_MAP_FILE
            if region_file.is_file():
                return read_class_map(region_file)
        return self.project_map()
