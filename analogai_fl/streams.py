"""Every random stream of the project, derived in one place from the run's seed.

A stream is named by the run's `seed` (the `seed` key, 0 <= seed < 2^32), its purpose and,
where they apply, indices such as the round and the noise level (client):

    seed_for(seed, "shuffle", server_round, noise_index)   a client's batch order
    generator(seed, "weight-noise", server_round, noise_index, device=...)

The derivation is numpy's `SeedSequence` (entropy = [seed, purpose code, number of indices,
*indices]), whose outputs are statistically independent for distinct inputs (O'Neill's PCG
seeding; numpy's documentation of `SeedSequence`), unlike seeding several generators with one
integer or with `seed + 1`: with the same integer, torch's CPU generators for shuffling,
weight noise and augmentation would draw the same numbers. A purpose's code is the first 4
bytes of the SHA-256 of its name, so codes do not depend on the order in which purposes are
listed.

Purposes (`PURPOSES`; any other name is refused, so that a typo cannot alias a stream):

    init               the initial weights of the global model and of the HWA arm (the same
                       draw for both, so that every arm starts from the same model)
    shuffle            the batch order of a training loop
    weight-noise       the training-time weight noise of the main noisy pass
    feedback           the extra noisy passes of the feedback loops (FL)
    activation-noise   the multiplicative activation noise (`recovery.noise_k.act_inject`)
    attack             FGSM/PGD random starts
    augmentation       random crops and flips (torch's global generator, forked)
    client-evaluation  a client's accuracy at its own sigma after training
    hwa-noise          the noise aihwkit's torch tile draws while HWA trains
    evaluation         the analog evaluation of the global model after a round
    programming        programming noise of one Monte-Carlo repeat
    drift              drift (and its noise) of one repeat at one drift time
    read               per-read noise (output noise, n_w) of the torch tile
    input-ranges       which cached inputs aihwkit's input-range calibration keeps
    sigma-draw         the sigma of each batch with `training.sigma_levels`
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

PURPOSES = ("init", "shuffle", "weight-noise", "feedback", "activation-noise", "attack",
            "augmentation", "client-evaluation", "hwa-noise", "evaluation", "programming",
            "drift", "read", "input-ranges", "sigma-draw")


def _code(purpose: str) -> int:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown random stream purpose {purpose!r}; known: "
                         f"{', '.join(PURPOSES)}")
    return int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:4], "little")


def seed_for(seed: int, purpose: str, *indices: int) -> int:
    """The seed (0 <= value < 2^63, as `torch.manual_seed` takes it) of the stream of
    `purpose` for `indices` (e.g. round, noise level; repeat, drift-time index) under the
    run's `seed`. Raises ValueError for an unknown purpose or a negative seed or index."""
    if seed < 0 or any(i < 0 for i in indices):
        raise ValueError(f"stream seeds need non-negative integers, got seed {seed} and "
                         f"indices {indices}")
    # the number of indices goes in too: SeedSequence pads its entropy with zero words, so
    # (..., 1) and (..., 1, 0) would otherwise be the same stream
    entropy = [seed, _code(purpose), len(indices), *indices]
    state = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
    return (int(state[0]) | int(state[1]) << 32) & (2**63 - 1)


def generator(seed: int, purpose: str, *indices: int,
              device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on `device` seeded with `seed_for(seed, purpose, *indices)`."""
    return torch.Generator(device=device).manual_seed(seed_for(seed, purpose, *indices))
