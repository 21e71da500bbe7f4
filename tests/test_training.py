import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analogai_fl.training import (Feedback, LocalTraining, accuracy, feedback_logits,
                                  msnat_loss, proximal_term, train_local)


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
