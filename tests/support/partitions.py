"""One synthetic region/date as the pipeline makes it (scene COG, mask COG, tile table), without Dagster."""

from pathlib import Path

import numpy as np
import rasterio
from rasterio.features import rasterize

from geoseg_assets.assets.tiles import tiles_frame
from geoseg_assets.geo.classmap import IGNORE_ID as IGNORE
from geoseg_assets.geo.dataset_inputs import PartitionInput
from geoseg_assets.geo.scene_checks import SceneSpec
from geoseg_assets.geo.scene_io import copy_as_cog, sha256_file, write_scene_cog
from geoseg_assets.geo.synthetic import (
    BAND_NAMES,
    CLASSES,
    PRIORITY,
    SyntheticParams,
    land_cover,
    scene_transform,
    to_world,
    write_scene,
)
from geoseg_assets.geo.tiling import compute_tiles


TILE = 128


def write_mask_cog(labels: np.ndarray, crs, transform, dst: Path) -> Path:
    """A uint8 mask COG (via a temporary GTiff, nearest overviews) on the given grid."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp.tif")
    profile = dict(driver="GTiff", width=labels.shape[1], height=labels.shape[0], count=1, dtype="uint8",
                   crs=crs, transform=transform, nodata=IGNORE)
    with rasterio.open(tmp, "w", **profile) as out:
        out.write(labels, 1)
    copy_as_cog(str(tmp), str(dst), resampling="nearest")
    tmp.unlink()
    return dst


def synthetic_mask(params: SyntheticParams, scene_path: str) -> np.ndarray:
    """The ground-truth polygons rasterized onto the scene grid, ignore where the scene is nodata."""
    polys = to_world(land_cover(params.region, params.width, params.height, params.seed), scene_transform(params))
    shapes = [(g, CLASSES[name]) for name in PRIORITY for g in polys[name]]  # later classes win
    with rasterio.open(scene_path) as src:
        labels = rasterize(shapes, out_shape=(src.height, src.width), transform=src.transform, fill=IGNORE, dtype="uint8")
        labels[(src.read() == src.nodata).any(axis=0)] = IGNORE
    return labels


def make_partition(root: Path, region: str, date: str, *, width=512, height=512, margin=0.0, overlap=0) -> PartitionInput:
    """Scene COG, mask COG and tile table of one synthetic region/date, as the pipeline makes them."""
    params = SyntheticParams(region=region, date=date, width=width, height=height, nodata_margin=margin)
    raw = write_scene(params, root / "raw" / f"{region}_{date}.tif")
    scene = write_scene_cog([str(raw)], str(root / "scenes" / f"{region}_{date}.tif"), SceneSpec(band_names=BAND_NAMES))
    with rasterio.open(scene.path) as src:
        crs, transform = src.crs, src.transform
    mask = write_mask_cog(synthetic_mask(params, scene.path), crs, transform, root / "masks" / f"{region}_{date}.tif")
    records = compute_tiles(scene.path, list(BAND_NAMES), size=TILE, overlap=overlap, id_prefix=f"{region}_{date}")
    frame = tiles_frame(records, scene.crs_wkt, region, date)
    frame = frame[frame["valid_fraction"] >= 0.2].reset_index(drop=True)  # the tiles asset's filter, looser
    return PartitionInput(region, date, scene.path, str(mask), frame, sha256_file(scene.path))
