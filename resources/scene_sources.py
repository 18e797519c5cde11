"""Scene sources behind one interface (adapter pattern): landing folder, STAC catalog, synthetic.

A source answers two questions: which scenes exist (`scan`, used by the new-scene sensor) and
where the files of one region/date are (`fetch`, used by the `scenes` asset). Each scene carries a
content fingerprint so unchanged files are never reprocessed and replaced files are.
"""


import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from dagster import Config, ConfigurableResource
from pydantic import Field

from geoseg_assets.geo.errors import SceneError
from geoseg_assets.geo.scene_checks import SceneSpec, check_landed_file, check_nodata_fits
from geoseg_assets.geo.scene_io import sha256_file
from geoseg_assets.geo import synthetic
from resources.data_store import UnsafePartitionKeyError, check_partition_value

RASTER_SUFFIXES = (".tif", ".tiff")
REGION_SPEC_FILE = "region.json"


@dataclass(frozen=True)
class SceneRef:
    """The file(s) of one region/date and a fingerprint of their content."""

    region: str
    date: str
    paths: tuple[str, ...]
    fingerprint: str  # changes whenever any file's content changes
    sha256: tuple[str, ...] = ()  # per file, in `paths` order (empty until the files exist)
    nodata: float | None = None  # nodata the source's metadata declares for these files (a STAC item)
    nodata_declared_in: str = ""  # where that declaration is, named in messages


@dataclass
class ScanResult:
    refs: list[SceneRef] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # entries skipped, each naming the path and why


class RegionSpec(Config):
    """Product spec of one region's scenes when it differs from the source default."""

    band_names: list[str]
    dtype: str | None = None
    nodata: float | None = Field(
        default=None,
        description="Nodata value of the region's files: overrides the file's own and disables border-fill "
        "detection. None: the file's nodata, else constant fill connected to the border is detected.",
    )


def declared_spec(spec: SceneSpec, nodata, where: str) -> SceneSpec:
    """`spec` with the nodata declared in `where` (None: none declared), checked against the spec's dtype
    so a bad value fails naming its declaration and the fix."""
    if nodata is None:
        return spec
    check_nodata_fits(nodata, spec.dtype, where)
    return replace(spec, nodata=nodata, nodata_declared_in=where)


def check_date(value: str) -> str:
    """Return the date if it is a real calendar date written exactly YYYY-MM-DD, else raise naming the format.

    Strict on purpose: Python's fromisoformat also reads `20240615` or `2024-W24-6`, whose partition
    (2024-06-15) would then not name the folder the scene lies in.
    """
    try:
        iso = dt.date.fromisoformat(value).isoformat()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"date {value!r} is not a calendar date YYYY-MM-DD") from exc
    if iso != value:
        raise ValueError(f"date {value!r} is not written YYYY-MM-DD (it reads as {iso})")
    return iso


def _digest(paths: list[str], cache: dict[str, list] | None) -> tuple[str, tuple[str, ...]]:
    """Combined and per-file sha256 of files (sorted); `cache` maps path -> [size, mtime_ns, sha]
    so a sensor re-hashes only files whose size or mtime changed."""
    combined = hashlib.sha256()
    shas = []
    for p in sorted(paths):
        st = os.stat(p)
        hit = cache.get(p) if cache is not None else None
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            sha = hit[2]
        else:
            sha = sha256_file(p)
            after = os.stat(p)
            if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                raise SceneError(p, "changed while it was being read (still being copied or written?)",
                                 "nothing to do if a copy is under way: it is picked up by a later tick once it stops "
                                 "changing; land files by moving them into place (`mv`) to avoid this")
            if cache is not None:
                cache[p] = [st.st_size, st.st_mtime_ns, sha]
        shas.append(sha)
        combined.update(f"{Path(p).name}:{sha};".encode())
    return combined.hexdigest(), tuple(shas)


def _ref(region: str, date: str, files: list[str], cache: dict[str, list] | None) -> SceneRef:
    files = sorted(files)
    fingerprint, shas = _digest(files, cache)
    return SceneRef(region, date, tuple(files), fingerprint, shas)


