"""Shared test problems with independent reference solutions.

Import from tests as ``from problems import ...`` (pytest puts ``tests/`` on
``sys.path``). Every vector field accepts ``t`` as a 0-d tensor and a state
whose *last* dimension is the system's dimension, so batched states ``(B, D)``
work unchanged. Each problem also exposes a NumPy right-hand side for
``scipy.integrate.solve_ivp`` (state of shape ``(D,)``).

- :class:`LinearODE` — ``dy/dt = A y``; exact solution ``expm(A (t - t0)) y0``
  via ``torch.linalg.matrix_exp`` (``LINEAR2``: a damped rotation, ``LINEAR3``:
  one real and a complex pair of eigenvalues, all with negative real part).
- :class:`VanDerPol` — ``mu = 1`` by default (non-stiff, limit cycle).
- :class:`LotkaVolterra` — the classic predator–prey system.
- :class:`TanhMLP` — a small ``nn.Module`` vector field ``W2 tanh(W1 y + b1 + t c) + b2``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


class LinearODE:
    """``dy/dt = A y`` with ``y`` of shape ``(..., D)``."""

    def __init__(self, A):
        self.A = torch.as_tensor(A, dtype=torch.float64)
        self.dim = self.A.shape[0]

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        return y @ self.A.to(y.dtype).T

    def numpy(self, t: float, y: np.ndarray) -> np.ndarray:
        return self.A.numpy() @ y

    def exact(self, y0: Tensor, t, t0: float | None = None) -> Tensor:
        """``y(t_k) = expm(A (t_k - t0)) y0`` in float64, shape ``(len(t), *y0.shape)``.

        ``t0`` defaults to ``t[0]``.
        """
        t = torch.as_tensor(t, dtype=torch.float64)
        t0 = float(t[0]) if t0 is None else float(t0)
        M = torch.linalg.matrix_exp(self.A * (t - t0)[:, None, None])  # (K, D, D)
        y = y0.to(torch.float64)
        # y @ M_k^T for every k, broadcasting over y's leading dims
        return torch.einsum("kij,...j->k...i", M, y)


LINEAR2 = LinearODE([[-0.5, 2.0], [-2.0, -0.5]])  # eigenvalues -0.5 ± 2i
LINEAR3 = LinearODE([[-0.3, 1.0, 0.0], [-1.0, -0.3, 0.5], [0.0, 0.0, -1.0]])  # -1, -0.3 ± i


class VanDerPol:
    """``x' = v``, ``v' = mu (1 - x^2) v - x``."""

    def __init__(self, mu: float = 1.0):
        self.mu = mu
        self.dim = 2

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, self.mu * (1 - x**2) * v - x], dim=-1)

    def numpy(self, t: float, y: np.ndarray) -> np.ndarray:
        x, v = y
        return np.array([v, self.mu * (1 - x**2) * v - x])


class LotkaVolterra:
    """``x' = a x - b x y``, ``y' = d x y - g y`` (prey ``x``, predator ``y``)."""

    def __init__(self, a: float = 1.5, b: float = 1.0, d: float = 1.0, g: float = 3.0):
        self.a, self.b, self.d, self.g = a, b, d, g
        self.dim = 2

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        x, p = y[..., 0], y[..., 1]
        return torch.stack([self.a * x - self.b * x * p, self.d * x * p - self.g * p], dim=-1)

    def numpy(self, t: float, y: np.ndarray) -> np.ndarray:
        x, p = y
        return np.array([self.a * x - self.b * x * p, self.d * x * p - self.g * p])


class TanhMLP(nn.Module):
    """``f(t, y) = W2 tanh(W1 y + b1 + t c) + b2``: smooth, time-dependent, seeded."""

    def __init__(self, dim: int = 2, hidden: int = 8, seed: int = 0, dtype=torch.float64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.l1 = nn.Linear(dim, hidden, dtype=dtype)
        self.l2 = nn.Linear(hidden, dim, dtype=dtype)
        self.c = nn.Parameter(torch.empty(hidden, dtype=dtype))
        with torch.no_grad():
            for p in (self.l1.weight, self.l1.bias, self.l2.weight, self.l2.bias, self.c):
                p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.5)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.l2(torch.tanh(self.l1(y) + t * self.c))

    def numpy(self, t: float, y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self(torch.tensor(t, dtype=torch.float64), torch.from_numpy(y)).numpy()


def scipy_reference(problem, y0, t, rtol: float = 1e-12, atol: float = 1e-12) -> Tensor:
    """``solve_ivp(method="DOP853")`` at the times ``t``; float64, shape ``(len(t), D)``."""
    from scipy.integrate import solve_ivp

    t = np.asarray(torch.as_tensor(t, dtype=torch.float64))
    sol = solve_ivp(
        problem.numpy,
        (t[0], t[-1]),
        np.asarray(torch.as_tensor(y0, dtype=torch.float64)),
        method="DOP853",
        t_eval=t,
        rtol=rtol,
        atol=atol,
    )
    assert sol.success, sol.message
    return torch.from_numpy(sol.y.T.copy())
