"""Quantisation for QAT (`analogai_fl.quantization`): per-channel weight grids with a
straight-through gradient. Where QAT reaches training and deployment: test_recovery.py."""

import pytest
import torch

from analogai_fl.quantization import quantize_per_channel


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_qat_weights_take_at_most_2_to_the_b_values_per_channel(bits):
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3, requires_grad=True)
    q = quantize_per_channel(w, bits)
    for channel in q.detach():
        assert len(torch.unique(channel)) <= 2**bits
    assert len(torch.unique(q.detach())) > 2**bits  # channels have their own grids
    assert (q - w).abs().max() > 0
    q.sum().backward()  # straight-through: d q / d w = 1
    assert torch.equal(w.grad, torch.ones_like(w))
