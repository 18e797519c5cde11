"""A tiny segmentation network of a fixed spec, for registry and artifact tests."""

import torch

from geoseg_assets.ml.model_artifact import ModelSpec
from geoseg_assets.ml.models import build_model


SPEC = ModelSpec("unet", "resnet18", 4, 3, {"encoder_depth": 3, "decoder_channels": [16, 8, 4]})


def tiny_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(SPEC.architecture, SPEC.encoder, SPEC.in_channels, SPEC.num_classes, **SPEC.model_kwargs).eval()
