"""Adams multistep methods on fixed grids: ``explicit_adams`` and ``implicit_adams``.

Adams–Bashforth of order ``p`` (``explicit_adams``) advances with the polynomial
through the last ``p`` values of ``f``::

    y_{n+1} = y_n + ∫_{t_n}^{t_{n+1}} P(s) ds,   P(t_{n-j}) = f_{n-j},  j = 0 … p−1

``implicit_adams`` is the Adams–Bashforth–Moulton predictor–corrector: the
Adams–Bashforth value is the predictor, and the Adams–Moulton formula of the
same order (the polynomial through ``f_{n+1}, f_n, …, f_{n-p+2}``) is applied a
fixed number of times (``corrector_iters``, default 1: PECE), so that a step is
an explicit map — differentiable, replayable and with a fixed cost. torchdiffeq's
``implicit_adams`` iterates the corrector until it converges (up to 4 times); more
iterations here approach that implicit Adams–Moulton solution, with the same order.

**State and purity.** The state is ``(y, f_n, f_{n-1}, …, τ)``: the solution, up
to ``p`` past values of ``f`` (newest first) and ``τ``, a float64 CPU tensor of
their times. A step is a pure function of ``(t, h, state)``, so the checkpoint
gradient's replays and recomputations are exact. The history grows from
``(y, f_0, τ)`` after :meth:`init` to ``p`` entries.

**Unequal steps.** The integration weights are those of the interpolating
polynomial through the recorded times (variable-step Adams), so a grid whose last
step is shortened, or one with different steps per output interval, is integrated
with the declared order; on an equal grid they are the classical coefficients
(55/24, −59/24, 37/24, −9/24 for the fourth-order Adams–Bashforth). Strongly
varying steps may make the method less stable than its equal-step form.

**Start-up.** Until ``p`` values of ``f`` are known, steps are classic RK4 steps
(four evaluations, one of them the new ``f`` the history needs; the first stage is
the stored ``f_n``), as torchdiffeq does; RK4 is accurate enough not to lower the
order of any ``p ≤ 4``. Afterwards a step costs one evaluation of ``f``
(Adams–Bashforth) or ``1 + corrector_iters`` (predictor–corrector).

**Gradients.** ``direct`` and ``checkpoint`` (exact gradients of the discretisation);
``adjoint`` on a fixed grid (its backward solve runs the same method).
``reversible`` raises: the steps cannot be inverted. With ``t`` requiring grad the
grid follows the times (solvers/moving.py): the past values of ``f`` are rates
(``rate_slots``) and the nodes ``(t_j − t_n)/h`` move with the times, so the weights
are differentiated too (``node_shift``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InvalidOptionError, InvalidStateError
from .base import Solver, State, VectorField, combine
from .rk import rk_step
from .tableau import RK4

MAX_ORDER = 4


def integration_weights(nodes: list[float]) -> list[float]:
    """``∫₀¹ Lⱼ(s) ds`` for the Lagrange basis ``Lⱼ`` on ``nodes`` (in units of the step).

    With ``s = (τ − t_n)/h`` the step runs over ``s ∈ [0, 1]``; a past time
    ``t_{n−j}`` is the node ``(t_{n−j} − t_n)/h`` (``−j`` on an equal grid).
    """
    weights = []
    for j, sj in enumerate(nodes):
        poly = [1.0]  # coefficients of Π_{i≠j} (s − s_i), lowest power first
        denom = 1.0
        for i, si in enumerate(nodes):
            if i == j:
                continue
            nxt = [0.0] * (len(poly) + 1)
            for k, ck in enumerate(poly):
                nxt[k] -= si * ck
                nxt[k + 1] += ck
            poly = nxt
            denom *= sj - si
        weights.append(sum(ck / (k + 1) for k, ck in enumerate(poly)) / denom)
    return weights


def _weights(nodes: list[float], moves: list[Tensor] | None):
    """The integration weights at ``nodes`` and, where the nodes move with the output
    times, the weights' zero-valued motion (its derivative is theirs)."""
    w = integration_weights(nodes)
    if moves is None:
        return w, None
    moved = integration_weights([n + m for n, m in zip(nodes, moves)])
    return w, [m - m.detach() for m in moved]


def _adams(y: Tensor, h: float, w: list[float], dw: list[Tensor] | None, ks) -> Tensor:
    """``y + h Σ w_j k_j``, plus ``h Σ dw_j k_j`` (zero-valued) when the weights move."""
    out = combine(y, h, w, ks)
    if dw is not None:
        out = out + h * sum(d * k for d, k in zip(dw, ks))
    return out


