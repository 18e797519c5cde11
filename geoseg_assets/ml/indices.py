"""Spectral indices (NDVI, NDWI, ...) computed from bands looked up by NAME, as extra model inputs.

Every index is a normalized difference (a - b) / (a + b) of two bands, so it does not depend on
the reflectance scale (x 10000 integers or 0..1 floats give the same value). Bands are matched
case-insensitively through a small alias table ("R" = "RED", "SWIR1" = "SWIR16", ...: geo/bands.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..geo.bands import BAND_ALIASES, band_position as band_index  # noqa: F401 (band_index: this module's API)

EPS = 1e-6  # |a + b| at or below this gives an index of 0 (nodata, padding), never inf/nan

# Index -> (a, b) canonical bands of (a - b) / (a + b).
INDICES: dict[str, tuple[str, str]] = {
    "NDVI": ("NIR", "R"),  # vegetation
    "NDWI": ("G", "NIR"),  # open water (McFeeters)
    "MNDWI": ("G", "SWIR1"),  # water, robust to built-up (Xu)
    "NDBI": ("SWIR1", "NIR"),  # built-up
    "NBR": ("NIR", "SWIR2"),  # burn / bare soil
}


def index_names(band_names: Sequence[str] | None = None) -> list[str]:
    """Supported index names; with `band_names`, only those computable from these bands."""
    if band_names is None:
        return list(INDICES)
    return [name for name, bands in INDICES.items() if all(band_index(band_names, b) is not None for b in bands)]


def check_indices(band_names: Sequence[str], names: Sequence[str]) -> list[str]:
    """Canonical (upper-case) index names, or a ValueError naming an unknown index or missing band."""
    out = []
    for name in names:
        key = str(name).upper()
        if key not in INDICES:
            raise ValueError(f"unknown spectral index {name!r}; supported: {', '.join(INDICES)}")
        for band in INDICES[key]:
            if band_index(band_names, band) is None:
                raise ValueError(
                    f"index {key} needs band {band!r} (or {', '.join(BAND_ALIASES.get(band, ()))}), which the dataset "
                    f"lacks: its bands are {list(band_names)}; indices possible here: {index_names(band_names)}"
                )
        out.append(key)
    return out


def compute_indices(x: torch.Tensor, band_names: Sequence[str], names: Sequence[str]) -> torch.Tensor:
    """Indices `names` of raw reflectances `x` ((B, C, H, W) or (C, H, W), bands in `band_names`
    order) as float32 channels ((B, len(names), H, W) or (len(names), H, W)), 0 where a + b ~ 0."""
    keys = check_indices(band_names, names)
    if x.dim() not in (3, 4) or x.shape[-3] != len(band_names):
        raise ValueError(f"expected (B, C, H, W) or (C, H, W) with C = {len(band_names)} bands, got {tuple(x.shape)}")
    x = x.float()
    channels = []
    for key in keys:
        a_name, b_name = INDICES[key]
        a = x.select(-3, band_index(band_names, a_name))
        b = x.select(-3, band_index(band_names, b_name))
        den = a + b
        ok = den.abs() > EPS
        channels.append(torch.where(ok, (a - b) / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den)))
    if not channels:
        return x.new_zeros((*x.shape[:-3], 0, *x.shape[-2:]))
    return torch.stack(channels, dim=-3)
