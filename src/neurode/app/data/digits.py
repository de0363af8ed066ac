"""scikit-learn's bundled 8×8 handwritten digits as an image dataset (no download).

1797 grey-scale images, pixel values 0–16, ten classes. :func:`load_digits`
splits them 80/20, stratified, with a fixed ``random_state`` (1437 train /
360 test by default), so every run and every method sees the same split.
"""

from __future__ import annotations

import torch

from .augment import ImageData, channel_stats

__all__ = ["load_digits"]


def load_digits(test_size: float = 0.2, seed: int = 0) -> ImageData:
    """The digits as :class:`~neurode.app.data.augment.ImageData` (1×8×8, scale 16)."""
    from sklearn.datasets import load_digits as _sk_load
    from sklearn.model_selection import train_test_split

    d = _sk_load()
    x = d.images.astype("uint8")[:, None, :, :]  # (1797, 1, 8, 8), values 0..16
    y = d.target.astype("int64")
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    train_x = torch.from_numpy(xtr.copy())
    mean, std = channel_stats(train_x, 16.0)
    return ImageData(
        name="digits",
        train_x=train_x,
        train_y=torch.from_numpy(ytr.copy()),
        test_x=torch.from_numpy(xte.copy()),
        test_y=torch.from_numpy(yte.copy()),
        num_classes=10,
        scale=16.0,
        mean=mean,
        std=std,
    )