def _order(order) -> int:
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= MAX_ORDER:
        raise InvalidOptionError(f"Adams order must be an integer in 1..{MAX_ORDER}, got {order!r}")
    return order


class AdamsBashforth(Solver):
    """Adams–Bashforth of order ``order`` (1–4, default 4) on a fixed grid; RK4 start-up.

    torchdiffeq's ``explicit_adams``. See the module docstring for the state, the
    start-up and unequal steps.
    """

    error_order = None  # a fixed grid only: no error estimate
    implicit = False
    rate_slots = slice(1, -1)  # the past values of f

    def node_shift(self, t: float, h: float, times: list[float]) -> list[Tensor] | None:
        """How the nodes ``(t_j − t)/h`` move with the output times (zero-valued tensors),
        when the steps follow them (SPEC §5.2, solvers/moving.py); ``None``: they do not."""
        return None

    def __init__(self, order: int = 4):
        self.order = _order(order)
        self.name = "explicit_adams" if self.order == MAX_ORDER else f"explicit_adams({order})"

    def init(self, f: VectorField, t0: float, y0: Tensor) -> State:
        return (y0, f(t0, y0), torch.tensor([t0], dtype=torch.float64))

    def derivative(self, x: State) -> Tensor:
        return x[1]

    def step(self, f: VectorField, t: float, h: float, x: State) -> tuple[State, None]:
        y, hist, times = x[0], list(x[1:-1]), x[-1].tolist()
        if len(hist) != len(times) or not hist:
            raise InvalidStateError(
                f"{self.name}: a state (y, f_n, ..., times) with one time per stored f is "
                f"needed; got {len(hist)} values of f and {len(times)} times"
            )
        if abs(times[0] - t) > 1e-12 * max(1.0, abs(t)):
            raise InvalidStateError(
                f"{self.name}: the state was recorded at t={times[0]!r} but the step starts "
                f"at t={t!r}; a multistep state belongs to the time it was made at"
            )
        t1 = t + h
        if len(hist) < self.order:  # start-up: one RK4 step, then f at its end
            y1, _, _ = rk_step(RK4, f, t, h, y, hist[0])
        else:
            p = self.order
            nodes = [(tj - t) / h for tj in times[:p]]
            moves = self.node_shift(t, h, times[:p])
            w, dw = _weights(nodes, moves)
            y1 = _adams(y, h, w, dw, hist[:p])
            if self.implicit:
                # Adams–Moulton of the same order: through t_{n+1} and the p − 1 newest f
                nodes = [1.0] + nodes[: p - 1]
                if moves is not None:  # t_{n+1} ends the step: node 1 however it moves
                    moves = [torch.zeros_like(moves[0])] + moves[: p - 1]
                w, dw = _weights(nodes, moves)
                base = y if p == 1 else _adams(y, h, w[1:], dw and dw[1:], hist[: p - 1])
                for _ in range(self.corrector_iters):
                    f1 = f(t1, y1)
                    y1 = base.add(f1, alpha=h * w[0])
                    if dw is not None:
                        y1 = y1 + (h * dw[0]) * f1
        f1 = f(t1, y1)
        keep = self.order - 1
        new_times = torch.tensor([t1, *times[:keep]], dtype=torch.float64)
        return (y1, f1, *hist[:keep], new_times), None


class AdamsBashforthMoulton(AdamsBashforth):
    """Adams–Bashforth–Moulton predictor–corrector of order ``order`` (1–4, default 4).

    torchdiffeq's ``implicit_adams``, with a fixed number of corrector applications
    ``corrector_iters`` (default 1: predict, evaluate, correct, evaluate) instead of
    iterating to convergence, so that each step is an explicit, differentiable map.
    """

    implicit = True

    def __init__(self, order: int = 4, corrector_iters: int = 1):
        super().__init__(order)
        ok = isinstance(corrector_iters, int) and not isinstance(corrector_iters, bool)
        if not ok or corrector_iters < 1:
            raise InvalidOptionError(
                f"corrector_iters must be an integer >= 1, got {corrector_iters!r}"
            )
        self.corrector_iters = corrector_iters
        default = self.order == MAX_ORDER and corrector_iters == 1
        self.name = (
            "implicit_adams"
            if default
            else f"implicit_adams(order={self.order}, corrector_iters={corrector_iters})"
        )
