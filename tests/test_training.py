import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import NAMES, build, local_training
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from analogai_fl import config
from analogai_fl.chip_noise import ChipNoise
from analogai_fl.training import (
    Feedback,
    LocalTraining,
    ShuffledBatches,
    TrainingDiverged,
    accuracy,
    feedback_logits,
    make_optimizer,
    msnat_loss,
    proximal_term,
    train_local,
    training_loader,
)


def setting(**changes) -> LocalTraining:
    base = dict(sigma=0.0, noise_c=1.0, epochs=1, batch_size=32, lr=1e-2, optimizer="adam",
                momentum=0.9, weight_decay=0.0, feedback=None, proximal_mu=0.0)
    return LocalTraining(**(base | changes))


def test_feedback_logits_by_hand():
    z0 = torch.tensor([[1.0, 2.0]])
    extra = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 4.0]])]
    # z = z0 - 0.5 * (1*[2, 0] + 0.1*[0, 4]) = [1 - 1, 2 - 0.2]
    assert torch.allclose(feedback_logits(z0, extra, [1.0, 0.1], 0.5), torch.tensor([[0.0, 1.8]]))


def test_msnat_loss_by_hand():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([1])
    # sigma 0 and zero offsets: z0 = z1 = z2 = [1, 2]; z = [1, 2] * (1 - 0.5*(0.5 + 0.5))
    # = [0.5, 1]; / T = 0.5 -> [1, 2]; CE(class 1) = log(1 + e^-1).
    fb = Feedback(offsets=[0.0, 0.0], weights=[0.5, 0.5], beta=0.5, temperature=0.5)
    loss, z0 = msnat_loss(model, x, y, setting(feedback=fb))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    assert torch.allclose(z0, torch.tensor([[1.0, 2.0]]))
    plain, _ = msnat_loss(model, x, y, setting())
    assert plain.item() == pytest.approx(F.cross_entropy(torch.tensor([[1.0, 2.0]]), y).item())


def test_feedback_passes_use_their_own_sigma():
    torch.manual_seed(0)
    model = nn.Linear(4, 3).train()
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    fb = Feedback(offsets=[0.5], weights=[1.0], beta=1.0, temperature=1.0)
    gen = torch.Generator().manual_seed(1)
    loss_fb, _ = msnat_loss(model, x, y, setting(sigma=0.0, feedback=fb), gen)
    # at sigma 0 the main pass is clean but the offset pass is noisy: z != z0 - z0
    assert loss_fb.item() != pytest.approx(F.cross_entropy(torch.zeros(16, 3), y).item())


def test_proximal_term_by_hand():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.copy_(torch.tensor([0.5]))
    anchor = [torch.zeros(1, 2), torch.zeros(1)]
    # 0.1/2 * (1 + 4 + 0.25)
    assert proximal_term(model, anchor, 0.1).item() == pytest.approx(0.2625)


def test_proximal_term_pulls_towards_the_received_model(digits, lenet):
    start = [p.detach().clone() for p in lenet.parameters()]

    def drift(mu: float) -> float:
        model = copy.deepcopy(lenet)
        train_local(model, digits.train, setting(sigma=0.1, lr=1e-2, proximal_mu=mu,
                                                 optimizer="sgd"), seed=0)
        return sum(((p - s) ** 2).sum().item() for p, s in zip(model.parameters(), start))

    assert drift(100.0) < 0.5 * drift(0.0)


def test_local_training_learns_under_noise(digits, lenet):
    before = accuracy(lenet, digits.val)
    fb = Feedback(offsets=[0.05], weights=[1.0], beta=0.001, temperature=1.0)
    metrics = train_local(lenet, digits.train, setting(sigma=0.1, epochs=2, feedback=fb,
                                                       proximal_mu=0.01), seed=0)
    assert metrics["num-examples"] == len(digits.train)
    assert accuracy(lenet, digits.val) > max(0.6, before + 0.3)


# --- any split size trains; divergence stops with a clear error -------------------------------

@pytest.mark.parametrize("size,batch", [(1257, 8), (65, 64), (2, 64), (1, 64), (64, 64),
                                        (129, 64), (7, 1)])
