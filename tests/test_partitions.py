"""Client partitions of the training split (`analogai_fl.partitions`): full, iid and
Dirichlet shards, on the digits set and on a tiny torchvision set (helpers.write_data_set)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import experiment, load_data, settings

from analogai_fl import data as D
from analogai_fl import partitions as P
from analogai_fl.errors import ConfigError
from analogai_fl.partitions import dataset_labels, partition_indices

pytestmark = pytest.mark.usefixtures("fresh_caches")


def client_dataset(splits, cfg: dict, k: int):
    return P.client_dataset(splits, settings(cfg), k)


def describe_partition(splits, cfg: dict):
    return P.describe_partition(splits, settings(cfg))


def part_cfg(cfg: dict, scheme: str, k: int = 5, **changes) -> dict:
    return cfg | {"data.partition": scheme, "training.client_num_in_total": k} | changes


def shards(splits, cfg) -> list[np.ndarray]:
    k_total = cfg["training.client_num_in_total"]
    return [np.asarray(client_dataset(splits, cfg, k).indices) for k in range(k_total)]


def test_full_partition_gives_every_client_the_whole_training_split(cfg, digits):
    c = part_cfg(cfg, "full")
    assert all(client_dataset(digits, c, k) is digits.train for k in range(5))
    assert [d["examples"] for d in describe_partition(digits, c)] == [len(digits.train)] * 5


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partitions_are_disjoint_cover_the_split_and_are_deterministic(cfg, digits, scheme):
    c = part_cfg(cfg, scheme)
    parts = shards(digits, c)
    n = len(digits.train)
    assert sum(len(p) for p in parts) == n
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))  # disjoint, complete
    assert min(len(p) for p in parts) >= 1
    P._cached_partition.cache_clear()
    assert all(np.array_equal(a, b) for a, b in zip(parts, shards(digits, c)))  # same seed
    other = shards(digits, c | {"seed": cfg["seed"] + 1})
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))  # seed matters
    # a client's data set yields exactly its examples
    sub = client_dataset(digits, c, 2)
    x, y = sub[0]
    assert torch.equal(x, digits.train[int(parts[2][0])][0])
    description = describe_partition(digits, c)
    assert [d["examples"] for d in description] == [len(p) for p in parts]
    assert all(sum(d["label_counts"]) == d["examples"] for d in description)


def test_iid_shards_are_near_equal_random_samples(cfg, digits):
    parts = shards(digits, part_cfg(cfg, "iid", k=4))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert not np.array_equal(parts[0], np.arange(len(parts[0])))  # shuffled, not cut in order


def label_skew(parts: list[np.ndarray], labels: np.ndarray, classes: int) -> float:
    """Mean total-variation distance of the clients' label distributions from the global one."""
    overall = np.bincount(labels, minlength=classes) / len(labels)
    return float(np.mean([0.5 * np.abs(np.bincount(labels[p], minlength=classes) / len(p)
                                       - overall).sum() for p in parts]))


def test_dirichlet_skew_grows_as_alpha_shrinks(cfg, digits):
    labels = dataset_labels(digits.train)
    skew = {}
    for alpha in (100.0, 1.0, 0.05):
        skew[alpha] = np.mean([label_skew(partition_indices(labels, 5, "dirichlet", alpha, s),
                                          labels, 10) for s in range(3)])
    assert skew[100.0] < skew[1.0] < skew[0.05]
    assert skew[100.0] < 0.1 and skew[0.05] > 0.4
    iid = label_skew(partition_indices(labels, 5, "iid", 0.5, 0), labels, 10)
    assert iid < 0.1


def test_partitions_that_leave_a_client_empty_are_clear_errors():
    with pytest.raises(ConfigError, match="client_num_in_total"):
        partition_indices(np.arange(3) % 2, 5, "iid", 0.5, 0)
    with pytest.raises(ConfigError, match="data.alpha"):
        partition_indices(np.zeros(6, dtype=int), 5, "dirichlet", 0.01, 0)


def test_client_dataset_on_a_torchvision_set(tiny):
    cfg, _ = tiny("fashionmnist", **{"data.partition": "dirichlet", "data.alpha": 1.0,
                                     "training.client_num_in_total": 3})
    splits = load_data(cfg)
    sizes = [len(client_dataset(splits, cfg, k)) for k in range(3)]
    assert sum(sizes) == len(splits.train) and min(sizes) >= 1
    with pytest.raises(ValueError):
        client_dataset(splits, cfg, 3)


def shares_of(**keys) -> list[int]:
    """The examples of each client's share under the default experiment with `keys`."""
    exp = experiment(**keys)
    return [d["examples"] for d in P.describe_partition(D.load_data(exp.data), exp.data)]


def test_too_few_examples_for_the_clients_work_after_each_advised_change():
    """Three training examples for five iid clients are refused; each change the message
    names (the full partition, fewer clients, more data) gives every client examples."""
    few = {"data.partition": "iid", "data.max_train_examples": 3}
    with pytest.raises(ConfigError, match=r"the training split has only 3; use "
                       r"data.partition='full', fewer clients or more data "
                       r"\(data.max_train_examples\)"):
        shares_of(**few)
    assert shares_of(**few | {"data.partition": "full"}) == [3] * 5
    assert shares_of(**few | {"training.client_num_in_total": 3}) == [1] * 3
    assert shares_of(**few | {"data.max_train_examples": 5}) == [1] * 5


def test_a_dirichlet_draw_that_fails_works_with_more_data_or_fewer_clients():
    """Twenty examples over five Dirichlet(0.1) clients leave one short in every draw; more
    data, or fewer clients, as the message says, partitions them."""
    short = {"data.partition": "dirichlet", "data.alpha": 0.1, "data.max_train_examples": 20,
             "seed": 1}
    with pytest.raises(ConfigError, match=r"data.alpha=0.1 left a client with fewer than 2 "
                       r"examples in 10 draws .*use more data \(data.max_train_examples\) or "
                       r"fewer clients \(training.client_num_in_total\)$"):
        shares_of(**short)
    more_data = shares_of(**short | {"data.max_train_examples": 100})
    fewer_clients = shares_of(**short | {"training.client_num_in_total": 2})
    assert len(more_data) == 5 and sum(more_data) == 100 and min(more_data) >= 2
    assert len(fewer_clients) == 2 and sum(fewer_clients) == 20 and min(fewer_clients) >= 2
