"""The official IDX files of MNIST and Fashion-MNIST where a distribution put them, e.g.
Debian's dataset-fashion-mnist (`analogai_fl.idx`, read through `load_data`): plain or
gzipped, in a read-only folder, wrong or truncated files named."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch
from helpers import N_TEST, N_TRAIN, image_id, load_data, tiny_cfg, write_idx_folder

from analogai_fl import config
from analogai_fl.data import torchvision_splits
from analogai_fl.errors import ConfigError

pytestmark = pytest.mark.usefixtures("fresh_caches")


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
    # the same folder named as MNIST: its files have the same names, but not its content
    wrong = cfg | {"data.name": "mnist"}
    with pytest.raises(ConfigError, match=r"train-images-idx3-ubyte.gz' is fashionmnist's "
                                          r"train-images-idx3-ubyte by its content, not "
                                          r"mnist's"):
        load_data(wrong)


def _known_as_fashion(monkeypatch, folder):
    """The tiny files of `folder` registered as the official Fashion-MNIST ones."""
    import hashlib

    from analogai_fl import idx
    known = {hashlib.sha256(p.read_bytes()).hexdigest(): ("fashionmnist", p.name)
             for p in folder.iterdir()}
    monkeypatch.setattr(idx, "UNPACKED_SHA256", known)


def test_idx_files_of_another_data_set_or_split_are_refused_by_content(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist"
    write_idx_folder(folder, gzipped=False)
    _known_as_fashion(monkeypatch, folder)
    assert len(load_data(tiny_cfg("fashionmnist", folder)).test) == N_TEST
    with pytest.raises(ConfigError, match=r"is fashionmnist's .* not mnist's"):
        load_data(tiny_cfg("mnist", folder))
    train, test = folder / "train-labels-idx1-ubyte", folder / "t10k-labels-idx1-ubyte"
    train.rename(tmp_path / "x")
    test.rename(train)
    (tmp_path / "x").rename(test)  # the labels of the two splits swapped
    torchvision_splits.cache_clear()  # the folder changed under the same settings
    with pytest.raises(ConfigError, match=r"'.*train-labels-idx1-ubyte' is fashionmnist's "
                                          r"t10k-labels-idx1-ubyte by its content, not "
                                          r"fashionmnist's train-labels-idx1-ubyte"):
        load_data(tiny_cfg("fashionmnist", folder))


def test_a_full_size_file_that_is_not_fashion_mnists_is_refused(tmp_path, monkeypatch):
    """MNIST's unpacked files are not known here by digest, but they have the official
    sizes: under data.name='fashionmnist' such a file must be Fashion-MNIST's."""
    from analogai_fl import idx
    folder = tmp_path / "mnist-like"
    write_idx_folder(folder, gzipped=True)
    sizes = {p.name.removesuffix(".gz"): len(gzip.decompress(p.read_bytes()))
             for p in folder.iterdir()}
    monkeypatch.setattr(idx, "OFFICIAL_SIZES", sizes)  # the tiny files play full-size ones
    monkeypatch.setattr(idx, "UNPACKED_SHA256", {})
    with pytest.raises(ConfigError, match=r"has the size of the official .* not "
                                          r"Fashion-MNIST's content"):
        load_data(tiny_cfg("fashionmnist", folder))
    assert len(load_data(tiny_cfg("mnist", folder)).test) == N_TEST  # not verifiable: kept
