"""Small float64 problems and helpers shared by the gradient tests.

Kept separate from ``problems.py`` (the solver tests' problems) on purpose: the
gradient tests need trainable vector fields, not known solutions.
"""

from __future__ import annotations

import torch
from torch import nn

import neurode

DT = torch.float64


class MLP(nn.Module):
    """A small smooth, time-dependent vector field: ``W2 tanh(W1 y + t w + b1) + b2``."""

    def __init__(self, dim: int = 3, hidden: int = 12, scale: float = 1.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.l1 = nn.Linear(dim, hidden).to(DT)
        self.l2 = nn.Linear(hidden, dim).to(DT)
        self.wt = nn.Parameter(torch.empty(hidden, dtype=DT))
        with torch.no_grad():
            for p in (self.l1.weight, self.l1.bias, self.l2.weight, self.l2.bias, self.wt):
                p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * scale / p.shape[-1] ** 0.5)

    def forward(self, t, y):
        return self.l2(torch.tanh(self.l1(y) + t * self.wt))


def rel(a, b) -> float:
    """Relative error ‖a − b‖ / ‖b‖ over a list of tensors (None counts as zeros)."""
    a, b = list(a), list(b)
    num = den = 0.0
    for x, y in zip(a, b, strict=True):
        if x is None and y is None:
            continue
        if x is None:
            x = torch.zeros_like(y)
        if y is None:
            y = torch.zeros_like(x)
        num += float((x - y).pow(2).sum())
        den += float(y.pow(2).sum())
    return (num**0.5) / max(den**0.5, 1e-300)


def grads(func, y0, t, G, *, params, explicit: bool = False, **kw):
    """Solve, contract the outputs with ``G`` (a cotangent on every output) and return
    ``(ys, [dL/dy0, *dL/dparams], stats)``. ``explicit`` also hands ``params`` to the
    solve (for closures whose tensors neurode cannot find by itself)."""
    y0 = y0.detach().clone().requires_grad_(True)
    if explicit:
        kw["params"] = params
    sol = neurode.solve(func, y0, t, **kw)
    loss = (sol.ys * G).sum()
    gs = torch.autograd.grad(loss, [y0, *params], allow_unused=True)
    return sol.ys.detach(), list(gs), sol.stats


def randn(*shape, seed: int = 0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)
