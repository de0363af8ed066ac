"""The front door: ``odeint`` and ``solve``.

Validates the call, resolves the solver, step control and gradient method
(strings or configured objects, both resolve to the same thing), then hands
one :class:`~neurode.gradients.base.Problem` to the gradient method, which
drives the one stepping loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._loop import Field, SolveStats, StepRNG
from .errors import (
    InvalidOptionError,
    InvalidStateError,
    InvalidTimesError,
    UnknownMethodError,
)
from .gradients.adjoint import Adjoint
from .gradients.base import GradientMethod, Problem, method_preserves_rng
from .gradients.checkpoint import Checkpoint
from .gradients.direct import Direct
from .gradients.reversible import ReversibleGradient
from .solvers.alf import ALF
from .solvers.base import Solver
from .solvers.controller import Adaptive, FixedGrid
from .solvers.rk import RungeKutta
from .solvers.tableau import TABLEAUS, ButcherTableau

_ALIASES = {"rk2": "midpoint", "explicit_euler": "euler", "rk45": "dopri5"}
METHODS = sorted([*TABLEAUS, "alf", *_ALIASES])
GRADIENTS: dict[str, Callable[[], GradientMethod]] = {
    "direct": Direct,
    "checkpoint": Checkpoint,
    "adjoint": Adjoint,
    "reversible": ReversibleGradient,
}

_FIXED_OPTIONS = {"step_size", "steps"}
_ADAPTIVE_OPTIONS = {
    "first_step",
    "max_num_steps",
    "min_step",
    "max_step",
    "safety",
    "ifactor",
    "dfactor",
    "controller",
    "norm",
}
OPTIONS = sorted(_FIXED_OPTIONS | _ADAPTIVE_OPTIONS | {"max_steps"})


def resolve_solver(method) -> Solver:
    """A solver from a name, a tableau or a solver object."""
    if isinstance(method, Solver):
        return method
    if isinstance(method, ButcherTableau):
        return RungeKutta(method)
    if isinstance(method, str):
        name = _ALIASES.get(method.lower(), method.lower())
        if name == "alf":
            return ALF()
        if name in TABLEAUS:
            return RungeKutta(TABLEAUS[name])
    raise UnknownMethodError(
        f"unknown method {method!r}; choose one of {METHODS}, or pass a solver object "
        f"(neurode.ALF(damping=...), neurode.Reversible('rk4'), a ButcherTableau)"
    )


def resolve_gradient(gradient) -> GradientMethod:
    if isinstance(gradient, GradientMethod):
        return gradient
    if isinstance(gradient, str) and gradient.lower() in GRADIENTS:
        return GRADIENTS[gradient.lower()]()
    raise UnknownMethodError(
        f"unknown gradient {gradient!r}; choose one of {sorted(GRADIENTS)} or pass "
        f"neurode.Checkpoint(budget=...), neurode.Adjoint(...), ..."
    )


def resolve_control(solver: Solver, rtol, atol, options: dict) -> FixedGrid | Adaptive:
    """Fixed grid if ``step_size``/``steps`` is given or the solver has no error
    estimate; adaptive otherwise. Options that would have no effect raise."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise InvalidOptionError(
            f"unknown option(s) {sorted(unknown)}; valid options are {OPTIONS}"
        )
    max_steps = options.get("max_steps", options.get("max_num_steps"))
    if "max_steps" in options and "max_num_steps" in options:
        raise InvalidOptionError("give max_steps or its torchdiffeq name max_num_steps, not both")
    fixed = _FIXED_OPTIONS & set(options)
    for name, tol in (("rtol", rtol), ("atol", atol)):
        try:
            ok = math.isfinite(float(tol)) and float(tol) >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InvalidOptionError(f"{name} must be a finite number >= 0, got {tol!r}")
    if fixed or not solver.adaptive:
        extra = (_ADAPTIVE_OPTIONS - {"max_num_steps"}) & set(options)
        if extra:
            why = (
                "a fixed grid was requested" if fixed else f"{solver.name!r} has no error estimate"
            )
            raise InvalidOptionError(
                f"option(s) {sorted(extra)} only apply to adaptive stepping, but {why}; "
                f"remove them, or drop step_size/steps and use an adaptive method"
            )
        return FixedGrid(
            step_size=options.get("step_size"), steps=options.get("steps"), max_steps=max_steps
        )
    kw = {k: options[k] for k in _ADAPTIVE_OPTIONS - {"max_num_steps"} if k in options}
    if max_steps is not None:
        kw["max_steps"] = max_steps
    return Adaptive(rtol=rtol, atol=atol, **kw)


