"""The benchmark problems: a ReLU-conv vector field and a tanh MLP.

Both are seeded ``nn.Module`` vector fields ``f(t, y)`` with their initial
state, so that every benchmark (and every fresh subprocess of the memory
benchmark) builds exactly the same problem from ``(name, size, seed)``.

- ``conv``: ``f(t, y) = conv₂(relu(conv₁(y)))``, 3×3 convolutions with
  ``channels`` channels, state ``(batch, channels, size, size)`` — an ODE-ResNet
  block without normalisation. Full size: 32 channels, 32×32, batch 32 (a
  4 MiB float32 state).
- ``mlp``: ``f(t, y) = W₂ tanh(W₁ y + b₁ + t c) + b₂``, state ``(batch, dim)``.
  Full size: dim 64, hidden 64, batch 512 (a 128 KiB float32 state).

``quick=True`` gives tiny versions of both for smoke tests.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

PROBLEMS = ("conv", "mlp")


class ConvField(nn.Module):
    """``f(t, y) = conv₂(relu(conv₁(y)))``; ``t`` is unused (autonomous)."""

    def __init__(self, channels: int, weight_scale: float = 1.0):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        if weight_scale != 1.0:
            with torch.no_grad():
                self.conv1.weight.mul_(weight_scale)
                self.conv2.weight.mul_(weight_scale)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.conv2(torch.relu(self.conv1(y)))


class TanhMLPField(nn.Module):
    """``f(t, y) = W₂ tanh(W₁ y + b₁ + t c) + b₂``: smooth and time-dependent."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.l1 = nn.Linear(dim, hidden)
        self.l2 = nn.Linear(hidden, dim)
        self.c = nn.Parameter(torch.randn(hidden) * 0.1)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.l2(torch.tanh(self.l1(y) + t * self.c))


class Counted(nn.Module):
    """Wraps a vector field and counts its evaluations in ``n`` (forward and backward)."""

    def __init__(self, func: nn.Module):
        super().__init__()
        self.func = func
        self.n = 0

    def forward(self, t, y):
        self.n += 1
        return self.func(t, y)


@dataclass
class BenchProblem:
    """One benchmark problem.

    Attributes:
        name: ``"conv"`` or ``"mlp"``.
        func: the vector field, an ``nn.Module`` called as ``func(t, y)``.
        y0: initial state (does not require grad; callers make a leaf).
        weights: fixed random tensor like ``y0``; the benchmarks' loss is
            ``Σ weights ⊙ y(t1)`` so every gradient entry is exercised.
        t0, t1: integration interval.
        base_method: the fixed-step solver the memory benchmark uses for the
            non-reversible gradient methods (Euler for the conv field, as in
            ANODE and the adjoint-failure finding; rk4 for the MLP).
        size: ``"full"`` or ``"quick"``.
        description: human-readable sizes.
    """

    name: str
    func: nn.Module
    y0: Tensor
    weights: Tensor
    t0: float
    t1: float
    base_method: str
    size: str
    description: str

    @property
    def state_bytes(self) -> int:
        """``S`` for a one-tensor solver state: the bytes of ``y``."""
        return self.y0.numel() * self.y0.element_size()

    @property
    def param_count(self) -> int:
        return sum(p.numel() for p in self.func.parameters())

    def to(self, dtype: torch.dtype) -> BenchProblem:
        """A copy in ``dtype`` with the same parameter values (for float64 references)."""
        func = copy.deepcopy(self.func).to(dtype)
        return replace(self, func=func, y0=self.y0.to(dtype), weights=self.weights.to(dtype))

    def loss(self, y_final: Tensor) -> Tensor:
        return (self.weights * y_final).sum()


def make_problem(
    name: str, *, quick: bool = False, seed: int = 0, weight_scale: float = 1.0
) -> BenchProblem:
    """Build benchmark problem ``name`` (``"conv"`` or ``"mlp"``) in float32, seeded.

    ``weight_scale`` multiplies the conv weights (strongly expanding dynamics
    for values around 4, where the adjoint's reverse-time reconstruction fails).
    """
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if name == "conv":
            batch, channels, size = (2, 4, 8) if quick else (32, 32, 32)
            func: nn.Module = ConvField(channels, weight_scale)
            y0 = torch.randn(batch, channels, size, size)
            base = "euler"
            desc = f"ReLU-conv f, {channels} channels, {size}x{size}, batch {batch}"
        elif name == "mlp":
            batch, dim, hidden = (16, 8, 8) if quick else (512, 64, 64)
            func = TanhMLPField(dim, hidden)
            y0 = torch.randn(batch, dim)
            base = "rk4"
            desc = f"tanh MLP, dim {dim}, hidden {hidden}, batch {batch}"
        else:
            raise ValueError(f"unknown benchmark problem {name!r}; choose one of {PROBLEMS}")
        weights = torch.randn_like(y0)
    finally:
        torch.random.set_rng_state(gen_state)
    return BenchProblem(
        name=name,
        func=func,
        y0=y0,
        weights=weights,
        t0=0.0,
        t1=1.0,
        base_method=base,
        size="quick" if quick else "full",
        description=desc,
    )