def test_batches_cover_every_example_once_and_never_leave_one_alone(size, batch):
    sampler = ShuffledBatches(size, batch, torch.Generator().manual_seed(3))
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b) == list(range(size))
    assert all(len(b) >= min(2, size) for b in batches) or batch == 1
    assert all(len(b) <= batch + 1 for b in batches)
    # the loader draws what DataLoader(shuffle=True, generator=seeded) drew before
    plain = DataLoader(range(size), batch_size=batch, shuffle=True,
                       generator=torch.Generator().manual_seed(3))
    ours = training_loader(range(size), batch, seed=3)
    assert torch.cat(list(ours)).tolist() == torch.cat(list(plain)).tolist()


def bn_data(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g),
                         torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize("n,batch", [(65, 64), (17, 8), (2, 64)])
def test_a_batchnorm_model_trains_on_any_split_size(n, batch):
    """ResNet-18 at 8x8 has 1x1 feature maps in its last stage: a last batch of a single
    example failed there ("Expected more than 1 value per channel") after a whole epoch."""
    from analogai_fl.models import build_model
    torch.manual_seed(0)
    model = build_model("resnet18", 3, 10, 8)
    metrics = train_local(model, bn_data(n), setting(batch_size=batch), seed=0)
    assert metrics["num-examples"] == n and math.isfinite(metrics["train_loss"])


def test_a_diverging_client_stops_at_the_first_non_finite_loss(digits):
    from analogai_fl.models import build_model
    torch.manual_seed(0)
    model = build_model("lenet", 1, 10, 32)
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step \d+: training loss is nan; try "
                       r"a smaller training.lr \(now 1000\)"):
        train_local(model, digits.train, setting(lr=1000.0, optimizer="sgd"), seed=0)


def test_a_diverging_client_trains_with_a_smaller_lr_as_advised(digits):
    """The run that stops at lr 1000 trains to a finite loss with a smaller training.lr
    (the default), as the message says."""
    from analogai_fl.models import build_model
    from analogai_fl.schema import SCHEMA

    data = TensorDataset(*(t[:256] for t in digits.train.tensors))

    def train(lr):
        torch.manual_seed(0)
        model = build_model("lenet", 1, 10, 32)
        return train_local(model, data, setting(lr=lr, optimizer="sgd"), seed=0)

    with pytest.raises(TrainingDiverged, match=r"try a smaller training.lr \(now 1000\)$"):
        train(1000.0)
    metrics = train(SCHEMA["training.lr"].default)  # the advice, followed
    assert math.isfinite(metrics["train_loss"]) and metrics["num-examples"] == 256


def test_training_loader_is_seeded():
    data = bn_data(10)
    first = [y.tolist() for _, y in training_loader(data, 4, seed=1)]
    assert first == [y.tolist() for _, y in training_loader(data, 4, seed=1)]
    assert [len(y) for y in first] == [4, 4, 2]


