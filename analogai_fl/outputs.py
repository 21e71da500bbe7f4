"""A run's folder: resolved config, metrics, per-client metrics, checkpoints.

Layout of `<output.dir>/<name>-<timestamp>/`:
    config.yaml          the fully resolved config (reusable as a conf file)
    metrics.jsonl        one JSON object per evaluated round (clean, validation, PCM accuracy)
    clients.jsonl        one JSON object per round and client (sigma, loss, accuracy, node),
                         and one per resend of a noise level ("retry": try, node, reason)
    checkpoints/         round_NNNN.pt (global model) or round_NNNN_noise_K.pt (FI off):
                         plain state_dicts, readable with torch.load(..., weights_only=True);
                         round_NNNN_server.pt: the strategy's server-optimiser state
                         (strategies with one: FedAvgM, FedAdam, FedYogi, FedAdagrad)
    summary.json         best round by validation accuracy, final accuracies, wall time
Every write appends or replaces atomically, so a crash never loses earlier results.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import safe_load
from .errors import ConfigError, WriteFailed

CHECKPOINT = re.compile(r"round_(\d+)(?:_noise_(\d+))?\.pt")


@dataclass(frozen=True)
class OutputSettings:
    """Where a run writes its folder and what it keeps (`output.*`)."""

    dir: Path
    name: str  # run folder prefix; default: the conf file's name
    resume: str  # "" = a new run
    keep_checkpoints: int  # 0 = all
    tensorboard: bool = False  # event files in <run>/tensorboard/ (tensorboard_log)


def server_state_name(server_round: int) -> str:
    return f"round_{server_round:04d}_server.pt"


def checkpoint_names(server_round: int, count: int, fused: bool) -> list[str]:
    if fused:
        return [f"round_{server_round:04d}.pt"]
    return [f"round_{server_round:04d}_noise_{k}.pt" for k in range(count)]


def in_analog_tile(name: str) -> bool:
    """Whether a state_dict or parameter name belongs to an aihwkit analog layer's tile
    (`<layer>.analog_module.<entry>`)."""
    return ".analog_module." in f".{name}"


def is_analog_state(state: Any) -> bool:
    """Whether `state` is the state_dict of an aihwkit analog model (`in_analog_tile`)."""
    return isinstance(state, Mapping) and any(
        isinstance(k, str) and in_analog_tile(k) for k in state)


def read_model_state(path: Path, expected: Mapping[str, torch.Tensor], model: str,
                     source: str,
                     from_analog: Callable[[Mapping[str, Any]], Mapping[str, torch.Tensor]]
                     | None = None) -> dict[str, torch.Tensor]:
    """The state_dict in `path` (a run's checkpoint or any plain state_dict), checked
    against `expected` (the configured model's `state_dict()`, named `model` in messages).
    The state_dict of an aihwkit analog model (`is_analog_state`) is first read back into
    digital weights by `from_analog`, where given. Raises ConfigError, starting with
    `source` (e.g. "key 'model.init'", if any) and naming the file and the first keys that
    differ, when the file is missing, not a state_dict of tensors, or does not fit the
    model."""
    source = f"{source}: " if source else ""
    if not path.is_file():
        raise ConfigError(f"{source}'{path}' does not exist (expected a checkpoint such as "
                          "runs/<run>/checkpoints/round_0015.pt)")
    try:
        state = safe_load.load(path)
    except safe_load.Refused as err:
        raise ConfigError(f"{source}{err}") from None
    except safe_load.Unreadable as err:
        raise ConfigError(f"{source}'{path}' is not a checkpoint (torch.load failed: "
                          f"{err.first_line}); expected a state_dict written by "
                          "RunFolder.save_checkpoint") from None
    if from_analog is not None and is_analog_state(state):
        state = from_analog(state)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor)
                                                 for v in state.values()):
        raise ConfigError(f"{source}'{path}' is not a checkpoint: expected a state_dict "
                          f"(names to tensors), got {type(state).__name__}")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                if k in state and state[k].shape != v.shape]
    if missing or unexpected or reshaped:
        problems = [f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                    for label, items in (("missing", missing), ("unexpected", unexpected),
                                         ("shape (file vs model)", reshaped)) if items]
        raise ConfigError(f"{source}'{path}' does not match the configured model {model}: "
                          f"{'; '.join(problems)}")
    return dict(state)


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """`write(tmp)` to a temporary file beside `path`, then rename it to `path` (atomic on
    POSIX): a write cut short (a full disk, a kill) leaves `path`'s previous version intact.
    WriteFailed naming `path` and the reason when the write fails (an OSError, or torch's
    RuntimeError from `torch.save` on a full disk); the temporary file is removed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else \
            str(err).splitlines()[0]
        raise WriteFailed(f"could not write '{path}': {reason}") from err


def atomic_text(path: Path, text: str) -> None:
    """`text` to `path` (`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A CSV file of `header` and `rows`, written atomically (`atomic_write`)."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_text(path, text.getvalue())


def probe_writable(folder: Path, given_as: str) -> Path:
    """Make `folder` (and its parents) and write and remove a file in it: ConfigError naming
    `given_as` (the key or flag that gave it) and the reason when that fails, before any
    work that would write there. Returns `folder`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as err:
        blocking = next((p for p in (folder, *folder.parents) if p.exists()), None)
        reason = (f"'{blocking}' is a file, not a folder" if blocking is not None
                  and not blocking.is_dir() else err.strerror or str(err))
        raise ConfigError(f"{given_as}: cannot write in '{folder}' ({reason})") from None
    return folder


def append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    """One JSON object as a line at the end of `path`, flushed to disk before returning (a
    kill or a full disk can cut short only the line being written, which `read_jsonl`
    recognises). WriteFailed naming the file when the write fails."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise WriteFailed(f"could not write '{path}': {err.strerror or err}") from err


def read_jsonl(path: Path, warn: Callable[[str], None] | None = None
               ) -> list[dict[str, Any]]:
    """The records of `path` (one JSON object per line; [] when there is no file);
    ConfigError naming the file and line when one does not parse (a line cut short when a
    run was killed writing it). Given `warn` (a reader that rewrites or appends to the file:
    a resume), a damaged last line, the record being written when the run was killed, is
    dropped and `warn` told so instead."""
    if not path.is_file():
        return []
    records = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if warn is not None and not any(x.strip() for x in lines[number:]):
                warn(f"'{path}' line {number}, its last, is damaged ({err.msg}): the record "
                     "being written when the run stopped; dropped")
                break
            raise ConfigError(f"'{path}' line {number} is damaged ({err.msg}): remove that "
                              "line, or restore the file, to read the run") from None
    return records


class RunFolder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.checkpoints = path / "checkpoints"

    @classmethod
    def create(cls, output: OutputSettings, config_yaml: str) -> RunFolder:
        """A new `<output.dir>/<output.name>-<time>/` holding `config_yaml` as config.yaml."""
        parent = output.dir.resolve()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for attempt in range(100):
            path = parent / f"{output.name}-{stamp}{f'-{attempt}' if attempt else ''}"
            try:
                path.mkdir(parents=True)
                break
            except FileExistsError:
                continue
        else:
            raise RuntimeError(f"could not create a run folder under {parent}")
        run = cls(path)
        run.checkpoints.mkdir()
        run.write_text("config.yaml", config_yaml)
        return run

    @classmethod
    def open(cls, path: str | Path, given_as: str = "key 'output.resume'") -> RunFolder:
        """The run folder at `path`; ConfigError naming what gave it (`given_as`) when it
        has no config.yaml."""
        run = cls(Path(path).expanduser().resolve())
        if not (run.path / "config.yaml").is_file():
            raise ConfigError(f"{given_as}: '{run.path}' is not a run folder (it has no "
                              "config.yaml)")
        return run

    def write_text(self, name: str, text: str) -> None:
        atomic_text(self.path / name, text)

    def append_jsonl(self, name: str, record: Mapping[str, Any]) -> None:
        append_jsonl(self.path / name, record)

    def read_jsonl(self, name: str, warn: Callable[[str], None] | None = None
                   ) -> list[dict[str, Any]]:
        """`read_jsonl` of the file `name` of this run folder."""
        return read_jsonl(self.path / name, warn)

    def client_replies(self) -> list[dict[str, Any]]:
        """clients.jsonl's line per round and client, without the retry records (lines with
        a "retry" key: a noise level sent again after a missing or failed reply)."""
        return [r for r in self.read_jsonl("clients.jsonl") if "retry" not in r]

    def rewind(self, last_round: int, warn: Callable[[str], None] = print) -> None:
        """Drop records of rounds after `last_round` (an unfinished round being redone), and
        a last line cut short when the run was killed writing it (`warn` is told)."""
        for name in ("metrics.jsonl", "clients.jsonl"):
            kept = [r for r in self.read_jsonl(name, warn) if r["round"] <= last_round]
            self.write_text(name, "".join(json.dumps(r) + "\n" for r in kept))

    def save_checkpoint(self, server_round: int, states: list[dict[str, torch.Tensor]],
                        fused: bool, keep: int = 0,
                        server_state: dict[str, torch.Tensor] | None = None) -> None:
        """One state_dict per model, and the strategy's `server_state` if it has one
        (written first: a round's checkpoint is complete once its models are there);
        `keep` > 0 deletes all but the newest `keep` rounds."""
        if server_state is not None:
            atomic_write(self.checkpoints / server_state_name(server_round),
                          lambda tmp: torch.save(server_state, tmp))
        names = checkpoint_names(server_round, len(states), fused)
        for name, state in zip(names, states, strict=True):
            atomic_write(self.checkpoints / name, lambda tmp, s=state: torch.save(s, tmp))
        if keep > 0:
            files = self._checkpoint_files()
            stale = set(sorted({r for r, _ in files})[:-keep])
            for r, path in files:
                if r in stale:
                    path.unlink()
            for r in stale:
                (self.checkpoints / server_state_name(r)).unlink(missing_ok=True)

    def _checkpoint_files(self) -> list[tuple[int, Path]]:
        found = [(CHECKPOINT.fullmatch(p.name), p) for p in self.checkpoints.glob("round_*.pt")]
        return [(int(m.group(1)), p) for m, p in found if m]

    def last_checkpoint(self, count: int, fused: bool, warn: Callable[[str], None] = print,
                        server_state: bool = False) -> tuple[int, list[dict]] | None:
        """(round, state_dicts) of the newest complete checkpoint that reads back, or None.
        A round with a damaged file (cut short by a full disk or a partial copy) is skipped
        for the round before it, and `warn` is told which file, why and which round is used
        instead. With `server_state` (a strategy that keeps state between rounds) the
        round's server-state file, where there is one, must read back too."""
        by_round: dict[int, list[Path]] = {}
        for r, p in self._checkpoint_files():
            by_round.setdefault(r, []).append(p)
        damaged = []
        for r in sorted(by_round, reverse=True):
            names = checkpoint_names(r, count, fused)
            if sorted(p.name for p in by_round[r]) != sorted(names):
                continue
            try:
                states = [read_checkpoint(self.checkpoints / n) for n in names]
                if server_state:
                    self.server_state(r)
            except ConfigError as err:
                damaged.append(str(err))
                continue
            for message in damaged:
                warn(f"{message}; continuing from round {r}, the newest complete one")
            return r, states
        for message in damaged:
            warn(f"{message}; no complete round is left: starting again from round 1")
        return None

    def server_state(self, server_round: int) -> dict[str, torch.Tensor] | None:
        """The strategy's server state saved with round `server_round`, or None."""
        path = self.checkpoints / server_state_name(server_round)
        return read_checkpoint(path) if path.is_file() else None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A file of this project's `torch.save` (`safe_load.load`); ConfigError naming the file
    when it does not read back (cut short, overwritten, not a checkpoint); `safe_load.Refused`
    (a ConfigError naming it) when it names a global that `safe_load` does not accept."""
    try:
        return safe_load.load(path)
    except safe_load.Unreadable as err:
        reason = " ".join(str(err.error).split())[:160]
        raise ConfigError(f"checkpoint '{path}' is damaged ({type(err.error).__name__}: "
                          f"{reason})") from None
