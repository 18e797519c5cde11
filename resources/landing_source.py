"""The landing-folder scene source: `<root>/<region>/<YYYY-MM-DD>/*.tif`, each file checked as it is scanned.

Holds the `region.json` product declaration a region folder may carry (`read_region_json`) too.
"""

import json
from pathlib import Path

from pydantic import Field

from geoseg_assets.geo.errors import SceneError
from geoseg_assets.geo.scene_checks import SceneSpec, check_landed_file
from resources.data_store import UnsafePartitionKeyError, check_partition_value
from resources.scene_sources import (RASTER_SUFFIXES, RegionSpec, ScanResult, SceneRef, SceneSource, check_date,
                                     declared_spec, scene_ref)

REGION_SPEC_FILE = "region.json"


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
                result.refs.append(scene_ref(region, date, files, digest_cache))
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
        return scene_ref(region, date, files, None)


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
