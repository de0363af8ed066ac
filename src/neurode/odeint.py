"""The front door: ``odeint`` and ``solve``.

Validates the call, resolves the solver, step control and gradient method
(strings or configured objects, both resolve to the same thing), then hands
one :class:`~neurode.gradients.base.Problem` to the gradient method, which
drives the one stepping loop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._inputs import (
    check_state,
    check_times,
    explicit_params,
    find_modules,
    graph_leaves,
    unique_tensors,
)
from ._loop import Field, SolveStats, StepRNG
from .errors import InvalidOptionError, UnsupportedCombinationError
from .gradients.adjoint import Adjoint
from .gradients.base import GradientMethod, Problem
from .gradients.direct import Direct
from .gradients.registry import resolve_gradient
from .solvers.base import Solver
from .solvers.controller import FixedGrid, resolve_control
from .solvers.moving import TimeMotion, moving
from .solvers.perturb import neighbour, perturbed
from .solvers.registry import method_names, resolve_solver
from .solvers.scipy_solver import ScipySolver
from .solvers.tableau import ButcherTableau

#: What ``method=`` accepts: a registered name (``"dopri5"``, ``"alf:0.5"``,
#: ``"reversible:rk4"``), a solver object, a tableau, or ``None`` (dopri5).
MethodLike = str | Solver | ButcherTableau | None
#: What ``gradient=`` accepts: a registered name, a gradient-method object, or ``None`` (direct).
GradientLike = str | GradientMethod | None
#: Output times: a 1-D tensor or a sequence of floats.
TimesLike = Tensor | Sequence[float]

METHODS = method_names()

__all__ = [
    "METHODS",
    "Solution",
    "odeint",
    "odeint_adjoint",
    "resolve_control",
    "resolve_solver",
    "solve",
]


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
    t: TimesLike,
    *,
    method: MethodLike = None,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    options: dict | None = None,
    gradient: GradientLike = "direct",
    params: Sequence[Tensor] | None = None,
) -> Solution:
    """Solve ``dy/dt = func(t, y)`` and return a :class:`Solution` with statistics.

    Same arguments as :func:`odeint`.
    """
    if not callable(func):
        raise InvalidOptionError(f"func must be callable as func(t, y), got {type(func).__name__}")
    times = check_times(t, allow_single=True)
    flat, structure = check_state(y0)
    solver = resolve_solver(method)
    if isinstance(solver, ScipySolver):  # scipy's own loop, forward only: no gradient method
        resolve_gradient(gradient)  # a misspelt name still raises
        stats = SolveStats()
        field = Field(func, flat, stats, structure)
        inputs = (t, *explicit_params(params))  # must not require grad
        ys = solver.configured(options).solve(field, flat, times, rtol, atol, inputs)
        return Solution(ys=ys, ts=torch.tensor(times, dtype=torch.float64), stats=stats)
    grad = resolve_gradient(gradient)
    control = resolve_control(solver, rtol, atol, options, structure)
    moving_grid = None  # a grid_constructor grid that requires grad: its points move
    if getattr(control, "grid_constructor", None) is not None:  # torchdiffeq's option
        t_arg = t if isinstance(t, Tensor) else torch.tensor(times, dtype=flat.dtype)
        grid = control.grid_constructor(func, y0, t_arg)
        control = control.with_grid(grid, times)
        if isinstance(grid, Tensor) and grid.requires_grad and torch.is_grad_enabled():
            moving_grid = grid.reshape(-1)
    if getattr(control, "perturb", False):  # torchdiffeq's option: f seen from inside steps
        solver = perturbed(solver, times[-1] - times[0])
    explicit = explicit_params(params)
    t_grad = isinstance(t, Tensor) and t.requires_grad and torch.is_grad_enabled()
    motion = None  # seg ↦ how the steps of the piece over seg follow the times
    if moving_grid is not None and isinstance(grad, Adjoint):
        # the adjoint's t-derivative is the continuous one, whatever the grid; a grid built
        # from anything else would have that gradient dropped
        stop = (t,) if t_grad else ()
        if any(q is not t for q in graph_leaves(moving_grid, stop)):
            raise UnsupportedCombinationError(
                "grid_constructor returned a grid that requires grad through tensors other "
                "than t, and the adjoint's backward treats its points as constants: that "
                "gradient would be dropped. Use an exact gradient method, or return the grid "
                "detached"
            )
    if (t_grad or moving_grid is not None) and not isinstance(grad, Adjoint) and len(times) > 1:
        # SPEC §5.2 for the exact methods: the steps move with the times
        t_in = t if isinstance(t, Tensor) else torch.tensor(times, dtype=torch.float64)
        motion = functools.partial(
            _time_motion, solver, control, grad, t_in, times, flat, moving_grid
        )
        # t's gradient reaches t (and, through t, its graph); what else the grid was
        # built from is found by walking f's graph, as parameters are
        explicit = [*explicit, t_in]
    stats = SolveStats()
    pieces = _pieces(times, getattr(control, "jump_t", ()), flat.dtype)
    if len(pieces) > 1 and t_grad:
        why = None
        if isinstance(grad, Adjoint):
            why = "the adjoint's time derivative is not given across the jumps"
        elif set(getattr(control, "jump_t", ())) & set(times[1:-1]):
            why = "an output time is a jump time, where y is not differentiable in t"
        if why is not None:
            raise UnsupportedCombinationError(
                f"t requires grad together with jump_t, and {why}: pass t.detach()"
            )
    run = functools.partial(
        _solve_piece, solver=solver, control=control, grad=grad, explicit=explicit,
        stats=stats, structure=structure, options=options,
        t_in=t if t_grad and motion is None else None, motion=motion,
    )  # fmt: skip
    return _chain(run, [(func, *piece) for piece in pieces], flat, times, structure, stats)


def _chain(run, pieces, flat, times, structure, stats) -> Solution:
    """Solve the pieces one after another, each from the last state of the one before
    (autograd carries the gradient across), and keep the rows that are outputs."""
    y, parts = flat, []
    for func, seg, sides, rows in pieces:
        ys = run(func, y, seg, sides)
        parts.append(ys if rows is None else ys[rows])
        y = ys[-1]
    ys = parts[0] if len(parts) == 1 else torch.cat(parts)
    if structure is not None:
        shapes, numels = structure
        ys = tuple(part.reshape(len(times), *s) for part, s in zip(ys.split(numels, dim=1), shapes))
    return Solution(ys=ys, ts=torch.tensor(times, dtype=torch.float64), stats=stats)


def _pieces(times: list[float], jumps, dtype) -> list[tuple[list[float], dict, list | None]]:
    """The solve split at the jump times strictly inside it (``jump_t``).

    Each piece is ``(its times, {end at a jump: the time f sees there}, the rows of
    its solution that are outputs)`` (``None``: all). At a jump, ``f`` is evaluated
    one ulp inside the piece, its one-sided limit, as torchdiffeq does.
    """
    lo, hi = min(times[0], times[-1]), max(times[0], times[-1])
    inside = sorted((j for j in jumps if lo < j < hi), reverse=times[-1] < times[0])
    if not inside or len(times) == 1:
        return [(times, {}, None)]
    bounds = [times[0], *inside, times[-1]]
    outputs = set(times)
    pieces = []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        mid = [tk for tk in times if min(a, b) < tk < max(a, b)]
        seg = [a, *mid, b]
        rows = ([0] if i == 0 else []) + list(range(1, len(mid) + 1))
        if b in outputs:
            rows.append(len(seg) - 1)
        sides = {}
        if i > 0:
            sides[a] = neighbour(a, b, dtype)
        if i < len(bounds) - 2:
            sides[b] = neighbour(b, a, dtype)
        pieces.append((seg, sides, rows))
    return pieces


def _solve_piece(
    func, flat, times, sides, *, solver, control, grad, explicit, stats, structure, options, t_in,
    motion=None,
):  # fmt: skip
    field = Field(func, flat, stats, structure)
    field.sides = sides
    field.stop = tuple(q for q in explicit if q.grad_fn is not None)
    if motion is not None:
        field.motion = motion = motion(times)
        solver = moving(solver, motion)
    rng = StepRNG(flat.device) if grad.preserve_rng else None
    problem = Problem(
        solver, field, flat, times, control, unique_tensors(explicit), stats,
        find_modules(func), dict(options or {}), rng,
    )  # fmt: skip
    problem.t_input = t_in
    problem.declared = problem.params
    grad.check(problem)  # everything a configuration can get wrong raises before f runs
    if len(times) == 1:  # torchdiffeq: the solution at t0 alone is y0
        return flat[None]
    if isinstance(grad, Direct) or not torch.is_grad_enabled():
        # direct backprop records whatever the caller's grad mode records; without
        # gradients every method is a plain solve that still draws random numbers the way
        # the requested method would, so a later recompute (ODEBlock) can replay it
        ys = Direct().solve(problem)
    else:
        ys = grad.solve(problem)
    return ys if motion is None else motion.correct(ys)


def _time_motion(solver, control, grad, t: Tensor, times, like, grid, seg=None) -> TimeMotion:
    """How the steps over ``seg`` (a piece of ``times`` between jumps; default all)
    follow ``t`` (and a grid_constructor's grid, ``grid`` if it requires grad); raises
    where the exact methods cannot differentiate it."""
    if seg is not None and seg != times:  # a jump_t piece: its ends at jumps stay put
        at = {v: i for i, v in enumerate(times)}
        t = torch.stack([t[at[v]] if v in at else t.new_tensor(v) for v in seg])
        times = seg
    fixed = isinstance(control, FixedGrid)
    why = None
    if solver.rate_slots is None:
        why = f"{solver.name!r}, which does not declare how its state follows the times"
    if why is not None:
        raise UnsupportedCombinationError(
            f"t requires grad, but gradient={grad.name!r} cannot differentiate the times "
            f"here: {why}. gradient='adjoint' (odeint_adjoint) gives the continuous "
            f"derivative dL/dt_k = <dL/dy_k, f(t_k, y_k)>; or pass t.detach()"
        )
    if fixed and control.grid_points is not None:  # its points move as the grid tensor
        return TimeMotion(t, times, like, "grid", grid=(control.grid_points, grid))
    if not control.exact_outputs and (control.dense if fixed else solver.interpolates):
        return TimeMotion(t, times, like, "final")  # one grid from t0, outputs interpolated
    if fixed and control.step_size is None:  # N equal steps per output interval
        counts = [control.count(a, b) for a, b in zip(times[:-1], times[1:])]
        return TimeMotion(t, times, like, "uniform", counts)
    return TimeMotion(t, times, like, "each")  # every output landed on


def odeint(
    func: Callable,
    y0: Tensor | Sequence[Tensor],
    t: TimesLike,
    *,
    method: MethodLike = None,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    options: dict | None = None,
    gradient: GradientLike = "direct",
    params: Sequence[Tensor] | None = None,
    event_fn: Callable | None = None,
) -> Tensor | tuple[Tensor, ...]:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0``, and return ``y`` at every ``t``.

    A torchdiffeq call works unchanged after swapping the import.

    Args:
        func: ``func(t, y)`` with ``t`` a 0-d tensor of ``y``'s dtype; returns
            ``dy/dt`` with ``y``'s shape and dtype (a tuple for tuple states).
        y0: initial state: a tensor of any shape, or a tuple of tensors.
        t: 1-D, strictly increasing or strictly decreasing output times.
        method: ``None`` (``"dopri5"``), ``"euler"``, ``"midpoint"`` (``"rk2"``), ``"heun"``, ``"rk4"``,
            ``"bosh3"``, ``"dopri5"``, ``"tsit5"``, ``"alf"``, ``"heun2"``, ``"heun3"``, ``"fehlberg2"``,
            ``"adaptive_heun"``, ``"dopri8"``, ``"explicit_adams"``, ``"implicit_adams"``
            (fixed grids), ``"scipy_solver"`` (forward only, ``options=dict(solver=...)``),
            or a solver object
            (:class:`~neurode.ALF`, :class:`~neurode.Reversible`, a tableau).
        rtol, atol: tolerances of adaptive stepping.
        options: ``step_size`` (one grid from ``t[0]``; outputs between grid
            points by ``interp="linear"`` or ``"cubic"``) or ``steps`` (that many
            per output interval) for a fixed grid; ``first_step``, ``max_steps``
            (alias ``max_num_steps``), ``min_step``, ``max_step``, ``safety``,
            ``ifactor``, ``dfactor``, ``controller`` (``"I"``/``"PI"``), ``norm``;
            ``exact_outputs=True``: every output a step end instead of
            interpolated. Unknown names raise.
        gradient: ``"direct"``, ``"checkpoint"``, ``"adjoint"``, ``"reversible"``
            or a configured object (:class:`~neurode.Checkpoint`,
            :class:`~neurode.Adjoint`, ...). See ``docs/gradients.md``.
        params: more tensors that need gradients. Every tensor requiring grad
            that ``func`` uses is found by walking the autograd graph of its
            evaluations 1, 2, 4, 8, ..., however ``func`` reaches it (a module,
            closure, global, ``functools.partial``, bound method, dict); list here
            a tensor ``func`` uses only in a short stretch of time, to be sure.

    Returns:
        ``y`` at every time, shape ``(len(t), *y0.shape)``; a tuple for tuple states.

    Step-size decisions are never differentiated: every gradient method
    treats the accepted steps as constants.
    """
    if event_fn is not None:  # torchdiffeq: integrate from t[0] until the event,
        from .events import odeint_event  # in the direction of t[1] if t has one

        ts = t.detach().reshape(-1).tolist() if isinstance(t, Tensor) else list(t)
        return odeint_event(
            func, y0, t, event_fn=event_fn, method=method, rtol=rtol, atol=atol,
            options=options, gradient=gradient, params=params,
            reverse_time=len(ts) > 1 and float(ts[1]) < float(ts[0]),
        )  # fmt: skip
    return solve(
        func, y0, t, method=method, rtol=rtol, atol=atol, options=options, gradient=gradient,
        params=params,
    ).ys  # fmt: skip


def odeint_adjoint(
    func: Callable,
    y0: Tensor | Sequence[Tensor],
    t: TimesLike,
    *,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    method: MethodLike = None,
    options: dict | None = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_method: str | Solver | None = None,
    adjoint_options: dict | None = None,
    adjoint_params: Sequence[Tensor] | None = None,
    event_fn: Callable | None = None,
) -> Tensor | tuple[Tensor, ...]:
    """torchdiffeq's ``odeint_adjoint``: :func:`odeint` with ``gradient=Adjoint(...)``.

    ``adjoint_*`` configure the backward solve (default: the forward's
    settings; the forward ``norm`` is not reused, as in torchdiffeq).
    ``adjoint_params`` (default: ``func.parameters()`` for a module, as in
    torchdiffeq) get gradients, zero for one ``func`` does not use; they are added to
    the tensors found by walking ``func``'s graph, so unlike torchdiffeq a tensor
    ``func`` uses but that is missing from ``adjoint_params`` still gets its gradient.
    """
    if adjoint_params is None and isinstance(func, torch.nn.Module):
        adjoint_params = tuple(func.parameters())  # torchdiffeq's default
    if adjoint_options is None and options is not None and isinstance(options, dict):
        adjoint_options = {k: v for k, v in options.items() if k != "norm"} or None
    gradient = Adjoint(
        method=adjoint_method, rtol=adjoint_rtol, atol=adjoint_atol, options=adjoint_options
    )
    return odeint(
        func, y0, t, method=method, rtol=rtol, atol=atol, options=options,
        gradient=gradient, params=adjoint_params, event_fn=event_fn,
    )  # fmt: skip
