"""Data sets, splits and augmentation (`analogai_fl.data`).

The torchvision sets are tested on tiny files written in each set's real on-disk format
(helpers.write_data_set: MNIST's idx files, CIFAR's pickled batches, SVHN's .mat files) and
read through torchvision's real classes by `load_data`. Every image carries its own id in its
first pixels, so a test can tell which file image a sample came from. Client partitions are
in test_partitions.py, a folder of official IDX files in test_idx.py.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from helpers import (
    CLASSES,
    N_TEST,
    N_TRAIN,
    SHAPES,
    accept_tiny_files,
    experiment,
    image_id,
    load_data,
    pixels,
    tiny_cfg,
    write_data_set,
    write_idx_folder,
)

from analogai_fl import data as D
from analogai_fl.data import DataNotFoundError
from analogai_fl.errors import ConfigError
from analogai_fl.partitions import dataset_labels

pytestmark = pytest.mark.usefixtures("fresh_caches")
TORCHVISION = list(SHAPES)


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_sets_load_with_their_shapes_channels_and_classes(tiny, name):
    cfg, written = tiny(name)
    splits = load_data(cfg)
    channels, _ = SHAPES[name]
    assert (splits.in_channels, splits.num_classes, splits.image_size) == (
        channels, CLASSES[name], 32)
    assert len(splits.mean) == len(splits.std) == channels
    assert len(splits.train) + len(splits.val) == N_TRAIN
    assert len(splits.val) == N_TRAIN // 4
    assert len(splits.test) == N_TEST
    x, y = splits.train[0]
    assert x.shape == (channels, 32, 32) and x.dtype == torch.float32  # MNIST: 28 -> 32
    assert y.dtype == torch.long
    test_labels = [int(splits.test[i][1]) for i in range(N_TEST)]
    # the official test split, in file order (SVHN's label 10 is the digit 0)
    assert test_labels == written["test_y"].tolist()
    assert load_data(cfg) is splits  # cached per process


def test_image_size_key_resizes(tiny):
    cfg, _ = tiny("cifar10", **{"data.image_size": 40})
    splits = load_data(cfg)
    assert splits.image_size == 40
    for data in (splits.train, splits.val, splits.test):
        assert data[0][0].shape == (3, 40, 40)


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_normalised_per_channel_with_the_training_split_statistics(tiny, name):
    cfg, written = tiny(name)
    splits = load_data(cfg)
    x = torch.stack([splits.train[i][0] for i in range(len(splits.train))])
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3
    # mean/std are the raw pixel statistics of exactly the training images, per channel
    ids = [image_id(splits.train[i][0], splits) for i in range(len(splits.train))]
    raw = torch.from_numpy(written["train_x"][ids]).double() / 255
    assert torch.allclose(torch.tensor(splits.mean, dtype=torch.float64),
                          raw.mean(dim=(0, 2, 3)), atol=1e-5)
    assert len(set(np.round(splits.mean, 3))) == 3  # the channels really differ
    # x * std + mean gives back the file's pixels, in [0, 1]
    for data, source, offset in ((splits.val, written["train_x"], 0),
                                 (splits.test, written["test_x"], N_TRAIN)):
        for i in range(len(data)):
            got = pixels(data[i][0], splits)
            assert torch.equal(got, torch.from_numpy(source[image_id(data[i][0], splits) - offset]))


def test_digits_keeps_its_split_and_exposes_mean_and_std(cfg):
    splits = load_data(cfg)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1257, 180, 360)
    assert len(splits.mean) == len(splits.std) == 1 and splits.std[0] > 0
    x = torch.stack([splits.train[i][0] for i in range(len(splits.train))])
    pixel = x * splits.std[0] + splits.mean[0]
    assert pixel.min() >= -1e-5 and pixel.max() <= 1 + 1e-5 and pixel.max() > 0.9
    assert abs(float(x.mean())) < 1e-4


# ---------------------------------------------------------------- validation split


def test_validation_is_carved_from_training_data_and_disjoint(tiny):
    cfg, written = tiny("cifar10")
    splits = load_data(cfg)
    train = {image_id(splits.train[i][0], splits) for i in range(len(splits.train))}
    val = {image_id(splits.val[i][0], splits) for i in range(len(splits.val))}
    test = {image_id(splits.test[i][0], splits) for i in range(len(splits.test))}
    assert not train & val
    assert train | val == set(range(N_TRAIN))  # all from the training file
    assert test == set(range(N_TRAIN, N_TRAIN + N_TEST))  # the official test split
    # stratified: 20 val images of 10 balanced classes -> 2 per class
    assert np.bincount(dataset_labels(splits.val), minlength=10).tolist() == [2] * 10
    # seeded: another seed carves another validation split
    other = load_data(cfg | {"seed": cfg["seed"] + 1})
    assert {image_id(other.val[i][0], other) for i in range(len(other.val))} != val


def test_max_train_examples_limits_the_training_split_after_validation(tiny):
    cfg, _ = tiny("mnist")
    full = load_data(cfg)
    small = load_data(cfg | {"data.max_train_examples": 7})
    assert len(small.train) == 7
    assert len(small.val) == len(full.val)
    assert torch.equal(small.val.images, full.val.images)  # the same validation split
    assert small.mean == full.mean  # normalisation does not depend on the limit


def test_max_train_examples_applies_to_digits_too(cfg, digits):
    small = load_data(cfg | {"data.max_train_examples": 50})
    assert len(small.train) == 50
    # the same validation and test data and normalisation (compared by content: the session's
    # `digits` fixture may have left load_data's small per-process cache since it was made)
    for limited, whole in ((small.val, digits.val), (small.test, digits.test)):
        assert all(torch.equal(a, b) for a, b in zip(limited.tensors, whole.tensors))
    assert small.mean == digits.mean and small.std == digits.std
    assert torch.equal(small.train.tensors[0], digits.train.tensors[0][:50])
    assert load_data(cfg | {"data.max_train_examples": 50}) is small  # cached


# ---------------------------------------------------------------- augmentation


def find_transform(aug: torch.Tensor, original: torch.Tensor, pad: int) -> set[tuple]:
    """All (flipped, dy, dx) with crop(pad(original [flipped])) == aug."""
    found = set()
    side = original.shape[-1]
    for flipped in (False, True):
        src = original.flip(-1) if flipped else original
        padded = torch.nn.functional.pad(src, (pad, pad, pad, pad))
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                if torch.equal(padded[:, dy:dy + side, dx:dx + side], aug):
                    found.add((flipped, dy, dx))
    return found


@pytest.mark.parametrize("name", ["cifar10", "mnist", "svhn"])
def test_augmentation_only_on_training_split_crops_and_flips_cifar_only(tiny, name):
    cfg, written = tiny(name, **{"data.augment": True})
    splits = load_data(cfg)
    torch.manual_seed(0)
    originals = splits.train.images  # resized uint8, un-augmented
    shifts, flips = set(), set()
    for _ in range(40):
        for i in range(3):
            got = pixels(splits.train[i][0], splits)
            found = find_transform(got, originals[i], pad=4)
            assert found, "augmented image is no crop (or flipped crop) of the original"
            shifts |= {(dy, dx) for _, dy, dx in found}
            flips |= {f for f, _, _ in found}
    assert len(shifts) > 10  # the crops change from read to read (= epoch to epoch)
    assert flips == ({False, True} if name == "cifar10" else {False})
    for data in (splits.val, splits.test):
        for i in range(5):
            first = data[i][0]
            assert all(torch.equal(first, data[i][0]) for _ in range(5))
            assert torch.equal(pixels(first, splits), data.images[i])  # never cropped


def test_no_augmentation_when_off(tiny):
    cfg, _ = tiny("cifar10")
    splits = load_data(cfg)
    assert all(torch.equal(splits.train[0][0], splits.train[0][0]) for _ in range(10))


# ---------------------------------------------------------------- missing data, download


@pytest.mark.parametrize("name", TORCHVISION)
def test_missing_data_set_is_a_clear_error_naming_the_path(tmp_path, name):
    cfg = tiny_cfg(name, tmp_path / "nothing")
    folder = {"mnist": "MNIST/raw", "fashionmnist": "FashionMNIST/raw",
              "cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "svhn": ""}[name]
    with pytest.raises(ConfigError) as err:
        load_data(cfg)  # download=False: nothing is fetched
    message = str(err.value)
    assert str(tmp_path / "nothing" / folder).rstrip("/") in message
    assert "data.download=true" in message


def test_data_root_expands_the_home_folder(tmp_path, monkeypatch):
    written = write_data_set("svhn", tmp_path / "home" / "data")
    accept_tiny_files(monkeypatch, "svhn", written["md5s"])
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert len(load_data(tiny_cfg("svhn", "~/data")).test) == N_TEST


@pytest.mark.parametrize("name, module, function", [
    ("cifar10", tvd.cifar, "download_and_extract_archive"),
    ("mnist", tvd.mnist, "download_and_extract_archive"),
    ("svhn", tvd.svhn, "download_url"),
])
def test_failed_download_is_a_clear_error(tmp_path, monkeypatch, name, module, function):
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(module, function, offline)
    cfg = tiny_cfg(name, tmp_path)
    with pytest.raises(DataNotFoundError, match="data.download=true"):
        load_data(cfg)
    assert not calls  # clients (download=False) never download
    with pytest.raises(DataNotFoundError, match=r"downloading .* failed .*internet") as err:
        load_data(cfg, download=True)
    assert calls and str(tmp_path) in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing written into data.root


def test_download_fetches_a_missing_set_once_then_loads_it(tmp_path, monkeypatch):
    root = tmp_path / "data"
    staged = write_data_set("cifar10", tmp_path / "server")
    accept_tiny_files(monkeypatch, "cifar10", staged["md5s"])
    calls = []

    def fake_download(url, download_root, **kwargs):  # stands in for the internet
        calls.append(url)
        src = tmp_path / "server" / "cifar-10-batches-py"
        dst = Path(download_root) / "cifar-10-batches-py"
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            (dst / f.name).write_bytes(f.read_bytes())

    monkeypatch.setattr(tvd.cifar, "download_and_extract_archive", fake_download)
    splits = load_data(tiny_cfg("cifar10", root), download=True)
    assert len(calls) == 1 and len(splits.test) == N_TEST
    D.torchvision_splits.cache_clear()
    assert len(load_data(tiny_cfg("cifar10", root), download=True).test) == N_TEST
    assert len(calls) == 1  # present now: not downloaded again


@pytest.mark.parametrize("name", TORCHVISION)
def test_a_missing_data_set_loads_after_each_way_the_message_gives_to_get_it(
        tmp_path, monkeypatch, name):
    """The message names the files and the folder they go in: copying exactly those files
    from where torchvision put them elsewhere into that folder makes the set load; so does
    setting data.root to the folder that holds them, and (MNIST, Fashion-MNIST) to a folder
    of the official IDX files."""
    elsewhere = tmp_path / "elsewhere"  # torchvision.datasets.X(elsewhere, download=True)
    accept_tiny_files(monkeypatch, name, write_data_set(name, elsewhere)["md5s"])
    root = tmp_path / "data"
    with pytest.raises(ConfigError) as missing:
        load_data(tiny_cfg(name, root))
    files, folder = re.search(r"copy the files (.+) into (\S+); or set data.root to the "
                              r"folder that already holds them", str(missing.value)).groups()
    Path(folder).mkdir(parents=True, exist_ok=True)
    for file in files.split(", "):  # the advice, followed
        (source,) = elsewhere.rglob(file)
        shutil.copy(source, Path(folder) / file)
    assert len(load_data(tiny_cfg(name, root)).test) == N_TEST
    assert len(load_data(tiny_cfg(name, elsewhere)).test) == N_TEST  # data.root, the other way
    if name in ("mnist", "fashionmnist"):
        assert "data.root='/usr/share/datasets/fashion-mnist'" in str(missing.value)
        write_idx_folder(tmp_path / "idx", gzipped=True)
        assert len(load_data(tiny_cfg(name, tmp_path / "idx")).test) == N_TEST


def test_a_missing_data_set_is_downloaded_by_the_server_when_data_download_is_on(
        tmp_path, monkeypatch):
    """With data.download off the server stops naming the missing set; run once with
    data.download=true, as the message says, it downloads it before any work, and a client
    (which never downloads) then reads it from data.root."""
    from analogai_fl.checks import prepare

    staged = write_data_set("cifar10", tmp_path / "server")
    accept_tiny_files(monkeypatch, "cifar10", staged["md5s"])

    def fake_download(url, download_root, **kwargs):  # stands in for the internet
        shutil.copytree(tmp_path / "server" / "cifar-10-batches-py",
                        Path(download_root) / "cifar-10-batches-py", dirs_exist_ok=True)

    monkeypatch.setattr(tvd.cifar, "download_and_extract_archive", fake_download)
    cfg = tiny_cfg("cifar10", tmp_path / "data", **{"data.download": False})
    with pytest.raises(DataNotFoundError, match="run once with data.download=true"):
        prepare(cfg)
    server = prepare(cfg | {"data.download": True})  # the advice, followed
    assert len(server.data.test) == N_TEST
    D.torchvision_splits.cache_clear()
    client = prepare(cfg, download=False)
    assert len(client.data.test) == N_TEST


@pytest.mark.parametrize("changes, key, least", [
    ({"data.val_fraction": 0.001}, "data.val_fraction", 0.0051),
    ({"data.test_fraction": 0.001}, "data.test_fraction", 0.0051),
])
def test_a_digits_split_too_small_to_stratify_is_refused_before_any_work(changes, key, least):
    """Every split the keys can make is checked: the message names the key, the images the
    split would hold and the smallest value that works, and that value does work."""
    from analogai_fl.split_sizes import DIGITS_IMAGES, held_out

    with pytest.raises(ConfigError, match=rf"key '{key}' = 0.001 gives a \w+ split of 2 of "
                                          rf"digits' {DIGITS_IMAGES} images.*at least "
                                          rf"{least:g}$"):
        experiment(**changes)
    fixed = experiment(**{key: least}).data
    splits = D.load_data(fixed)  # the advice followed: scikit-learn stratifies it
    assert min(len(splits.val), len(splits.test)) >= 10
    with pytest.raises(ConfigError, match=key):  # and it is the smallest
        experiment(**{key: round(least - 1e-4, 4)})
    assert held_out(DIGITS_IMAGES, 0.2) == 360


@pytest.mark.parametrize("changes, key", [
    ({"data.test_fraction": 0.995, "data.val_fraction": 0.004}, "data.test_fraction"),
    ({"data.test_fraction": 0.2, "data.val_fraction": 0.795}, "data.val_fraction"),
])
def test_splits_that_leave_too_few_training_images_name_the_key_and_the_largest_value(
        changes, key):
    """Too large a test (or validation) fraction names that key and the largest value
    that works, and that value is the largest; following each piece of advice in turn
    gives splits that scikit-learn stratifies."""
    with pytest.raises(ConfigError, match=rf"^key '{key}' = .* use at most [0-9.]+$") as refused:
        experiment(**changes)
    most = float(str(refused.value).rsplit(" ", 1)[1])
    with pytest.raises(ConfigError, match=rf"^key '{key}'"):  # it is the largest
        experiment(**(changes | {key: round(most + 1e-4, 4)}))
    followed = dict(changes)
    for _ in range(3):  # the advice, followed (a smaller test split may need a validation
        try:            # split that fits in what it leaves: the next message says so)
            settings = experiment(**followed)
            break
        except ConfigError as error:
            key_named = str(error).split("'")[1]
            followed[key_named] = float(str(error).rsplit(" ", 1)[1])
    splits = D.load_data(settings.data)
    assert min(len(splits.train), len(splits.val), len(splits.test)) >= 10


def test_digits_has_the_size_the_split_checks_assume():
    from sklearn.datasets import load_digits

    from analogai_fl.split_sizes import DIGITS_CLASSES, DIGITS_IMAGES
    bunch = load_digits()
    assert (len(bunch.target), len(set(bunch.target))) == (DIGITS_IMAGES, DIGITS_CLASSES)


def test_a_validation_split_that_leaves_no_training_image_is_refused(tmp_path, monkeypatch):
    accept_tiny_files(monkeypatch, "svhn", write_data_set("svhn", tmp_path / "data")["md5s"])
    with pytest.raises(ConfigError, match=rf"'data.val_fraction' = 0.9999 leaves 0 of svhn's "
                                          rf"{N_TRAIN} training images .* at most"):
        load_data(tiny_cfg("svhn", tmp_path / "data", **{"data.val_fraction": 0.9999}))


@pytest.mark.parametrize("name", ["svhn", "mnist"])
def test_a_validation_split_too_large_for_a_torchvision_set_loads_at_the_advised_value(
        tmp_path, monkeypatch, name):
    """The largest data.val_fraction the message names leaves a training image, and
    the split loads with it."""
    accept_tiny_files(monkeypatch, name, write_data_set(name, tmp_path / "data")["md5s"])
    with pytest.raises(ConfigError, match=r"leaves 0 of .* use at most [0-9.]+$") as refused:
        load_data(tiny_cfg(name, tmp_path / "data", **{"data.val_fraction": 0.999}))
    most = float(str(refused.value).rsplit(" ", 1)[1])
    splits = load_data(tiny_cfg(name, tmp_path / "data", **{"data.val_fraction": most}))
    assert len(splits.train) >= 1 and len(splits.train) + len(splits.val) == N_TRAIN
