"""The one evaluation every arm of an ablation gets (`evaluate`), or in a tuning run only
what chooses recipes."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..analog import drift_accuracy, n_w_sweep
from ..checks import evaluation_device
from ..clip import clipped_copy
from ..data import Splits
from ..reporting import drift_label
from ..schema_ablation import CRITERION_PROTOCOL
from ..settings import Experiment
from ..training import accuracy


def evaluate(model: nn.Module, data: Splits, exp: Experiment) -> dict[str, Any]:
    """The same evaluation for every arm, of the model as programmed (clipped once first
    with `inference.clip_sigma`): clean accuracy, and under each protocol the accuracy on
    the device at each drift time, the n_w sweep at the first drift time and the n_w
    columns (`ablation.n_w_columns`) also at the last (key "n_w_late": read noise after
    drift), on the test split; with `ablation.validation` the clean and per-drift-time
    accuracies and the n_w columns on the validation split too (key "val"). With
    `ablation.tuning` only the validation split's clean accuracy and its accuracy under
    `CRITERION_PROTOCOL` at each drift time (key "val"; "tuning": True). Accuracies are
    fractions."""
    evaluation, seed = exp.evaluation, exp.seed
    times, repeats = evaluation.drift_times, evaluation.repeats
    device = evaluation_device(exp)
    model = clipped_copy(model, evaluation.clip_sigma)  # inference.clip_sigma, once
    columns = exp.ablation.n_w_columns

    def on_device(split, protocol, n_w_values, drift_only: bool = False) -> dict[str, Any]:
        """Accuracy per drift time, per n_w value at the first drift time and per n_w column
        at the last (a protocol on the C++ tile runs on the CPU)."""
        on = {"batch_size": evaluation.batch_size, "one_pass": evaluation.one_pass,
              "device": device if protocol.tile == "torch" else torch.device("cpu"),
              "calibration": data.train}
        result = {"drift": drift_accuracy(model, split, protocol, times, repeats, seed, **on)}
        for kind, values, at_time in (("n_w", n_w_values, times[0]),
                                      ("n_w_late", columns, times[-1])):
            if not drift_only and (kind == "n_w" or len(times) > 1):
                result[kind] = {n_w: at[drift_label(at_time)] for n_w, at in n_w_sweep(
                    model, split, protocol, values, (at_time,), repeats, seed, **on).items()}
        return result

    if exp.ablation.tuning:  # only what chooses recipes: no test number is seen
        return {"tuning": True, "torch_device": str(device), "val": {
            "clean": accuracy(model, data.val), "protocols": {CRITERION_PROTOCOL: on_device(
                data.val, evaluation.protocols[CRITERION_PROTOCOL], (), drift_only=True)}}}
    protocols = evaluation.protocols.items()
    result: dict[str, Any] = {
        "clean": accuracy(model, data.test),
        "protocols": {name: on_device(data.test, protocol, evaluation.n_w_sweep)
                      for name, protocol in protocols}, "torch_device": str(device)}
    if exp.ablation.validation:  # what recipes are chosen on; same seed, other images
        result["val"] = {"clean": accuracy(model, data.val), "protocols": {
            name: on_device(data.val, protocol, exp.ablation.n_w_columns)
            for name, protocol in protocols}}
    return result