class SceneSource(ConfigurableResource):
    """Base of all scene sources: the expected product spec plus the scan/fetch contract."""

    band_names: list[str] = Field(default=list(synthetic.BAND_NAMES), description="Expected bands, in file order.")
    dtype: str | None = Field(default="uint16", description="Expected pixel dtype (None accepts any).")
    region_specs: dict[str, RegionSpec] = Field(default_factory=dict, description="Per-region product specs.")
    nodata: float | None = Field(
        default=None,
        description="Nodata value of the default product (regions without a spec of their own): overrides the "
        "file's own. None: the file's nodata, else constant fill connected to the border is detected.",
    )

    max_scene_pixels: int = Field(
        default=1_000_000_000, gt=0,
        description="Largest output grid (width x height) a scene may have, checked before any pixel is read.",
    )

    def spec_for(self, region: str) -> SceneSpec:
        """The region's product spec: its own declaration if it has one, else the source default."""
        return self.region_spec(region) or declared_spec(
            SceneSpec(band_names=tuple(self.band_names) if self.band_names else None, dtype=self.dtype),
            self.nodata, f"the {type(self).__name__} `nodata` config",
        )

    def region_spec(self, region: str) -> SceneSpec | None:
        """The product spec the region declares itself (`region_specs` config), or None."""
        spec = self.region_specs.get(region)
        if spec is None:
            return None
        return declared_spec(SceneSpec(band_names=tuple(spec.band_names), dtype=spec.dtype), spec.nodata,
                             f"the `region_specs[{region!r}]` config")

    def scene_spec(self, ref: SceneRef) -> SceneSpec:
        """The spec one scene is written with: the region's, whose declared nodata wins over the one the
        scene's metadata (a STAC item) declares, which wins over the source default; `max_scene_pixels`."""
        region = self.region_spec(ref.region)
        spec = region or self.spec_for(ref.region)
        if ref.nodata is not None and (region is None or region.nodata is None):
            spec = declared_spec(spec, ref.nodata, ref.nodata_declared_in)
        return replace(spec, max_pixels=self.max_scene_pixels)

    def scan(self, digest_cache: dict[str, list] | None = None) -> ScanResult:
        raise NotImplementedError

    def fetch(self, region: str, date: str) -> SceneRef:
        """Local file(s) of one partition; raises FileNotFoundError naming where it looked."""
        for ref in self.scan().refs:
            if ref.region == region and ref.date == date:
                return ref
        raise FileNotFoundError(f"{type(self).__name__}: no scene for region={region!r} date={date!r} in {self.location()}")

    def location(self) -> str:
        raise NotImplementedError


class LandingFolderSource(SceneSource):
    """Scenes dropped as `<root>/<region>/<YYYY-MM-DD>/<name>.tif` (several files are mosaicked).

    A region folder may hold a `region.json` ({"band_names": [...], "dtype": "uint8", "nodata": 0})
    declaring its product when it differs from the source default; `region_specs` config wins over it.
    """

    root: str = Field(description="Landing folder.")

    def location(self) -> str:
        return self.root

    def region_spec(self, region: str) -> SceneSpec | None:
        sidecar = Path(self.root) / region / REGION_SPEC_FILE
        if region not in self.region_specs and sidecar.is_file():
            return read_region_json(sidecar)
        return super().region_spec(region)

    def scan(self, digest_cache: dict[str, list] | None = None) -> ScanResult:
        result = ScanResult()
        root = Path(self.root)
        if not root.is_dir():
            result.problems.append(f"{root}: landing folder does not exist; create it or fix the source root")
            return result
        for region_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                region = check_partition_value(region_dir.name, "region")
            except UnsafePartitionKeyError as exc:
                result.problems.append(f"{region_dir}: skipped, {exc}")
                continue
            try:
                date_dirs = sorted(p for p in region_dir.iterdir() if p.is_dir())
            except OSError as exc:
                result.problems.append(f"{region_dir}: skipped, cannot list it ({exc}); make it readable")
                continue
            for date_dir in date_dirs:
                self._scan_date_dir(result, region, date_dir, digest_cache)
        return result

    def _scan_date_dir(self, result: ScanResult, region: str, date_dir: Path, digest_cache: dict[str, list] | None) -> None:
        """Add one date folder's scene to `result`, or a problem naming the folder or file and the fix (never
        raises), so one misnamed, unreadable or hostile file never stops the scan of the others."""
        try:
            date = check_date(date_dir.name)
        except ValueError as exc:
            result.problems.append(f"{date_dir}: skipped, {exc}; name date folders like 2024-06-01")
            return
        try:
            files = self._landed_files(date_dir)
            if files:
                result.refs.append(_ref(region, date, files, digest_cache))
        except SceneError as exc:  # one bad file: the date folder waits until it is fixed (a mosaic needs all)
            result.problems.append(f"{date_dir}: skipped, {exc}")
        except OSError as exc:  # unreadable, or removed while scanning
            result.problems.append(f"{date_dir}: skipped, cannot read its files ({exc}); make them readable")

    def _landed_files(self, date_dir: Path) -> list[str]:
        """The scene files of a date folder, each a local GeoTIFF inside the landing root (a symlink out of
        it, a VRT or any non-TIFF content raises SceneError naming the file and the fix)."""
        root = Path(self.root).resolve()
        files = []
        for p in sorted(date_dir.iterdir()):
            if p.name.startswith(".") or p.suffix.lower() not in RASTER_SUFFIXES:
                continue
            if not p.is_file():
                what = "a broken link" if p.is_symlink() and not p.exists() else "a folder" if p.is_dir() else "a pipe, socket or device"
                raise SceneError(p, f"is not a regular file ({what})", "replace it by the GeoTIFF file itself")
            if not p.resolve().is_relative_to(root):
                raise SceneError(p, f"links to {p.resolve()}, outside the landing folder {root}",
                                 "copy the file into the landing folder instead of linking to it")
            check_landed_file(str(p))
            files.append(str(p))
        return files

    def fetch(self, region: str, date: str) -> SceneRef:
        date_dir = Path(self.root) / check_partition_value(region, "region") / check_date(date)
        files = self._landed_files(date_dir) if date_dir.is_dir() else []
        if not files:
            raise FileNotFoundError(f"{date_dir}: no .tif scene for region={region!r} date={date!r}; land one there")
        return _ref(region, date, files, None)


