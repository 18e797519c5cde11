"""Bands looked up by name: case-insensitive, and optionally through a small alias table ("R" = "RED",
"SWIR1" = "SWIR16", ...), so products that spell their bands differently still find them."""

from __future__ import annotations

from collections.abc import Sequence

# Canonical band -> accepted spellings (upper case).
BAND_ALIASES: dict[str, tuple[str, ...]] = {
    "B": ("B", "BLUE"),
    "G": ("G", "GREEN"),
    "R": ("R", "RED"),
    "NIR": ("NIR", "N", "NIR08", "NIR1"),
    "SWIR1": ("SWIR1", "SWIR16", "SWIR_1"),
    "SWIR2": ("SWIR2", "SWIR22", "SWIR_2"),
}


def band_position(band_names: Sequence[str], band: str, *, aliases: bool = True) -> int | None:
    """0-based position of `band` in `band_names` (the first match, case-insensitive), or None. With `aliases`,
    any accepted spelling of a canonical band matches ("R" finds "Red"); without, only the name itself."""
    key = str(band).upper()
    spellings = BAND_ALIASES.get(key, (key,)) if aliases else (key,)
    return next((i for i, name in enumerate(band_names) if str(name).upper() in spellings), None)
