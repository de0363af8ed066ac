"""Backprop through the solver: autograd records every step."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from .._loop import integrate
from .base import INIT_KEY, GradientMethod, Problem


class Direct(GradientMethod):
    """Differentiate through every operation of the solver with autograd.

    Exact for the discretisation that was run. Memory ``O(N_t·L)``: the graph
    of every evaluation of ``f`` in every accepted step is kept until backward
    (rejected trial steps are freed as soon as they are rejected). Compute: one
    backward pass of the recorded graph. The reference every other method is
    tested against; use it when memory is not the constraint.
    """

    name = "direct"

    def solve(self, problem: Problem) -> Tensor:
        p = problem
        rng = p.rng
        # with a step RNG, draw the init's randomness as the other methods do (see INIT_KEY)
        with rng(INIT_KEY) if rng is not None else contextlib.nullcontext():
            x0 = p.solver.init(p.field, p.times[0], p.y0)
        outputs, _, _ = integrate(p.solver, p.field, x0, p.times, p.control, p.stats, rng=rng)
        return torch.stack(outputs)
