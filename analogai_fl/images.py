"""uint8 images in memory: the data set that normalises them when read (`ImageDataset`), the
training augmentation (`RandomCropFlip`), resizing and per-channel statistics. Every image data
set of the project (torchvision's, the IDX files, your own image folder) goes through them
(`data`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset


class RandomCropFlip:
    """Random crop of a zero-padded uint8 image (C, H, W) back to its size, and optionally a
    random horizontal flip: what ``v2.Compose([v2.RandomCrop(size, padding),
    v2.RandomHorizontalFlip()])`` does, at a fraction of its cost (the op alone: 20 vs 220 us
    per image; a DataLoader epoch of 32x32 RGB images with normalisation: about 110 vs 250 us
    per image on this 2-core machine). It runs in the clients' training loop, one image at a
    time. It pastes the shifted image into zeros instead of padding, and draws from torch's
    global generator (`torch.manual_seed` makes it reproducible)."""

    def __init__(self, padding: int, flip: bool):
        self.padding, self.flip = padding, flip

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _, h, w = image.shape
        sy, sx = (torch.randint(0, 2 * self.padding + 1, (2,)) - self.padding).tolist()
        out = torch.zeros_like(image)  # out[:, i, j] = image[:, i + sy, j + sx] where inside
        y0, y1, x0, x1 = max(0, -sy), min(h, h - sy), max(0, -sx), min(w, w - sx)
        out[:, y0:y1, x0:x1] = image[:, y0 + sy:y1 + sy, x0 + sx:x1 + sx]
        if self.flip and torch.rand(()) < 0.5:
            out = out.flip(-1)
        return out

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"


class ImageDataset(Dataset):
    """uint8 images (N, C, H, W) in memory, converted to normalised floats when read.

    `augment`, if given, maps one uint8 image (C, H, W) to another (random crop, flip) before
    the conversion; it is applied afresh at every read, so every epoch sees new crops.
    (Per image on purpose: batched conversions were 40x slower here when torch's intra-op
    threads compete with other processes, as Flower's simulated clients do.)
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor,
                 std: torch.Tensor, augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 images (N, C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        self.images, self.labels, self.augment = images, labels.long(), augment
        std = std.float().view(-1, 1, 1)
        self._scale = 1.0 / (255.0 * std)  # x = (pixel / 255 - mean) / std
        self._shift = -mean.float().view(-1, 1, 1) / std

    def __len__(self) -> int:
        return len(self.labels)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(torch.float32).mul_(self._scale).add_(self._shift)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index]
        if self.augment is not None:
            x = self.augment(x)
        return self._normalise(x), self.labels[index]


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images (N, C, H, W) resized to (N, C, size, size) (antialiased; unchanged when
    already that size), in chunks to bound memory."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    from torchvision.transforms.v2 import functional as TF

    return torch.cat([TF.resize(chunk, [size, size], antialias=True)
                      for chunk in images.split(8192)])


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (unbiased) std of uint8 images in [0, 1] pixel units, exact, from
    each channel's histogram of the 256 pixel values."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = sum(torch.bincount(chunk[:, c].reshape(-1), minlength=256)
                     for chunk in images.split(8192)).to(torch.float64)
        n = counts.sum()
        mean = (counts * values).sum() / n
        var = (counts * (values - mean).square()).sum() / max(float(n) - 1, 1.0)
        means.append(mean)
        stds.append(var.clamp_min(1e-12).sqrt())
    return torch.stack(means).float(), torch.stack(stds).float()
