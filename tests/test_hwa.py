"""aihwkit hardware-aware training (HWA) baseline: real aihwkit tiles, no mocks."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from aihwkit.nn.modules.base import AnalogLayerBase
from aihwkit.simulator.configs import (
    InferenceRPUConfig,
    TorchInferenceRPUConfig,
    WeightModifierType,
)

from analogai_fl import config, hwa, safe_load
from analogai_fl.models import build_model
from analogai_fl.settings import Experiment
from analogai_fl.settings_ablation import HWASettings
from analogai_fl.training import accuracy

EPOCHS = 5


def H(cfg: dict) -> HWASettings:
    return Experiment.from_config(cfg).hwa


@pytest.fixture(scope="module")
def hwa_cfg() -> dict:
    return config.defaults()


@pytest.fixture(scope="module")
def trained(hwa_cfg, digits):
    """One short HWA run: the analog model, its statistics and the digital copy."""
    analog, stats = hwa.train_analog(hwa_cfg["model.name"], H(hwa_cfg), digits, EPOCHS, seed=0)
    plain = build_model(hwa_cfg["model.name"], digits.in_channels, digits.num_classes,
                        digits.image_size)
    digital = hwa.to_digital(analog, plain)
    return analog, stats, digital


def _perfect(analog: torch.nn.Module) -> torch.nn.Module:
    """The analog model with an ideal forward (no noise, no quantisation), same weights."""
    clone = copy.deepcopy(analog)
    ideal = copy.deepcopy(next(clone.analog_tiles()).rpu_config)
    ideal.forward.is_perfect = True
    clone.replace_rpu_config(ideal)
    return clone.eval()


def test_round_trip_keeps_accuracy(trained, digits):
    analog, _, digital = trained
    analog_acc = accuracy(analog, digits.test)  # eval mode: no weight modifier
    digital_acc = accuracy(digital, digits.test)
    assert digital_acc > 0.5  # far above chance (0.1) after EPOCHS epochs
    # realistic analog forward (8-bit DAC/ADC, output noise) vs the clean digital copy
    assert abs(analog_acc - digital_acc) <= 0.03, (analog_acc, digital_acc)
    # ideal analog forward: the very same function as the digital copy
    x = digits.test.tensors[0]
    with torch.no_grad():
        ideal_logits = _perfect(analog)(x)
        digital_logits = digital(x)
    torch.testing.assert_close(ideal_logits, digital_logits, rtol=1e-4, atol=1e-4)
    assert accuracy(_perfect(analog), digits.test) == digital_acc


def test_returns_plain_model_of_build_model_structure(hwa_cfg, digits, trained):
    _, _, digital = trained
    reference = build_model(hwa_cfg["model.name"], digits.in_channels, digits.num_classes,
                            digits.image_size)
    assert type(digital) is type(reference)
    assert [type(m) for m in digital.modules()] == [type(m) for m in reference.modules()]
    ours, theirs = digital.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    assert not any(isinstance(m, AnalogLayerBase) or "aihwkit" in type(m).__module__
                   for m in digital.modules())
    assert not digital.training
    assert all(p.device.type == "cpu" for p in digital.parameters())


def test_training_injects_weight_noise(hwa_cfg, trained, digits, lenet):
    analog, _, _ = trained
    tiles = list(analog.analog_tiles())
    assert len(tiles) == len(list(analog.analog_layers())) == 5
    for tile in tiles:
        assert type(tile.rpu_config) is InferenceRPUConfig  # the default: aihwkit's C++ tile
        assert tile.rpu_config.modifier.type == WeightModifierType.ADD_NORMAL
        assert tile.rpu_config.modifier.std_dev == hwa_cfg["ablation.hwa.modifier_std"]
        assert tile.rpu_config.forward.out_noise == hwa_cfg["ablation.hwa.out_noise"]
    # without output noise and converters, only the weight modifier is random: it acts in
    # training mode, with a fresh draw every mini-batch (aihwkit's C++ tile draws it in
    # post_update_step, which AnalogSGD.step calls after each update), never in eval mode
    quiet = hwa_cfg | {"ablation.hwa.out_noise": 0.0, "ablation.hwa.dac_bits": 0,
                       "ablation.hwa.adc_bits": 0}
    model = hwa.to_analog_trainable(lenet, H(quiet))
    x = digits.test.tensors[0][:32]

    def next_batch() -> torch.Tensor:
        for tile in model.analog_tiles():
            tile.post_update_step()
        model.train()
        return model(x)

    with torch.no_grad():
        model.eval()
        clean = model(x)
        assert torch.equal(model(x), clean)
        first, second = next_batch(), next_batch()
        model.eval()
        assert torch.equal(model(x), clean)
    for noisy in (first, second):
        assert (noisy - clean).abs().max() > 1e-3
    assert (first - second).abs().max() > 1e-3


def test_stats(digits, trained):
    _, stats, _ = trained
    n = len(digits.train)
    assert stats["method"] == "hwa" and stats["tile"] == "cpp"
    assert stats["epochs"] == EPOCHS and stats["train_examples"] == n
    assert stats["sample_gradients"] == n * EPOCHS == stats["forward_passes"]
    assert stats["wall_s"] > 0 and stats["cpu_s"] > 0
    assert 0.5 < stats["train_acc"] <= 1 and 0 < stats["train_loss"] < 2.3


def test_seeded_runs_repeat_and_leave_the_rng_alone(hwa_cfg, digits):
    """The torch tile draws its noise from torch's RNG: a seed repeats a run exactly."""
    hwa_cfg = hwa_cfg | {"ablation.hwa.tile": "torch"}
    small = dataclasses.replace(digits, train=torch.utils.data.TensorDataset(
        *(t[:192] for t in digits.train.tensors)))
    state = torch.random.get_rng_state()
    first, stats1 = hwa.train_hwa(hwa_cfg["model.name"], H(hwa_cfg), small, 1, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    second, stats2 = hwa.train_hwa(hwa_cfg["model.name"], H(hwa_cfg), small, 1, seed=3)
    other, _ = hwa.train_hwa(hwa_cfg["model.name"], H(hwa_cfg), small, 1, seed=4)
    assert stats1["train_loss"] == stats2["train_loss"]
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert any(not torch.equal(v, other.state_dict()[k]) for k, v in first.state_dict().items())
    with pytest.raises(ValueError, match="epoch"):
        hwa.train_hwa(hwa_cfg["model.name"], H(hwa_cfg), small, 0, seed=3)


def test_rejects_cpp_tile_on_gpu_and_unknown_tile(hwa_cfg, lenet):
    with pytest.raises(ValueError, match="cpp"):
        hwa.to_analog_trainable(lenet, H(hwa_cfg | {"ablation.hwa.tile": "cpp"}), "cuda")
    with pytest.raises(config.ConfigError, match="ablation.hwa.tile.*'cpp', 'torch'"):
        config.resolve({"ablation.hwa.tile": "gpu"})


def test_torch_tile_trains_and_converts(hwa_cfg, digits):
    """The pure-torch tile (the one that runs on a GPU): one epoch, the same round trip."""
    cfg = hwa_cfg | {"ablation.hwa.tile": "torch"}
    small = dataclasses.replace(digits, train=torch.utils.data.TensorDataset(
        *(t[:256] for t in digits.train.tensors)))
    analog, stats = hwa.train_analog(cfg["model.name"], H(cfg), small, 1, seed=0)
    assert stats["tile"] == "torch" and stats["sample_gradients"] == 256
    assert all(type(t.rpu_config) is TorchInferenceRPUConfig for t in analog.analog_tiles())
    digital = hwa.to_digital(analog, build_model(cfg["model.name"], digits.in_channels,
                                                 digits.num_classes, digits.image_size))
    x = digits.test.tensors[0]
    with torch.no_grad():
        torch.testing.assert_close(_perfect(analog)(x), digital(x), rtol=1e-4, atol=1e-4)


def test_hwa_trains_a_batchnorm_model_whose_last_batch_has_one_example(hwa_cfg):
    """The HWA baseline shares the clients' batching: no batch of a single example."""
    from torch.utils.data import TensorDataset

    from analogai_fl.data import Splits
    g = torch.Generator().manual_seed(0)
    train = TensorDataset(torch.randn(9, 3, 8, 8, generator=g),
                          torch.randint(0, 10, (9,), generator=g))
    data = Splits(train=train, val=train, test=train, in_channels=3, num_classes=10,
                  image_size=8, mean=(0.0,) * 3, std=(1.0,) * 3)
    cfg = hwa_cfg | {"model.name": "resnet18", "ablation.hwa.batch_size": 4,
                     "ablation.hwa.tile": "torch"}
    _, stats = hwa.train_analog(cfg["model.name"], H(cfg), data, epochs=1, seed=0)
    assert stats["train_examples"] == 9


def test_hwa_divergence_is_a_clear_error(hwa_cfg, digits):
    """aihwkit's bounded tiles keep even a huge learning rate finite; a non-finite input
    (here a corrupted image) is what makes its loss NaN, and it is named at once."""
    import dataclasses

    from torch.utils.data import TensorDataset

    from analogai_fl.training import TrainingDiverged
    x, y = digits.train.tensors
    x = x.clone()
    x[5] = float("nan")
    broken = dataclasses.replace(digits, train=TensorDataset(x, y))
    with pytest.raises(TrainingDiverged, match=r"HWA baseline, epoch 1, step \d+: training loss "
                       r"is nan; try a smaller ablation.hwa.lr \(now 0.05\)"):
        hwa.train_analog(hwa_cfg["model.name"], H(hwa_cfg), broken, epochs=1, seed=0)


def _growing_linear(hwa_settings: HWASettings, steps: int = 200) -> tuple[float, float]:
    """max|W| of an analog Linear layer before and after `steps` AnalogSGD steps whose
    gradient pushes every weight to grow, each at its own rate (loss -sum(s * W x), x > 0,
    fixed signs s per output): what clip and remap let through."""
    from aihwkit.nn import AnalogLinear
    from aihwkit.optim import AnalogSGD
    torch.manual_seed(0)
    layer = AnalogLinear(8, 4, bias=False, rpu_config=hwa.rpu_config(hwa_settings))
    optimizer = AnalogSGD(layer.parameters(), lr=0.01)
    optimizer.regroup_param_groups(layer)
    initial = layer.get_weights(apply_weight_scaling=True)[0].abs().max().item()
    x, signs = torch.rand(16, 8), torch.tensor([1.0, -1.0, 1.0, -1.0])
    for _ in range(steps):
        optimizer.zero_grad()
        (-(layer(x) * signs).sum()).backward()
        optimizer.step()
    return initial, layer.get_weights(apply_weight_scaling=True)[0].abs().max().item()


def test_remap_and_gaussian_clip_let_the_weights_grow_where_a_fixed_clip_caps_them(hwa_cfg):
    """aihwkit's recipe (LAYERWISE_SYMMETRIC remap, LAYER_GAUSSIAN clip) against the old
    arm's fixed clip at 1.0 without remap, which froze every layer's |W| at its initial max."""
    quiet = {"ablation.hwa.modifier_std": 0.0, "ablation.hwa.out_noise": 0.0,
             "ablation.hwa.dac_bits": 0, "ablation.hwa.adc_bits": 0}
    base = hwa_cfg | quiet
    initial, capped = _growing_linear(H(base | {"ablation.hwa.remap": "none",
                                                "ablation.hwa.clip_type": "fixed"}))
    _, recipe = _growing_linear(H(base))  # the defaults: remap layerwise, gaussian clip 2.5
    _, unclipped = _growing_linear(H(base | {"ablation.hwa.clip_type": "none"}))
    assert capped == pytest.approx(initial, rel=1e-3)
    assert recipe > 5 * initial and unclipped > 5 * initial


def test_each_recipe_key_reaches_the_tile_config(hwa_cfg):
    from aihwkit.simulator.configs import WeightClipType, WeightRemapType
    rpu = hwa.rpu_config(H(hwa_cfg))
    assert rpu.remap.type == WeightRemapType.LAYERWISE_SYMMETRIC
    assert rpu.clip.type == WeightClipType.LAYER_GAUSSIAN and rpu.clip.sigma == 2.5
    assert rpu.clip.fixed_value < 0  # a positive one would cap the Gaussian clip too
    rpu = hwa.rpu_config(H(hwa_cfg | {"ablation.hwa.remap": "channelwise",
                                      "ablation.hwa.clip_type": "fixed",
                                      "ablation.hwa.clip": 0.7}))
    assert rpu.remap.type == WeightRemapType.CHANNELWISE_SYMMETRIC
    assert rpu.clip.type == WeightClipType.FIXED_VALUE and rpu.clip.fixed_value == 0.7
    with pytest.raises(config.ConfigError, match="ablation.hwa.clip_type"):
        config.resolve({"ablation.hwa.clip_type": "layer"})


@pytest.mark.parametrize("key, value", [("ablation.hwa.weight_decay", 0.0),
                                        ("ablation.hwa.schedule", "constant"),
                                        ("ablation.hwa.momentum", 0.0)])
def test_weight_decay_schedule_and_momentum_change_the_training(hwa_cfg, digits, key, value):
    """On the seeded torch tile, turning one of the optimiser's settings off gives other
    weights from the same seed (two epochs, so that the cosine schedule lowers the lr)."""
    cfg = hwa_cfg | {"ablation.hwa.tile": "torch"}
    small = dataclasses.replace(digits, train=torch.utils.data.TensorDataset(
        *(t[:128] for t in digits.train.tensors)))
    recipe, _ = hwa.train_hwa(cfg["model.name"], H(cfg), small, 2, seed=1)
    repeat, _ = hwa.train_hwa(cfg["model.name"], H(cfg), small, 2, seed=1)
    other, _ = hwa.train_hwa(cfg["model.name"], H(cfg | {key: value}), small, 2, seed=1)
    weights = [k for k in recipe.state_dict() if k.endswith("weight")]
    assert all(torch.equal(recipe.state_dict()[k], repeat.state_dict()[k]) for k in weights)
    assert any(not torch.equal(recipe.state_dict()[k], other.state_dict()[k]) for k in weights)


def test_the_gaussian_clip_cuts_an_outlier_at_clip_sigma_stds(hwa_cfg):
    from aihwkit.nn import AnalogLinear
    quiet = {"ablation.hwa.modifier_std": 0.0, "ablation.hwa.remap": "none",
             "ablation.hwa.weight_scaling_omega": 0.0}
    layer = AnalogLinear(8, 4, bias=False, rpu_config=hwa.rpu_config(H(hwa_cfg | quiet)))
    weights = torch.linspace(-0.1, 0.1, 32).reshape(4, 8)
    weights[0, 0] = 5.0
    layer.set_weights(weights)
    next(layer.analog_tiles()).post_update_step()  # what AnalogSGD calls after every step
    clipped = layer.get_weights()[0]
    limit = 2.5 * weights.std().item()
    assert clipped[0, 0].item() == pytest.approx(limit, rel=0.05)
    torch.testing.assert_close(clipped.flatten()[1:], weights.flatten()[1:])


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize("remap", ["none", "layerwise"])
def test_an_interrupted_hwa_run_continues_from_its_epoch_checkpoint(hwa_cfg, digits, tmp_path,
                                                                     remap):
    """On the seeded torch tile: 3 epochs stopped after the first (the checkpoint of
    epoch 1 written) and continued equal 3 uninterrupted epochs, with momentum, weight
    decay, the cosine schedule and both RNGs carried over: exactly without remapping. With
    remapping aihwkit 1.2's torch tile departs slightly after a reload (its remap replaces
    the tile's weight tensor and leaves the analog context on the old one, which a
    state_dict reload re-binds; measured: weights within 1e-3 after two more epochs), so
    there the run continues from the same state but not bit for bit."""
    cfg = hwa_cfg | {"ablation.hwa.tile": "torch", "ablation.hwa.remap": remap}
    small = dataclasses.replace(digits, train=torch.utils.data.TensorDataset(
        *(t[:128] for t in digits.train.tensors)))
    name = cfg["model.name"]
    straight, stats = hwa.train_hwa(name, H(cfg), small, 3, seed=2, validate=True)

    def stop(epoch, _analog):
        if epoch == 1:
            raise _Interrupted

    checkpoint = tmp_path / "hwa_epoch.pt"
    with pytest.raises(_Interrupted):
        hwa.train_analog(name, H(cfg), small, 3, seed=2, checkpoint=checkpoint,
                         validate=True, on_epoch=stop)
    assert safe_load.load(checkpoint)["epoch"] == 1
    resumed, resumed_stats = hwa.train_hwa(name, H(cfg), small, 3, seed=2,
                                           checkpoint=checkpoint, validate=True)
    assert resumed_stats["resumed_after_epoch"] == 1
    assert len(stats["val_curve"]) == len(resumed_stats["val_curve"]) == 3
    assert resumed_stats["val_curve"][0] == stats["val_curve"][0]
    exact = remap == "none"
    for key, value in straight.state_dict().items():
        if exact:
            assert torch.equal(value, resumed.state_dict()[key]), key
        else:
            assert torch.allclose(value, resumed.state_dict()[key], atol=1e-3), key
    if exact:
        assert resumed_stats["val_curve"] == stats["val_curve"]
        assert resumed_stats["train_loss"] == stats["train_loss"]
    with pytest.raises(ValueError, match="3 epochs done, more than the 2"):
        hwa.train_analog(name, H(cfg), small, 2, seed=2, checkpoint=checkpoint)


def test_a_damaged_hwa_checkpoint_is_named(hwa_cfg, digits, tmp_path):
    checkpoint = tmp_path / "hwa_epoch.pt"
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"HWA checkpoint {checkpoint}: not readable"):
        hwa.train_analog(hwa_cfg["model.name"], H(hwa_cfg), digits, 1, seed=0,
                         checkpoint=checkpoint)


