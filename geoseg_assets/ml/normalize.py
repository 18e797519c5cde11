"""Raw pixels -> model input, and manifest class ids -> training indices: the transforms training and
inference must share so both see identical inputs.

`Normalizer.prepare` is the ONE place raw pixels become model input (per-band standardization with
the train statistics of the manifest, plus optional spectral indices computed from the raw
reflectances); inference must reuse it so training and serving see identical inputs.

Masks: class ids of the manifest's class map (e.g. water 1 ... bare 6) become contiguous training
indices 0..K-1 in ascending id order (`class_ids[k]` is the id of index k); the ignore id (255: no
label, nodata, padding) stays 255 and is the loss's `ignore_index`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..geo.classmap import IGNORE_ID as IGNORE_INDEX
from .indices import check_indices, compute_indices


@dataclass(frozen=True)
class Normalizer:
    """Raw band values -> float32 model input: (x - mean) / std per band, then the requested spectral
    indices (computed from the RAW values, so they stay scale-free) appended as extra channels."""

    band_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    indices: tuple[str, ...] = ()

    def __post_init__(self):
        if not (len(self.band_names) == len(self.mean) == len(self.std)) or not self.band_names:
            raise ValueError(f"need one mean and std per band, got bands {list(self.band_names)}, "
                             f"{len(self.mean)} means, {len(self.std)} stds")
        object.__setattr__(self, "indices", tuple(check_indices(self.band_names, self.indices)))

    @classmethod
    def from_manifest(cls, manifest: Mapping, indices: Sequence[str] = ()) -> Normalizer:
        """The train-split statistics recorded in a dataset manifest."""
        norm = manifest["norm"]
        return cls(tuple(manifest["band_names"]), tuple(map(float, norm["mean"])), tuple(map(float, norm["std"])),
                   tuple(indices))

    def to_dict(self) -> dict:
        """Plain JSON-able form, stored in checkpoints so inference rebuilds the same transform."""
        return {"band_names": list(self.band_names), "mean": list(self.mean), "std": list(self.std),
                "indices": list(self.indices)}

    @classmethod
    def from_dict(cls, data: Mapping) -> Normalizer:
        return cls(tuple(data["band_names"]), tuple(data["mean"]), tuple(data["std"]), tuple(data.get("indices", ())))

    @property
    def in_channels(self) -> int:
        """Channels of the prepared input: bands + indices."""
        return len(self.band_names) + len(self.indices)

    @property
    def channel_names(self) -> list[str]:
        return [*self.band_names, *self.indices]

    def prepare(self, images_raw) -> torch.Tensor:
        """Model input (float32, same device) of raw images (B, C, H, W) or (C, H, W), tensor or numpy."""
        if isinstance(images_raw, np.ndarray):
            images_raw = torch.from_numpy(np.asarray(images_raw, dtype=np.float32))
        x = images_raw.float()
        if x.dim() not in (3, 4) or x.shape[-3] != len(self.band_names):
            raise ValueError(f"expected (B, C, H, W) or (C, H, W) with C = {len(self.band_names)} bands "
                             f"{list(self.band_names)}, got shape {tuple(x.shape)}")
        shape = (-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(shape)
        std = torch.where(std > 0, std, torch.ones_like(std))  # a constant band would divide by 0
        out = (x - mean) / std
        if self.indices:
            out = torch.cat([out, compute_indices(x, self.band_names, self.indices)], dim=-3)
        return out


# --------------------------------------------------------------------------------------------
# Class ids -> training indices
# --------------------------------------------------------------------------------------------


def class_table(manifest: Mapping) -> tuple[tuple[int, ...], tuple[str, ...], int]:
    """(class_ids ascending, their names, ignore id) of the manifest's class map."""
    cmap = manifest["class_map"]
    pairs = sorted((int(cid), str(name)) for name, cid in cmap["classes"].items())
    return tuple(c for c, _ in pairs), tuple(n for _, n in pairs), int(cmap.get("ignore_id", IGNORE_INDEX))


def class_lut(class_ids: Sequence[int]) -> np.ndarray:
    """(256,) uint8 lookup: class id -> training index 0..K-1; every other value (the ignore id, and
    ids not in the class map, which the dataset build refuses anyway) -> IGNORE_INDEX."""
    if len(class_ids) >= IGNORE_INDEX:
        raise ValueError(f"at most {IGNORE_INDEX - 1} classes are supported, got {len(class_ids)}")
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[np.asarray(class_ids, dtype=np.int64)] = np.arange(len(class_ids), dtype=np.uint8)
    return lut
