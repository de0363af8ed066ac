"""Terminal events (SPEC §5.4): integrate until ``event_fn(t, y)`` changes sign.

``odeint_event`` runs the solve without a graph, checks the sign of
``event_fn`` at the end of every accepted step and locates the root inside
the step that changed it on the step's interpolant (bisection to float64 time
resolution). It then solves once more from ``t0`` to ``t*`` with the requested
gradient method, so the state at the event is differentiable exactly like any
other solve, and attaches the gradient of ``t*`` by the implicit function
theorem on ``g(t*, y(t*)) = 0``:

    dt*/dθ = −(∂g/∂θ + ∂g/∂y · ∂y(t*)/∂θ) / (∂g/∂t + ∂g/∂y · f(t*, y(t*)))

and ``dy(t*)/dθ`` gains ``f(t*, y(t*)) · dt*/dθ``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._inputs import check_state, check_times
from ._loop import Field, SolveStats, integrate
from .errors import (
    EventError,
    InvalidOptionError,
    InvalidStateError,
    MaxStepsExceededError,
)
from .odeint import GradientLike, MethodLike
from .solvers.base import EPS64
from .solvers.controller import FixedGrid, resolve_control
from .solvers.registry import resolve_solver

HORIZON = 1e15  # how far an adaptive search may run when no t_max is given


class _Found(Exception):
    def __init__(self, t: float, h: float, x, x1):
        self.t, self.h, self.x, self.x1 = t, h, x, x1


def _scalar(g, where: str) -> float:
    if not isinstance(g, Tensor) or g.numel() != 1:
        raise InvalidOptionError(
            f"event_fn(t, y) must return a scalar tensor, got "
            f"{type(g).__name__ if not isinstance(g, Tensor) else tuple(g.shape)} {where}"
        )
    return float(g.detach())


def odeint_event(
    func: Callable,
    y0: Tensor,
    t0: float | Tensor,
    *,
    event_fn: Callable,
    reverse_time: bool = False,
    t_max: float | None = None,
    method: MethodLike = None,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    options: dict | None = None,
    gradient: GradientLike = "direct",
    params: Sequence[Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Integrate from ``t0`` until ``event_fn(t, y)`` changes sign (torchdiffeq's ``odeint_event``).

    Returns ``(event_t, solution)``: the event time as a 0-d tensor of ``y0``'s
    dtype, and the solution at ``[t0, event_t]``, shape ``(2, *y0.shape)``.
    Both are differentiable with respect to ``y0`` and every tensor ``func`` and
    ``event_fn`` use (not ``t0``). ``reverse_time`` integrates towards ``−∞``;
    ``t_max`` bounds the search (default: ``t0 ± 1e15`` adaptive, ``max_steps``
    steps of ``step_size`` on a fixed grid). Other arguments as :func:`neurode.odeint`.
    Raises :class:`~neurode.EventError` when no sign change occurs before the bound.
    """
    from .odeint import solve

    if not callable(event_fn):
        raise InvalidOptionError(f"event_fn must be callable as event_fn(t, y), got {event_fn!r}")
    if isinstance(t0, (list, tuple)) and t0:  # odeint(..., t, event_fn=...) passes t
        t0 = t0[0]
    t0_grad = None  # t0 as a 0-d tensor, when the event time's gradient reaches it
    if isinstance(t0, Tensor):
        t0 = t0.reshape(-1)
        if t0.numel() < 1:
            raise InvalidOptionError("t0 must hold the start time")
        if t0.requires_grad and torch.is_grad_enabled():
            t0_grad = t0[0]
        t0 = t0.detach()[0]
    start = check_times([t0], allow_single=True)[0]
    if not isinstance(y0, Tensor):
        raise InvalidStateError("odeint_event takes a tensor y0 (tuple states are not supported)")
    flat, _ = check_state(y0)
    solver = resolve_solver(method)
    control = resolve_control(solver, rtol, atol, options)
    for name in ("jump_t", "perturb"):
        if (options or {}).get(name) not in (None, False, ()):
            raise InvalidOptionError(
                f"option {name} is not supported with event handling (odeint_event, "
                f"event_fn=): the event search does not honour it"
            )
    direction = -1.0 if reverse_time else 1.0
    if t_max is None:
        if isinstance(control, FixedGrid):
            if control.step_size is None:
                raise InvalidOptionError(
                    "an event search on a fixed grid needs options=dict(step_size=...) (or t_max)"
                )
            end = start + direction * control.step_size * control.max_steps
        else:
            end = start + direction * HORIZON * max(1.0, abs(start))
    else:
        end = check_times([start, float(t_max)])[-1]
        if (end - start) * direction <= 0:
            raise InvalidOptionError(
                f"t_max={t_max} lies {'after' if reverse_time else 'before'} t0={start}; "
                f"{'reverse_time=True searches towards smaller t' if reverse_time else 'use reverse_time=True to search backwards'}"
            )

    # 1. find the step in which event_fn changes sign, without a graph
    stats = SolveStats()
    field = Field(func, flat, stats)

    def g_at(t: float, y: Tensor) -> float:
        return _scalar(
            event_fn(torch.scalar_tensor(t, dtype=y.dtype, device=y.device), y), f"at t={t:.6g}"
        )

    with torch.no_grad():
        y_start = flat.detach()
        g_prev = [g_at(start, y_start)]

        def on_step(i, t, h, x, x1):
            g1 = g_at(t + h, x1[0])
            if g1 == 0.0 or (g_prev[0] != 0.0 and (g1 > 0) != (g_prev[0] > 0)):
                raise _Found(t, h, x, x1)
            g_prev[0] = g1

        x0 = solver.init(field, start, y_start)
        try:
            integrate(solver, field, x0, [start, end], control, stats, on_step)
        except _Found as hit:
            found = hit
        except MaxStepsExceededError as e:
            raise EventError(
                f"no sign change of event_fn within max_steps from t0={start:.6g}: {e}"
            ) from None
        else:
            raise EventError(f"event_fn did not change sign between t0={start:.6g} and t={end:.6g}")
        # 2. locate the root on the step's interpolant (bisection on θ to time resolution)
        dense = solver.interpolant(field, found.t, found.h, found.x, found.x1)
        lo, hi = 0.0, 1.0
        g_lo = g_prev[0]
        for _ in range(200):
            if abs(hi - lo) * abs(found.h) <= 4 * EPS64 * max(abs(found.t), abs(found.h)):
                break
            mid = 0.5 * (lo + hi)
            g_mid = g_at(found.t + mid * found.h, dense.values([mid])[0])
            if g_mid == 0.0:
                lo = hi = mid
                break
            if (g_mid > 0) == (g_lo > 0):
                lo, g_lo = mid, g_mid
            else:
                hi = mid
        t_event = found.t + hi * found.h

    # 3. the solve to the event with the requested gradient method; with t0 requiring
    # grad its steps move with t0 and t* stays put (SPEC §5.2), so that y(t*) carries
    # ∂y(t*)/∂t0 into the implicit function theorem below
    times = [start, t_event]
    if t0_grad is not None:
        t_end = torch.tensor(t_event, dtype=torch.float64, device=t0_grad.device)
        times = torch.stack([t0_grad.to(torch.float64), t_end])
    sol = solve(
        func, y0, times, method=method, rtol=rtol, atol=atol, options=options,
        gradient=gradient, params=params,
    )  # fmt: skip
    y_event = sol.ys[-1]
    tt = torch.tensor(t_event, dtype=flat.dtype, device=flat.device)
    # 4. one Newton step on g(t, y(t)) = 0 from the re-solved state (the root was located
    # on the interpolant; this makes it accurate to the solve's own error squared), and the
    # implicit function theorem for the gradient of t*
    yy = y_event.detach().requires_grad_(True)
    t_leaf = tt.clone().requires_grad_(True)
    with torch.enable_grad():
        g = event_fn(t_leaf, yy)
        _scalar(g, f"at t={t_event:.6g}")
        g_t, g_y = torch.autograd.grad(g, (t_leaf, yy), allow_unused=True)
    with torch.no_grad():
        f_event = func(tt, y_event.detach())
        g_dot = (0.0 if g_t is None else float(g_t)) + (
            0.0 if g_y is None else float((g_y * f_event).sum())
        )
    if not math.isfinite(g_dot) or g_dot == 0.0:
        raise EventError(
            f"event_fn crosses zero tangentially at t={t_event:.6g} (d/dt g(t, y(t)) = "
            f"{g_dot:.3g}): the event time is not differentiable there"
        )
    delta = -float(g.detach()) / g_dot
    if abs(delta) > abs(found.h):  # the Newton step would leave the step: keep the root
        delta = 0.0
    t_new = tt + delta
    if torch.is_grad_enabled():
        g_d = event_fn(tt, y_event)
        if g_d.requires_grad:
            t_new = t_new - (g_d - g_d.detach()).reshape(()) / g_dot
    y_new = y_event + f_event.detach() * (t_new - tt)
    return t_new, torch.stack([sol.ys[0], y_new])
