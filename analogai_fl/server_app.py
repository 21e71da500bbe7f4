"""ServerApp: resolve and check the config, run the rounds of the configured strategy over the
K noise levels, checkpoint and evaluate the global model on the analog device each round,
resume a run folder exactly."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from strategies import RoundFailed, build_strategy, keeps_server_state
from strategies.retry import RetryingGrid

from .analog import drift_accuracy
from .checks import check_output_place, evaluation_device, model_state, prepare
from .config import dump_yaml
from .curves import CURVES_FILE, write_run_curves
from .data import Splits
from .errors import ConfigError, WriteFailed
from .models import deployed_model, model_for
from .outputs import RunFolder
from .partitions import describe_partition
from .reporting import entry_text, final_table, percent
from .settings import Experiment
from .streams import seed_for
from .tensorboard_log import TensorBoardLog
from .training import accuracy
from .wire import CONFIG_KEY, join_models, split_models

app = ServerApp()
console = Console(width=140, markup=False, highlight=False)


class Evaluator:
    """Server-side evaluate_fn: saves each round's checkpoint, then measures clean, validation
    and PCM accuracy of the global model (of each of the K models with FI off)."""

    def __init__(self, exp: Experiment, run: RunFolder, data: Splits, first_round: int,
                 server_state: Callable[[], dict[str, torch.Tensor] | None] = lambda: None,
                 tensorboard: TensorBoardLog | None = None):
        self.exp, self.run, self.data, self.offset = exp, run, data, first_round
        self.tensorboard = tensorboard  # output.tensorboard's event stream, if on
        self.server_state = server_state  # the strategy's, saved with each checkpoint
        self.last_saved = first_round
        self.fused = exp.fused
        self.sigmas = exp.noise_levels
        self.records = run.read_jsonl("metrics.jsonl")  # earlier rounds of a resumed run
        self.device = evaluation_device(exp)  # of the analog evaluation, in this process

    def states(self, arrays: ArrayRecord) -> list[dict[str, torch.Tensor]]:
        return [m.to_torch_state_dict()
                for m in split_models(arrays, len(self.sigmas), self.fused)]

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        r = server_round + self.offset
        if server_round == 0 and self.offset > 0:
            return None  # round `offset` was evaluated before the run was resumed
        states = self.states(arrays)
        if r > 0:
            self.run.save_checkpoint(r, states, self.fused, self.exp.output.keep_checkpoints,
                                     self.server_state())
            self.last_saved = r
        if r % self.exp.evaluation.every and r != self.exp.rounds:
            return None
        started = time.time()
        models = [self.evaluate_model(state, r) for state in states]
        if self.fused:
            record = {"round": r, **models[0]}
        else:
            best = max(range(len(models)), key=lambda k: models[k]["val_acc"])
            record = {"round": r, **models[best], "selected_noise_index": best,
                      "models": [{"noise_index": k, "sigma": s, **m}
                                 for k, (s, m) in enumerate(zip(self.sigmas, models, strict=True))]}
        record |= {"eval_seconds": round(time.time() - started, 3),
                   "protocol": self.exp.evaluation.protocol.record(),
                   "torch_device": str(self.device)}
        self.run.append_jsonl("metrics.jsonl", record)
        self.records.append(record)
        if self.tensorboard is not None:
            self.tensorboard.evaluated(record)
        try:  # a picture of the run so far; a failure to draw it must not stop the training
            write_run_curves(self.run.path)
        except Exception as err:  # matplotlib and the file system raise many kinds
            console.print(f"analogai-fl: warning: {CURVES_FILE} not drawn: {err}")
        pcm = "  ".join(f"{label} {entry_text(v)}" for label, v in record.get("pcm", {}).items())
        console.print(f"[round {r}/{self.exp.rounds}] clean "
                      f"{percent(record['clean_acc'])}%  val {percent(record['val_acc'])}%  "
                      f"PCM {pcm or 'off'}  ({record['eval_seconds']:.1f}s eval)")
        return MetricRecord({"clean_acc": record["clean_acc"], "val_acc": record["val_acc"],
                             **{f"pcm_{k}": v["mean"] for k, v in record.get("pcm", {}).items()}})

    def evaluate_model(self, state: Mapping[str, torch.Tensor], r: int) -> dict[str, Any]:
        evaluation, data = self.exp.evaluation, self.data
        model = deployed_model(self.exp.model, data.shape, state,  # quantised with QAT
                               self.exp.training.weight_bits, evaluation.clip_sigma)
        batch = evaluation.batch_size
        result: dict[str, Any] = {"clean_acc": accuracy(model, data.test, batch),
                                  "val_acc": accuracy(model, data.val, batch)}
        if evaluation.use:  # "pcm": the field name of earlier runs, whatever the device
            result["pcm"] = drift_accuracy(model, data.test, evaluation.protocol,
                                           evaluation.drift_times, evaluation.repeats,
                                           seed=seed_for(self.exp.seed, "evaluation", r),
                                           batch_size=batch,
                                           device=self.device, one_pass=evaluation.one_pass,
                                           calibration=data.train)
        return result


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        run_experiment(grid, context)
    except ConfigError as err:  # a bad config: one line before Flower's traceback
        console.print(f"analogai-fl: error: {err}")
        raise


def run_experiment(grid: Grid, context: Context) -> None:
    started = time.time()
    prepared = prepare(context.run_config)  # downloads the data before any client needs it
    check_output_place(prepared.exp)
    exp, data = prepared.exp, prepared.data
    cfg, sigmas, fused = exp.config, exp.noise_levels, exp.fused
    run: RunFolder | None = None
    tensorboard: TensorBoardLog | None = None

    def log_clients(server_round: int, metrics: list[dict]) -> None:
        for m in metrics:
            run.append_jsonl("clients.jsonl", {"round": server_round, **m})
        if tensorboard is not None:
            tensorboard.clients(server_round, metrics)
        console.print(f"[round {server_round}] clients " + "  ".join(
            f"sigma {m['sigma']:g}: loss {m['train_loss']:.3f} acc {percent(m['train_acc'])}%"
            for m in metrics))

    def log_retry(record: dict) -> None:
        server_round = record.pop("round")
        run.append_jsonl("clients.jsonl", {"round": server_round, "retry": record})
        console.print(f"[round {server_round}] noise level {record['noise-index']} (sigma "
                      f"{record['sigma']:g}) try {record['try']} on node {record['node']}: "
                      f"{record['reason']}; sent again to node {record['resent_to']}")

    def start() -> list[dict[str, torch.Tensor]]:
        """Round 0's model(s): `model.init` or the seeded fresh init (the HWA arm's too)."""
        if exp.model_init is not None:  # checked by `prepare` before any work
            state = model_state(exp.model_init, exp, "key 'model.init'")
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_for(exp.seed, "init"))
                state = model_for(exp.model, data.shape).state_dict()
        return [state] * (1 if fused else len(sigmas))

    found = None
    keeps_state = keeps_server_state(exp)
    if exp.output.resume:  # every check before the run folder is touched
        run = RunFolder.open(exp.output.resume)
        found = run.last_checkpoint(len(sigmas), fused,
                                    lambda m: console.print(f"analogai-fl: warning: {m}"),
                                    server_state=keeps_state)
        if found is None:  # round 1 failed: its last good round is the start, made again
            console.print(f"{run.path} has no checkpoint yet (its last good round is 0): "
                          "it starts again from round 1")
    first_round, states = found or (0, start())
    strategy = build_strategy(exp, first_round, log_clients)
    initial = join_models([ArrayRecord(s) for s in states], fused)
    if strategy.SERVER_STATE and first_round > 0:
        saved = run.server_state(first_round)
        if saved is None:
            raise ConfigError(
                f"key 'output.resume': strategy '{exp.strategy.name}' keeps server state "
                f"({', '.join(strategy.SERVER_STATE)}) that {run.path} did not save with round "
                f"{first_round} (a run folder from before server state was saved); resuming "
                "without it would be a different experiment. Start a new run instead")
        strategy.load_server_state(saved, initial)
    if run is not None:
        run.write_text(f"config-resume-{first_round:04d}.yaml", dump_yaml(cfg))
        run.rewind(first_round if found else -1,  # round 0 is evaluated again at the start
                   lambda m: console.print(f"analogai-fl: warning: {m}"))
        (run.path / "failed.txt").unlink(missing_ok=True)
    else:
        run = RunFolder.create(exp.output, dump_yaml(cfg))
        run.write_text("partition.json", json.dumps(describe_partition(data, exp.data),
                                                    indent=1))
    console.print(f"AnalogAI-FL run folder: {run.path} (rounds {first_round + 1}.."
                  f"{exp.rounds}, sigma {list(sigmas)}, FI {fused}, FL {exp.feedback}, "
                  f"strategy {exp.strategy.name}, {exp.model} on {exp.data.name} "
                  f"({exp.data.partition}))")

    if exp.output.tensorboard:
        tensorboard = TensorBoardLog(run.path, first_round, dump_yaml(cfg))
    evaluator = Evaluator(exp, run, data, first_round,
                          strategy.server_state if strategy.SERVER_STATE else lambda: None,
                          tensorboard)
    remaining = exp.rounds - first_round
    if remaining > 0:
        try:
            retrying = RetryingGrid(grid, exp.federation.retries,
                                    exp.federation.reply_timeout, log_retry)
            strategy.start(grid=retrying, initial_arrays=initial, num_rounds=remaining,
                           train_config=ConfigRecord({CONFIG_KEY: json.dumps(cfg).encode()}),
                           evaluate_fn=evaluator)
        except (RoundFailed, WriteFailed) as err:
            # failed.txt: the reason on its first line, the advice on its second (ablate
            # reads the reason and gives advice of its own)
            cause = ("Free space or make the folder writable" if isinstance(err, WriteFailed)
                     else "Fix the cause")
            message = (f"{err}. The run stops; its last good round is {evaluator.last_saved}."
                       f"\n{cause}, then continue with output.resume='{run.path}'.")
            try:
                run.write_text("failed.txt", message + "\n")
            except WriteFailed as also:  # the same full disk: the console still says it
                console.print(f"analogai-fl: warning: {also}")
            console.print(f"analogai-fl: error: {message}")
            raise type(err)(message) from None
        finally:
            if tensorboard is not None:
                tensorboard.close()
    elif tensorboard is not None:  # nothing left to train
        tensorboard.close()
    table, summary = final_table(evaluator.records, fused)
    summary |= {"run": str(run.path), "wall_seconds_this_invocation": time.time() - started}
    run.write_text("summary.json", json.dumps(summary, indent=2))
    console.print(table)
    console.print(f"Results in {run.path}")
