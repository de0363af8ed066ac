"""Image batches: the in-memory dataset record, augmentation and normalisation.

Only torch operations (no torchvision): :func:`random_crop` pads with zeros and
cuts a random window per image, :func:`random_hflip` mirrors a random half of
the batch, :func:`normalize` subtracts the per-channel mean and divides by the
standard deviation. Random draws use the global torch generator unless a
``generator`` is given, so a training run that restores the RNG state (see
:mod:`neurode.app.train.common`) augments identically after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ImageData", "Augment", "random_crop", "random_hflip", "normalize", "parse_augment"]


@dataclass
class ImageData:
    """An image-classification dataset held in memory.

    Images are stored compactly as ``uint8`` tensors of shape ``(N, C, H, W)``;
    :meth:`prepare` turns a batch into normalised floats. ``scale`` maps the
    stored integers to ``[0, 1]`` (255 for CIFAR, 16 for digits).
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    scale: float
    mean: Tensor  # (C,), of images in [0, 1]
    std: Tensor  # (C,)

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"{self.name}: {split} images must be (N, C, H, W) with N labels, got "
                    f"{tuple(x.shape)} and {tuple(y.shape)}"
                )
        if self.train_y.numel() and int(self.train_y.max()) >= self.num_classes:
            raise ValueError(f"{self.name}: label {int(self.train_y.max())} >= {self.num_classes}")

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train_x.shape[2]), int(self.train_x.shape[3])

    def prepare(
        self,
        x: Tensor,
        device: torch.device | str | None = None,
        augment: Augment | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """uint8 batch → float in [0, 1] → augmented (if given) → normalised, on ``device``."""
        x = x.to(device=device).to(dtype) / self.scale
        if augment is not None:
            x = augment(x)
        return normalize(x, self.mean.to(x), self.std.to(x))

    def subset(self, n_train: int | None = None, n_test: int | None = None, seed: int = 0):
        """A smaller copy (random, fixed by ``seed``) for quick runs and tests."""
        g = torch.Generator().manual_seed(seed)

        def pick(x, y, n):
            if n is None or n >= x.shape[0]:
                return x, y
            idx = torch.randperm(x.shape[0], generator=g)[:n].sort().values
            return x[idx], y[idx]

        trx, try_ = pick(self.train_x, self.train_y, n_train)
        tex, tey = pick(self.test_x, self.test_y, n_test)
        return ImageData(
            self.name, trx, try_, tex, tey, self.num_classes, self.scale, self.mean, self.std
        )


def channel_stats(x_uint8: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of ``x / scale`` (computed in float64, in chunks)."""
    c = x_uint8.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    n = 0
    for chunk in x_uint8.split(4096):
        f = chunk.to(torch.float64) / scale
        s += f.sum(dim=(0, 2, 3))
        s2 += (f * f).sum(dim=(0, 2, 3))
        n += f.shape[0] * f.shape[2] * f.shape[3]
    mean = s / max(n, 1)
    std = (s2 / max(n, 1) - mean**2).clamp_min(1e-12).sqrt()
    return mean.float(), std.float()


def random_crop(x: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero-pad by ``padding`` on each side and cut a random ``H×W`` window per image."""
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    xp = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    off = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device="cpu").to(x.device)
    rows = off[0][:, None] + torch.arange(h, device=x.device)  # (n, h)
    cols = off[1][:, None] + torch.arange(w, device=x.device)  # (n, w)
    bi = torch.arange(n, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def random_hflip(x: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each image left–right with probability ``p``."""
    mask = torch.rand(x.shape[0], generator=generator, device="cpu").to(x.device) < p
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(x - mean) / std`` per channel."""
    return (x - mean[None, :, None, None]) / std[None, :, None, None]


@dataclass(frozen=True)
class Augment:
    """Random crop (``crop_padding`` pixels, 0 = off) then horizontal flip (``flip``)."""

    crop_padding: int = 0
    flip: bool = False

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, generator)
        if self.flip:
            x = random_hflip(x, 0.5, generator)
        return x

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.flip)

    def __str__(self) -> str:
        parts = ([f"crop(pad={self.crop_padding})"] if self.crop_padding else []) + (
            ["flip"] if self.flip else []
        )
        return "+".join(parts) or "none"


def parse_augment(spec: str, crop_padding: int) -> Augment:
    """``"none"``, ``"crop"``, ``"flip"`` or ``"crop,flip"`` → :class:`Augment`."""
    spec = spec.strip().lower()
    if spec in ("", "none", "off"):
        return Augment()
    parts = {p.strip() for p in spec.replace("+", ",").split(",") if p.strip()}
    unknown = parts - {"crop", "flip"}
    if unknown:
        raise ValueError(
            f"unknown augmentation(s) {sorted(unknown)}; use 'none', 'crop', 'flip' or 'crop,flip'"
        )
    return Augment(crop_padding=crop_padding if "crop" in parts else 0, flip="flip" in parts)
