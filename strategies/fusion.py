"""Weighted averaging of client models: MSNAT's fusion, and how every strategy of the project
aggregates state that is not a trainable parameter (BatchNorm running statistics, counters)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord

BN_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def fuse(models: Sequence[ArrayRecord], weights: Sequence[float], sigmas: Sequence[float],
         bn_buffers: str = "average") -> ArrayRecord:
    """Weighted average of the models, key by key.

    BatchNorm running statistics follow `bn_buffers`: "average" averages them like weights;
    "lowest_sigma" takes those of the least noisy client. Integer buffers (batch counters)
    take the maximum, since averaging a count has no meaning. Raises ValueError for weights
    that do not sum to a positive number.
    """
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"fusion weights must sum to a positive number, got {list(weights)}")
    factors = [w / total for w in weights]
    lowest = int(np.argmin(sigmas))
    fused = ArrayRecord()
    for name in models[0]:
        arrays = [m[name].numpy() for m in models]
        if np.issubdtype(arrays[0].dtype, np.integer):
            value = np.max(arrays, axis=0)
        elif bn_buffers == "lowest_sigma" and name.endswith(BN_BUFFER_SUFFIXES):
            value = arrays[lowest]
        else:
            value = sum(f * a for f, a in zip(factors, arrays, strict=True))
        fused[name] = Array(np.asarray(value, dtype=arrays[0].dtype))
    return fused
