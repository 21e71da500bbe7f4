"""The official IDX files of MNIST and Fashion-MNIST, read where they lie.

Distributions such as Debian's `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist/`)
ship the four official files, gzipped or not, in one folder that normal users cannot write:

    train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]

torchvision's MNIST classes want them in `<root>/<ClassName>/raw/` and check the gzip
archives' MD5s, which recompressed archives fail (the unpacked bytes are the official ones).
`read_split` reads such a folder directly, without writing anything: the IDX header (magic
number 0x0000, type 0x08 = unsigned byte, number of dimensions, then each size as a
big-endian int32; Y. LeCun's format description, yann.lecun.com/exdb/mnist) must match the
file's length exactly, so a truncated or wrong file is refused with its name. gzip checks
its own CRC while reading.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError

SPLITS = {True: "train", False: "t10k"}
UNSIGNED_BYTE = 0x08


class IdxError(ConfigError):
    """An IDX file that is not what its name says; the message names the file."""


# What the official files are, by content: MNIST and Fashion-MNIST ship files of the same
# names and formats, so a folder of one passes for the other by name alone.
# SHA-256 of the unpacked official Fashion-MNIST files, measured 2026-12-03 on Debian's
# dataset-fashion-mnist (its unpacked bytes are the official ones; the sizes match
# zalandoresearch/fashion-mnist's). MNIST's unpacked digests are not known here.
UNPACKED_SHA256 = {
    "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888":
        ("fashionmnist", "train-images-idx3-ubyte"),
    "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9":
        ("fashionmnist", "train-labels-idx1-ubyte"),
    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b":
        ("fashionmnist", "t10k-images-idx3-ubyte"),
    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34":
        ("fashionmnist", "t10k-labels-idx1-ubyte"),
}


def _archive_md5s() -> dict[str, tuple[str, str]]:
    """MD5 of each official .gz archive (torchvision's `MNIST.resources` and
    `FashionMNIST.resources`) -> (data set, file stem)."""
    import torchvision.datasets as tvd

    return {md5: (name, file.removesuffix(".gz"))
            for name, cls in (("mnist", tvd.MNIST), ("fashionmnist", tvd.FashionMNIST))
            for file, md5 in cls.resources}


# Unpacked sizes in bytes of the official files, the same for MNIST and Fashion-MNIST
# (header + 60,000 or 10,000 images of 28x28, or labels; both data sets' documentation).
OFFICIAL_SIZES = {"train-images-idx3-ubyte": 47040016, "train-labels-idx1-ubyte": 60008,
                  "t10k-images-idx3-ubyte": 7840016, "t10k-labels-idx1-ubyte": 10008}


def identify(data: bytes, unpacked: bytes, gzipped: bool) -> tuple[str, str] | None:
    """(data set, file stem) of an official MNIST or Fashion-MNIST file by its content (the
    file's bytes `data`, and `unpacked` them): an official .gz archive by its MD5, an
    unpacked file by its SHA-256; None if unknown."""
    if gzipped:
        known = _archive_md5s().get(hashlib.md5(data, usedforsecurity=False).hexdigest())
        if known:
            return known
    return UNPACKED_SHA256.get(hashlib.sha256(unpacked).hexdigest())


def _check_content(path: Path, stem: str, name: str, data: bytes, unpacked: bytes) -> None:
    """IdxError naming `path` when its content is another data set's or another split's
    official file than data set `name` expects as `stem`, or (for Fashion-MNIST, whose
    unpacked digests are known) a file of the official size that is not the official one
    (MNIST's files have the same sizes)."""
    known = identify(data, unpacked, path.suffix == ".gz")
    if known is not None and known != (name, stem):
        raise IdxError(f"IDX file '{path}' is {known[0]}'s {known[1]} by its content, not "
                       f"{name}'s {stem}: data.root holds another data set (or split) "
                       f"than data.name='{name}'")
    if known is None and name == "fashionmnist" and len(unpacked) == OFFICIAL_SIZES[stem]:
        raise IdxError(f"IDX file '{path}' has the size of the official {stem} but not "
                       "Fashion-MNIST's content (its SHA-256 differs; MNIST's files have "
                       "the same names and sizes): data.root holds another data set "
                       "than data.name='fashionmnist'")


def check_content(root: Path, name: str) -> None:
    """`_check_content` of each of the four files in `root` (torchvision's
    `<root>/<Class>/raw` layout, which torchvision itself then reads)."""
    for stem, path in (files_in(root) or {}).items():
        data, unpacked = _read_bytes(path)
        _check_content(path, stem, name, data, unpacked)


def _read_bytes(path: Path) -> tuple[bytes, bytes]:
    """(the file's bytes, unpacked); IdxError naming `path` for a damaged gzip archive."""
    data = path.read_bytes()
    try:
        return data, gzip.decompress(data) if path.suffix == ".gz" else data
    except (OSError, EOFError) as err:  # a damaged or truncated gzip archive
        raise IdxError(f"IDX file '{path}' cannot be read: {err}") from None


def _path(root: Path, stem: str) -> Path | None:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def files_in(root: Path) -> dict[str, Path] | None:
    """The four IDX files directly in `root` (each gzipped or not), or None if any is
    missing."""
    stems = [f"{SPLITS[train]}-{kind}" for train in (True, False)
             for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    found = {stem: _path(root, stem) for stem in stems}
    return found if all(found.values()) else None


def read_array(path: Path, ndim: int, name: str | None = None) -> np.ndarray:
    """An unsigned-byte IDX array of `ndim` dimensions; IdxError naming `path` otherwise,
    and (with data set `name`) when its content is not that data set's file of its name."""
    data, raw = _read_bytes(path)
    if name is not None:
        _check_content(path, path.name.removesuffix(".gz"), name, data, raw)
    if len(raw) < 4 + 4 * ndim:
        raise IdxError(f"IDX file '{path}' is {len(raw)} bytes: too short for a header")
    zero, kind, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or kind != UNSIGNED_BYTE or dims != ndim:
        raise IdxError(f"IDX file '{path}' has header magic {zero:#06x}, type {kind:#04x}, "
                       f"{dims} dimensions; expected 0x0000, 0x08 (unsigned byte), {ndim}")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(shape)):
        raise IdxError(f"IDX file '{path}' holds {len(body)} data bytes but its header "
                       f"announces {'x'.join(map(str, shape))} = {int(np.prod(shape))} "
                       "(truncated or wrong file)")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def read_split(root: Path, train: bool, num_classes: int = 10, name: str | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 1, 28, 28) and long labels of one official split in `root`, each
    file checked by content against data set `name` when given (`read_array`)."""
    found = files_in(root)
    if found is None:
        raise FileNotFoundError(f"no IDX files in {root}")
    images_path = found[f"{SPLITS[train]}-images-idx3-ubyte"]
    labels_path = found[f"{SPLITS[train]}-labels-idx1-ubyte"]
    images, labels = read_array(images_path, 3, name), read_array(labels_path, 1, name)
    if images.shape[1:] != (28, 28):
        raise IdxError(f"IDX file '{images_path}' holds {images.shape[1]}x{images.shape[2]} "
                       "images; MNIST and Fashion-MNIST images are 28x28")
    if len(labels) != len(images):
        raise IdxError(f"IDX files '{images_path}' and '{labels_path}' hold {len(images)} "
                       f"images but {len(labels)} labels")
    if labels.max(initial=0) >= num_classes:
        raise IdxError(f"IDX file '{labels_path}' has label {labels.max()}; expected 0.."
                       f"{num_classes - 1}")
    return (torch.from_numpy(images.copy()).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)))
