"""The generic explicit Runge–Kutta step: one function serves every tableau."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InvalidOptionError, UnknownMethodError, UnsupportedCombinationError
from .base import (
    Hermite,
    Interpolant,
    Linear,
    Polynomial,
    Quadratic,
    Solver,
    State,
    VectorField,
    combine,
)
from .dense import ORDER, dense_weights, slope_weights
from .tableau import TABLEAUS, ButcherTableau


def tableau_named(name: str) -> ButcherTableau:
    """The explicit tableau called ``name``; an unknown name raises, listing the known ones."""
    if name not in TABLEAUS:
        raise UnknownMethodError(
            f"no explicit Runge–Kutta tableau is called {name!r}; choose one of {sorted(TABLEAUS)}"
        )
    return TABLEAUS[name]


def rk_step(
    tab: ButcherTableau, f: VectorField, t: float, h: float, y: Tensor, k0: Tensor | None = None
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One step of ``tab`` from ``(t, y)``.

    Returns ``(y1, err, k_last)``: ``k_last`` is ``f(t + h, y1)`` for FSAL
    tableaus (``None`` otherwise), ``err`` the embedded error estimate or ``None``.
    ``k0``, if given, is ``f(t, y)`` (reused FSAL stage).
    """
    y1, err, ks = rk_stages(tab, f, t, h, y, k0)
    return y1, err, (ks[-1] if tab.fsal else None)


def rk_stages(
    tab: ButcherTableau, f: VectorField, t: float, h: float, y: Tensor, k0: Tensor | None = None
) -> tuple[Tensor, Tensor | None, list[Tensor]]:
    """:func:`rk_step` returning every stage ``k_i`` instead of the FSAL one."""
    ks = [f(t, y) if k0 is None else k0]
    s = tab.stages
    y1 = None
    for i in range(1, s):
        yi = combine(y, h, tab.a[i], ks)
        if tab.fsal and i == s - 1:
            y1 = yi  # the last stage is evaluated at the solution itself
        ks.append(f(t + tab.c[i] * h, yi))
    if y1 is None:
        y1 = combine(y, h, tab.b, ks)
    err = combine(None, h, tab.b_err, ks) if tab.b_err is not None else None
    return y1, err, ks


def rk_interpolant(
    tab: ButcherTableau, f: VectorField, t: float, h: float, y0, y1, ks, interp: str = "auto"
) -> Interpolant:
    """The interpolant of one step of ``tab`` from its stages ``ks``.

    The tableau's continuous extension where it has one (dopri5, tsit5); else the
    cubic Hermite from the first stage and ``f(t + h, y')`` (free for FSAL tableaus,
    one evaluation otherwise); methods of order ≤ 2 without FSAL use the quadratic
    through y, f(t, y) and y', which costs nothing and keeps their order.
    """
    weights = dense_weights(tab.name)
    if interp == "linear":
        return Linear(y0, y1)
    if weights is not None:
        return Polynomial(weights, h, y0, ks, ORDER[tab.name], slope_weights(tab.name))
    if not tab.fsal and tab.order <= 2:
        return Quadratic(h, y0, ks[0], y1)
    return Hermite(f, t, h, y0, y1, ks[0], ks[-1] if tab.fsal else None)


class RungeKutta(Solver):
    """An explicit Runge–Kutta method given by a :class:`ButcherTableau`.

    FSAL tableaus carry ``(y, f(t, y))`` as their state so that the shared
    stage is evaluated once per step and its gradient flows exactly as in
    backprop through the solver.
    """

    def __init__(self, tableau: ButcherTableau | str, compile: bool = False):
        if isinstance(tableau, str):
            tableau = tableau_named(tableau)
        if not isinstance(compile, bool):
            raise InvalidOptionError(f"RungeKutta compile must be True or False, got {compile!r}")
        self.tableau = tableau
        self.compile = compile
        self.name = tableau.name
        self.order = tableau.order
        self.error_order = tableau.error_order
        self.interpolates = dense_weights(tableau.name) is not None or tableau.order <= 4
        self.rate_slots = (1,) if tableau.fsal else ()

    def init(self, f: VectorField, t0: float, y0: Tensor) -> State:
        if self.tableau.fsal:
            return (y0, f(t0, y0))
        return (y0,)

    def step(self, f: VectorField, t: float, h: float, x: State) -> tuple[State, Tensor | None]:
        k0 = x[1] if self.tableau.fsal else None
        if self.compile and _compilable(f):
            y1, err, ks = _compiled(self.tableau, f, t, h, x[0], k0)
            return ((y1, ks[-1]) if self.tableau.fsal else (y1,)), err
        y1, err, k_last = rk_step(self.tableau, f, t, h, x[0], k0)
        return ((y1, k_last) if self.tableau.fsal else (y1,)), err

    def derivative(self, x: State) -> Tensor | None:
        return x[1] if self.tableau.fsal else None

    def step_dense(self, f, t, h, x, interp="auto"):
        tab = self.tableau
        k0 = x[1] if tab.fsal else None
        if self.compile and _compilable(f):
            y1, err, ks = _compiled(tab, f, t, h, x[0], k0)
            ks = list(ks)
        else:
            y1, err, ks = rk_stages(tab, f, t, h, x[0], k0)
        x1 = (y1, ks[-1]) if tab.fsal else (y1,)
        return x1, err, rk_interpolant(tab, f, t, h, x[0], y1, ks, interp)

    def __eq__(self, other) -> bool:
        return isinstance(other, RungeKutta) and other.tableau == self.tableau

    def __hash__(self) -> int:
        return hash(self.tableau.name)


def _compilable(f) -> bool:
    """Whether the step may bypass the field: a plain solve field (not a wrapper
    forwarding its attributes), a single-tensor state, no time remapping, not
    recording graphs for parameter discovery, and not a backward replay. Replays
    stay eager because the forward of a replaying method is eager (discovery
    records its evaluations): a replay must compute what the forward computed."""
    return (
        getattr(type(f), "solve_field", False)
        and f.structure is None
        and not f.sides
        and not f.discover
        and not f.backward
    )


def _compiled(tab, f, t: float, h: float, y: Tensor, k0):
    from .compiled import compiled_stages  # noqa: PLC0415

    tt = torch.tensor(t, dtype=y.dtype, device=y.device)
    hh = torch.tensor(h, dtype=y.dtype, device=y.device)
    before = _rng_state(y.device)
    y1, err, ks = compiled_stages(tab)(f.func, tt, hh, y, k0)
    if not all(torch.equal(a, b) for a, b in zip(before, _rng_state(y.device))):
        raise UnsupportedCombinationError(
            f"f draws random numbers (near t={t:.6g}), and a compiled step draws them "
            f"differently from the eager one: use RungeKutta({tab.name!r}) without compile"
        )
    for k in ks if k0 is None else ks[1:]:  # what the field checks on every evaluation
        f.check_output(k)
    f.stats.nfe_forward += tab.stages - (1 if k0 is not None else 0)
    return y1, err, ks


def _rng_state(device) -> tuple[Tensor, ...]:
    cpu = torch.get_rng_state()
    if device.type == "cuda":
        return cpu, torch.cuda.get_rng_state(device)
    return (cpu,)
