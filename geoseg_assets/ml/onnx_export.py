"""ONNX export of trained segmentation models, and its check against ONNX Runtime.

An exported graph maps "input" (B, C, H, W) float32 to "logits" (B, K, H, W), with batch, height and width
dynamic, so one file serves any tile size the model itself accepts (for smp models: H and W multiples of
the encoder's output stride). Export uses torch's torch.export-based ("dynamo") exporter, the default and
recommended one since torch 2.9; it handles smp Unet, UnetPlusPlus, FPN and DeepLabV3Plus with resnet18.
Should it fail for some other architecture or encoder, the legacy TorchScript exporter (dynamo=False) is
tried instead, with an `OnnxExportFallbackWarning` saying why.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..geo.publish import atomic_file

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DYNAMIC_AXES = {0: "batch", 2: "height", 3: "width"}


class OnnxExportFallbackWarning(UserWarning):
    """The dynamo exporter failed and the legacy TorchScript exporter was used instead."""


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` on CPU in eval mode, so the caller's model keeps its device, mode and weights."""
    return copy.deepcopy(model).cpu().eval()


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: str) -> None:
    """torch.export-based export with dynamic batch / height / width (needs onnxscript)."""
    dims = {axis: torch.export.Dim(name) for axis, name in DYNAMIC_AXES.items()}
    # external_data=False: one self-contained file (fine below protobuf's 2 GiB), which os.replace can
    # move atomically; with external data the weights file would keep the temporary name.
    torch.onnx.export(model, (example,), path, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_shapes=(dims,), dynamo=True, external_data=False, verbose=False)


def _export_legacy(model: nn.Module, example: torch.Tensor, path: str) -> None:
    """Legacy TorchScript-tracing export (dynamo=False), the fallback; torch warns it is deprecated."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(model, (example,), path, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: DYNAMIC_AXES, OUTPUT_NAME: DYNAMIC_AXES}, dynamo=False)


def export_onnx(model: nn.Module, in_channels: int, tile_shape: tuple[int, int],
                path: str | os.PathLike) -> Path:
    """Export `model` (in eval mode, on CPU) to the ONNX file `path` and return it as a Path.

    `tile_shape` (H, W) is the example input's size: any size the model accepts, each side >= 2 (torch.export
    would fix a size-1 axis as static). The file is written to a temporary file in the same folder, which must
    exist, then renamed over `path`, so a failed export never leaves a partial file there. `model` itself is
    not changed (a deep copy is exported)."""
    path = Path(path)
    height, width = (int(s) for s in tile_shape)
    if height < 2 or width < 2 or int(in_channels) < 1:
        raise ValueError(f"need in_channels >= 1 and a tile of at least 2x2, got {in_channels} and {tile_shape}")
    net = _cpu_eval_copy(model)
    # Batch of 2 so the batch axis stays dynamic; a local generator leaves the global RNG untouched.
    example = torch.randn(2, int(in_channels), height, width, generator=torch.Generator().manual_seed(0))
    with atomic_file(path) as tmp:
        try:
            _export_dynamo(net, example, str(tmp))
        except Exception as dynamo_error:  # noqa: BLE001 - any exporter failure gets the fallback
            warnings.warn(f"dynamo ONNX export of {type(model).__name__} failed ({type(dynamo_error).__name__}: "
                          f"{dynamo_error}); using the legacy TorchScript exporter", OnnxExportFallbackWarning,
                          stacklevel=2)
            try:
                _export_legacy(net, example, str(tmp))
            except Exception as legacy_error:
                raise legacy_error from dynamo_error
    return path


def onnx_max_abs_diff(model: nn.Module, onnx_path: str | os.PathLike, inputs: np.ndarray) -> float:
    """Largest absolute difference between the logits of `model` (eval, CPU) and of ONNX Runtime
    (CPUExecutionProvider) running `onnx_path`, on the same float32 batch `inputs` (B, C, H, W).

    Raises ValueError if the two outputs differ in shape, which a difference alone would hide."""
    import onnxruntime as ort  # imported here: only this check needs the runtime

    batch = np.ascontiguousarray(inputs, dtype=np.float32)
    net = _cpu_eval_copy(model)
    with torch.inference_mode():
        expected = net(torch.from_numpy(batch.copy())).numpy()
    session = ort.InferenceSession(os.fspath(onnx_path), providers=["CPUExecutionProvider"])
    actual = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
    if actual.shape != expected.shape:
        raise ValueError(f"ONNX output shape {actual.shape} != torch output shape {expected.shape}")
    return float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)))) if expected.size else 0.0