@pytest.mark.parametrize("name", NAMES)
def test_msnat_step_trains_every_parameter_and_batchnorm_statistics(name):
    model = build(name).train()
    setting = local_training(config.defaults() | {"training.use_neg": True}, 0.1,
                                        0.0)
    assert setting.feedback is not None and setting.sigma > 0
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    norms = {n: (m.running_mean.clone(), m.running_var.clone())
             for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    optimizer = make_optimizer(model, setting)
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    loss, z0 = msnat_loss(model, x, y, setting, torch.Generator().manual_seed(0))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and z0.shape == (4, 10)
    for n, p in model.named_parameters():
        assert not torch.equal(p, params[n]), f"{n} did not change"
    for n, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            mean, var = norms[n]
            assert not torch.equal(m.running_mean, mean) and not torch.equal(m.running_var, var)
            assert m.num_batches_tracked.item() > 0
    assert (len(norms) > 0) == (name in {"vgg8", "resnet18", "mobilenetv2"})


# --- training.noise_model=analog: the chip's forward in the training loop ----------------------

QUIET_CHIP = ChipNoise(out_noise=0.0, dac_bits=0, adc_bits=0, out_bound=0.0, columnwise=False,
                       bound_management=True)


def trained_weights(digits, **changes) -> torch.Tensor:
    torch.manual_seed(0)
    model = build("lenet")
    small = torch.utils.data.Subset(digits.train, range(128))
    train_local(model, small, setting(**changes), seed=5)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_analog_with_every_noise_source_off_is_digital_training(digits):
    # SGD: the chip's scaling by max|W| and max|x| and back is exact up to float rounding,
    # which Adam's normalised steps would amplify to ~1e-5 in a few steps
    digital = trained_weights(digits, optimizer="sgd")
    quiet = trained_weights(digits, chip=QUIET_CHIP, optimizer="sgd")
    assert torch.allclose(quiet, digital, atol=1e-6)
    assert not torch.equal(digital, trained_weights(digits, optimizer="sgd", sigma=0.05))


@pytest.mark.parametrize("source", [
    {"sigma": 0.05}, {"chip": dataclasses.replace(QUIET_CHIP, out_noise=0.04)},
    {"chip": dataclasses.replace(QUIET_CHIP, dac_bits=6)},
    {"chip": dataclasses.replace(QUIET_CHIP, adc_bits=6, out_bound=12.0)},
    {"chip": dataclasses.replace(QUIET_CHIP, out_bound=0.5, bound_management=False)},
    {"clip_sigma": 1.5},
], ids=["modifier", "out_noise", "dac", "adc", "out_bound", "clip"])
def test_each_source_of_the_chip_changes_the_training(digits, source):
    quiet = trained_weights(digits, chip=QUIET_CHIP)
    changed = trained_weights(digits, **({"chip": QUIET_CHIP} | source))
    assert not torch.allclose(changed, quiet, atol=1e-4)


def test_sigma_levels_draw_each_batchs_sigma_from_the_list(digits):
    """training.sigma_levels: one level is that level's training; two levels train
    differently from either alone, and the draws are seeded (the same run twice)."""
    assert torch.equal(trained_weights(digits, sigma=0.0, sigma_levels=(0.1,)),
                       trained_weights(digits, sigma=0.1))
    both = trained_weights(digits, sigma_levels=(0.0, 0.1))
    assert torch.equal(both, trained_weights(digits, sigma_levels=(0.0, 0.1)))
    for alone in (0.0, 0.1):
        assert not torch.allclose(both, trained_weights(digits, sigma=alone), atol=1e-4)


@pytest.mark.parametrize("noise", [{"chip": QUIET_CHIP}, {"sigma": 0.1}],
                         ids=["chip", "weight_noise"])
def test_the_gaussian_clip_bounds_every_layer_after_each_step(digits, noise):
    """training.clip_sigma clips with either noise model (the chip's forward, weight noise)."""
    torch.manual_seed(0)
    model = build("lenet")
    train_local(model, torch.utils.data.Subset(digits.train, range(128)),
                setting(clip_sigma=1.5, **noise), seed=5)
    for layer in (model[0], model[3], model[7], model[9], model[11]):
        w = layer.weight.detach()
        assert w.abs().max() <= 1.5 * w.std() * 1.05  # clipped at the last step, then moved


def test_a_clients_noisy_accuracy_uses_its_noise_model(digits, trained):
    chip = dataclasses.replace(QUIET_CHIP, out_noise=3.0)
    clean = accuracy(trained, digits.val)
    assert accuracy(trained, digits.val, chip=chip) == clean  # sigma 0: a clean pass
    noisy = accuracy(trained, digits.val, sigma=0.05, generator=torch.Generator().manual_seed(0),
                     chip=chip)
    assert noisy < clean - 0.05  # output noise of 3 full-scale products hurts


def test_the_cosine_schedule_is_a_function_of_the_round_alone():
    """training.schedule: constant keeps the lr; cosine gives round r of R
    lr * (1 + cos(pi (r - 1) / R)) / 2, hand-computed here for R = 4, as torch's
    CosineAnnealingLR(T_max=R) stepped once per round; Experiment.local_training applies
    it per round (what a client of a resumed run gets for its round number)."""
    from analogai_fl.settings import load
    from analogai_fl.training import scheduled_lr

    assert [scheduled_lr(0.01, "constant", r, 4) for r in (1, 4)] == [0.01, 0.01]
    expected = [0.01, 0.01 * (1 + 2 ** -0.5) / 2, 0.005, 0.01 * (1 - 2 ** -0.5) / 2]
    assert [scheduled_lr(0.01, "cosine", r, 4) for r in range(1, 5)] == pytest.approx(expected)
    torch_lrs = []
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    for _ in range(4):
        torch_lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert torch_lrs == pytest.approx(expected)
    exp = load({"training.schedule": "cosine", "training.lr": 0.01, "training.rounds": 4})
    assert [exp.local_training(0, 0.0, r).lr for r in range(1, 5)] == pytest.approx(expected)
    assert exp.training.lr == 0.01  # the setting itself keeps the configured lr
    for bad in ((0.01, "cosine", 0, 4), (0.01, "cosine", 5, 4), (0.01, "step", 1, 4)):
        with pytest.raises(ValueError):
            scheduled_lr(*bad)