def _times(t) -> list[float]:
    if isinstance(t, Tensor):
        if t.dim() != 1:
            raise InvalidTimesError(f"t must be 1-D, got shape {tuple(t.shape)}")
        if t.is_complex():
            raise InvalidTimesError("t must be real")
        times = t.detach().to("cpu", torch.float64).tolist()
    else:
        try:
            times = [float(v) for v in t]
        except TypeError:
            raise InvalidTimesError(
                f"t must be a 1-D tensor or sequence of times, got {type(t).__name__}"
            ) from None
    if len(times) < 2:
        raise InvalidTimesError(f"t needs at least two times (start and end), got {len(times)}")
    if not all(math.isfinite(v) for v in times):
        raise InvalidTimesError(f"t must be finite, got {times}")
    d = [b - a for a, b in zip(times[:-1], times[1:])]
    if not (all(x > 0 for x in d) or all(x < 0 for x in d)):
        bad = next(i for i, x in enumerate(d) if x == 0 or (x > 0) != (d[0] > 0))
        raise InvalidTimesError(
            f"t must be strictly increasing or strictly decreasing; t[{bad}]={times[bad]} "
            f"is followed by t[{bad + 1}]={times[bad + 1]}"
        )
    return times


def _state(y0):
    """Flatten a tuple state into one tensor; returns (flat, structure or None)."""
    if isinstance(y0, Tensor):
        _check_tensor(y0, "y0")
        return y0, None
    if isinstance(y0, (tuple, list)) and len(y0) > 0 and all(isinstance(v, Tensor) for v in y0):
        for i, v in enumerate(y0):
            _check_tensor(v, f"y0[{i}]")
        dtypes = {v.dtype for v in y0}
        devices = {v.device for v in y0}
        if len(dtypes) > 1 or len(devices) > 1:
            raise InvalidStateError(
                f"all tensors of a tuple state must share dtype and device, got dtypes "
                f"{sorted(map(str, dtypes))} on {sorted(map(str, devices))}; cast them first"
            )
        shapes = tuple(v.shape for v in y0)
        numels = [v.numel() for v in y0]
        return torch.cat([v.reshape(-1) for v in y0]), (shapes, numels)
    raise InvalidStateError(f"y0 must be a tensor or a tuple of tensors, got {type(y0).__name__}")


def _check_tensor(v: Tensor, name: str) -> None:
    if not v.is_floating_point():
        raise InvalidStateError(
            f"{name} must have a real floating dtype (float32 or float64), got {v.dtype}"
        )


def _find_params(func, params) -> tuple[tuple[Tensor, ...], tuple[nn.Module, ...]]:
    """Tensors that need gradients: an nn.Module's parameters, modules and tensors
    captured by a closure or bound method, and anything passed as ``params``."""
    modules: list[nn.Module] = []
    found: list[Tensor] = []
    candidates = [func, getattr(func, "__self__", None)]
    for cell in getattr(func, "__closure__", None) or ():
        try:
            candidates.append(cell.cell_contents)
        except ValueError:  # empty cell
            pass
    for c in candidates:
        if isinstance(c, nn.Module):
            modules.append(c)
            found.extend(c.parameters())
        elif isinstance(c, Tensor) and c.requires_grad:
            found.append(c)
    if params is not None:
        if isinstance(params, Tensor):
            params = [params]
        for q in params:
            if not isinstance(q, Tensor):
                raise InvalidOptionError(f"params must be tensors, got {type(q).__name__}")
            found.append(q)
    seen: set[int] = set()
    unique = []
    for q in found:
        if q.requires_grad and id(q) not in seen:
            seen.add(id(q))
            unique.append(q)
    return tuple(unique), tuple(modules)


