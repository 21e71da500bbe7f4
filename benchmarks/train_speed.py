"""What analog-aware training costs: one training step per sample pass, side by side.

For each model (LeNet at 28x28, VGG-8 and ResNet-18 at 32x32, random images, 10 classes), one
process times the same optimiser step (forward, backward, update; batch 64 by default) of

    digital      plain training, no noise
    weight       the project's weight-noise training (`noise.noisy_forward`, sigma 0.1)
    chip         the project's chip forward (`chip_noise.chip_forward`, the `realistic`
                 protocol's output noise and converters, modifier std 0.06): what
                 `training.noise_model=analog` trains with
    aihwkit-cpp  aihwkit's HWA on its C++ tile (`hwa.rpu_config`, `AnalogSGD`)
    aihwkit-torch aihwkit's HWA on its torch tile

interleaved round by round (each figure is the best of `--repeats` rounds of `--steps` steps,
so that load from other processes hits every method alike), with the same torch threads.
Example:

    python benchmarks/train_speed.py --threads 1 --steps 20 --repeats 3

Prints a table of milliseconds per step and microseconds per sample pass, and last:
`analog-aware training / weight-noise training per sample pass: LeNet X.XXx, VGG-8 Y.YYx`
(the chip forward over the project's weight noise).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from analogai_fl.chip_noise import chip_forward
from analogai_fl.models import build_model
from analogai_fl.noise import noisy_forward
from analogai_fl.settings import load

MODELS = {"LeNet": ("lenet", 1, 28), "VGG-8": ("vgg8", 3, 32), "ResNet-18": ("resnet18", 3, 32)}
METHODS = ("digital", "weight", "chip", "aihwkit-cpp", "aihwkit-torch")


def available(method: str, device: str) -> bool:
    """aihwkit's methods need aihwkit importable (not on every GPU image) and, for the C++
    tile, the CPU (the registry's wheel has no CUDA tiles)."""
    if not method.startswith("aihwkit"):
        return True
    if method == "aihwkit-cpp" and device != "cpu":
        return False
    try:
        import aihwkit.optim  # noqa: F401
    except ImportError:
        return False
    return True


def step_function(method: str, name: str, channels: int, size: int, batch: int,
                  device: str = "cpu") -> Callable[[], None]:
    """One training step of `method` on a fresh model (seeded), as a closure."""
    exp = load({"training.noise_model": "analog"})  # the chip's forward at its defaults
    torch.manual_seed(0)
    model = build_model(name, channels, 10, size).train().to(device)
    x = torch.randn(batch, channels, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    generator = torch.Generator(device=device).manual_seed(1)
    if method.startswith("aihwkit"):
        from aihwkit.optim import AnalogSGD

        from analogai_fl import hwa

        settings = dataclasses.replace(exp.hwa, tile=method.removeprefix("aihwkit-"))
        model = hwa.to_analog_trainable(model.cpu(), settings, device).train()
        optimizer = AnalogSGD(model.parameters(), lr=0.01, momentum=0.9)
        optimizer.regroup_param_groups(model)
        forward = model
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        chip = exp.training.chip
        forward = {
            "digital": model,
            "weight": lambda inputs: noisy_forward(model, inputs, 0.1, 1.0, generator),
            "chip": lambda inputs: chip_forward(model, inputs, 0.06, chip, generator),
        }[method]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(forward(x), y).backward()
        optimizer.step()
        if device != "cpu":
            torch.cuda.synchronize(device)

    return step


def measure(args: argparse.Namespace, models: list[str]) -> dict[str, dict[str, float]]:
    """Seconds per step, best of `--repeats` interleaved rounds, per model and method."""
    best: dict[str, dict[str, float]] = {m: {} for m in models}
    for model in models:
        steps = {m: step_function(m, *MODELS[model], args.batch, args.device)
                 for m in METHODS if available(m, args.device)}
        for step in steps.values():  # warm-up: allocations, aihwkit's first calls
            step()
        for _ in range(args.repeats):
            for method, step in steps.items():
                started = time.perf_counter()
                for _ in range(args.steps):
                    step()
                seconds = (time.perf_counter() - started) / args.steps
                best[model][method] = min(best[model].get(method, float("inf")), seconds)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="torch threads (0: torch's choice; default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, metavar="N",
                        help="timed steps per method and round (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, metavar="N",
                        help="interleaved rounds; each figure is the best (default: "
                        "%(default)s)")
    parser.add_argument("--batch", type=int, default=64, metavar="N",
                        help="images per step (default: %(default)s)")
    parser.add_argument("--models", default=",".join(MODELS), metavar="NAME,...",
                        help="of " + ", ".join(MODELS) + " (default: all)")
    parser.add_argument("--device", default="cpu", metavar="DEVICE",
                        help="torch device, e.g. cuda (aihwkit's C++ tile is skipped there, "
                        "and aihwkit's methods wherever aihwkit is not installed; default: "
                        "%(default)s)")
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",")]
    unknown = [m for m in models if m not in MODELS]
    if unknown or min(args.steps, args.repeats, args.batch) < 1 or args.threads < 0:
        parser.error(f"--models: unknown {unknown}; or a count below 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    best = measure(args, models)
    table = Table(title=f"ms per training step (batch {args.batch}) / us per sample pass")
    table.add_column("model")
    for method in METHODS:
        table.add_column(method, justify="right")
    table.add_column("chip / weight", justify="right")
    for model in models:
        row = best[model]
        table.add_row(model, *(f"{row[m] * 1e3:.1f} / {row[m] / args.batch * 1e6:.0f}"
                               if m in row else "n/a" for m in METHODS),
                      f"{row['chip'] / row['weight']:.2f}x")
    console = Console(width=160)
    console.print(table)
    console.print(f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
                  f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print("analog-aware training / weight-noise training per sample pass: " + ", ".join(
        f"{m} {best[m]['chip'] / best[m]['weight']:.2f}x" for m in models))


if __name__ == "__main__":
    main()
