"""Every random stream is derived from (seed, purpose, indices) in one place, independently."""

from __future__ import annotations

import itertools

import pytest
import torch

from analogai_fl import streams, training
from analogai_fl.streams import PURPOSES, generator, seed_for


def test_each_purpose_round_and_client_gets_its_own_reproducible_seed():
    keys = [(seed, purpose, *indices) for seed, purpose, indices in itertools.product(
        (0, 1, 2024), PURPOSES, [(), (0,), (1,), (0, 1), (1, 0), (2, 3)])]
    seeds = [seed_for(*key) for key in keys]
    assert len(set(seeds)) == len(keys)  # no two streams share a seed
    assert seeds == [seed_for(*key) for key in keys]  # and each is reproducible
    assert all(0 <= s < 2**63 for s in seeds)
    # not seed + offset: neighbouring run seeds do not shift into each other's streams
    assert seed_for(1, "evaluation", 2) != seed_for(2, "evaluation", 1)


def test_streams_of_one_integer_seed_are_not_the_same_draws():
    # what seeding several torch generators with one integer did: identical draws
    same = [torch.Generator().manual_seed(7) for _ in range(2)]
    assert torch.equal(torch.rand(5, generator=same[0]), torch.rand(5, generator=same[1]))
    shuffle, noise = generator(7, "shuffle", 1, 0), generator(7, "weight-noise", 1, 0)
    assert not torch.equal(torch.rand(5, generator=shuffle), torch.rand(5, generator=noise))


def test_unknown_purposes_and_negative_seeds_are_refused():
    with pytest.raises(ValueError, match="unknown random stream purpose 'weight_noise'"):
        seed_for(0, "weight_noise")
    with pytest.raises(ValueError, match="non-negative"):
        seed_for(-1, "shuffle")
    with pytest.raises(ValueError, match="non-negative"):
        seed_for(0, "drift", 0, -1)


def test_local_training_draws_each_stream_from_its_own_seed(monkeypatch, digits):
    drawn: list[tuple] = []
    real = streams.generator

    def recording(seed, purpose, *indices, device="cpu"):
        drawn.append((purpose, indices))
        return real(seed, purpose, *indices, device=device)

    seeds_used: list[tuple] = []
    real_seed_for = streams.seed_for

    def recording_seed_for(seed, purpose, *indices):
        seeds_used.append((purpose, indices))
        return real_seed_for(seed, purpose, *indices)

    monkeypatch.setattr(training, "generator", recording)
    monkeypatch.setattr(training, "seed_for", recording_seed_for)
    from helpers import experiment

    setting = experiment().local_training(2, 0.0)  # feedback loops on by default
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 10))
    small = torch.utils.data.Subset(digits.train, range(64))
    training.train_local(model, small, setting, 2024, server_round=3, noise_index=2)
    purposes = {p for p, _ in drawn} | {p for p, _ in seeds_used}
    assert {"weight-noise", "feedback", "shuffle", "augmentation", "activation-noise",
            "attack"} <= purposes
    assert {i for _, i in drawn + seeds_used} == {(3, 2)}  # round and client in every stream
