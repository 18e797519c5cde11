"""The network behind inference: ONNX Runtime predicts what torch predicts, and an export that does not match
the served weights (or cannot run) is never trusted."""

import numpy as np
import pytest
import torch

from geoseg_assets.ml.inference import InferenceConfig, predict_scene
from geoseg_assets.ml.onnx_export import export_onnx
from geoseg_assets.ml.runtimes import OnnxNetwork, TorchNetwork, choose_network
from tests.support.inference import CLASS_IDS, NORMALIZER, Collector, array_scene, small_rf_net

IN_CHANNELS = 4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """small_rf_net(seed 0) and its ONNX export."""
    net = small_rf_net(0)
    return net, export_onnx(net, IN_CHANNELS, (64, 96), tmp_path_factory.mktemp("onnx") / "model.onnx")


def test_onnx_runtime_predicts_the_scene_torch_predicts(exported):
    """Same scene, same blended windows: the class maps agree and probabilities within 1e-4."""
    net, path = exported
    height, width = 300, 260
    _, _, read = array_scene(height, width)
    config = InferenceConfig(window=128, overlap=32)
    maps = {}
    for name, network in (("torch", TorchNetwork(net)), ("onnx", OnnxNetwork(path))):
        sink = Collector(height, width)
        result = predict_scene(network, NORMALIZER, CLASS_IDS, width, height, read, sink, config, with_probabilities=True)
        assert result.runtime == network.description and result.windows_forwarded == result.windows_total
        maps[name] = sink
    np.testing.assert_allclose(maps["onnx"].probs, maps["torch"].probs, atol=1e-4)
    assert (maps["onnx"].classes == maps["torch"].classes).mean() > 0.9999


def test_auto_takes_the_verified_export_on_cpu_and_torch_on_request(exported):
    net, path = exported
    auto = choose_network(net, "cpu", "auto", IN_CHANNELS, path)
    assert isinstance(auto.network, OnnxNetwork) and auto.reason.startswith("onnxruntime (max |logit difference|")
    forced = choose_network(net, "cpu", "torch", IN_CHANNELS, path)
    assert isinstance(forced.network, TorchNetwork) and forced.reason == "torch (asked for)"


def test_an_export_of_other_weights_is_never_trusted(exported):
    """The file of seed 0 beside the weights of seed 1: auto falls back to torch saying why; asking for ONNX
    Runtime explicitly is an error naming the fix."""
    _, path = exported
    other = small_rf_net(1)
    choice = choose_network(other, "cpu", "auto", IN_CHANNELS, path)
    assert isinstance(choice.network, TorchNetwork) and "differs from the served weights" in choice.reason
    with pytest.raises(ValueError, match="differs from the served weights.*runtime torch or auto"):
        choose_network(other, "cpu", "onnxruntime", IN_CHANNELS, path)


def test_a_missing_or_corrupt_export_falls_back_to_torch(tmp_path, exported):
    net, _ = exported
    none = choose_network(net, "cpu", "auto", IN_CHANNELS, None)
    assert isinstance(none.network, TorchNetwork) and none.reason == "torch (the model has no ONNX export)"
    with pytest.raises(ValueError, match="export_onnx=True"):
        choose_network(net, "cpu", "onnxruntime", IN_CHANNELS, None)
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"\x08\x07not a protobuf graph" * 50)
    corrupt = choose_network(net, "cpu", "auto", IN_CHANNELS, garbage)
    assert isinstance(corrupt.network, TorchNetwork) and "cannot run here" in corrupt.reason


def test_onnx_runtime_uses_as_many_threads_as_torch(exported):
    _, path = exported
    assert OnnxNetwork(path).session.get_session_options().intra_op_num_threads == torch.get_num_threads()
