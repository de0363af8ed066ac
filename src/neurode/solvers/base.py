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


class Solver:
    """One explicit step. Subclasses set ``name``, ``order`` and ``error_order``.

    ``error_order`` is the order ``q`` of the embedded error estimate, or
    ``None`` for a method that can only run on a fixed grid.
    """

    name: str = "solver"
    order: int = 1
    error_order: int | None = None

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

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


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
        a0, g = vjp(x1r, leaves, a1, params)
        return x0, a0, g


def vjp(
    outs: State, leaves: State, a: State, params: Sequence[Tensor]
) -> tuple[State, tuple[Tensor | None, ...]]:
    """Pull ``a`` back from ``outs`` to ``leaves`` and ``params``.

    Returns the adjoint of ``leaves`` (zeros where ``outs`` does not depend on
    them) and the parameter gradients (``None`` where unused). The graph is
    retained: it is local to one step and freed with it, but a parameter that
    ``f`` reaches through a tensor computed outside it shares that outside
    graph with every step.
    """
    outs_g = [o for o in outs if o.requires_grad]
    a_g = [ai for o, ai in zip(outs, a) if o.requires_grad]
    n = len(leaves)
    if not outs_g:
        return tuple(torch.zeros_like(v) for v in leaves), (None,) * len(params)
    grads = torch.autograd.grad(
        outs_g, (*leaves, *params), a_g, allow_unused=True, retain_graph=True
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
