"""ONNX export: Unet, FPN and DeepLabV3Plus export with the dynamo exporter to graphs with dynamic batch /
height / width whose ONNX Runtime logits match torch's at two tile sizes; the exported model is left
unchanged; a failed export leaves nothing at the destination; a dynamo failure falls back to the legacy
exporter."""

import copy
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from geoseg_assets.ml.models import build_model
from geoseg_assets.ml.onnx_export import OnnxExportFallbackWarning, export_onnx, onnx_max_abs_diff

IN_CHANNELS, NUM_CLASSES = 6, 6
# Each architecture as the project builds it (geoseg_assets/assets/models.py, encoder_depth=3). Every one has
# output stride 2**3 = 8, so tile sides must be multiples of 8 (smp checks this in eager mode).
ARCHITECTURES = {
    "unet": dict(encoder_depth=3, decoder_channels=(64, 32, 16)),
    "fpn": dict(encoder_depth=3),  # build_model sets FPN's upsampling=2 for depth 3
    "deeplabv3plus": dict(encoder_depth=3),
}
BATCHES = [(2, IN_CHANNELS, 64, 64), (1, IN_CHANNELS, 128, 96)]
# Logits are O(1..10); float32 conv stacks on two runtimes (different kernels, BN folded into convs by the
# ONNX optimizer) agree to ~2e-5 here, so 1e-4 leaves headroom without hiding a real mismatch.
TOLERANCE = 1e-4


def _randomize_batchnorm(model: nn.Module, seed: int) -> None:
    """Non-trivial BN running statistics (fresh ones are mean 0 / var 1, under which a wrong BN fold would
    go unnoticed)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=gen))


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def exported(request, tmp_path_factory):
    """(architecture, model in train mode, ONNX path, state before export, caught warnings), exported once."""
    torch.manual_seed(0)
    arch = request.param
    model = build_model(arch, "resnet18", IN_CHANNELS, NUM_CLASSES, **ARCHITECTURES[arch])
    _randomize_batchnorm(model, seed=1)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export_onnx(model, IN_CHANNELS, (64, 64), tmp_path_factory.mktemp(arch) / f"{arch}.onnx")
    assert torch.equal(rng, torch.get_rng_state()), "export must not draw from the global RNG"
    return arch, model, path, before, caught


def test_export_uses_the_dynamo_exporter(exported):
    arch, _, path, _, caught = exported
    assert path.is_file()
    assert not [w for w in caught if issubclass(w.category, OnnxExportFallbackWarning)], arch
    onnx.checker.check_model(onnx.load(path))
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp or external-data file


def test_graph_has_dynamic_batch_height_width(exported):
    _, _, path, _, _ = exported
    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]
    for value, channels in ((graph.input[0], IN_CHANNELS), (graph.output[0], NUM_CLASSES)):
        dims = value.type.tensor_type.shape.dim
        assert len(dims) == 4
        assert dims[1].dim_value == channels
        for axis in (0, 2, 3):
            assert dims[axis].dim_param and not dims[axis].HasField("dim_value"), (value.name, axis, dims[axis])


@pytest.mark.parametrize("shape", BATCHES, ids=lambda s: "x".join(map(str, s)))
def test_onnxruntime_matches_torch(exported, shape):
    arch, model, path, _, _ = exported
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    with torch.inference_mode():
        expected = copy.deepcopy(model).eval()(torch.from_numpy(x)).numpy()
    actual = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"input": x})[0]
    assert actual.shape == expected.shape == (shape[0], NUM_CLASSES, *shape[2:])
    diff = onnx_max_abs_diff(model, path, x)
    assert diff == pytest.approx(float(np.abs(actual - expected).max()), abs=1e-6)
    assert diff < TOLERANCE, f"{arch} {shape}: max |onnx - torch| = {diff:.3g}"


def test_export_leaves_the_model_unchanged(exported):
    _, model, _, before, _ = exported
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_export_into_a_missing_folder_fails_without_a_file(tmp_path):
    model = build_model("unet", "resnet18", IN_CHANNELS, NUM_CLASSES, **ARCHITECTURES["unet"])
    dest = tmp_path / "missing" / "model.onnx"
    with pytest.raises(FileNotFoundError):
        export_onnx(model, IN_CHANNELS, (64, 64), dest)
    assert not dest.parent.exists()
    assert list(tmp_path.iterdir()) == []


class Broken(nn.Module):
    """A model whose forward raises, so both exporters fail."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(IN_CHANNELS, NUM_CLASSES, 1)

    def forward(self, x):
        raise RuntimeError("broken model")


def test_failed_export_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    dest = tmp_path / "model.onnx"
    dest.write_bytes(b"previous export")
    with pytest.warns(OnnxExportFallbackWarning), pytest.raises(Exception, match="broken model"):
        export_onnx(Broken(), IN_CHANNELS, (64, 64), dest)
    assert dest.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_failed_export_to_a_new_path_leaves_no_file(tmp_path):
    dest = tmp_path / "model.onnx"
    with pytest.warns(OnnxExportFallbackWarning), pytest.raises(Exception, match="broken model"):
        export_onnx(Broken(), IN_CHANNELS, (64, 64), dest)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("tile", [(1, 64), (64, 0)])
def test_rejects_tiles_that_would_fix_an_axis(tmp_path, tile):
    with pytest.raises(ValueError, match="2x2"):
        export_onnx(Broken(), IN_CHANNELS, tile, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_falls_back_to_the_legacy_exporter_when_dynamo_fails(tmp_path, monkeypatch):
    import geoseg_assets.ml.onnx_export as onnx_export

    def dynamo_fails(*args, **kwargs):
        raise RuntimeError("dynamo unavailable")

    monkeypatch.setattr(onnx_export, "_export_dynamo", dynamo_fails)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(IN_CHANNELS, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, NUM_CLASSES, 1))
    with pytest.warns(OnnxExportFallbackWarning, match="dynamo unavailable"):
        path = export_onnx(model, IN_CHANNELS, (16, 16), tmp_path / "small.onnx")
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    x = np.random.default_rng(3).standard_normal((1, IN_CHANNELS, 24, 40)).astype(np.float32)
    assert onnx_max_abs_diff(model, path, x) < TOLERANCE
    assert [p.name for p in tmp_path.iterdir()] == ["small.onnx"]
