"""The ClientApp (`clients.msnat_client`): a node's data comes from its own node config."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import N_TRAIN, experiment, tiny_cfg, write_idx_folder

from analogai_fl.data import DataNotFoundError
from clients.msnat_client import DATA_ROOT_KEY, node_data


def test_a_node_reads_its_data_from_its_own_node_config(tmp_path):
    data = experiment(**{"data.root": "/server/path"}).data
    assert node_data(data, {}) is data  # simulation: the run's data.root
    mine = node_data(data, {DATA_ROOT_KEY: str(tmp_path), "partition-id": 0})
    assert mine.root == tmp_path.resolve() and mine.name == data.name


@pytest.mark.usefixtures("fresh_caches")
def test_a_supernodes_client_reads_its_own_data_root_not_the_servers_path(tmp_path,
                                                                          server_task):
    """On the Deployment Engine the data stays on the node: the ClientApp of a SuperNode
    started with --node-config "data-root='...'" trains on that folder's files, whatever
    data.root the server sent (here a path that exists on no node)."""
    import json

    from flwr.app import (
        ArrayRecord,
        ConfigRecord,
        Context,
        Message,
        MessageType,
        RecordDict,
    )

    from analogai_fl.models import build_model
    from analogai_fl.wire import CONFIG_KEY
    from clients.msnat_client import train

    node_folder = tmp_path / "on-the-node"
    node_folder.mkdir()
    write_idx_folder(node_folder, gzipped=True)
    cfg = tiny_cfg("fashionmnist", tmp_path / "only-on-the-server", **{
        "data.image_size": 28, "training.use_neg": False})
    message = Message(RecordDict({
        "arrays": ArrayRecord(build_model("lenet", 1, 10, 28).state_dict()),
        "config": ConfigRecord({CONFIG_KEY: json.dumps(cfg).encode(), "sigma": 0.1,
                                "noise-index": 0, "server-round": 1, "proximal-mu": 0.0,
                                "try": 1})}), dst_node_id=1, message_type=MessageType.TRAIN)

    def context(node_config: dict) -> Context:
        return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(),
                       run_config={})

    reply = train(message, context({DATA_ROOT_KEY: str(node_folder), "partition-id": 0}))
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == N_TRAIN - round(0.25 * N_TRAIN)  # this node's files
    assert np.isfinite(metrics["train_loss"])
    with pytest.raises(DataNotFoundError, match="only-on-the-server"):
        train(message, context({}))  # without it: the server's path, absent here
