"""Evaluation speed: analog (aihwkit) vs digital evaluation, C++ tile vs torch tile, and the
share of a default round spent in evaluation. A benchmark, not a test: run it by hand, e.g.

    python benchmarks/eval_speed.py --threads 1 --repeats 2

1. One pass: the same images through the digital model and through its analog copy
   (programmed, drifted to 1 h, the default `realistic` protocol with PCM and GDC), for LeNet
   on the digits test split and ResNet-18 (`build_model("resnet18", 3, 10, 32)`) on random
   32x32 inputs. Best of --repeats.
2. Whole evaluation: `analog.drift_accuracy` as the ServerApp calls it (convert once, then
   3 repeats x 4 drift times: programming, drift, compensation) on the C++ tile, on the
   torch tile with one pass per weight state (as before `inference.one_pass`) and with all
   12 states in one pass (the default), against 12 digital passes over the same images;
   on --device (cuda: the torch tile only).
3. Default round: 5 clients x 1 local epoch of LeNet on digits with feedback loops (4 noisy
   forwards per batch), timed in-process with `training.train_local`, against the
   Evaluator's evaluation of the resulting model (clean test + validation + PCM 3 x 4).

The machine may be shared: every figure is a minimum over --repeats, and the load average is
printed with the tables. The last line reads
`full PCM eval / 12 digital passes: LeNet X.Xx, ResNet-18 Y.Yx` (torch tile, one pass).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import TensorDataset

from analogai_fl import analog
from analogai_fl.data import load_data
from analogai_fl.models import build_model, model_for
from analogai_fl.settings import Experiment, load
from analogai_fl.training import accuracy, train_local

TILES = ("cpp", "torch")


def best_of(runs: int, fn: Callable[[], object]) -> float:
    """Best wall time of `runs` calls; the best process CPU time goes to CPU_TIMES."""
    wall, cpu = [], []
    for _ in range(runs):
        started, started_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    CPU_TIMES.append(min(cpu))
    return min(wall)


CPU_TIMES: list[float] = []  # process CPU time of each best_of, in call order


@torch.no_grad()
def one_pass(model: torch.nn.Module, x: torch.Tensor, batch: int) -> None:
    for i in range(0, len(x), batch):
        model(x[i:i + batch])


def per_pass(model, x, proto, batch, runs) -> dict[str, float]:
    model.eval()
    one_pass(model, x[:batch], batch)  # warm-up
    result = {"digital": best_of(runs, lambda: one_pass(model, x, batch))}
    result["digital cpu"] = CPU_TIMES[-1]
    for tile in TILES:
        converted = analog.to_analog(model, dataclasses.replace(proto, tile=tile))
        converted.program_analog_weights()
        converted.drift_analog_weights(3600.0)
        one_pass(converted, x[:batch], batch)
        result[tile] = best_of(runs, lambda m=converted: one_pass(m, x, batch))
        result[f"{tile} cpu"] = CPU_TIMES[-1]
    return result


VARIANTS = {  # the whole PCM evaluation, as measured: tile and one_pass
    "C++ tile": ("cpp", False),
    "torch, per state": ("torch", False),  # before one-pass evaluation
    "torch, one pass": ("torch", True),  # the default now
}


def whole_evaluation(model, data, exp: Experiment, runs, device) -> dict[str, float]:
    """`analog.drift_accuracy` as the ServerApp calls it, in each variant, and one digital
    pass over the same images (wall s, best of runs)."""
    evaluation = exp.evaluation
    batch = evaluation.batch_size
    result = {"digital": best_of(runs, lambda: accuracy(model, data, batch))}
    for label, (tile, one_pass) in VARIANTS.items():
        if tile == "cpp" and torch.device(device).type != "cpu":
            continue
        result[label] = best_of(max(1, runs // 2), lambda t=tile, o=one_pass: (
            analog.drift_accuracy(model, data, dataclasses.replace(evaluation.protocol, tile=t),
                                  evaluation.drift_times, evaluation.repeats, seed=0,
                                  batch_size=batch, device=device, one_pass=o)))
    return result


def default_round(exp: Experiment, runs) -> dict[str, float]:
    data = load_data(exp.data)
    torch.manual_seed(exp.seed)
    global_model = model_for(exp.model, data.shape)
    started = time.perf_counter()
    for k in range(exp.clients):
        setting = exp.local_training(k, exp.client_mu())
        train_local(copy.deepcopy(global_model), data.train, setting, exp.seed, noise_index=k)
    result = {"train": time.perf_counter() - started}
    evaluation = exp.evaluation
    batch = evaluation.batch_size

    def evaluate(tile: str) -> None:
        accuracy(global_model, data.test, batch)
        accuracy(global_model, data.val, batch)
        analog.drift_accuracy(global_model, data.test,
                              dataclasses.replace(evaluation.protocol, tile=tile),
                              evaluation.drift_times, evaluation.repeats, seed=1,
                              batch_size=batch)

    for tile in TILES:
        result[tile] = best_of(max(1, runs // 2), lambda t=tile: evaluate(t))
    return result


def ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="torch threads (default: 0, torch's own choice)")
    parser.add_argument("--repeats", dest="runs", type=int, default=3, metavar="N",
                        help="time each figure N times and keep the best (the whole PCM "
                        "evaluations and the default round: max(1, N // 2) times; default: "
                        "%(default)s). Not the Monte-Carlo repeats of a PCM evaluation, "
                        "which stay inference.repeats")
    parser.add_argument("--resnet-images", type=int, default=64, metavar="N",
                        help="random 32x32 images for ResNet-18 (default: %(default)s)")
    parser.add_argument("--no-round", action="store_true",
                        help="skip part 3, the default round")
    parser.add_argument("--device", default="cpu", metavar="DEVICE",
                        help="torch device of the whole evaluation, e.g. cpu, cuda, cuda:1 "
                        "(cuda: the torch tile only; default: %(default)s)")
    args = parser.parse_args()
    if args.runs < 1 or args.resnet_images < 1 or args.threads < 0:
        parser.error("--repeats and --resnet-images must be at least 1, --threads at least 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=140, markup=False, highlight=False)
    exp = load({})
    proto, batch = exp.evaluation.protocol, exp.evaluation.batch_size
    digits = load_data(exp.data)
    torch.manual_seed(0)
    lenet = build_model("lenet", 1, 10, 32).eval()
    resnet = build_model("resnet18", 3, 10, 32).eval()
    images = torch.randn(args.resnet_images, 3, 32, 32)
    random_set = TensorDataset(images, torch.randint(0, 10, (args.resnet_images,)))
    cases = [("LeNet, digits test", lenet, digits.test),
             ("ResNet-18, random 32x32", resnet, random_set)]

    passes = Table(title="One pass over the same images (wall s, best of runs): analog / "
                         "digital; the ratio of process CPU times in brackets")
    for column in ("model", "images", "digital", "C++ tile", "ratio", "torch tile", "ratio"):
        passes.add_column(column, justify="left" if column == "model" else "right")
    states = exp.evaluation.repeats * len(exp.evaluation.drift_times)
    whole = Table(title=f"Whole PCM evaluation ({exp.evaluation.repeats} repeats x "
                        f"{len(exp.evaluation.drift_times)} drift times, incl. conversion, "
                        f"programming, drift, GDC; on {args.device}) vs {states} digital "
                        "passes (wall s)")
    for column in ("model", f"{states} digital passes", *VARIANTS):
        whole.add_column(column, justify="left" if column == "model" else "right")
    final = {}
    for name, model, data in cases:
        x = data.tensors[0]
        p = per_pass(model, x, proto, batch, args.runs)
        passes.add_row(name, str(len(x)), f"{p['digital']:.3f}", f"{p['cpp']:.3f}",
                       f"{ratio(p['cpp'], p['digital'])} "
                       f"({ratio(p['cpp cpu'], p['digital cpu'])})", f"{p['torch']:.3f}",
                       f"{ratio(p['torch'], p['digital'])} "
                       f"({ratio(p['torch cpu'], p['digital cpu'])})")
        w = whole_evaluation(model, data, exp, args.runs, args.device)
        floor = states * w["digital"]
        whole.add_row(name, f"{floor:.2f}", *(
            f"{w[v]:.2f} ({ratio(w[v], floor)})" if v in w else "-" for v in VARIANTS))
        final[name.split(",")[0]] = w["torch, one pass"] / floor
    console.print(passes)
    console.print(whole)
    if not args.no_round:
        r = default_round(exp, args.runs)
        share = Table(title="Default round: 5 clients x 1 epoch LeNet/digits with feedback loops"
                            " vs the Evaluator's evaluation (clean test + val + PCM 3 x 4)")
        for column in ("tile", "training (s)", "evaluation (s)", "share of round"):
            share.add_column(column, justify="right")
        for tile in TILES:
            share.add_row(tile, f"{r['train']:.2f}", f"{r[tile]:.2f}",
                          f"{100 * r[tile] / (r['train'] + r[tile]):.0f}%")
        console.print(share)
    console.print(f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, load "
                  f"average {os.getloadavg()[0]:.2f} (the machine may be shared), protocol "
                  f"{proto.name}, device model {proto.device}, batch {batch}")
    console.print(f"full PCM eval / {states} digital passes: LeNet {final['LeNet']:.1f}x, "
                  f"ResNet-18 {final['ResNet-18']:.1f}x")


if __name__ == "__main__":
    main()
