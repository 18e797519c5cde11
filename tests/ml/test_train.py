"""Training: a tiny model learns a tiny dataset, every architecture builds and runs, checkpoints are
written each epoch, a crashed run resumes to the exact weights of an uninterrupted one, and local
weights load (encoder or whole model)."""

import logging
from dataclasses import replace

import pytest
import torch

from geoseg_assets.ml.averaging import WeightAverage
from geoseg_assets.ml.losses import class_weights
from geoseg_assets.ml.models import build_model, load_weights
from geoseg_assets.ml.train import TrainConfig, train
from tests.support.shard_datasets import write_dataset

# Tiny and fast: resnet18 cut to 3 stages, a slim decoder, 32 px tiles.
TINY = dict(encoder_depth=3, decoder_channels=(32, 16, 8))


def tiny_config(tmp_path, name, **overrides) -> TrainConfig:
    base = TrainConfig(architecture="unet", encoder="resnet18", model_kwargs=dict(TINY), epochs=6, batch_size=4,
                       lr=3e-3, seed=0, patience=None, device="cpu", checkpoint_dir=str(tmp_path / name),
                       num_workers=0)
    return replace(base, **overrides)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("ml") / "ds", counts={"train": 16, "val": 6, "test": 2}, per_shard=5)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_tiny_model_learns_and_writes_checkpoints_every_epoch(dataset, tmp_path):
    config = tiny_config(tmp_path, "learn", indices=("NDVI",))
    ckpt = tmp_path / "learn"
    seen = []
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("geoseg.train")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)

    def on_epoch(epoch, metrics):
        last = _state(ckpt / "last.pt")
        assert last["epoch"] == epoch and len(last["history"]) == epoch  # checkpoint written before the callback
        assert (ckpt / "best.pt").exists()
        seen.append((epoch, metrics))

    try:
        result = train(config, dataset, on_epoch=on_epoch)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)

    assert [e for e, _ in seen] == list(range(1, 7)) and result.epochs_run == 6 and result.resumed_from is None
    losses = [m["train_loss"] for _, m in seen]
    assert min(losses[-2:]) < 0.7 * losses[0], losses
    # 3 classes: a constant prediction scores mIoU ~0.2; the classes are spectrally separable
    assert result.best_miou > 0.6, [m["val_miou"] for _, m in seen]
    assert result.best_miou == max(m["val_miou"] for _, m in seen)
    assert {"train_loss", "val_loss", "val_miou", "lr", "seconds", "val_iou_water"} <= set(seen[-1][1])
    assert [h["val_miou"] for h in result.history] == [m["val_miou"] for _, m in seen]
    best = _state(result.best_state_path)
    assert best["epoch"] == result.best_epoch and best["val_miou"] == result.best_miou
    assert best["class_ids"] == [1, 4, 6] and best["normalizer"]["indices"] == ["NDVI"] and best["in_channels"] == 5
    lines = [r.getMessage() for r in records]
    assert sum(line.startswith("epoch ") and "val_miou" in line and "lr" in line for line in lines) == 6
    assert not list(ckpt.glob("*.tmp"))

    # a finished run called again does no more work
    again = train(config, dataset)
    assert again.resumed_from == 6 and again.epochs_run == 6 and again.best_miou == result.best_miou


@pytest.mark.parametrize("architecture", ["Unet", "unetplusplus", "FPN", "DeepLabV3Plus"])
def test_every_architecture_builds_and_runs(architecture):
    torch.manual_seed(0)
    model = build_model(architecture, "resnet18", in_channels=4 + 2, num_classes=6).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 6, 64, 64))
    assert out.shape == (2, 6, 64, 64)


