"""A registered model as data, never as code: safetensors weights + a JSON architecture spec.

A pickled `nn.Module` runs whatever its bytes say when it is loaded, so a tampered artifact store
would run code in every prediction. Instead a model folder holds `weights.safetensors` (tensors only,
no pickle) and `architecture.json` (the `build_model` arguments); the registry records the SHA-256 of
both at registration, and loading refuses a folder whose bytes differ before reading a tensor.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only when a model is saved or loaded
    from torch import nn

WEIGHTS_FILE = "weights.safetensors"
ARCHITECTURE_FILE = "architecture.json"
FILES = (WEIGHTS_FILE, ARCHITECTURE_FILE)
SPEC_KEYS = ("architecture", "encoder", "in_channels", "num_classes", "model_kwargs")


class ModelArtifactError(ValueError):
    """A model folder that is missing, altered since registration or not a geoseg weights-only model."""


@dataclass(frozen=True)
class ModelSpec:
    """What `build_model` needs to rebuild the network the weights belong to."""

    architecture: str
    encoder: str
    in_channels: int
    num_classes: int
    model_kwargs: dict

    @classmethod
    def from_dict(cls, raw: object, where: str) -> "ModelSpec":
        if not isinstance(raw, dict) or set(raw) != set(SPEC_KEYS):
            keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise ModelArtifactError(f"{where}: expected exactly the keys {list(SPEC_KEYS)}, found {keys}")
        if not isinstance(raw["model_kwargs"], dict):
            raise ModelArtifactError(f"{where}: model_kwargs must be an object")
        return cls(str(raw["architecture"]), str(raw["encoder"]), int(raw["in_channels"]), int(raw["num_classes"]),
                   dict(raw["model_kwargs"]))

    def to_dict(self) -> dict:
        return {"architecture": self.architecture, "encoder": self.encoder, "in_channels": self.in_channels,
                "num_classes": self.num_classes, "model_kwargs": self.model_kwargs}


def folder_sha256(folder: Path) -> str:
    """One digest over the model folder's files (name and bytes, in a fixed order)."""
    digest = hashlib.sha256()
    for name in FILES:
        path = folder / name
        if not path.is_file() or path.is_symlink():
            raise ModelArtifactError(f"{path}: missing (a geoseg model folder holds {list(FILES)})")
        digest.update(name.encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def save_model(model: nn.Module, spec: ModelSpec, folder: Path) -> str:
    """Write `model`'s weights and `spec` into `folder`; returns the folder digest to record."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "geoseg-weights-v1"})
    (folder / ARCHITECTURE_FILE).write_text(json.dumps(spec.to_dict(), indent=1, sort_keys=True))
    return folder_sha256(folder)


def load_model(folder: Path, expected_sha256: str | None, label: str) -> nn.Module:
    """The network in `folder` in eval mode, after checking its digest against `expected_sha256`.

    `label` names the model in errors (e.g. "geoseg-segmenter v3"). No pickle is ever unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from geoseg_assets.ml.models import build_model

    fix = "re-run training_job to register a fresh model, and check who can write to the artifact store"
    if not expected_sha256:
        raise ModelArtifactError(f"{label}: the registry records no weights checksum (a version registered before "
                                 f"weights-only artifacts, or not by geoseg); {fix}")
    actual = folder_sha256(folder)
    if actual != expected_sha256:
        raise ModelArtifactError(f"{label}: the artifact at {folder} was altered after registration (sha256 "
                                 f"{actual[:12]}... != registered {expected_sha256[:12]}...); refusing to load it; {fix}")
    try:
        spec = ModelSpec.from_dict(json.loads((folder / ARCHITECTURE_FILE).read_text()), f"{label} {ARCHITECTURE_FILE}")
        state = load_file(str(folder / WEIGHTS_FILE))
    except (SafetensorError, json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as exc:
        if isinstance(exc, ModelArtifactError):
            raise
        raise ModelArtifactError(f"{label}: unreadable model files in {folder}: {exc}; {fix}") from exc
    try:
        net = build_model(spec.architecture, spec.encoder, spec.in_channels, spec.num_classes, **spec.model_kwargs)
        net.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ModelArtifactError(f"{label}: weights do not fit {spec.architecture}-{spec.encoder}: "
                                 f"{str(exc).splitlines()[0]}; {fix}") from exc
    return net.eval()


def load_checkpoint(path: str | Path) -> tuple[nn.Module, ModelSpec]:
    """The network of a training checkpoint (`best.pt` of `ml.train`, weights only) in eval mode on CPU, and
    the spec to register it with."""
    import torch

    from geoseg_assets.ml.models import build_model

    best = torch.load(path, map_location="cpu", weights_only=True)
    spec = ModelSpec(best["architecture"], best["encoder"], best["in_channels"], best["num_classes"], best["model_kwargs"])
    net = build_model(spec.architecture, spec.encoder, spec.in_channels, spec.num_classes, **spec.model_kwargs)
    net.load_state_dict(best["model"])
    return net.eval(), spec
