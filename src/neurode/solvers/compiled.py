"""A compiled Runge–Kutta step: ``RungeKutta(tableau, compile=True)``.

The eager step calls ``f`` through the solve's field (time conversion, output
checks, evaluation counts) and combines the stages one fused multiply-add at a
time. The compiled step hands :func:`torch.compile` the whole step — the user's
``f`` at every stage and the stage combinations — as one function of tensors
``(t, h, y)``: the times are tensors, so a new time value does not recompile,
and the compiler can fuse the combinations with ``f``'s own operations.

Every evaluation's output is checked as the field checks it (shape, dtype,
device) and counted. What stays eager: tuple states, fields that change the
time they hand ``f`` (``perturb``, ``jump_t`` ends), the forward of the
gradient methods that replay steps (parameter discovery records its
evaluations) and so their replays, which must compute what the forward did.
The compiled step therefore serves ``gradient="direct"`` and solves without
gradients. An ``f`` that draws random numbers raises: a compiled graph draws
them differently from the eager one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .tableau import ButcherTableau

_CACHE: dict[str, object] = {}


def compiled_stages(tab: ButcherTableau):
    """``(func, t, h, y, k0) -> (y1, err, ks)`` for ``tab``, compiled once per tableau."""
    fn = _CACHE.get(tab.name)
    if fn is None:
        fn = _CACHE[tab.name] = torch.compile(_stages_of(tab), dynamic=False)
    return fn


def _stages_of(tab: ButcherTableau):
    a, b, c, b_err, s, fsal = tab.a, tab.b, tab.c, tab.b_err, tab.stages, tab.fsal

    def combine(y, h, coeffs, ks):
        out = y
        for w, k in zip(coeffs, ks):
            if w != 0.0:
                out = out + (h * w) * k
        return out

    def stages(func, t: Tensor, h: Tensor, y: Tensor, k0: Tensor | None):
        ks = [func(t, y) if k0 is None else k0]
        y1 = None
        for i in range(1, s):
            yi = combine(y, h, a[i], ks)
            if fsal and i == s - 1:
                y1 = yi
            ks.append(func(t + c[i] * h, yi))
        if y1 is None:
            y1 = combine(y, h, b, ks)
        err = None
        if b_err is not None:
            err = combine(torch.zeros_like(y), h, b_err, ks)
        return y1, err, tuple(ks)

    return stages
