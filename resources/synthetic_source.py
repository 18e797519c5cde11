"""The synthetic scene source: deterministic scenes with ground-truth labels, for tests, demos and benchmarks."""

from pathlib import Path

from pydantic import Field

from geoseg_assets.geo import synthetic
from geoseg_assets.geo.scene_io import sha256_file
from resources.data_store import check_partition_value
from resources.scene_sources import ScanResult, SceneRef, SceneSource, check_date


class SyntheticSource(SceneSource):
    """Deterministic synthetic scenes with ground truth (see geo/synthetic.py), cached as GeoTIFFs
    under `cache_dir/<region>/<date>/scene.tif` (the landing-folder layout)."""

    cache_dir: str = Field(description="Where generated scenes and labels are written.")
    regions: list[str] = Field(default=["alpha", "beta"], description="Regions to generate.")
    dates: list[str] = Field(default=["2024-04-15", "2024-06-15", "2024-08-15"], description="Acquisition dates to generate, YYYY-MM-DD.")
    width: int = Field(default=1024, description="Scene width in pixels.")
    height: int = Field(default=1024, description="Scene height in pixels.")
    seed: int = Field(default=0, description="Random seed: the same seed gives the same scenes and labels.")
    nodata_margin: float = Field(default=0.0, description="Share of the width left as nodata fill at the left edge (0 = none), like the fill of a real product.")
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