def test_shallow_fpn_keeps_the_input_size_and_unknown_names_are_refused():
    model = build_model("fpn", "resnet18", 6, 6, encoder_depth=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 6, 32, 32)).shape == (1, 6, 32, 32)
    with pytest.raises(ValueError, match="Unet, UnetPlusPlus, FPN, DeepLabV3Plus"):
        build_model("segformer", "resnet18", 6, 6)
    with pytest.raises(ValueError, match="unknown encoder"):
        build_model("unet", "resnet19", 6, 6)


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(dataset, tmp_path, ema_decay):
    # DeepLabV3Plus: its ASPP dropout draws from the global RNG, so the RNG restore matters too;
    # random crops + flips exercise the seeded augmentation across the restart; with ema_decay the
    # weight average is restored too.
    common = dict(architecture="deeplabv3plus", model_kwargs=dict(encoder_depth=3, decoder_channels=32),
                  epochs=4, crop=24, max_steps_per_epoch=3, ema_decay=ema_decay)
    full = train(tiny_config(tmp_path, "full", **common), dataset)

    class Crash(RuntimeError):
        pass

    def crash_after_2(epoch, metrics):
        if epoch == 2:
            raise Crash("simulated crash")

    crashed_config = tiny_config(tmp_path, "crashed", **common)
    with pytest.raises(Crash):
        train(crashed_config, dataset, on_epoch=crash_after_2)
    at_crash = _state(tmp_path / "crashed" / "last.pt")
    assert at_crash["epoch"] == 2

    resumed = train(crashed_config, dataset)
    assert resumed.resumed_from == 2 and resumed.epochs_run == 4
    a, b = _state(full.last_state_path), _state(resumed.last_state_path)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.allclose(a["model"][k].float(), b["model"][k].float(), rtol=0, atol=1e-7) for k in a["model"])
    if ema_decay is not None:
        ea, eb = a["average"]["model"], b["average"]["model"]
        assert a["average"]["updates"] == b["average"]["updates"] == 12
        assert all(torch.allclose(ea[k].float(), eb[k].float(), rtol=0, atol=1e-7) for k in ea)
    assert not all(torch.equal(at_crash["model"][k], b["model"][k]) for k in b["model"])  # it did train on
    strip = ("seconds",)
    assert [{k: v for k, v in h.items() if k not in strip} for h in full.history] == \
           [{k: v for k, v in h.items() if k not in strip} for h in resumed.history]
    assert resumed.best_miou == full.best_miou and resumed.best_epoch == full.best_epoch

    # resuming with another config is refused rather than mixing two runs
    with pytest.raises(ValueError, match="another config.*lr"):
        train(replace(crashed_config, lr=1e-2), dataset)


def test_weight_average_follows_its_formula_and_is_what_best_pt_serves(dataset, tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.BatchNorm2d(1))
    average = WeightAverage(net, decay=0.9)
    expected = net[0].weight.detach().clone()
    for t in range(1, 31):
        with torch.no_grad():
            net[0].weight.add_(1.0)
        net[1].num_batches_tracked += 1
        average.update(net)
        d = min(0.9, (1 + t) / (10 + t))  # warmup: early updates follow the weights closely
        expected = d * expected + (1 - d) * net[0].weight.detach()
    assert torch.allclose(average.model[0].weight, expected)
    lag = float(net[0].weight - average.model[0].weight)
    assert 1 < lag < 0.9 / (1 - 0.9)  # behind the weights, by less than an EMA's steady lag on a unit ramp
    assert int(average.model[1].num_batches_tracked) == 30  # integer buffers are copied, not averaged
    assert not average.model[0].weight.requires_grad

    # In training, val figures and best.pt are the averaged model's; last.pt keeps both for the resume.
    seen = []

    def on_epoch(epoch, metrics):
        best, last = _state(tmp_path / "ema" / "best.pt"), _state(tmp_path / "ema" / "last.pt")
        if best["epoch"] == epoch:
            seen.append(epoch)
            assert all(torch.equal(best["model"][k], last["average"]["model"][k]) for k in best["model"])
            assert not all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])

    train(tiny_config(tmp_path, "ema", ema_decay=0.9, epochs=2, max_steps_per_epoch=3), dataset, on_epoch=on_epoch)
    assert seen and seen[0] == 1
    with pytest.raises(ValueError, match="ema_decay must lie strictly between 0 and 1"):
        TrainConfig(ema_decay=1.0)


def test_early_stopping_stops_when_val_miou_stalls(dataset, tmp_path):
    # no train step at all: the weights never change, so val mIoU never improves after epoch 1
    result = train(tiny_config(tmp_path, "stall", epochs=5, patience=2, max_steps_per_epoch=0), dataset)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
    assert len({h["val_miou"] for h in result.history}) == 1
    assert _state(result.last_state_path)["stopped_early"]
    again = train(tiny_config(tmp_path, "stall", epochs=5, patience=2, max_steps_per_epoch=0), dataset)
    assert again.epochs_run == 3 and again.resumed_from == 3  # a stopped run stays stopped


