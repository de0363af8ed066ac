"""Can the adjoint be trusted for this ``f``? Reverse-time reconstruction error."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._inputs import check_state as _state
from ._inputs import check_times as _times
from ._loop import Field, SolveStats, integrate
from .odeint import MethodLike
from .solvers.base import ReversibleSolver
from .solvers.controller import resolve_control
from .solvers.registry import resolve_solver


@dataclass
class Reconstruction:
    """Relative errors ``‖ŷ₀ − y₀‖ / ‖y₀‖`` of rebuilding ``y₀`` from ``y(T)``.

    Attributes:
        backward_integration: solving the ODE backwards in time from ``y(T)``
            with the same method and step options — what the continuous adjoint
            does. Large values mean the adjoint's gradient cannot be trusted.
        inverse: undoing every accepted step algebraically (``None`` if the
            method is not reversible) — what ``gradient="reversible"`` does.
        growth: ``‖y(T)‖ / ‖y₀‖``, how much the dynamics expand.
        steps: accepted forward steps.
    """

    backward_integration: float
    inverse: float | None
    growth: float
    steps: int


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(torch.finfo(b.dtype).tiny))


@torch.no_grad()
def reconstruction_error(
    func,
    y0: Tensor,
    t,
    *,
    method: MethodLike = "dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    options: dict | None = None,
) -> Reconstruction:
    """Solve from ``t[0]`` to ``t[-1]``, then rebuild ``y₀`` two ways and report both errors.

    Example:
        >>> import torch, neurode
        >>> f = lambda t, y: -y
        >>> r = neurode.reconstruction_error(f, torch.ones(3), [0.0, 1.0], method="alf",
        ...                                  options=dict(steps=100))
        >>> r.inverse < 1e-5
        True
    """
    times = _times(t)
    times = [times[0], times[-1]]
    flat, structure = _state(y0)
    solver = resolve_solver(method)
    control = resolve_control(solver, rtol, atol, dict(options or {}))
    stats = SolveStats()
    f = Field(func, flat, stats, structure)
    x0 = solver.init(f, times[0], flat)
    outs, x_end, traj = integrate(solver, f, x0, times, control, stats)
    y_end = outs[-1]
    back_solver = solver
    xb = back_solver.init(f, times[-1], y_end)
    back, _, _ = integrate(back_solver, f, xb, times[::-1], control, SolveStats())
    inverse = None
    if isinstance(solver, ReversibleSolver):
        x = x_end
        for tt, h in reversed(traj.steps):
            x = solver.inverse(f, tt, h, x)
        inverse = _rel(x[0], flat)
    return Reconstruction(
        backward_integration=_rel(back[-1], flat),
        inverse=inverse,
        growth=float(y_end.norm() / flat.norm().clamp_min(torch.finfo(flat.dtype).tiny)),
        steps=len(traj.steps),
    )
