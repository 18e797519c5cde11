"""Mask-aligned augmentations and the seeds they draw from: randomness (shuffle order, crop positions and
augmentations) is a pure function of (seed, epoch, sample index), so loaders are reproducible and a run
resumed at epoch e draws exactly what an uninterrupted run would."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def seed_of(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy SeedSequence), so nearby inputs give unrelated streams."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


@dataclass(frozen=True)
class Augment:
    """Random crop (to `crop` px, if set), horizontal/vertical flips and 90-degree rotations, applied
    identically to an image (C, H, W) and its mask (H, W), drawing only from the given generator."""

    crop: int | None = None
    flips: bool = True
    rotations: bool = True

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator):
        h, w = mask.shape[-2:]
        if self.crop is not None:
            c = int(self.crop)
            if not 0 < c <= min(h, w):
                raise ValueError(f"crop {c} does not fit a {h}x{w} tile")
            top = int(torch.randint(0, h - c + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - c + 1, (1,), generator=generator))
            image, mask = image[..., top:top + c, left:left + c], mask[..., top:top + c, left:left + c]
            h = w = c
        if self.flips:
            flip_h, flip_v = (torch.rand(2, generator=generator) < 0.5).tolist()
            if flip_h:
                image, mask = image.flip(-1), mask.flip(-1)
            if flip_v:
                image, mask = image.flip(-2), mask.flip(-2)
        if self.rotations:
            k = int(torch.randint(0, 4, (1,), generator=generator))
            if h != w:
                k = 2 * (k % 2)  # quarter turns would change a non-square tile's shape
            if k:
                image, mask = torch.rot90(image, k, (-2, -1)), torch.rot90(mask, k, (-2, -1))
        return image.contiguous(), mask.contiguous()
