"""`tiles` [region x date]: the tile grid over the scene COG with per-tile validity and band stats."""


import dagster as dg
import geopandas as gpd
from pydantic import Field
from shapely.geometry import box

from geoseg_assets import metadata as md
from geoseg_assets.assets.scenes import scenes, upstream_scene
from geoseg_assets.geo.preview import draw_tile_grid, png_bytes, quicklook_image
from geoseg_assets.geo.tiling import compute_tiles
from geoseg_assets.partitions import FOLLOW_UPSTREAM, region_date_partitions
from resources.catalog import GRID_PREVIEW, TILE_TABLE
from resources.data_store import DataStore

TILES_FILE = TILE_TABLE.name  # benchmarks/bench_model_quality.py imports it from here


class TilesConfig(dg.Config):
    """Tile grid geometry and the validity threshold."""

    tile_size: int = Field(default=256, gt=0, description="Tile side in pixels.")
    overlap: int = Field(default=0, ge=0, description="Pixels shared by neighbouring tiles.")
    min_valid_fraction: float = Field(default=0.5, ge=0.0, le=1.0, description="Tiles with less valid data are dropped.")


def tiles_frame(records, crs_wkt: str, region: str, date: str) -> gpd.GeoDataFrame:
    """Tile records as a GeoDataFrame in the scene CRS."""
    rows = [
        {"tile_id": r.tile_id, "region": region, "date": date, "row": r.row, "col": r.col,
         "width": r.width, "height": r.height, "valid_fraction": r.valid_fraction, **r.stats,
         "geometry": box(*r.bounds)}
        for r in records
    ]
    return gpd.GeoDataFrame(rows, geometry="geometry", crs=crs_wkt)


@dg.asset(
    partitions_def=region_date_partitions,
    deps=[scenes],
    kinds={"geoparquet"},
    group_name="imagery",
    automation_condition=FOLLOW_UPSTREAM,
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5),
    description="Tile grid over the scene (GeoParquet in the scene CRS): window, bounds, valid fraction "
    "and per-band mean/std/min/max/p2/p98. Pixels stay in the scene COG and are read by window.",
)
def tiles(context: dg.AssetExecutionContext, config: TilesConfig, data_store: DataStore) -> dg.MaterializeResult:
    if config.overlap >= config.tile_size:
        raise dg.Failure(f"overlap {config.overlap} must be smaller than tile_size {config.tile_size}", allow_retries=False)
    dims, cog_path, summary = upstream_scene(context, data_store)
    band_names = summary["band_names"]
    prefix = f"{dims['region']}_{dims['date']}"
    records = compute_tiles(str(cog_path), band_names, size=config.tile_size, overlap=config.overlap, id_prefix=prefix)
    frame = tiles_frame(records, summary["crs_wkt"], dims["region"], dims["date"])
    kept = frame[frame["valid_fraction"] >= config.min_valid_fraction].reset_index(drop=True)
    dropped = frame[frame["valid_fraction"] < config.min_valid_fraction]

    out_path = data_store.file(TILE_TABLE, dims)
    with data_store.publishing() as outputs:  # the table and its preview are replaced together, or neither
        kept.to_parquet(outputs.path(out_path), index=False)
        image, scale = quicklook_image(str(cog_path), band_names, max_side=512)
        windows = lambda df: list(zip(df["col"], df["row"], df["width"], df["height"]))  # noqa: E731
        png = png_bytes(draw_tile_grid(image, scale, windows(kept), windows(dropped)))
        preview_path = outputs.write_bytes(data_store.file(GRID_PREVIEW, dims), png)
    context.log.info(f"{len(kept)} tiles kept, {len(dropped)} dropped (valid fraction < {config.min_valid_fraction})")
    return dg.MaterializeResult(
        metadata={
            "path": md.path(out_path),
            "tile_count": len(kept),
            "dropped_count": len(dropped),
            "grid_size": len(frame),
            "tile_size": config.tile_size,
            "overlap": config.overlap,
            "min_valid_fraction": config.min_valid_fraction,
            "mean_valid_fraction": dg.MetadataValue.float(round(float(kept["valid_fraction"].mean()), 4) if len(kept) else 0.0),
            "scene_crs": summary["crs"],
            "grid_preview": md.image(png, "tile grid"),
            "grid_preview_path": md.path(preview_path),
        }
    )
