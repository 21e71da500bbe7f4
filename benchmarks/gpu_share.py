"""Five clients sharing one GPU against the same five trainings one after another.

What Flower's simulation does with `--federation-config "client-resources-num-gpus=0.2"`
(Ray places five ClientApp actors on one GPU), measured without Flower and Ray (GPU images
may lack them): each of the default experiment's five noise levels trains one local epoch
(`training.train_local`, the default digits data) in its own process on the same device, all
at once, then the same five one after another in the same way. Example:

    python benchmarks/gpu_share.py --device cuda --run-config "training.noise_model='analog'"

Prints each mode's wall seconds and, last, `5 clients on one GPU, together / one after
another: X.XXx` (below 1: sharing the GPU pays).
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

CLIENTS = 5


def one_client(device: str, run_config: dict, noise_index: int) -> float:
    """Seconds of one client's local epoch (imports and data loading excluded)."""
    import torch

    from analogai_fl.checks import prepare
    from analogai_fl.models import model_for
    from analogai_fl.training import train_local

    prepared = prepare(run_config, download=False)
    exp, data = prepared.exp, prepared.data
    model = model_for(exp.model, data.shape)
    setting = exp.local_training(noise_index, exp.client_mu())
    if device != "cpu":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    train_local(model, data.train, setting, exp.seed, device, server_round=1,
                noise_index=noise_index)
    return time.perf_counter() - started


def _worker(args: tuple) -> float:
    return one_client(*args)


def main() -> None:
    from analogai_fl.config import add_run_config_argument, parse_run_config

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", metavar="DEVICE",
                        help="torch device the five clients share (default: %(default)s)")
    add_run_config_argument(parser, "the default experiment")
    args = parser.parse_args()
    run_config = parse_run_config(args.run_config)
    jobs = [(args.device, run_config, k) for k in range(CLIENTS)]
    context = multiprocessing.get_context("spawn")  # CUDA needs fresh processes
    with context.Pool(CLIENTS) as pool:
        pool.map(_worker, jobs[:1])  # warm-up: imports, CUDA context, data
        started = time.perf_counter()
        pool.map(_worker, jobs)
        together = time.perf_counter() - started
    with context.Pool(1) as pool:
        pool.map(_worker, jobs[:1])
        started = time.perf_counter()
        for job in jobs:
            pool.map(_worker, [job])
        apart = time.perf_counter() - started
    print(f"together: {together:.1f} s, one after another: {apart:.1f} s ({args.device})")
    print(f"5 clients on one GPU, together / one after another: {together / apart:.2f}x")


if __name__ == "__main__":
    main()
