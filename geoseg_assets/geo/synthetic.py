"""Deterministic synthetic multispectral scenes with ground-truth land-cover polygons.

A region's land cover (fields, bare soil, forest, water, built-up blocks, roads) is a fixed set
of non-overlapping polygons derived from (seed, region); each date re-renders it with a seasonal
vegetation cycle, an optional per-date brightness shift and fresh sensor noise. Spectra follow
real surface behaviour (water dark in NIR, vegetation bright in NIR, built-up flat and bright),
so a segmentation model has to learn real spectral and spatial cues. Pixels are generated window
by window, so any scene size fits in memory.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.features import rasterize
from shapely import STRtree
from shapely.affinity import rotate, scale, translate
from shapely.geometry import LineString, Polygon, box
from shapely.ops import unary_union

from .classmap import DEFAULT_CLASS_MAP
from .publish import atomic_file
from .windows import iter_blocks

# Class ids of the synthetic ground truth: the project's built-in class map.
CLASSES: dict[str, int] = {c.name: c.id for c in DEFAULT_CLASS_MAP.classes}
BAND_NAMES = ("B", "G", "R", "NIR")
# Mean surface reflectance x 10000 for B, G, R, NIR.
SPECTRA: dict[str, tuple[float, float, float, float]] = {
    "water": (620, 540, 330, 180),
    "forest": (300, 520, 330, 3300),
    "cropland": (450, 780, 620, 2700),
    "built_up": (1350, 1400, 1450, 1750),
    "road": (950, 1000, 1060, 1150),
    "bare": (1050, 1300, 1650, 2100),
}
VEGETATION = {"forest": 0.35, "cropland": 0.8}  # amplitude of the seasonal NIR/Red cycle
PRIORITY = ("cropland", "bare", "forest", "water", "built_up", "road")  # later wins
NODATA = 0
RESOLUTION = 10.0
EPSG = 32633  # WGS 84 / UTM zone 33N


@dataclass(frozen=True)
class SyntheticParams:
    """Everything that determines a synthetic scene; equal params give identical bytes."""

    region: str
    date: str
    width: int = 1024
    height: int = 1024
    seed: int = 0
    nodata_margin: float = 0.0  # fraction of the width on the left edge left as nodata
    seasonal: bool = True
    brightness_shift: float = 0.0  # relative shift applied to every band (drift experiments)
    noise: float = 0.04  # relative sensor noise

    def fingerprint(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]


def _int_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


def region_origin(region: str, seed: int) -> tuple[float, float]:
    """Upper-left corner in UTM 33N metres, a different place per region."""
    rng = np.random.default_rng(_int_seed("origin", seed, region))
    return 400_000.0 + float(rng.integers(0, 200)) * 1000.0, 5_200_000.0 - float(rng.integers(0, 300)) * 1000.0


def scene_transform(params: SyntheticParams) -> rasterio.Affine:
    x0, y0 = region_origin(params.region, params.seed)
    return rasterio.Affine(RESOLUTION, 0.0, x0, 0.0, -RESOLUTION, y0)


def _blob(rng, cx, cy, radius) -> Polygon:
    """An irregular, roughly round polygon."""
    n = 24
    angles = np.linspace(0, 2 * math.pi, n, endpoint=False)
    radii = radius * (1 + 0.35 * rng.standard_normal(n).clip(-1.5, 1.5) / 1.5)
    pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii)]
    return Polygon(pts).buffer(radius * 0.15).buffer(0)


def land_cover(region: str, width: int, height: int, seed: int = 0) -> dict[str, list[Polygon]]:
    """Non-overlapping polygons per class in pixel coordinates (x = column, y = row)."""
    rng = np.random.default_rng(_int_seed("cover", seed, region, width, height))
    area_units = max(1.0, width * height / 1024**2)
    extent = box(0, 0, width, height)
    layers: dict[str, list[Polygon]] = {k: [] for k in PRIORITY}

    # Field parcels: a jittered grid covering the whole scene; some are bare soil.
    cell = 128
    xs = [0] + [c + int(rng.integers(-24, 25)) for c in range(cell, width - cell // 2, cell)] + [width]
    ys = [0] + [r + int(rng.integers(-24, 25)) for r in range(cell, height - cell // 2, cell)] + [height]
    for y0, y1 in zip(ys[:-1], ys[1:]):
        for x0, x1 in zip(xs[:-1], xs[1:]):
            layers["bare" if rng.random() < 0.2 else "cropland"].append(box(x0, y0, x1, y1))

    for _ in range(int(round(6 * area_units))):
        layers["forest"].append(_blob(rng, rng.uniform(0, width), rng.uniform(0, height), rng.uniform(50, 150)))
    for _ in range(int(round(3 * area_units))):
        lake = _blob(rng, 0, 0, rng.uniform(35, 90))
        lake = scale(lake, xfact=rng.uniform(1.0, 2.0), yfact=1.0, origin=(0, 0))
        lake = rotate(lake, rng.uniform(0, 180), origin=(0, 0))
        layers["water"].append(translate(lake, rng.uniform(0, width), rng.uniform(0, height)))
    # A meandering river across the scene.
    ts = np.linspace(0, 1, 60)
    amp, phase, y_mid = rng.uniform(40, 120), rng.uniform(0, 2 * math.pi), rng.uniform(0.2, 0.8) * height
    river = LineString([(t * width, y_mid + amp * math.sin(6 * t + phase)) for t in ts])
    layers["water"].append(river.buffer(rng.uniform(6, 12)))
    # Towns: clusters of building blocks.
    for _ in range(int(round(2 * area_units))):
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        for _ in range(int(rng.integers(8, 20))):
            bx, by = cx + rng.normal(0, 60), cy + rng.normal(0, 60)
            w, h = rng.uniform(12, 40), rng.uniform(12, 40)
            layers["built_up"].append(box(bx, by, bx + w, by + h))
    # Straight roads crossing the scene.
    for _ in range(int(round(3 * math.sqrt(area_units)))):
        if rng.random() < 0.5:
            y = rng.uniform(0, height)
            line = LineString([(0, y), (width, y + rng.uniform(-0.3, 0.3) * height)])
        else:
            x = rng.uniform(0, width)
            line = LineString([(x, 0), (x + rng.uniform(-0.3, 0.3) * width, height)])
        layers["road"].append(line.buffer(2.5, cap_style="flat"))

    # Make them non-overlapping: higher priority classes cut into lower ones.
    covered = None
    result: dict[str, list[Polygon]] = {}
    for name in reversed(PRIORITY):
        union = unary_union(layers[name]).intersection(extent)
        if covered is not None:
            union = union.difference(covered)
        covered = union if covered is None else unary_union([covered, union])
        parts = [g for g in getattr(union, "geoms", [union]) if g.area >= 1.0 and g.geom_type == "Polygon"]
        result[name] = parts
    return {name: result[name] for name in PRIORITY}


def to_world(polygons: dict[str, list[Polygon]], transform: rasterio.Affine) -> dict[str, list[Polygon]]:
    """Pixel-space polygons to map coordinates."""
    from shapely.affinity import affine_transform

    coeffs = [transform.a, transform.b, transform.d, transform.e, transform.c, transform.f]
    return {k: [affine_transform(p, coeffs) for p in v] for k, v in polygons.items()}


def season_factor(date: str) -> float:
    """0 at the winter low, 1 at the summer peak (day 200)."""
    doy = dt.date.fromisoformat(date).timetuple().tm_yday
    return 0.5 + 0.5 * math.cos(2 * math.pi * (doy - 200) / 365.25)


def _class_spectra(params: SyntheticParams) -> np.ndarray:
    """(n_classes + 1, 4) mean spectra for this date; row 0 unused."""
    table = np.zeros((len(CLASSES) + 1, 4), dtype=np.float64)
    s = season_factor(params.date) if params.seasonal else 1.0
    for name, cid in CLASSES.items():
        spec = np.array(SPECTRA[name], dtype=np.float64)
        amp = VEGETATION.get(name)
        if amp is not None:
            vigour = 1 - amp * (1 - s)
            spec[3] *= vigour  # NIR drops outside the season
            spec[2] *= 1 + 0.6 * amp * (1 - s)  # red rises
        table[cid] = spec * (1 + params.brightness_shift)
    return table


def render_window(params: SyntheticParams, polys_world, tree, shapes, window, transform) -> tuple[np.ndarray, np.ndarray]:
    """Class raster and uint16 pixels (4, h, w) of one window."""
    from rasterio.windows import bounds as wbounds, transform as wtransform

    h, w = int(window.height), int(window.width)
    wb = box(*wbounds(window, transform))
    idx = tree.query(wb)
    classes = rasterize(
        [shapes[i] for i in sorted(idx)], out_shape=(h, w), transform=wtransform(window, transform), fill=0, dtype="uint8"
    )
    rng = np.random.default_rng(_int_seed("noise", params.seed, params.region, params.date, window.row_off, window.col_off))
    table = _class_spectra(params)
    mean = table[classes]  # (h, w, 4)
    # Parcel-scale texture (smooth) + sensor noise.
    texture = 1 + 0.05 * np.sin(np.add.outer(np.arange(h) + window.row_off, np.arange(w) + window.col_off) / 37.0)
    pixels = mean * texture[..., None] * (1 + params.noise * rng.standard_normal((h, w, 4)))
    pixels = np.clip(pixels, 1, 65535).astype(np.uint16)
    pixels = np.moveaxis(pixels, -1, 0)
    if params.nodata_margin > 0:
        margin = int(params.width * params.nodata_margin)
        cols = np.arange(w) + int(window.col_off)
        pixels[:, :, cols < margin] = NODATA
        classes[:, cols < margin] = 0
    return classes, pixels


def write_scene(params: SyntheticParams, path: str | Path, block: int = 1024) -> Path:
    """Write the scene as a tiled GeoTIFF (4 x uint16, nodata 0, UTM 33N, 10 m), window by window."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    transform = scene_transform(params)
    polys = to_world(land_cover(params.region, params.width, params.height, params.seed), transform)
    shapes = [(g, CLASSES[name]) for name in PRIORITY for g in polys[name]]
    tree = STRtree([g for g, _ in shapes])
    profile = dict(
        driver="GTiff", width=params.width, height=params.height, count=4, dtype="uint16",
        crs=f"EPSG:{EPSG}", transform=transform, nodata=NODATA, tiled=True, blockxsize=512,
        blockysize=512, compress="DEFLATE", predictor=2, BIGTIFF="IF_SAFER",
    )
    with atomic_file(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for i, name in enumerate(BAND_NAMES, start=1):
            dst.set_band_description(i, name)
        dst.update_tags(generator="geoseg.synthetic", region=params.region, date=params.date, seed=str(params.seed))
        for win in iter_blocks(params.width, params.height, block):
            _, pixels = render_window(params, polys, tree, shapes, win, transform)
            dst.write(pixels, window=win)
    return path


def write_labels(params: SyntheticParams, path: str | Path) -> Path:
    """Write the region's ground-truth polygons (class name and id, scene CRS) as a GeoPackage."""
    import geopandas as gpd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    polys = to_world(land_cover(params.region, params.width, params.height, params.seed), scene_transform(params))
    rows = [
        {"class_name": name, "class_id": CLASSES[name], "region": params.region, "source": "synthetic", "geometry": g}
        for name in PRIORITY
        for g in polys[name]
    ]
    gdf = gpd.GeoDataFrame(rows, geometry="geometry", crs=f"EPSG:{EPSG}")
    with atomic_file(path) as tmp:
        gdf.to_file(tmp, driver="GPKG", layer="labels")
    return path
