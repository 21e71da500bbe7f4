"""What travels between the ServerApp, the strategies and the ClientApps.

- The resolved experiment config rides in every train message's ConfigRecord under
  `CONFIG_KEY`, as JSON bytes (Flower logs bytes as `<bytes>` instead of dumping the config).
- With fusion injection off (`training.use_fl=false`) the K models travel packed in one
  ArrayRecord under the keys `"{k}/{name}"` (`join_models` / `split_models`), so that
  checkpoints and the server-side evaluator see all of them.
- A client whose training diverged replies with a ConfigRecord `DIVERGED` holding the
  reason (and no model), so that the server can name the round, the client and its sigma.
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import ArrayRecord

CONFIG_KEY = "analogai-config"
DIVERGED = "diverged"
TRY_KEY = "try"  # in a train config: 1 = first send of a noise level, 2 = its first resend


def join_models(models: Sequence[ArrayRecord], fused: bool) -> ArrayRecord:
    """What travels between rounds: the global model, or (FI off) the K models packed
    with keys prefixed by the noise index."""
    if fused:
        return models[0]
    return ArrayRecord({f"{k}/{name}": array for k, model in enumerate(models)
                        for name, array in model.items()})


def split_models(arrays: ArrayRecord, count: int, fused: bool) -> list[ArrayRecord]:
    """Inverse of `join_models`: [global model], or the K models."""
    if fused:
        return [arrays]
    models = [ArrayRecord() for _ in range(count)]
    for key, array in arrays.items():
        index, name = key.split("/", 1)
        models[int(index)][name] = array
    return models
