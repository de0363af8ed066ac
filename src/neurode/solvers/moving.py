"""Steps that move with the output times: exact gradients with respect to ``t`` (SPEC §5.2).

The exact methods differentiate what was computed. The accepted step sizes are
constants (no step-size decision is differentiated); what moves with the times is

- where each step starts: ``s_i = t_b + offset_i``, with ``t_b`` the output its
  stretch of the grid starts from (``t_0`` for one grid over the whole solve; the
  last output landed on when the grid restarts at every output);
- the length of a step shortened to land on an output ``t_m``:
  ``H_i = t_m − s_i``; on a grid of ``N`` equal steps per output interval, every
  step: ``H = (t_{k+1} − t_k)/N``;
- where an output inside a step lies: ``θ_k = (t_k − s_i)/H_i``.

A step from ``s`` of length ``h`` whose start moves by ``ds`` and whose length
moves by ``dH`` is the same step of ``f̃(t, y) = (1 + q) f(t + ds + (t − s) q, y)``
with ``q = dH/h``: an RK stage at ``s + c h`` then sees ``f`` at ``s + ds + c(h + dH)``
scaled by ``(h + dH)/h``. ``ds`` and ``q`` are tensors of value zero built from the
caller's ``t`` (``t − t.detach()``), so every value is bitwise what the plain solve
computes, and each gradient method, differentiating the evaluations of ``f`` as it
does for parameters, differentiates the times too. The rates a solver carries in its
state (an FSAL stage, ALF's ``v``) are in time units: a stretched step scales them
by ``1 + q`` on entry and back on exit.

An output interpolated inside a step moves along the interpolant: its row gets
``(dθ) · ∂y/∂θ`` with ``∂y/∂θ`` (the interpolant's slope) recorded by the forward
loop, as a zero-valued term whose backward gives ``⟨ȳ_k, ∂y/∂θ⟩`` for ``dθ``.
"""

from __future__ import annotations

import bisect
import contextlib
import math

import torch
from torch import Tensor

from ..errors import UnsupportedCombinationError
from .base import EPS64, ReversibleSolver, Solver, derived_copy, same_time

#: how the steps follow the times: "final" — one grid from t0, only the last step lands
#: (dense output); "each" — every output landed on, the grid restarts there;
#: "uniform" — N equal steps per output interval; "grid" — a grid_constructor's points,
#: each moving as the tensor the constructor returned (not at all if it is constant)
MODES = ("final", "each", "uniform", "grid")


