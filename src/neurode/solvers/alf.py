"""Asynchronous leapfrog (ALF), the integrator of MALI (Zhuang et al., ICLR 2021).

State ``(y, v)`` with ``v ≈ dy/dt``, ``v₀ = f(t₀, y₀)``. One step ``t → t + h``::

    y_m = y + (h/2) v
    u   = f(t + h/2, y_m)
    v'  = v + 2η (u − v)
    y'  = y_m + (h/2) v'
    err = h (u − v)

and its exact algebraic inverse from ``(t + h, y', v')``::

    y_m = y' − (h/2) v'
    u   = f(t + h/2, y_m)           (the same evaluation as the forward step)
    v   = (2η u − v') / (2η − 1)
    y   = y_m − (h/2) v

Second order for ``η = 1``, one evaluation of ``f`` per step. Damping ``η ∈ (0, 1]``,
``η ≠ 1/2`` (where the inverse divides by zero); ``η = 1`` is MALI's default.
Damped ALF (``η < 1``) is only first order: with ``v = f(y)`` the step gives
``y' = y + h f + η (h²/2) f'f + O(h³)``, a local error ``(1 − η)(h²/2) f'f``.
``η < 1`` damps the ``v`` channel and keeps the scheme bounded on dissipative
problems where undamped ALF (η = 1) is only marginally stable.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from ..errors import InvalidOptionError
from .base import ReversibleSolver, State, VectorField, hermite_weights

# One inverse step multiplies round-off by 1/|2η − 1|: at most 1000×, so that even float32
# keeps a few digits per step. Over N steps it compounds; the reversible gradient measures
# the drift of the rebuilt y0 and warns (see ReversibleGradient).
DAMPING_MARGIN = 1e-3


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidOptionError(f"{name} must be a number, got {value!r}")
    return float(value)


class ALF(ReversibleSolver):
    """Asynchronous leapfrog; reversible, second order (first if damped), adaptive-capable.

    Args:
        damping: η in (0, 1], not 1/2. Default 1.0 (MALI).
    """

    order = 2
    error_order = 1
    rate_slots = (1,)  # v

    def __init__(self, damping: float = 1.0):
        damping = _number("ALF damping", damping)
        if not (0.0 < damping <= 1.0) or abs(2.0 * damping - 1.0) < DAMPING_MARGIN:
            raise InvalidOptionError(
                f"ALF damping must lie in (0, 1] with |2η − 1| ≥ {DAMPING_MARGIN:g}, got "
                f"{damping}: the inverse divides by 2η − 1, so each step multiplies the "
                f"round-off of the rebuilt state by 1/|2η − 1|; MALI uses 1.0"
            )
        self.damping = damping
        self.order = 2 if damping == 1.0 else 1  # damped ALF is first order (see above)
        self.name = "alf" if damping == 1.0 else f"alf(damping={damping:g})"

    def init(self, f: VectorField, t0: float, y0: Tensor) -> State:
        return (y0, f(t0, y0))

    def derivative(self, x: State) -> Tensor:
        # exact at t0 (v0 = f(t0, y0)), which is the only place the loop asks for it
        return x[1]

    def end_weights(self, h: float, theta: float, interp: str = "auto"):
        # the Hermite through (y, v) at both ends (or the line through y, y'): linear in
        # the end states, so the reversible backward needs no extra evaluation for it
        if interp == "linear":
            return (1.0 - theta, 0.0), (theta, 0.0)
        w0, d0, w1, d1 = hermite_weights(theta)
        return (w0, h * d0), (w1, h * d1)

    def step(self, f: VectorField, t: float, h: float, x: State) -> tuple[State, Tensor]:
        y, v = x
        y_m = y.add(v, alpha=0.5 * h)
        u = f(t + 0.5 * h, y_m)
        eta2 = 2.0 * self.damping
        v1 = v.add(u - v, alpha=eta2) if eta2 != 2.0 else torch.sub(u * 2.0, v)
        y1 = y_m.add(v1, alpha=0.5 * h)
        return (y1, v1), (u - v) * h

    def inverse(self, f: VectorField, t: float, h: float, x1: State) -> State:
        y1, v1 = x1
        y_m = y1.add(v1, alpha=-0.5 * h)
        u = f(t + 0.5 * h, y_m)
        return self._rebuild(h, y_m, u, v1)

    def _rebuild(self, h: float, y_m: Tensor, u: Tensor, v1: Tensor) -> State:
        eta2 = 2.0 * self.damping
        v = (u * eta2 - v1) / (eta2 - 1.0)
        return (y_m.add(v, alpha=-0.5 * h), v)

    def backward_step(self, f, t, h, x1, a1, params, rng=contextlib.nullcontext):
        """Rebuild ``x0`` from ``x1`` and pull ``a1 = (a_y1, a_v1)`` back through the step.

        The forward step's only evaluation, ``u = f(t + h/2, y_m)``, is also the
        one the inverse needs, so it is evaluated once, with its graph, and
        serves both: one evaluation and one VJP per step.
        Returns ``(x0, a0, param_grads)``.
        """
        y1, v1 = x1
        a_y1, a_v1 = a1
        eta2 = 2.0 * self.damping
        with torch.no_grad():
            y_m = y1.add(v1, alpha=-0.5 * h)
        y_m = y_m.detach().requires_grad_(True)
        with torch.enable_grad(), rng():
            u = f(t + 0.5 * h, y_m)
        with torch.no_grad():
            x0 = self._rebuild(h, y_m.detach(), u.detach(), v1)
            # y1 = y_m + h/2 v1 ; v1 = (1 − 2η) v + 2η u(y_m) ; y_m = y + h/2 v
            a_v1_tot = a_v1.add(a_y1, alpha=0.5 * h)
            a_u = a_v1_tot * eta2
        if u.requires_grad:
            grads = torch.autograd.grad(
                u, (y_m, *params), a_u, allow_unused=True,
                retain_graph=getattr(f, "shared_graph", True),
            )  # fmt: skip
        else:  # f depends on neither y nor params (e.g. f(t, y) = g(t))
            grads = (None,) * (1 + len(params))
        with torch.no_grad():
            a_ym = a_y1 if grads[0] is None else a_y1 + grads[0]  # None: f ignores y
            a_v0 = (a_v1_tot * (1.0 - eta2)).add(a_ym, alpha=0.5 * h)
        return x0, (a_ym, a_v0), grads[1:]
