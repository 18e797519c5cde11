"""The scene source interface (adapter pattern): scene refs, scan results, product specs and content fingerprints.

A source answers two questions: which scenes exist (`scan`, used by the new-scene sensor) and
where the files of one region/date are (`fetch`, used by the `scenes` asset). Each scene carries a
content fingerprint so unchanged files are never reprocessed and replaced files are. The sources:
`landing_source.py` (landing folder), `stac_source.py` (STAC catalog), `synthetic_source.py`.
"""


import datetime as dt
import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from dagster import Config, ConfigurableResource
from pydantic import Field

from geoseg_assets.geo.errors import SceneError
from geoseg_assets.geo.scene_checks import SceneSpec, check_nodata_fits
from geoseg_assets.geo.scene_io import sha256_file
from geoseg_assets.geo import synthetic

RASTER_SUFFIXES = (".tif", ".tiff")


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

    band_names: list[str] = Field(description="Band names in file order, e.g. [\"SWIR1\", \"NIR\", \"R\", \"G\"].")
    dtype: str | None = Field(default=None, description="Pixel type of the files (e.g. uint8); None: the file's own.")
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
    ordered, shas = sorted(paths), []
    for p in ordered:
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
    return combined_fingerprint([(Path(p).name, sha) for p, sha in zip(ordered, shas)]), tuple(shas)


def combined_fingerprint(named_shas: list[tuple[str, str]]) -> str:
    """A scene's fingerprint from its files' (name, sha256) in path order: the same bytes under the same names give
    the same fingerprint, wherever they landed (a folder or a bucket)."""
    combined = hashlib.sha256()
    for name, sha in named_shas:
        combined.update(f"{name}:{sha};".encode())
    return combined.hexdigest()


def scene_ref(region: str, date: str, files: list[str], cache: dict[str, list] | None) -> SceneRef:
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