class TimeMotion:
    """How the steps of one solve move with the caller's output times ``t``."""

    def __init__(
        self, t: Tensor, times: list[float], like: Tensor, mode: str, counts=None, grid=None
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.d = _zero_valued(t, like)  # dt_k
        self.times = times
        self.sign = 1.0 if times[-1] >= times[0] else -1.0
        self.keys = [self.sign * v for v in times]
        self.mode = mode
        self.counts = counts  # steps per output interval ("uniform")
        if mode == "grid":  # (its points, how each moves)
            points, moves = grid
            self.points = [self.sign * v for v in points]
            self.moves = (
                _zero_valued(moves, like)
                if isinstance(moves, Tensor) and moves.requires_grad
                else [like.new_zeros(())] * len(points)
            )
        self.records: list[tuple[int, Tensor, Tensor]] = []  # (k, dθ_k, ∂y/∂θ)

    def _interval(self, t: float, keys=None) -> int:
        """The output interval (or grid step, ``keys=self.points``) starting at ``t``."""
        keys = self.keys if keys is None else keys
        key = self.sign * t
        b = bisect.bisect_right(keys, key + 4 * EPS64 * abs(key)) - 1
        return min(max(b, 0), len(keys) - 2)

    def target(self, t: float, h: float) -> int | None:
        """The output the step ``(t, h)`` lands on and follows, if any."""
        K = len(self.times) - 1
        if self.mode == "grid":  # the grid's points move on their own: none follows
            return None
        if self.mode == "final":
            return K if same_time(t + h, self.times[K]) else None
        m = self._interval(t) + 1
        return m if same_time(t + h, self.times[m]) else None

    def of(self, t: float, h: float) -> tuple[tuple, Tensor | None]:
        """``(move, 1 + q)`` of the step ``(t, h)`` (``None``: its length does not move)."""
        d = self.d
        if self.mode == "grid":
            i = self._interval(t, self.points)
            q = (self.moves[i + 1] - self.moves[i]) / h
            return (self.moves[i], t, q), 1.0 + q
        if self.mode == "uniform":
            k = self._interval(t)
            n = self.counts[k]
            span = self.times[k + 1] - self.times[k]
            j = round((t - self.times[k]) / span * n)
            gap = d[k + 1] - d[k]
            q = gap / (n * h)
            return (d[k] + gap * (j / n), t, q), 1.0 + q
        b = 0 if self.mode == "final" else self._interval(t)
        m = self.target(t, h)
        if m is None:
            return (d[b], t, None), None
        q = (d[m] - d[b]) / h
        return (d[b], t, q), 1.0 + q

    def shift(self, s: float) -> Tensor:
        """How the grid point at time ``s`` moves with the times (zero-valued)."""
        d = self.d
        if self.mode == "grid":
            return self.moves[self._interval(s, self.points + [math.inf])]
        if self.mode == "uniform":
            k = self._interval(s)
            span = self.times[k + 1] - self.times[k]
            j = round((s - self.times[k]) / span * self.counts[k])
            return d[k] + (d[k + 1] - d[k]) * (j / self.counts[k])
        if self.mode == "final":  # one grid from t0: only its end is an output
            return d[-1] if same_time(s, self.times[-1]) else d[0]
        b = self._interval(s)  # the grid restarts at every output
        return d[b + 1] if same_time(s, self.times[b + 1]) else d[b]

    @property
    def start(self) -> tuple:
        return (self.d[0], self.times[0], None)

    def reached(self, t: float, h: float, inside, ends, dense) -> None:
        """The forward loop's step ``(t, h)`` interpolated outputs ``inside`` (``(k, θ)``)
        on its interpolant ``dense`` (``None``: every output is landed on) and reached
        ``ends`` at its end: record how each moves with its time."""
        if dense is None:
            if len(ends) > 1:  # no step between them to carry the later one's derivative
                raise UnsupportedCombinationError(
                    f"t requires grad, and output times {self.times[ends[0]]!r} and "
                    f"{self.times[ends[-1]]!r} are closer than float64 resolves while every "
                    f"output is landed on: use dense outputs (exact_outputs=False), or merge "
                    f"the times"
                )
            return  # each output is the end of the step that lands on it and follows it
        if self.mode == "uniform":
            return  # every output is a grid point that moves with it
        m = self.target(t, h)
        items = list(inside) + [(k, 1.0) for k in ends if k != m]
        if not items:
            return
        with torch.no_grad():
            slopes = dense.slopes([th for _, th in items])
        with torch.enable_grad():  # the forward of a replaying method runs without a graph
            (ds, _, q), _ = self.of(t, h)
            for (k, th), slope in zip(items, slopes):
                dtheta = (self.d[k] - ds) / h  # θ = (t_k − s)/H
                if q is not None:
                    dtheta = dtheta - q * th
                self.records.append((k, dtheta, slope.detach()))

    def correct(self, ys: Tensor) -> Tensor:
        """The solution rows, each interpolated output moving along its interpolant."""
        if not self.records:
            return ys
        rows = list(ys.unbind(0))
        for k, dtheta, slope in self.records:
            rows[k] = rows[k] + _Slide.apply(dtheta, slope)
        return torch.stack(rows)


def _zero_valued(v: Tensor, like: Tensor) -> list[Tensor]:
    """``v − v.detach()`` entry by entry, in ``like``'s dtype and device: zeros whose
    derivative is ``v``'s."""
    return list((v - v.detach()).to(dtype=like.dtype, device=like.device).unbind(0))


class _Slide(torch.autograd.Function):
    # zero, with the derivative ∂y/∂θ with respect to dθ
    @staticmethod
    def forward(ctx, dtheta: Tensor, slope: Tensor):
        ctx.save_for_backward(slope)
        return torch.zeros_like(slope)

    @staticmethod
    def backward(ctx, grad: Tensor):
        if torch.is_grad_enabled():
            raise UnsupportedCombinationError(
                "a double backward (create_graph=True) through the time gradient of an "
                "output interpolated inside a step is not supported: the interpolant's slope "
                "enters as a constant. Use a grid of N steps per output interval "
                "(options=dict(steps=N)) for second derivatives in t"
            )
        (slope,) = ctx.saved_tensors
        return (grad * slope).sum(), None


class _Moved:
    """The field seen by one step that moves with the times (see ``Field.__call__``)."""

    def __init__(self, f, move: tuple):
        self.f, self.move = f, move

    def __call__(self, t: float, y):
        return self.f(t, y, self.move)

    def __getattr__(self, name: str):  # the wrapped field's attributes (stats, dtype, ...)
        return getattr(self.f, name)


def _rates(solver: Solver, x, r: Tensor | None, inverse: bool = False):
    """``x`` with its rate entries scaled by ``r`` (``inverse``: divided)."""
    slots = solver.rate_slots
    if r is None or not slots:
        return x
    slots = range(len(x))[slots] if isinstance(slots, slice) else slots
    return tuple((xi / r if inverse else xi * r) if i in slots else xi for i, xi in enumerate(x))


_SUBCLASSES: dict[type, type] = {}


def moving(solver: Solver, motion: TimeMotion) -> Solver:
    """``solver`` with every step moving with the times as ``motion`` says; an instance
    of a subclass of the solver's class, so that every check of its kind still holds
    and the gradient methods replay steps through the same entries."""
    if solver.rate_slots is None:
        raise UnsupportedCombinationError(f"{solver.name!r} cannot follow the output times")
    return derived_copy(solver, _SUBCLASSES, _subclass, motion=motion)


def _subclass(cls: type) -> type:
    def init(self, f, t0, y0):
        return cls.init(self, _Moved(f, self.motion.start), t0, y0)

    def step(self, f, t, h, x):
        if isinstance(f, _Moved):  # called from inside an entry that already moved it
            return cls.step(self, f, t, h, x)
        move, r = self.motion.of(t, h)
        x1, err = cls.step(self, _Moved(f, move), t, h, _rates(self, x, r))
        return _rates(self, x1, r, inverse=True), err

    def step_dense(self, f, t, h, x, *args, **kwargs):
        move, r = self.motion.of(t, h)
        x1, err, dense = cls.step_dense(
            self, _Moved(f, move), t, h, _rates(self, x, r), *args, **kwargs
        )
        return _rates(self, x1, r, inverse=True), err, dense

    def end_weights(self, h, theta, interp="auto"):
        return None  # an output inside a step moves with the step: replay it

    def node_shift(self, t, h, times):
        # a multistep method's past times as nodes (t_j − t)/h of its step: they move too
        (ds, _, q), r = self.motion.of(t, h)
        hh = h if r is None else h * r
        moved = [((tj - t) + (self.motion.shift(tj) - ds)) / hh for tj in times]
        return [m - m.detach() for m in moved]

    body = {"init": init, "step": step, "step_dense": step_dense, "end_weights": end_weights}
    if hasattr(cls, "node_shift"):
        body["node_shift"] = node_shift
    if issubclass(cls, ReversibleSolver):

        def inverse(self, f, t, h, x1):
            if isinstance(f, _Moved):
                return cls.inverse(self, f, t, h, x1)
            move, r = self.motion.of(t, h)
            x0 = cls.inverse(self, _Moved(f, move), t, h, _rates(self, x1, r))
            return _rates(self, x0, r, inverse=True)

        def backward_step(self, f, t, h, x1, a1, params, rng=contextlib.nullcontext):
            move, r = self.motion.of(t, h)
            if r is None:  # only the start moves, inside f: the solver's own (fused) step
                return cls.backward_step(self, _Moved(f, move), t, h, x1, a1, params, rng)
            # the length moves too, and the rescaled rates sit outside f: invert, replay
            return ReversibleSolver.backward_step(self, f, t, h, x1, a1, params, rng)

        body.update(inverse=inverse, backward_step=backward_step)
    return type(f"Moving{cls.__name__}", (cls,), body)