def test_an_hwa_checkpoint_of_more_epochs_trains_again_from_the_start_once_deleted(
        hwa_cfg, digits, tmp_path):
    """A checkpoint of 2 epochs is refused by a 1-epoch run; deleting it, as the message
    says, trains that run from its start: the model a run without a checkpoint trains."""
    cfg = hwa_cfg | {"ablation.hwa.tile": "torch"}
    small = dataclasses.replace(digits, train=torch.utils.data.TensorDataset(
        *(t[:64] for t in digits.train.tensors)))
    checkpoint = tmp_path / "hwa_epoch.pt"
    hwa.train_analog(cfg["model.name"], H(cfg), small, 2, seed=1, checkpoint=checkpoint)
    with pytest.raises(config.ConfigError, match=f"HWA checkpoint {checkpoint}: 2 epochs done, "
                                                 "more than the 1 this arm trains; delete it"):
        hwa.train_analog(cfg["model.name"], H(cfg), small, 1, seed=1, checkpoint=checkpoint)
    checkpoint.unlink()  # the advice, followed
    again, stats = hwa.train_hwa(cfg["model.name"], H(cfg), small, 1, seed=1,
                                 checkpoint=checkpoint)
    fresh, _ = hwa.train_hwa(cfg["model.name"], H(cfg), small, 1, seed=1)
    assert stats["resumed_after_epoch"] == 0
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_a_diverging_hwa_run_trains_with_a_smaller_lr_as_advised(hwa_cfg, digits):
    """aihwkit's recipe at ablation.hwa.lr 1e6 turns the loss nan; the default lr, smaller
    as the message says, trains the same data to a finite loss."""
    from analogai_fl.training import TrainingDiverged

    small = dataclasses.replace(digits, train=torch.utils.data.TensorDataset(
        *(t[:256] for t in digits.train.tensors)))

    def train(lr):
        cfg = hwa_cfg | {"ablation.hwa.lr": lr}
        return hwa.train_analog(cfg["model.name"], H(cfg), small, 1, seed=0)

    with pytest.raises(TrainingDiverged, match=r"try a smaller ablation.hwa.lr \(now 1e\+06\)"):
        train(1e6)
    _, stats = train(config.defaults()["ablation.hwa.lr"])  # the advice, followed
    assert math.isfinite(stats["train_loss"]) and stats["epochs"] == 1
