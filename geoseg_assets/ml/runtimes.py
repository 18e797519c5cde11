"""The network behind sliding-window inference: class probabilities of a batch of prepared windows, run by
torch or by ONNX Runtime.

On CPU, ONNX Runtime runs the exported graph of the same weights about 1.3x faster than eager torch
(the default Unet-resnet18 on this 2-core machine, once per pixel: 2.25 vs 1.73 MP/s in
benchmarks/bench_inference.py): it folds batch norms into convolutions and fuses activations. Training
logs that export (`onnx/model.onnx`, dynamic batch, height and width) after checking it against torch;
`onnx_network` checks it again against the weights being served before trusting it, so a stale or
foreign file falls back to torch instead of predicting.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .models import batch_on, on_device
from .onnx_export import INPUT_NAME, OUTPUT_NAME, onnx_max_abs_diff
from .options import Runtime

ONNX_TOLERANCE = 1e-3  # largest |logit difference| accepted between ONNX Runtime and torch on the same input


class WindowNetwork(Protocol):
    """(B, C, H, W) float32 prepared windows -> (B, K, H, W) float32 class probabilities on the CPU."""

    description: str

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


class TorchNetwork:
    """A torch module on a device (channels-last, autocast on CUDA), softmax on its logits."""

    def __init__(self, net: torch.nn.Module, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.net = on_device(net, self.device).eval()
        self.description = f"torch on {self.device.type}"

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        autocast = torch.autocast("cuda") if self.device.type == "cuda" else nullcontext()
        with autocast:
            logits = self.net(batch_on(batch, self.device, non_blocking=True))
        return torch.softmax(logits.float(), dim=1).cpu()


class OnnxNetwork:
    """An ONNX Runtime session on the CPU with as many threads as torch uses (OMP_NUM_THREADS)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
        self.description = "onnxruntime on cpu"

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.softmax(torch.from_numpy(self.logits(batch.numpy())), dim=1)


@dataclass(frozen=True)
class NetworkChoice:
    """The network inference runs, and why that runtime (for the prediction's metadata)."""

    network: WindowNetwork
    reason: str


def onnx_network(net: torch.nn.Module, path: str | os.PathLike, in_channels: int, multiple: int = 32) -> tuple[OnnxNetwork | None, str]:
    """An ONNX Runtime network of `path` if it gives `net`'s logits (within ONNX_TOLERANCE) on a random
    non-square batch, else (None, why): a file exported from other weights, or a graph with fixed sizes,
    must never predict in the model's name."""
    x = np.random.default_rng(0).standard_normal((2, in_channels, 2 * multiple, 3 * multiple)).astype(np.float32)
    try:
        diff = onnx_max_abs_diff(net, path, x)  # the check training made before logging the file
        candidate = OnnxNetwork(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable or incompatible graph means: use torch
        return None, f"its ONNX export cannot run here ({type(exc).__name__}: {exc})"
    if diff > ONNX_TOLERANCE:
        return None, f"its ONNX export differs from the served weights by {diff:.1e} (> {ONNX_TOLERANCE})"
    return candidate, f"max |logit difference| to torch {diff:.1e}"


def choose_network(net: torch.nn.Module, device: torch.device | str, runtime: Runtime, in_channels: int,
                   onnx_path: str | os.PathLike | None) -> NetworkChoice:
    """The runtime to predict with: `auto` takes ONNX Runtime on the CPU when the model has a verified ONNX
    export (faster), torch otherwise; `onnxruntime` asked for but unusable is an error, never a silent
    fallback."""
    device = torch.device(device)
    if runtime == "torch" or (runtime == "auto" and device.type != "cpu"):
        why = "asked for" if runtime == "torch" else f"{device.type} device"
        return NetworkChoice(TorchNetwork(net, device), f"torch ({why})")
    if onnx_path is None:
        if runtime == "onnxruntime":
            raise ValueError("runtime onnxruntime needs the model's ONNX export, and this model has none "
                             "(train with export_onnx=True, or predict with runtime torch or auto)")
        return NetworkChoice(TorchNetwork(net, device), "torch (the model has no ONNX export)")
    onnx, why = onnx_network(net, onnx_path, in_channels)
    if onnx is None:
        if runtime == "onnxruntime":
            raise ValueError(f"runtime onnxruntime: {why}; predict with runtime torch or auto, or re-run training_job")
        return NetworkChoice(TorchNetwork(net, device), f"torch ({why})")
    return NetworkChoice(onnx, f"onnxruntime ({why})")
