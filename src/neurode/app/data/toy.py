"""The standard 2-D toy densities of the normalising-flow literature.

Same shapes and scales as FFJORD's ``toy_data.py`` (Grathwohl et al., 2019):
8 gaussians, pinwheel, checkerboard, two moons, circles and two spirals.
Every generator takes a seed (or a ``numpy.random.Generator``) so samples are
reproducible, returns exactly ``n`` points and never touches global random
state. Two of them have a closed-form density (:func:`log_prob`), which is what
the flow's held-out NLL is measured against:

- ``8gaussians``: an equal mixture of ``N(4 c_k / 1.414, (0.5 / 1.414)² I)``,
  ``c_k`` the eight unit vectors at multiples of 45°;
- ``checkerboard``: uniform on eight 2×2 squares of ``[−4, 4]²``, density 1/32.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

NAMES = ("8gaussians", "pinwheel", "checkerboard", "moons", "circles", "2spirals")
ALIASES = {
    "eight_gaussians": "8gaussians",
    "8_gaussians": "8gaussians",
    "gaussians": "8gaussians",
    "two_moons": "moons",
    "2moons": "moons",
    "two_spirals": "2spirals",
    "spirals": "2spirals",
}

_SCALE_8G = 1.414  # FFJORD divides by 1.414 (not √2); kept so numbers compare
_CENTERS_8G = (
    np.array(
        [
            (1.0, 0.0),
            (-1.0, 0.0),
            (0.0, 1.0),
            (0.0, -1.0),
            (1 / math.sqrt(2), 1 / math.sqrt(2)),
            (1 / math.sqrt(2), -1 / math.sqrt(2)),
            (-1 / math.sqrt(2), 1 / math.sqrt(2)),
            (-1 / math.sqrt(2), -1 / math.sqrt(2)),
        ]
    )
    * 4.0
    / _SCALE_8G
)
_STD_8G = 0.5 / _SCALE_8G


def canonical(name: str) -> str:
    """The canonical dataset name; raises ``ValueError`` listing the choices."""
    key = name.lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in NAMES:
        raise ValueError(f"unknown toy dataset {name!r}; choose one of {list(NAMES)}")
    return key


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, 8, n)
    return _CENTERS_8G[idx] + rng.standard_normal((n, 2)) * _STD_8G


def _pinwheel(n: int, rng: np.random.Generator) -> np.ndarray:
    radial_std, tangential_std, num_classes, rate = 0.3, 0.1, 5, 0.25
    rads = np.linspace(0, 2 * np.pi, num_classes, endpoint=False)
    features = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
    features[:, 0] += 1.0
    labels = rng.integers(0, num_classes, n)
    angles = rads[labels] + rate * np.exp(features[:, 0])
    c, s = np.cos(angles), np.sin(angles)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # (n, 2, 2)
    return 2 * np.einsum("ti,tij->tj", features, rot)


def _checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    x1 = rng.random(n) * 4 - 2
    x2 = rng.random(n) - rng.integers(0, 2, n) * 2
    x2 = x2 + (np.floor(x1) % 2)
    return np.stack([x1, x2], 1) * 2


def _moons(n: int, rng: np.random.Generator) -> np.ndarray:
    n_out = n // 2
    theta = rng.random(n) * np.pi
    outer = np.stack([np.cos(theta), np.sin(theta)], 1)
    inner = np.stack([1 - np.cos(theta), 1 - np.sin(theta) - 0.5], 1)
    pts = np.where((np.arange(n) < n_out)[:, None], outer, inner)
    pts = pts + rng.standard_normal((n, 2)) * 0.1
    return rng.permutation(pts * 2 + np.array([-1.0, -0.2]))


def _circles(n: int, rng: np.random.Generator) -> np.ndarray:
    theta = rng.random(n) * 2 * np.pi
    radius = np.where(rng.random(n) < 0.5, 1.0, 0.5)
    pts = radius[:, None] * np.stack([np.cos(theta), np.sin(theta)], 1)
    return (pts + rng.standard_normal((n, 2)) * 0.08) * 3


def _two_spirals(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.sqrt(rng.random((n, 1))) * 540 * (2 * np.pi) / 360
    x = -np.cos(t) * t + rng.random((n, 1)) * 0.5
    y = np.sin(t) * t + rng.random((n, 1)) * 0.5
    arm = np.where(rng.random((n, 1)) < 0.5, 1.0, -1.0)
    pts = np.hstack([x, y]) * arm / 3
    return pts + rng.standard_normal(pts.shape) * 0.1


_GENERATORS = {
    "8gaussians": _eight_gaussians,
    "pinwheel": _pinwheel,
    "checkerboard": _checkerboard,
    "moons": _moons,
    "circles": _circles,
    "2spirals": _two_spirals,
}

#: A square that holds (almost) all of each density's mass, for plots.
BOUNDS = {name: 4.0 for name in NAMES}


def sample(name: str, n: int, seed=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """``n`` samples of a toy density as a ``(n, 2)`` tensor.

    Args:
        name: one of :data:`NAMES` (aliases such as ``"two_moons"`` work).
        n: number of points.
        seed: an int, ``None`` (fresh entropy) or a ``numpy.random.Generator``.
        dtype: of the returned tensor.
    """
    gen = _GENERATORS[canonical(name)]
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return torch.from_numpy(gen(int(n), _rng(seed)).astype(np.float64)).to(dtype)


def has_density(name: str) -> bool:
    """Whether :func:`log_prob` knows the density of ``name`` in closed form."""
    return canonical(name) in ("8gaussians", "checkerboard")


def log_prob(name: str, x: Tensor) -> Tensor:
    """The true ``log p(x)`` of a toy density, shape ``(B,)`` (float64 inside).

    Only ``8gaussians`` and ``checkerboard`` have a closed form; other names raise.
    """
    key = canonical(name)
    x64 = torch.as_tensor(x).to(torch.float64)
    if key == "8gaussians":
        centers = torch.from_numpy(_CENTERS_8G).to(x64)
        d2 = ((x64[:, None, :] - centers[None]) ** 2).sum(-1)  # (B, 8)
        log_comp = -0.5 * d2 / _STD_8G**2 - math.log(2 * math.pi * _STD_8G**2)
        out = torch.logsumexp(log_comp, dim=1) - math.log(8)
    elif key == "checkerboard":
        u = x64 / 2
        inside = (u.abs() < 2).all(1)
        cell = (torch.floor(u[:, 0]) + torch.floor(u[:, 1])) % 2 == 0
        # cells where floor(x1) + floor(x2) is even carry the mass
        out = torch.where(inside & cell, -math.log(32.0), -math.inf)
        out = out.to(torch.float64)
    else:
        raise ValueError(
            f"the density of {key!r} has no closed form here; only 8gaussians and checkerboard do"
        )
    return out.to(torch.as_tensor(x).dtype)