RASTER_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")


def read_region_json(path: Path) -> SceneSpec:
    """The product a region.json declares, validated as a `RegionSpec` (band names a list of distinct
    strings, a known dtype, a numeric nodata, no unknown keys); SceneError naming the file and the fix."""
    from pydantic import ValidationError

    example = '{"band_names": ["SWIR1", "NIR", "R", "G"], "dtype": "uint8", "nodata": 0}'
    fix = f"write it as a JSON object, e.g. {example}"
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise SceneError(path, f"is not valid JSON ({exc})", fix) from exc
    except OSError as exc:
        raise SceneError(path, f"cannot be read ({exc.strerror or exc})", "make it readable") from exc
    if not isinstance(data, dict):
        raise SceneError(path, f"holds a JSON {type(data).__name__}, not an object", fix)
    unknown = sorted(set(data) - set(RegionSpec.model_fields))
    if unknown:
        raise SceneError(path, f"has unknown key(s) {unknown} (known: {sorted(RegionSpec.model_fields)})", fix)
    try:
        spec = RegionSpec.model_validate(data, strict=True)
    except ValidationError as exc:
        problems = "; ".join(f"`{'.'.join(str(x) for x in e['loc'])}`: {e['msg']}" for e in exc.errors())
        raise SceneError(path, f"declares an unusable product ({problems})", fix) from exc
    if not spec.band_names or any(not n.strip() for n in spec.band_names) or len(set(spec.band_names)) < len(spec.band_names):
        raise SceneError(path, f"`band_names` {spec.band_names} must be distinct, non-empty names", fix)
    if spec.dtype is not None and spec.dtype not in RASTER_DTYPES:
        raise SceneError(path, f"`dtype` {spec.dtype!r} is not one of {list(RASTER_DTYPES)}", fix)
    return declared_spec(SceneSpec(band_names=tuple(spec.band_names), dtype=spec.dtype), spec.nodata, str(path))


