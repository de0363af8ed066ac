"""What a solver is: how one step is taken, and nothing else.

A solver carries a *state* ``x``: a tuple of tensors whose first entry is the
solution ``y``. Plain Runge–Kutta methods carry ``(y,)``, FSAL methods carry
``(y, k)`` with ``k = f(t, y)`` (so that gradients flow through the shared stage
exactly as in backprop through the solver), ALF carries ``(y, v)`` and the
reversible RK wrapper ``(y, z)``.

``f`` passed to solvers is the library's internal vector field: ``f(t, y)``
with ``t`` a Python float (times are float64 throughout) and ``y`` a tensor.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager as ContextManager

import torch
from torch import Tensor

State = tuple[Tensor, ...]
VectorField = Callable[[float, Tensor], Tensor]

EPS64 = 2.220446049250313e-16  # float64 machine epsilon: times are float64


def same_time(a: float, b: float) -> bool:
    """Two times equal to float64 resolution (an output there is the state there)."""
    return abs(a - b) <= 4 * EPS64 * max(abs(a), abs(b))


class Solver:
    """One explicit step. Subclasses set ``name``, ``order`` and ``error_order``.

    ``error_order`` is the order ``q`` of the embedded error estimate, or
    ``None`` for a method that can only run on a fixed grid.
    """

    name: str = "solver"
    order: int = 1
    error_order: int | None = None
    # whether adaptive steps may interpolate outputs: False for a method whose interpolant
    # is far less accurate than its steps (order > 4 without a continuous extension),
    # which then lands on every output instead
    interpolates: bool = True
    # the entries of the state that are rates dy/dt (an FSAL stage, ALF's v, a multistep
    # history): indices, or a slice of a state whose length varies. A step whose length
    # moves with t rescales them (SPEC §5.2, solvers/moving.py). ``None``: unknown; such
    # a solver does not differentiate the times
    rate_slots: tuple[int, ...] | slice | None = None

    @property
    def adaptive(self) -> bool:
        return self.error_order is not None

    def init(self, f: VectorField, t0: float, y0: Tensor) -> State:
        """The state at ``t0``; may evaluate ``f`` (FSAL stage, ALF's v₀)."""
        return (y0,)

    def step(self, f: VectorField, t: float, h: float, x: State) -> tuple[State, Tensor | None]:
        """Advance from ``(t, x)`` to ``t + h``. Returns the new state and the
        local error estimate (``None`` for methods without one)."""
        raise NotImplementedError

    def derivative(self, x: State) -> Tensor | None:
        """``f(t, y)`` at the current state when the state carries it, else ``None``."""
        return None

    def step_dense(
        self, f: VectorField, t: float, h: float, x: State, interp: str = "auto"
    ) -> tuple[State, Tensor | None, Interpolant]:
        """:meth:`step`, plus the step's interpolant ``θ ↦ y(t + θh)`` (SPEC §5.3).

        ``interp="auto"`` is the solver's own (its continuous extension where it
        has one; the default is the cubic Hermite through both ends, evaluating
        ``f`` there only when the state does not carry it); ``"linear"`` joins the
        two ends. The interpolant is built from the step's own tensors, so it is
        differentiated exactly like the step.
        """
        x1, err = self.step(f, t, h, x)
        return x1, err, self.interpolant(f, t, h, x, x1, interp)

    def end_weights(
        self, h: float, theta: float, interp: str = "auto"
    ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """If the interpolant is a fixed linear combination of the two end states —
        ``y(θ) = Σ c0ᵢ x0ᵢ + Σ c1ᵢ x1ᵢ`` — return ``(c0, c1)``; else ``None``. A reverse
        sweep then adds an output's cotangent at the step's ends without replaying it."""
        return None

    def interpolant(
        self, f: VectorField, t: float, h: float, x0: State, x1: State, interp: str = "auto"
    ) -> Interpolant:
        """The default interpolant of a step from ``x0`` to ``x1`` (see :meth:`step_dense`)."""
        if interp == "linear":
            return Linear(x0[0], x1[0])
        return Hermite(f, t, h, x0[0], x1[0], self.derivative(x0), self.derivative(x1))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def derived_copy(solver: Solver, cache: dict, make: Callable[[type], type], **attrs) -> Solver:
    """``solver``'s settings in an instance of ``make(type(solver))`` (made once per class
    and kept in ``cache``), with ``attrs`` set: a subclass keeps every check of the
    solver's kind true, and the gradient methods replay steps through its entries."""
    cls = type(solver)
    sub = cache.get(cls)
    if sub is None:
        sub = cache[cls] = make(cls)
    out = object.__new__(sub)
    out.__dict__.update(solver.__dict__)
    out.__dict__.update(attrs)
    return out


class Interpolant(abc.ABC):
    """``θ ↦ y(t + θh)`` on one step, ``θ ∈ [0, 1]``.

    ``order`` is ``q`` in a local error ``O(h^(q+1))`` given exact data at the step's
    ends: an output inside a step of a method of order ``p`` is accurate to
    ``O(h^min(p, q+1))``.
    """

    order: int = 1

    @abc.abstractmethod
    def values(self, thetas: Sequence[float]) -> list[Tensor]:
        """The interpolated solution at every ``θ``."""

    @abc.abstractmethod
    def slopes(self, thetas: Sequence[float]) -> list[Tensor]:
        """``∂y/∂θ`` at every ``θ`` (``h`` times the interpolant's time derivative): how an
        output inside the step moves with its time (SPEC §5.2)."""


class Linear(Interpolant):
    """``(1 − θ) y₀ + θ y₁``: second order, no evaluation (torchdiffeq's fixed-grid default)."""

    order = 1

    def __init__(self, y0: Tensor, y1: Tensor):
        self.y0, self.y1 = y0, y1

    def values(self, thetas: Sequence[float]) -> list[Tensor]:
        return [torch.lerp(self.y0, self.y1, float(th)) for th in thetas]

    def slopes(self, thetas: Sequence[float]) -> list[Tensor]:
        return [self.y1 - self.y0 for _ in thetas]


class Hermite(Interpolant):
    """The cubic Hermite through ``(y₀, f₀)`` and ``(y₁, f₁)``: fourth order locally.

    A missing end derivative is evaluated (once, on first use) as ``f`` there.
    """

    order = 3

    def __init__(self, f: VectorField, t: float, h: float, y0, y1, f0=None, f1=None):
        self.f, self.t, self.h = f, t, h
        self.y0, self.y1, self.f0, self.f1 = y0, y1, f0, f1

    def values(self, thetas: Sequence[float]) -> list[Tensor]:
        return self._combine(thetas, hermite_weights)

    def slopes(self, thetas: Sequence[float]) -> list[Tensor]:
        return self._combine(thetas, hermite_slopes)

    def _combine(self, thetas, weights) -> list[Tensor]:
        if self.f0 is None:
            self.f0 = self.f(self.t, self.y0)
        if self.f1 is None:
            self.f1 = self.f(self.t + self.h, self.y1)
        out = []
        for th in thetas:
            w0, d0, w1, d1 = weights(float(th))
            y = self.y0 * w0
            y.add_(self.y1, alpha=w1).add_(self.f0, alpha=self.h * d0)
            out.append(y.add_(self.f1, alpha=self.h * d1))
        return out


def hermite_weights(th: float) -> tuple[float, float, float, float]:
    """The cubic Hermite's weights of ``y0``, ``h f0``, ``y1``, ``h f1`` at ``θ``."""
    return (
        (1.0 + 2.0 * th) * (1.0 - th) ** 2,
        th * (1.0 - th) ** 2,
        th * th * (3.0 - 2.0 * th),
        th * th * (th - 1.0),
    )


def hermite_slopes(th: float) -> tuple[float, float, float, float]:
    """The θ-derivatives of :func:`hermite_weights`."""
    return (
        -6.0 * th * (1.0 - th),
        (1.0 - th) * (1.0 - 3.0 * th),
        6.0 * th * (1.0 - th),
        th * (3.0 * th - 2.0),
    )


class Quadratic(Interpolant):
    """The quadratic through ``y₀`` with slope ``f₀`` and ``y₁``: third order locally, no
    evaluation; serves methods of order ≤ 2 whose state does not carry ``f(t + h, y')``."""

    order = 2

    def __init__(self, h: float, y0: Tensor, f0: Tensor, y1: Tensor):
        self.h, self.y0, self.f0, self.y1 = h, y0, f0, y1

    def values(self, thetas: Sequence[float]) -> list[Tensor]:
        out = []
        for th in thetas:
            th = float(th)
            # y0 + θh f0 + θ²(y1 − y0 − h f0)
            y = self.y0 * (1.0 - th * th)
            y.add_(self.y1, alpha=th * th).add_(self.f0, alpha=self.h * th * (1.0 - th))
            out.append(y)
        return out

    def slopes(self, thetas: Sequence[float]) -> list[Tensor]:
        out = []
        for th in thetas:
            th = float(th)
            y = (self.y1 - self.y0).mul_(2.0 * th)
            out.append(y.add_(self.f0, alpha=self.h * (1.0 - 2.0 * th)))
        return out


#: from this many outputs in one step on, a polynomial interpolant evaluates them together
_BATCHED = 3


class Polynomial(Interpolant):
    """A continuous extension ``y₀ + h Σ bᵢ(θ) kᵢ`` from the step's own stages."""

    def __init__(
        self,
        weights: Callable[[float], Sequence[float]],
        h: float,
        y0,
        ks,
        order: int,
        slope_weights: Callable[[float], Sequence[float]] | None = None,
    ):
        self.weights, self.h, self.y0, self.ks = weights, h, y0, ks
        self.order = order
        self.slope_weights = slope_weights  # θ ↦ (b₁'(θ), …, b_s'(θ))

    def slopes(self, thetas: Sequence[float]) -> list[Tensor]:
        if self.slope_weights is None:
            raise NotImplementedError("this continuous extension gives no slope weights")
        return [combine(None, self.h, self.slope_weights(float(th)), self.ks) for th in thetas]

    def values(self, thetas: Sequence[float]) -> list[Tensor]:
        if len(thetas) < _BATCHED or not isinstance(self.y0, Tensor):
            return [combine(self.y0, self.h, self.weights(float(th)), self.ks) for th in thetas]
        # Several outputs in one step: one (m × s)·(s × N) product instead of m·s
        # multiply-adds, forward and backward alike.
        y0 = self.y0
        w = torch.tensor(
            [self.weights(float(th)) for th in thetas], dtype=y0.dtype, device=y0.device
        )
        ys = torch.tensordot(w * self.h, torch.stack(tuple(self.ks)), dims=1).add_(y0)
        return list(ys.unbind(0))


class ReversibleSolver(Solver):
    """A solver whose step can be undone algebraically.

    ``inverse(f, t, h, x1)`` rebuilds the state at ``t`` from the state at
    ``t + h``. ``backward_step`` rebuilds the previous state and takes the
    step's vector–Jacobian product; the default inverts then replays the step
    with its graph, subclasses may fuse the two (ALF evaluates f once).
    """

    @abc.abstractmethod
    def inverse(self, f: VectorField, t: float, h: float, x1: State) -> State:
        """Rebuild the state at ``t`` from the state ``x1`` at ``t + h``."""

    def backward_step(
        self,
        f: VectorField,
        t: float,
        h: float,
        x1: State,
        a1: State,
        params: Sequence[Tensor],
        rng: Callable[[], ContextManager] = contextlib.nullcontext,
    ) -> tuple[State, State, tuple[Tensor | None, ...]]:
        """Rebuild ``x0`` from ``x1`` and pull the adjoint ``a1`` back through the step.

        Default: invert, then replay the step from the rebuilt state with its graph
        (``rng()`` is entered around each, so both draw what the forward step drew).
        Returns ``(x0, a0, param_grads)``.
        """
        with torch.no_grad(), rng():
            x0 = self.inverse(f, t, h, x1)
        leaves = tuple(xi.detach().requires_grad_(True) for xi in x0)
        with torch.enable_grad(), rng():
            x1r, _ = self.step(f, t, h, leaves)
        a0, g = vjp(x1r, leaves, a1, params, retain=getattr(f, "shared_graph", True))
        return x0, a0, g


def vjp(
    outs: State, leaves: State, a: State, params: Sequence[Tensor], retain: bool = True
) -> tuple[State, tuple[Tensor | None, ...]]:
    """Pull ``a`` back from ``outs`` to ``leaves`` and ``params``.

    Returns the adjoint of ``leaves`` (zeros where ``outs`` does not depend on
    them) and the parameter gradients (``None`` where unused). ``retain`` keeps
    the graph: a step's graph is its own, but a parameter that ``f`` reaches
    through a tensor computed outside it shares that outside part with every
    step (the field's ``shared_graph``). Without it, a ``torch.compile``-d ``f``
    (whose backward refuses ``retain_graph``) works with every gradient method.
    """
    outs_g = [o for o in outs if o.requires_grad]
    a_g = [ai for o, ai in zip(outs, a) if o.requires_grad]
    n = len(leaves)
    if not outs_g:
        return tuple(torch.zeros_like(v) for v in leaves), (None,) * len(params)
    grads = torch.autograd.grad(
        outs_g, (*leaves, *params), a_g, allow_unused=True, retain_graph=retain
    )
    a_x = tuple(torch.zeros_like(v) if g is None else g for v, g in zip(leaves, grads[:n]))
    return a_x, tuple(grads[n:])


def combine(base: Tensor | None, h: float, coeffs: Sequence[float], ks: Sequence[Tensor]) -> Tensor:
    """``base + h Σ coeffs_j ks_j`` with one fused multiply-add per non-zero term.

    The first term makes a new tensor and the others accumulate into it in
    place: one allocation per call instead of one per term (for state-sized
    tensors each allocation costs page faults, a measurable share of a step).
    In-place accumulation is safe under autograd: the tensor is fresh and
    ``add`` saves neither input for backward, and it performs exactly the
    same floating-point operations as the out-of-place chain.
    """
    out = None
    for c, k in zip(coeffs, ks):
        if c == 0.0:
            continue
        if out is None:
            out = k * (h * c) if base is None else base.add(k, alpha=h * c)
        else:
            out.add_(k, alpha=h * c)
    if out is None:  # all coefficients zero
        out = ks[0] * 0.0 if base is None else base
    return out