def test_weights_path_loads_an_encoder_or_a_whole_model(tmp_path):
    torch.manual_seed(1)
    source = build_model("unet", "resnet18", 6, 6, **TINY)
    torch.save(source.encoder.state_dict(), tmp_path / "encoder.pt")
    torch.save(source.state_dict(), tmp_path / "model.pt")
    torch.manual_seed(2)
    fresh = build_model("unet", "resnet18", 6, 6, **TINY)
    assert not torch.equal(fresh.encoder.conv1.weight, source.encoder.conv1.weight)

    enc = build_model("unet", "resnet18", 6, 6, weights_path=tmp_path / "encoder.pt", **TINY)
    assert all(torch.equal(v, source.encoder.state_dict()[k]) for k, v in enc.encoder.state_dict().items())
    assert not torch.equal(enc.segmentation_head[0].weight, source.segmentation_head[0].weight)

    whole = build_model("unet", "resnet18", 6, 6, weights_path=tmp_path / "model.pt", **TINY)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in whole.state_dict().items())

    # an encoder trained on 3 channels (e.g. RGB) is adapted to 6 input channels
    rgb = build_model("unet", "resnet18", 3, 6, **TINY)
    torch.save({"model": rgb.encoder.state_dict()}, tmp_path / "rgb.pt")
    adapted = build_model("unet", "resnet18", 6, 6, weights_path=tmp_path / "rgb.pt", **TINY)
    w3, w6 = rgb.encoder.conv1.weight, adapted.encoder.conv1.weight
    assert w6.shape[1] == 6 and torch.allclose(w6[:, 3:], w3 * 0.5) and torch.allclose(w6[:, :3], w3 * 0.5)

    other = build_model("unet", "resnet34", 6, 6, **TINY)
    torch.save(other.state_dict(), tmp_path / "resnet34.pt")
    with pytest.raises(ValueError, match="does not fit"):
        load_weights(whole, tmp_path / "resnet34.pt")


def test_class_weights_are_inverse_sqrt_frequency_with_mean_one():
    w = class_weights([100, 400, 0, 2500])
    assert w[2] == 0 and torch.isclose(w[[0, 1, 3]].mean(), torch.tensor(1.0))
    assert torch.isclose(w[0] / w[1], torch.tensor(2.0)) and torch.isclose(w[0] / w[3], torch.tensor(5.0))


def test_a_14_tile_dataset_trains_eight_steps_per_epoch_by_default(tmp_path):
    small = write_dataset(tmp_path / "ds14", counts={"train": 14, "val": 2, "test": 1}, per_shard=14)
    config = tiny_config(tmp_path, "steps", epochs=2, batch_size=8)
    result = train(config, small)
    assert [h["train_steps"] for h in result.history] == [8, 8]  # not 14 // 8 = 1
    fixed = train(tiny_config(tmp_path, "fixed", epochs=1, batch_size=8, samples_per_epoch=24), small)
    assert fixed.history[0]["train_steps"] == 3


def test_class_weighting_modes_and_cap():
    counts = [900, 90, 10]
    sqrt = class_weights(counts, "inverse_sqrt", cap=None)
    expected = torch.tensor([0.9, 0.09, 0.01]).rsqrt()
    torch.testing.assert_close(sqrt, expected / expected.mean())
    inverse = class_weights(counts, "inverse", cap=None)
    assert float(inverse[2] / inverse[0]) == pytest.approx(90.0)
    capped = class_weights(counts, "inverse", cap=10.0)
    assert float(capped.max() / capped.min()) == pytest.approx(10.0) and float(capped.mean()) == pytest.approx(1.0)
    assert float(capped[1]) == pytest.approx(float(capped[2]))  # both hit the cap
    with pytest.raises(ValueError, match="class_weighting"):
        TrainConfig(class_weighting="median")
    assert TrainConfig(class_weighting=False).class_weighting == "none"  # older configs keep working


def test_group_norm_trains_on_batches_of_one_and_reloads(dataset, tmp_path):
    config = tiny_config(tmp_path, "gn", epochs=1, batch_size=1, samples_per_epoch=4, norm="group")
    result = train(config, dataset)
    best = _state(result.best_state_path)
    assert best["model_kwargs"]["norm"] == "group"
    net = build_model(best["architecture"], best["encoder"], best["in_channels"], best["num_classes"],
                      **best["model_kwargs"])
    net.load_state_dict(best["model"])  # the same network: GroupNorm keys, no BatchNorm running stats
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in net.modules())
