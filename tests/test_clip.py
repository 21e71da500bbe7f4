"""The Gaussian clip (`analogai_fl.clip`): once before programming (`inference.clip_sigma`),
the layer statistics infer prints, and the ablation's clipped arm and evaluation."""

import dataclasses

import pytest
import torch
from torch import nn

from analogai_fl.clip import clipped_copy, gaussian_clip_, layer_statistics
from analogai_fl.models import DataShape, build_model, deployed_model


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("lenet", 1, 10, 32)
    with torch.no_grad():  # heavy tails, as training leaves them
        for p in model.parameters():
            p.mul_(1 + 4 * (torch.rand_like(p) > 0.97))
    return model


def test_the_post_hoc_clip_moves_only_the_weights_beyond_k_std_to_k_std():
    """Each Conv/Linear weight beyond k std of its layer becomes +-k std (sign kept), every
    other weight, every bias and buffer stays as it was, and the original model is left
    alone."""
    model, k = _model(), 2.0
    before = {n: t.clone() for n, t in model.state_dict().items()}
    clipped = clipped_copy(model, k)
    assert clipped is not model
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items())
    layers = {f"{name}.weight" for name, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert len(layers) == 5
    changed = 0
    for name, value in clipped.state_dict().items():
        original = before[name]
        if name not in layers:
            assert torch.equal(value, original), name
            continue
        bound = k * original.std()
        outside = original.abs() > bound
        assert torch.equal(value[~outside], original[~outside]), name
        assert torch.allclose(value[outside], torch.sign(original[outside]) * bound), name
        changed += int(outside.sum())
    assert changed > 0
    assert clipped_copy(model, 0.0) is model  # 0: no clip, no copy


def test_a_deployed_model_is_clipped_once_after_its_quantisation():
    """deployed_model(clip_sigma=k): the model as it goes onto the chip (QAT's quantised
    weights with weight_bits), then clipped once."""
    state, shape = _model().state_dict(), DataShape(in_channels=1, num_classes=10,
                                                    image_size=32)
    for bits in (0, 4):
        clipped = deployed_model("lenet", shape, state, weight_bits=bits, clip_sigma=2.5)
        expected = clipped_copy(deployed_model("lenet", shape, state, weight_bits=bits), 2.5)
        assert all(torch.equal(a, b) for a, b in zip(
            clipped.state_dict().values(), expected.state_dict().values(), strict=True))
    assert not torch.equal(clipped.state_dict()["0.weight"],
                           deployed_model("lenet", shape, state, 4).state_dict()["0.weight"])


def test_layer_statistics_by_hand():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0, 1.0, 5.0]]))
    (stats,) = layer_statistics(nn.Sequential(layer), k=1.5)
    rms = (28 / 4) ** 0.5  # sqrt(mean(1, 1, 1, 25))
    assert stats.name == "0" and stats.kind == "Linear" and stats.size == 4
    assert stats.peak_to_rms == pytest.approx(5 / rms)
    std = torch.tensor([1.0, -1.0, 1.0, 5.0]).std().item()  # 2.83: only 5 is beyond 1.5 std
    assert 5 > 1.5 * std > 1 and stats.beyond == pytest.approx(0.25)
    clipped = gaussian_clip_(nn.Sequential(layer), 1.5)
    assert layer_statistics(clipped, k=1.5)[0].peak_to_rms < stats.peak_to_rms


def test_infer_export_and_ablate_program_the_clipped_model(run, digits, trained):
    """inference.clip_sigma reaches the model that infer and export evaluate and convert
    (`cli_checkpoints.load_model`), and the ablation's evaluation: evaluating with the key
    equals evaluating the model clipped beforehand without it."""
    from analogai_fl.ablation import evaluate
    from analogai_fl.cli_checkpoints import load_model
    from analogai_fl.settings import load

    model = _model()
    path = run.path / "model.pt"
    torch.save(model.state_dict(), path)
    on = load({"inference.clip_sigma": 2.5})
    off = load({})
    loaded = load_model(path, on, digits)
    expected = clipped_copy(load_model(path, off, digits), 2.5)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                 expected.state_dict().values(), strict=True))
    quick = {"inference.drift_times": [86400.0], "inference.repeats": 1,
             "inference.n_w_sweep": [0.0], "ablation.n_w_columns": [0.0],
             "ablation.validation": False}
    tailed = _model()  # the trained model with heavy tails added
    tailed.load_state_dict({n: t * (1 + 2 * (torch.rand_like(t) > 0.98))
                            if n.endswith("weight") else t
                            for n, t in trained.state_dict().items()})

    def seeded(result):  # the `standard` protocol's C++ tile draws unseeded read noise
        return result["clean"], result["protocols"]["realistic"]

    with_key = seeded(evaluate(tailed, digits, load(quick | {"inference.clip_sigma": 2.5})))
    beforehand = seeded(evaluate(clipped_copy(tailed, 2.5), digits, load(quick)))
    assert with_key == beforehand != seeded(evaluate(tailed, digits, load(quick)))
    assert dataclasses.asdict(on.evaluation)["clip_sigma"] == 2.5
