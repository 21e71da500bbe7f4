"""The clients' shares of the training split (`data.partition`).

``full``: every client trains on all of it (MSNAT's clients are noise levels, not data
owners). ``iid``: disjoint, near-equal random shards. ``dirichlet``: label-skewed shards with
concentration `data.alpha` (analog edge devices that each hold their own data). Shards are
made by Flower Datasets' `IidPartitioner` / `DirichletPartitioner` on the local training
labels (no hub access) and are deterministic for a given seed.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
from torch.utils.data import Dataset, Subset, TensorDataset

from .data import DataSettings, Splits
from .errors import ConfigError
from .images import ImageDataset

PARTITIONS = ("full", "iid", "dirichlet")


def dataset_labels(data: Dataset) -> np.ndarray:
    """Labels of a data set made here (ImageDataset, TensorDataset, or a Subset of them)."""
    if isinstance(data, Subset):
        return dataset_labels(data.dataset)[np.asarray(data.indices)]
    if isinstance(data, ImageDataset):
        return data.labels.numpy()
    if isinstance(data, TensorDataset):
        return data.tensors[1].numpy()
    return np.asarray([int(y) for _, y in data])


def partition_indices(labels: np.ndarray, num_clients: int, scheme: str, alpha: float,
                      seed: int) -> list[np.ndarray]:
    """Indices (into `labels`) of each client's share, by Flower Datasets' partitioners.

    ``full``: everyone gets every index. ``iid``: a seeded shuffle cut into `num_clients`
    contiguous near-equal shards (`IidPartitioner`). ``dirichlet``: per class, the examples are
    split among the clients in proportions drawn from Dirichlet(alpha)
    (`DirichletPartitioner`, redrawn up to 10 times until every client has two examples:
    a BatchNorm model needs two per training batch).
    """
    n = len(labels)
    if scheme not in PARTITIONS:
        raise ConfigError(f"key 'data.partition' expects one of "
                          f"{', '.join(repr(p) for p in PARTITIONS)}, got {scheme!r}")
    if scheme == "full":
        return [np.arange(n) for _ in range(num_clients)]
    if num_clients > n:
        raise ConfigError(f"data.partition='{scheme}' cannot give each of the "
                          f"{num_clients} clients (training.client_num_in_total) an example: "
                          f"the training split has only {n}; use data.partition='full', fewer "
                          "clients or more data (data.max_train_examples)")
    from datasets import Dataset as HFDataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    table = HFDataset.from_dict({"index": np.arange(n), "label": np.asarray(labels)})
    if scheme == "iid":
        partitioner = IidPartitioner(num_partitions=num_clients)
        partitioner.dataset = table.shuffle(seed=seed, keep_in_memory=True)
    else:
        partitioner = DirichletPartitioner(num_partitions=num_clients, partition_by="label",
                                           alpha=float(alpha), min_partition_size=2,
                                           self_balancing=False, shuffle=True, seed=seed)
        partitioner.dataset = table
    try:
        with warnings.catch_warnings():  # its retry warnings: we raise a clear error instead
            warnings.simplefilter("ignore")
            parts = [np.asarray(partitioner.load_partition(k)["index"], dtype=np.int64)
                     for k in range(num_clients)]
    except ValueError as err:
        raise ConfigError(
            f"data.partition='dirichlet' with data.alpha={alpha:g} left a client with fewer "
            f"than 2 examples in 10 draws ({num_clients} clients, {n} training examples; "
            f"Flower Datasets: {err}); use more data (data.max_train_examples) or fewer "
            "clients (training.client_num_in_total)") from None
    empty = [k for k, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise ConfigError(f"data.partition='{scheme}' left client(s) {empty} without examples "
                          f"({num_clients} clients, {n} training examples)")
    return parts


@functools.lru_cache(maxsize=8)
def _cached_partition(data: Dataset, num_clients: int, scheme: str, alpha: float,
                      seed: int) -> tuple[np.ndarray, ...]:
    return tuple(partition_indices(dataset_labels(data), num_clients, scheme, alpha, seed))


def _partition(splits: Splits, data: DataSettings) -> tuple[np.ndarray, ...]:
    return _cached_partition(splits.train, data.clients, data.partition, data.alpha, data.seed)


def client_dataset(splits: Splits, data: DataSettings, noise_index: int) -> Dataset:
    """Client `noise_index`'s share of the training split (see `partition_indices`)."""
    if not 0 <= noise_index < data.clients:
        raise ValueError(f"noise_index {noise_index} outside 0..{data.clients - 1} "
                         "(training.client_num_in_total)")
    if data.partition == "full":
        return splits.train
    return Subset(splits.train, _partition(splits, data)[noise_index].tolist())


def describe_partition(splits: Splits, data: DataSettings) -> list[dict]:
    """Per client: its index, number of examples and label histogram (for the run log)."""
    labels = dataset_labels(splits.train)
    if data.partition == "full":
        parts: tuple[np.ndarray, ...] = tuple(np.arange(len(labels))
                                              for _ in range(data.clients))
    else:
        parts = _partition(splits, data)
    return [{"client": k, "examples": len(p),
             "label_counts": np.bincount(labels[p], minlength=splits.num_classes).tolist()}
            for k, p in enumerate(parts)]
