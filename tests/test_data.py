"""Data sets, splits, augmentation and client partitions.

The torchvision sets are tested on tiny files written here in each set's real on-disk format
(MNIST's idx files, CIFAR's pickled batches, SVHN's .mat files) and read through torchvision's
real classes by `load_data`. Every image carries its own id in its first pixels, so a test can
tell which file image a sample came from.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets as tvd

from analogai_fl import config
from analogai_fl import data as D
from analogai_fl import partitions as P
from analogai_fl.config import ConfigError
from analogai_fl.data import DataNotFoundError
from analogai_fl.partitions import dataset_labels, partition_indices
from analogai_fl.settings import Experiment


def settings(cfg: dict):
    return Experiment.from_config(cfg).data


def load_data(cfg: dict, download: bool = False) -> D.Splits:
    return D.load_data(settings(cfg), download)


def client_dataset(splits, cfg: dict, k: int):
    return P.client_dataset(splits, settings(cfg), k)


def describe_partition(splits, cfg: dict):
    return P.describe_partition(splits, settings(cfg))

N_TRAIN, N_TEST = 80, 20
SHAPES = {"mnist": (1, 28), "fashionmnist": (1, 28), "cifar10": (3, 32), "cifar100": (3, 32),
          "svhn": (3, 32)}
CLASSES = {"mnist": 10, "fashionmnist": 10, "cifar10": 10, "cifar100": 100, "svhn": 10}
TORCHVISION = list(SHAPES)


def tiny_images(name: str, n: int, offset: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, C, H, W) uint8 images with channel-dependent brightness, and labels.

    Pixels [0, 0] and [0, 1] of channel 0 hold the image's id (offset + i) in base 256.
    """
    channels, side = SHAPES[name]
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, channels, side, side), dtype=np.uint8)
    for c in range(channels):  # make the channels differ, so per-channel stats matter
        images[:, c] = (images[:, c].astype(np.int64) * (c + 1) // 4 + 20 * c).astype(np.uint8)
    ids = np.arange(offset, offset + n)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = ids % 256, ids // 256
    labels = np.arange(n) % CLASSES[name]
    rng.shuffle(labels)
    return images, labels


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: magic (0, 0, type 0x08 = uint8, ndim), big-endian sizes, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_pickle(path: Path, obj: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return md5(path)


def write_data_set(name: str, root: Path, seed: int = 0) -> dict:
    """Writes a tiny `name` under `root` in torchvision's layout; returns its arrays and md5s."""
    train_x, train_y = tiny_images(name, N_TRAIN, 0, seed)
    test_x, test_y = tiny_images(name, N_TEST, N_TRAIN, seed + 1)
    md5s: dict[str, str] = {}
    if name in ("mnist", "fashionmnist"):
        raw = root / {"mnist": "MNIST", "fashionmnist": "FashionMNIST"}[name] / "raw"
        write_idx(raw / "train-images-idx3-ubyte", train_x[:, 0])
        write_idx(raw / "train-labels-idx1-ubyte", train_y)
        write_idx(raw / "t10k-images-idx3-ubyte", test_x[:, 0])
        write_idx(raw / "t10k-labels-idx1-ubyte", test_y)
    elif name == "cifar10":
        folder = root / "cifar-10-batches-py"
        for i, chunk in enumerate(np.array_split(np.arange(N_TRAIN), 5)):
            md5s[f"data_batch_{i + 1}"] = write_pickle(
                folder / f"data_batch_{i + 1}",
                {"data": train_x[chunk].reshape(len(chunk), -1), "labels": train_y[chunk].tolist()})
        md5s["test_batch"] = write_pickle(folder / "test_batch", {
            "data": test_x.reshape(N_TEST, -1), "labels": test_y.tolist()})
        md5s["batches.meta"] = write_pickle(folder / "batches.meta", {
            "label_names": [f"class{i}" for i in range(10)]})
    elif name == "cifar100":
        folder = root / "cifar-100-python"
        for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
            md5s[split] = write_pickle(folder / split, {
                "data": x.reshape(len(x), -1), "fine_labels": y.tolist(),
                "coarse_labels": (y // 5).tolist()})
        md5s["meta"] = write_pickle(folder / "meta", {
            "fine_label_names": [f"class{i}" for i in range(100)]})
    elif name == "svhn":
        root.mkdir(parents=True, exist_ok=True)
        for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
            path = root / f"{split}_32x32.mat"
            # SVHN stores X as (H, W, C, N) and the digit 0 as label 10
            scipy.io.savemat(path, {"X": x.transpose(2, 3, 1, 0),
                                    "y": np.where(y == 0, 10, y).reshape(-1, 1)})
            md5s[f"{split}_32x32.mat"] = md5(path)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
            "md5s": md5s}


def accept_tiny_files(monkeypatch: pytest.MonkeyPatch, name: str, md5s: dict) -> None:
    """torchvision checks the md5 of CIFAR's and SVHN's official files: point its md5 tables
    at the tiny files' md5s (the production code keeps the check)."""
    if name == "cifar10" or name == "cifar100":
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        monkeypatch.setattr(cls, "train_list", [[f, md5s[f]] for f, _ in cls.train_list])
        monkeypatch.setattr(cls, "test_list", [[f, md5s[f]] for f, _ in cls.test_list])
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5s[cls.meta["filename"]]})
    elif name == "svhn":
        table = {split: [url, file, md5s.get(file, digest)]
                 for split, (url, file, digest) in tvd.SVHN.split_list.items()}
        monkeypatch.setattr(tvd.SVHN, "split_list", table)


@pytest.fixture(autouse=True)
def fresh_caches():
    D.torchvision_splits.cache_clear()
    P._cached_partition.cache_clear()
    yield
    D.torchvision_splits.cache_clear()
    P._cached_partition.cache_clear()


def tiny_cfg(name: str, root: Path, **changes) -> dict:
    return config.defaults() | {"data.name": name, "data.root": str(root),
                                "data.val_fraction": 0.25, "data.augment": False} | changes


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """tiny(name, **cfg changes) -> (cfg, written arrays)."""
    def make(name: str, **changes):
        root = tmp_path / name
        written = write_data_set(name, root)
        accept_tiny_files(monkeypatch, name, written["md5s"])
        return tiny_cfg(name, root, **changes), written
    return make


def pixels(x: torch.Tensor, splits: D.Splits) -> torch.Tensor:
    """Normalised image back to uint8 pixels via Splits.mean / Splits.std."""
    mean, std = torch.tensor(splits.mean).view(-1, 1, 1), torch.tensor(splits.std).view(-1, 1, 1)
    return (x * std + mean).mul(255).round().to(torch.uint8)


def image_id(x: torch.Tensor, splits: D.Splits) -> int:
    p = pixels(x, splits)
    return int(p[0, 0, 0]) + 256 * int(p[0, 0, 1])


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


# ---------------------------------------------------------------- partitions


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


def test_max_train_examples_applies_to_digits_too(cfg, digits):
    small = load_data(cfg | {"data.max_train_examples": 50})
    assert len(small.train) == 50
    assert small.val is digits.val and small.test is digits.test and small.mean == digits.mean
    assert torch.equal(small.train.tensors[0], digits.train.tensors[0][:50])
    assert load_data(cfg | {"data.max_train_examples": 50}) is small  # cached


# --- the official IDX files where a distribution put them (e.g. Debian) ----------------------

def write_idx_folder(folder: Path, gzipped: bool) -> dict:
    """The four official Fashion-MNIST file names directly in `folder` (tiny contents)."""
    import gzip
    train_x, train_y = tiny_images("fashionmnist", N_TRAIN, 0, 0)
    test_x, test_y = tiny_images("fashionmnist", N_TEST, N_TRAIN, 1)
    for stem, array in (("train-images-idx3-ubyte", train_x[:, 0]),
                        ("train-labels-idx1-ubyte", train_y),
                        ("t10k-images-idx3-ubyte", test_x[:, 0]),
                        ("t10k-labels-idx1-ubyte", test_y)):
        write_idx(folder / stem, array)
        if gzipped:
            raw = (folder / stem).read_bytes()
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
            (folder / stem).unlink()
    return {"train_x": train_x, "test_x": test_x, "test_y": test_y}


@pytest.mark.parametrize("gzipped", [True, False])
def test_a_folder_of_official_idx_files_loads_without_being_written(tmp_path, gzipped):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    written = write_idx_folder(folder, gzipped)
    before = sorted(p.name for p in folder.iterdir())
    folder.chmod(0o555)  # read-only, as /usr/share is for normal users
    try:
        splits = load_data(tiny_cfg("fashionmnist", folder, **{"data.image_size": 28}))
    finally:
        folder.chmod(0o755)
    assert sorted(p.name for p in folder.iterdir()) == before
    assert len(splits.train) + len(splits.val) == N_TRAIN and len(splits.test) == N_TEST
    assert torch.equal(splits.test.labels, torch.as_tensor(written["test_y"], dtype=torch.long))
    assert image_id(splits.test[3][0], splits) == N_TRAIN + 3  # the images in file order


@pytest.mark.parametrize("damage,message", [
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated or wrong file"),
    (lambda p: p.write_bytes(b"\x00\x00\x0d\x03" + p.read_bytes()[4:]), "type 0x0d"),
])
def test_a_wrong_or_truncated_idx_file_is_named(tmp_path, damage, message):
    folder = tmp_path / "fmnist"
    folder.mkdir()
    write_idx_folder(folder, gzipped=False)
    damage(folder / "t10k-images-idx3-ubyte")
    with pytest.raises(ConfigError, match=f"t10k-images-idx3-ubyte.*{message}"):
        load_data(tiny_cfg("fashionmnist", folder))


def test_a_truncated_gzip_archive_is_named(tmp_path):
    folder = tmp_path / "fmnist"
    folder.mkdir()
    write_idx_folder(folder, gzipped=True)
    archive = folder / "train-labels-idx1-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:20])
    with pytest.raises(ConfigError, match="train-labels-idx1-ubyte.gz' cannot be read"):
        load_data(tiny_cfg("fashionmnist", folder))


DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def test_the_real_fashion_mnist_from_debians_package():
    """End to end on the real files (.ci/run installs dataset-fashion-mnist; outside CI the
    test is skipped where the package is not installed)."""
    import os
    if not DEBIAN_FASHION_MNIST.is_dir() and not os.environ.get("CI"):
        pytest.skip("apt-get install dataset-fashion-mnist to run this test")
    cfg = config.defaults() | {"data.name": "fashionmnist",
                               "data.root": str(DEBIAN_FASHION_MNIST)}
    splits = load_data(cfg)
    assert len(splits.train) + len(splits.val) == 60_000 and len(splits.test) == 10_000
    labels = torch.cat([splits.train.labels, splits.val.labels])
    assert torch.bincount(labels).tolist() == [6000] * 10  # ten classes of equal size
    assert torch.bincount(splits.test.labels).tolist() == [1000] * 10
    assert splits.in_channels == 1 and splits.train[0][0].shape == (1, 32, 32)
    assert 0.27 < splits.mean[0] < 0.30  # Fashion-MNIST's published pixel mean is 0.286


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
    from clients.msnat_client import DATA_ROOT_KEY, train

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