class StacCatalogSource(SceneSource):
    """Scenes listed in a local static STAC catalog: one item per scene with a datetime, a region
    property and a GeoTIFF asset."""

    catalog_path: str = Field(description="Path of the catalog.json.")
    region_property: str = Field(default="region", description="Item property holding the region name.")
    asset_key: str | None = Field(default=None, description="Asset to read; default: the first GeoTIFF asset.")

    def location(self) -> str:
        return self.catalog_path

    def _declared_nodata(self, item, href: str | None):
        """The nodata an item declares for its GeoTIFF: the asset's `raster:bands` (STAC raster extension,
        first band that has one), else an item property `nodata`; None when it declares none."""
        for asset in item.assets.values():
            if href is not None and asset.get_absolute_href() == href:
                for band in asset.extra_fields.get("raster:bands") or []:
                    if isinstance(band, dict) and band.get("nodata") is not None:
                        return band["nodata"]
        return item.properties.get("nodata")

    def _href(self, item) -> str | None:
        if self.asset_key is not None:
            asset = item.assets.get(self.asset_key)
            return asset.get_absolute_href() if asset else None
        for asset in item.assets.values():
            if "tiff" in (asset.media_type or "") or asset.href.lower().endswith(RASTER_SUFFIXES):
                return asset.get_absolute_href()
        return None

    def scan(self, digest_cache: dict[str, list] | None = None) -> ScanResult:
        import pystac

        result = ScanResult()
        try:
            catalog = pystac.Catalog.from_file(self.catalog_path)
        except Exception as exc:  # pystac raises several types for missing/invalid JSON
            result.problems.append(f"{self.catalog_path}: cannot read STAC catalog ({exc}); check the path and JSON")
            return result
        grouped: dict[tuple[str, str], list[str]] = {}
        declared: dict[str, tuple[object, str]] = {}  # href -> (nodata, where the item declares it)
        for item in catalog.get_items(recursive=True):
            where = f"{self.catalog_path} item {item.id!r}"
            region = item.properties.get(self.region_property)
            when = item.datetime or item.common_metadata.start_datetime
            href = self._href(item)
            try:
                if region is None:
                    raise ValueError(f"has no {self.region_property!r} property")
                check_partition_value(str(region), "region")
                if when is None:
                    raise ValueError("has no datetime")
                if href is None or not Path(href).is_file():
                    raise ValueError(f"has no readable local GeoTIFF asset (href {href!r})")
                check_landed_file(href)  # SceneError (a ValueError) for a VRT or other non-TIFF content
            except ValueError as exc:
                result.problems.append(f"{where}: skipped, {exc}")
                continue
            grouped.setdefault((str(region), when.date().isoformat()), []).append(href)
            nodata = self._declared_nodata(item, href)
            if nodata is not None:
                declared[href] = (nodata, f"{self.catalog_path} item {item.id!r}")
        for (region, date), files in sorted(grouped.items()):
            try:
                ref = _ref(region, date, files, digest_cache)
            except (OSError, SceneError) as exc:  # removed, unreadable or changing: this scene waits, the rest go on
                result.problems.append(f"{self.catalog_path} scene {region}/{date}: skipped, {exc}")
                continue
            first = next((declared[f] for f in ref.paths if f in declared), None)
            result.refs.append(ref if first is None else replace(ref, nodata=first[0], nodata_declared_in=first[1]))
        return result


class SyntheticSource(SceneSource):
    """Deterministic synthetic scenes with ground truth (see geo/synthetic.py), cached as GeoTIFFs
    under `cache_dir/<region>/<date>/scene.tif` (the landing-folder layout)."""

    cache_dir: str = Field(description="Where generated scenes and labels are written.")
    regions: list[str] = Field(default=["alpha", "beta"])
    dates: list[str] = Field(default=["2024-04-15", "2024-06-15", "2024-08-15"])
    width: int = 1024
    height: int = 1024
    seed: int = 0
    nodata_margin: float = 0.0
    brightness_shifts: dict[str, float] = Field(default_factory=dict, description="Per-date relative brightness shift.")

    def location(self) -> str:
        return f"synthetic source (cache {self.cache_dir})"

    def params(self, region: str, date: str) -> synthetic.SyntheticParams:
        return synthetic.SyntheticParams(
            region=region, date=date, width=self.width, height=self.height, seed=self.seed,
            nodata_margin=self.nodata_margin, brightness_shift=self.brightness_shifts.get(date, 0.0),
        )

    def scene_path(self, region: str, date: str) -> Path:
        return Path(self.cache_dir) / check_partition_value(region, "region") / check_date(date) / "scene.tif"

    def labels_path(self, region: str) -> Path:
        return Path(self.cache_dir) / "labels" / f"{check_partition_value(region, 'region')}.gpkg"

    def scan(self, digest_cache: dict[str, list] | None = None) -> ScanResult:
        refs = [
            SceneRef(r, d, (str(self.scene_path(r, d)),), self.params(r, d).fingerprint())
            for r in self.regions
            for d in self.dates
        ]
        return ScanResult(refs=refs)

    def fetch(self, region: str, date: str) -> SceneRef:
        if region not in self.regions or check_date(date) not in self.dates:
            raise FileNotFoundError(f"synthetic source has no scene for region={region!r} date={date!r}; add them to regions/dates")
        params = self.params(region, date)
        path = self.scene_path(region, date)
        stamp = path.with_suffix(".fingerprint")
        if not path.exists() or not stamp.exists() or stamp.read_text() != params.fingerprint():
            synthetic.write_scene(params, path)
            stamp.write_text(params.fingerprint())
        labels = self.labels_path(region)
        if not labels.exists():
            synthetic.write_labels(params, labels)
        return SceneRef(region, date, (str(path),), params.fingerprint(), (sha256_file(path),))
