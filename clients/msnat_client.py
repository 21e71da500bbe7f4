"""ClientApp: one noise level sigma_k trains the received model for the local epochs.

Everything the client needs (model, data split, training settings, its sigma, mu) arrives in
the train message's config, except where its data lives: a SuperNode started with
`--node-config "data-root='/path'"` reads the data set from its own folder (the Deployment
Engine: data stays on the node, whatever `data.root` the server has); without it, from
`data.root` (the local simulation, or machines that share one path).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from analogai_fl.data import DataSettings, load_data
from analogai_fl.models import model_for
from analogai_fl.partitions import client_dataset
from analogai_fl.settings import Experiment
from analogai_fl.streams import generator
from analogai_fl.training import TrainingDiverged, accuracy, train_local
from analogai_fl.wire import CONFIG_KEY, DIVERGED, TRY_KEY

app = ClientApp()
DATA_ROOT_KEY = "data-root"  # the SuperNode's --node-config key for its data folder


class InjectedFailure(RuntimeError):
    """`federation.inject_failure` made this client fail (for trying the retry policy)."""


def node_data(data: DataSettings, node_config: Mapping[str, object]) -> DataSettings:
    """The data settings as this node reads them: its own `data-root` when its node config
    has one (`~` expanded), the run's `data.root` otherwise."""
    root = node_config.get(DATA_ROOT_KEY)
    if root in (None, ""):
        return data
    return dataclasses.replace(data, root=Path(str(root)).expanduser().resolve())


@app.train()
def train(msg: Message, context: Context) -> Message:
    sent = msg.content["config"]
    exp = Experiment.from_config(json.loads(sent[CONFIG_KEY]))  # JSON bytes: Flower logs
    sigma, index, server_round = float(sent["sigma"]), int(sent["noise-index"]), int(
        sent["server-round"])                                  # them as <bytes>
    if exp.federation.inject_failure == (server_round, index) and int(sent.get(TRY_KEY, 1)) == 1:
        raise InjectedFailure(f"federation.inject_failure: noise level {index} fails its "
                              f"first try in round {server_round}")
    data = load_data(node_data(exp.data, context.node_config))  # never downloads: the
    # server fetched it before round 1 (simulation), or the node holds it (deployment)
    model = model_for(exp.model, data.shape)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    setting = exp.local_training(index, float(sent["proximal-mu"]), server_round)
    if setting.sigma != sigma:
        raise ValueError(f"noise level {index}: the message says sigma {sigma}, the config "
                         f"{setting.sigma}")
    labels = MetricRecord({"sigma": sigma, "noise-index": index})
    try:
        metrics = train_local(model, client_dataset(data, exp.data, index), setting, exp.seed,
                              device, pixel_stats=(data.mean, data.std),
                              server_round=server_round, noise_index=index)
    except TrainingDiverged as err:  # the server names the round and client and stops
        return Message(content=RecordDict({"metrics": labels, DIVERGED: ConfigRecord(
            {"reason": str(err)})}), reply_to=msg)
    metrics["lr"] = setting.lr  # this round's (training.schedule)
    if exp.client_validation:
        noise_gen = generator(exp.seed, "client-evaluation", server_round, index, device=device)
        metrics["val_acc_noisy"] = accuracy(model, data.val, exp.evaluation.batch_size, device,
                                            sigma, setting.noise_c, noise_gen,
                                            setting.weight_bits, setting.chip)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    reply = RecordDict({"arrays": ArrayRecord(state),
                        "metrics": MetricRecord(metrics | dict(labels))})
    return Message(content=reply, reply_to=msg)
