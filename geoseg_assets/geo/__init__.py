"""Pure raster/vector code (no Dagster): windows, validation, COG writing, tiling, previews, synthetic scenes."""
