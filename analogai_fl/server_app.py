"""ServerApp: resolve the config, run MSNAT rounds, evaluate the global model on PCM each round."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from rich.console import Console
from rich.table import Table

from strategies import RoundFailed, build_strategy

from .analog import mean_std, pcm_accuracy, percent
from .checks import check_client_shares, check_experiment
from .config import ConfigError, dump_yaml, noise_levels, protocol, resolve
from .data import Splits, describe_partition, load_data
from .models import build_model
from .outputs import RunFolder
from .recovery import deployed
from .training import accuracy
from .wire import CONFIG_KEY, join_models, split_models

app = ServerApp()
console = Console(width=140, markup=False, highlight=False)


class Evaluator:
    """Server-side evaluate_fn: saves each round's checkpoint, then measures clean, validation
    and PCM accuracy of the global model (of each of the K models with FI off)."""

    def __init__(self, cfg: Mapping[str, Any], run: RunFolder, data: Splits, first_round: int,
                 server_state: Callable[[], dict[str, torch.Tensor] | None] = lambda: None):
        self.cfg, self.run, self.data, self.offset = cfg, run, data, first_round
        self.server_state = server_state  # the strategy's, saved with each checkpoint
        self.last_saved = first_round
        self.fused = cfg["training.use_fl"]
        self.sigmas = noise_levels(cfg)
        self.protocol = protocol(cfg)
        self.records = run.read_jsonl("metrics.jsonl")  # earlier rounds of a resumed run

    def states(self, arrays: ArrayRecord) -> list[dict[str, torch.Tensor]]:
        return [m.to_torch_state_dict()
                for m in split_models(arrays, len(self.sigmas), self.fused)]

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        r = server_round + self.offset
        if server_round == 0 and self.offset > 0:
            return None  # round `offset` was evaluated before the run was resumed
        states = self.states(arrays)
        if r > 0:
            self.run.save_checkpoint(r, states, self.fused, self.cfg["output.keep_checkpoints"],
                                     self.server_state())
            self.last_saved = r
        if r % self.cfg["inference.every"] and r != self.cfg["training.rounds"]:
            return None
        started = time.time()
        models = [self.evaluate_model(state, r) for state in states]
        if self.fused:
            record = {"round": r, **models[0]}
        else:
            best = max(range(len(models)), key=lambda k: models[k]["val_acc"])
            record = {"round": r, **models[best], "selected_noise_index": best,
                      "models": [{"noise_index": k, "sigma": s, **m}
                                 for k, (s, m) in enumerate(zip(self.sigmas, models))]}
        record |= {"eval_seconds": round(time.time() - started, 3), "protocol": self.protocol}
        self.run.append_jsonl("metrics.jsonl", record)
        self.records.append(record)
        pcm = "  ".join(f"{label} {mean_std(v)}" for label, v in record.get("pcm", {}).items())
        console.print(f"[round {r}/{self.cfg['training.rounds']}] clean "
                      f"{percent(record['clean_acc'])}%  val {percent(record['val_acc'])}%  "
                      f"PCM {pcm or 'off'}  ({record['eval_seconds']:.1f}s eval)")
        return MetricRecord({"clean_acc": record["clean_acc"], "val_acc": record["val_acc"],
                             **{f"pcm_{k}": v["mean"] for k, v in record.get("pcm", {}).items()}})

    def evaluate_model(self, state: Mapping[str, torch.Tensor], r: int) -> dict[str, Any]:
        cfg, data = self.cfg, self.data
        model = build_model(cfg["model.name"], data.in_channels, data.num_classes,
                            data.image_size)
        model.load_state_dict(state)
        deployed(model, cfg)  # what goes onto the chip: quantised weights with QAT
        batch = cfg["inference.batch_size"]
        result: dict[str, Any] = {"clean_acc": accuracy(model, data.test, batch),
                                  "val_acc": accuracy(model, data.val, batch)}
        if cfg["inference.platform.aihwkit.use"]:
            result["pcm"] = pcm_accuracy(model, data.test, self.protocol,
                                         cfg["inference.drift_times"], cfg["inference.repeats"],
                                         seed=cfg["seed"] + r, batch_size=batch)
        return result


def final_table(records: Sequence[Mapping[str, Any]], fused: bool) -> tuple[Table, dict]:
    """Clean vs PCM accuracy per drift time: final round and best round by validation."""
    final = records[-1]
    best = max(records, key=lambda rec: rec["val_acc"])
    labels = list(final.get("pcm", {}))
    table = Table(title="Test accuracy (%): clean digital vs PCM (mean ± std over repeats)")
    for column in ["model", "round", "sigma", "val", "clean", *[f"PCM {x}" for x in labels]]:
        table.add_column(column, justify="left" if column == "model" else "right")

    def add(name: str, rec: Mapping[str, Any], sigma: str) -> None:
        pcm = [mean_std(rec["pcm"][x]) for x in labels]
        table.add_row(name, str(rec["round"]), sigma, percent(rec["val_acc"]),
                      percent(rec["clean_acc"]), *pcm)

    if fused:
        add("global (final)", final, "all")
        add("global (best val)", best, "all")
    else:
        for m in final["models"]:
            add(f"noise_{m['noise_index']} (final)", {**m, "round": final["round"]},
                f"{m['sigma']:g}")
    summary = {"final": final, "best_round_by_val": best["round"], "best": best}
    return table, summary


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        run_experiment(grid, context)
    except ConfigError as err:  # a bad config: one line before Flower's traceback
        console.print(f"analogai-fl: error: {err}")
        raise


def run_experiment(grid: Grid, context: Context) -> None:
    started = time.time()
    cfg = resolve(context.run_config)
    check_experiment(cfg)
    sigmas, fused = noise_levels(cfg), cfg["training.use_fl"]
    data = load_data(cfg, download=cfg["data.download"])  # before any client needs it
    check_client_shares(cfg, data)
    run: RunFolder | None = None

    def log_clients(server_round: int, metrics: list[dict]) -> None:
        for m in metrics:
            run.append_jsonl("clients.jsonl", {"round": server_round, **m})
        console.print(f"[round {server_round}] clients " + "  ".join(
            f"sigma {m['sigma']:g}: loss {m['train_loss']:.3f} acc {percent(m['train_acc'])}%"
            for m in metrics))

    if cfg["output.resume"]:  # every check before the run folder is touched
        run = RunFolder.open(cfg["output.resume"])
        found = run.last_checkpoint(len(sigmas), fused)
        if found is None:
            raise ConfigError(f"key 'output.resume': {run.path} has no complete checkpoint "
                              "to resume from")
        first_round, states = found
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg["seed"])
            model = build_model(cfg["model.name"], data.in_channels, data.num_classes,
                                data.image_size)
        first_round, states = 0, [model.state_dict()] * (1 if fused else len(sigmas))
    strategy = build_strategy(cfg, first_round, log_clients)
    initial = join_models([ArrayRecord(s) for s in states], fused)
    if strategy.SERVER_STATE and first_round > 0:
        saved = run.server_state(first_round)
        if saved is None:
            raise ConfigError(
                f"key 'output.resume': strategy '{cfg['strategy.name']}' keeps server state "
                f"({', '.join(strategy.SERVER_STATE)}) that {run.path} did not save with round "
                f"{first_round} (a run folder from before server state was saved); resuming "
                "without it would be a different experiment. Start a new run instead")
        strategy.load_server_state(saved, initial)
    if run is not None:
        run.write_text(f"config-resume-{first_round:04d}.yaml", dump_yaml(cfg))
        run.rewind(first_round)
        (run.path / "failed.txt").unlink(missing_ok=True)
    else:
        run = RunFolder.create(cfg)
        run.write_text("partition.json", json.dumps(describe_partition(data, cfg), indent=1))
    console.print(f"AnalogAI-FL run folder: {run.path} (rounds {first_round + 1}.."
                  f"{cfg['training.rounds']}, sigma {sigmas}, FI {fused}, "
                  f"FL {cfg['training.use_neg']}, strategy {cfg['strategy.name']}, "
                  f"{cfg['model.name']} on {cfg['data.name']} ({cfg['data.partition']}))")

    evaluator = Evaluator(cfg, run, data, first_round,
                          strategy.server_state if strategy.SERVER_STATE else lambda: None)
    remaining = cfg["training.rounds"] - first_round
    if remaining > 0:
        try:
            strategy.start(grid=grid, initial_arrays=initial, num_rounds=remaining,
                           train_config=ConfigRecord({CONFIG_KEY: json.dumps(cfg).encode()}),
                           evaluate_fn=evaluator)
        except RoundFailed as err:
            message = (f"{err}. The run stops; its last good round is {evaluator.last_saved}: "
                       f"fix the cause, then continue with output.resume='{run.path}'")
            run.write_text("failed.txt", message + "\n")
            console.print(f"analogai-fl: error: {message}")
            raise RoundFailed(message) from None
    table, summary = final_table(evaluator.records, fused)
    summary |= {"run": str(run.path), "wall_seconds_this_invocation": time.time() - started}
    run.write_text("summary.json", json.dumps(summary, indent=2))
    console.print(table)
    console.print(f"Results in {run.path}")