@dataclass
class Solution:
    """What :func:`solve` returns.

    Attributes:
        ys: the solution at every time, shape ``(len(t), *y0.shape)`` (a tuple for tuple states).
        ts: the times, float64.
        stats: :class:`~neurode.SolveStats` — evaluations, steps; backward counters fill in
            when gradients are taken.
    """

    ys: Tensor | tuple[Tensor, ...]
    ts: Tensor
    stats: SolveStats


def solve(
    func: Callable,
    y0: Tensor | Sequence[Tensor],
    t,
    *,
    method="dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    options: dict | None = None,
    gradient="direct",
    params: Sequence[Tensor] | None = None,
) -> Solution:
    """Solve ``dy/dt = func(t, y)`` and return a :class:`Solution` with statistics.

    Same arguments as :func:`odeint`.
    """
    times = _times(t)
    flat, structure = _state(y0)
    solver = resolve_solver(method)
    grad = resolve_gradient(gradient)
    grad.check(solver)
    options = dict(options or {})
    control = resolve_control(solver, rtol, atol, options)
    stats = SolveStats()
    field = Field(func, flat, stats, structure)
    found, modules = _find_params(func, params)
    problem = Problem(solver, field, flat, times, control, found, stats, modules, options)
    needs_grad = torch.is_grad_enabled() and (flat.requires_grad or len(found) > 0)
    if not needs_grad or isinstance(grad, Direct):
        # Without gradients every method is a plain solve; it still draws random numbers the
        # way the requested method would, so a later recompute (ODEBlock) can replay it.
        rng = StepRNG(flat.device) if method_preserves_rng(grad) else None
        with torch.set_grad_enabled(needs_grad):
            ys = Direct().solve(problem, rng=rng)
    else:
        ys = grad.solve(problem)
    if structure is not None:
        shapes, numels = structure
        ys = tuple(part.reshape(len(times), *s) for part, s in zip(ys.split(numels, dim=1), shapes))
    ts = torch.tensor(times, dtype=torch.float64)
    return Solution(ys=ys, ts=ts, stats=stats)


def odeint(
    func: Callable,
    y0: Tensor | Sequence[Tensor],
    t,
    *,
    method="dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    options: dict | None = None,
    gradient="direct",
    params: Sequence[Tensor] | None = None,
) -> Tensor | tuple[Tensor, ...]:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0``, and return ``y`` at every ``t``.

    A torchdiffeq call works unchanged after swapping the import.

    Args:
        func: ``func(t, y)`` with ``t`` a 0-d tensor of ``y``'s dtype; returns
            ``dy/dt`` with ``y``'s shape and dtype (a tuple for tuple states).
        y0: initial state: a tensor of any shape, or a tuple of tensors.
        t: 1-D, strictly increasing or strictly decreasing output times.
        method: ``"euler"``, ``"midpoint"`` (``"rk2"``), ``"heun"``, ``"rk4"``,
            ``"bosh3"``, ``"dopri5"``, ``"tsit5"``, ``"alf"``, or a solver object
            (:class:`~neurode.ALF`, :class:`~neurode.Reversible`, a tableau).
        rtol, atol: tolerances of adaptive stepping.
        options: ``step_size`` or ``steps`` (fixed grid); ``first_step``,
            ``max_steps`` (alias ``max_num_steps``), ``min_step``, ``max_step``,
            ``safety``, ``ifactor``, ``dfactor``, ``controller`` (``"I"``/``"PI"``),
            ``norm``. Unknown names raise.
        gradient: ``"direct"``, ``"checkpoint"``, ``"adjoint"``, ``"reversible"``
            or a configured object (:class:`~neurode.Checkpoint`,
            :class:`~neurode.Adjoint`, ...). See ``docs/gradients.md``.
        params: tensors ``func`` uses that need gradients and that neurode
            cannot find itself (parameters of an ``nn.Module`` ``func``, and
            modules or tensors captured directly by a closure, are found).

    Returns:
        ``y`` at every time, shape ``(len(t), *y0.shape)``; a tuple for tuple states.

    Step-size decisions are never differentiated: every gradient method
    treats the accepted steps as constants.
    """
    return solve(
        func,
        y0,
        t,
        method=method,
        rtol=rtol,
        atol=atol,
        options=options,
        gradient=gradient,
        params=params,
    ).ys
