"""`output.tensorboard=true`: a run's scalars as TensorBoard event files in `<run>/tensorboard/`.

Written with torch's own `torch.utils.tensorboard.SummaryWriter` (which needs the
`tensorboard` package: the optional extra `pip install -e ".[tensorboard]"`). The global step
is the round. Per evaluated round: `accuracy/clean` and `accuracy/validation` (test and
validation accuracy of the global model, percent) and, where the analog evaluation ran,
`accuracy/chip_<drift time>` (mean over the Monte-Carlo repeats, percent) with
`accuracy_std/chip_<drift time>` (their std, points). Per round and noise level `sigma_<s>`:
`client_loss/…` (training cross-entropy, nats), `client_accuracy/…` (noisy training
accuracy, percent) and `client_validation/…` (validation accuracy under its own noise,
percent). Once, at round 0: the resolved config as text (`config`).

A resumed run opens the same folder with `purge_step` = the first round it trains again, so
TensorBoard hides what the interrupted process wrote after its last checkpoint and the stream
continues without repeated rounds.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError

TENSORBOARD_DIR = "tensorboard"


def check_installed() -> None:
    """ConfigError naming the key when `output.tensorboard` is on without the package."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("key 'output.tensorboard' = true needs the 'tensorboard' package, "
                          "which is not installed: pip install -e \".[tensorboard]\" (or "
                          "set output.tensorboard=false)")


class TensorBoardLog:
    """The event stream of one run folder (`run_path`/tensorboard), from round `first_round`
    on (0 for a new run; the checkpoint's round for a resumed one)."""

    def __init__(self, run_path: Path, first_round: int, config_yaml: str) -> None:
        check_installed()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_path) / TENSORBOARD_DIR),
                                    purge_step=first_round + 1 if first_round > 0 else None)
        if first_round == 0:
            self.writer.add_text("config", "```yaml\n" + config_yaml + "\n```", 0)

    def evaluated(self, record: Mapping[str, Any]) -> None:
        """One metrics.jsonl record (its `round`, `clean_acc`, `val_acc`, `pcm`)."""
        step = record["round"]
        self.writer.add_scalar("accuracy/clean", 100 * record["clean_acc"], step)
        self.writer.add_scalar("accuracy/validation", 100 * record["val_acc"], step)
        for label, entry in record.get("pcm", {}).items():
            self.writer.add_scalar(f"accuracy/chip_{label}", 100 * entry["mean"], step)
            self.writer.add_scalar(f"accuracy_std/chip_{label}", 100 * entry.get("std", 0.0),
                                   step)
        self.writer.flush()

    def clients(self, server_round: int, replies: Sequence[Mapping[str, Any]]) -> None:
        """One round's client replies (clients.jsonl's fields)."""
        for reply in replies:
            name = f"sigma_{reply['sigma']:g}"
            self.writer.add_scalar(f"client_loss/{name}", reply["train_loss"], server_round)
            self.writer.add_scalar(f"client_accuracy/{name}", 100 * reply["train_acc"],
                                   server_round)
            if "val_acc_noisy" in reply:
                self.writer.add_scalar(f"client_validation/{name}",
                                       100 * reply["val_acc_noisy"], server_round)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
