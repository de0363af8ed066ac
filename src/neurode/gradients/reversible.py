"""Gradients through reversible solvers: rebuild each state instead of storing it.

MALI (Zhuang et al., ICLR 2021) for ALF; McCallum & Foster (2024) for the
reversible Runge–Kutta wrapper.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import UnsupportedCombinationError
from ..solvers.base import ReversibleSolver, Solver
from .base import FunctionMethod, Runner, add_into, forward_no_graph
from .checkpoint import _EveryStep


class ReversibleGradient(FunctionMethod):
    """Exact gradients with memory constant in the number of steps.

    The forward solve keeps only its final state and the accepted step sizes.
    Backward inverts each step algebraically to rebuild the previous state,
    replays it with its graph and takes its vector–Jacobian product.

    Memory ``O(S + L)``, flat in ``N_t`` (plus two floats per step). Compute:
    ALF evaluates ``f`` once per step in backward (the inverse and the forward
    step share their evaluation point) plus one VJP; the reversible RK wrapper
    inverts (two base steps) and replays (two base steps). The gradient equals
    backprop through the same discretisation up to the round-off of the
    reconstruction. Needs a :class:`~neurode.solvers.ReversibleSolver`
    (``"alf"``, :class:`~neurode.ALF`, :class:`~neurode.Reversible`).
    """

    name = "reversible"

    def __init__(self, preserve_rng: bool = True):
        self.preserve_rng = preserve_rng

    def check(self, solver: Solver) -> None:
        if not isinstance(solver, ReversibleSolver):
            raise UnsupportedCombinationError(
                f"gradient='reversible' needs a solver that can invert its steps, and "
                f"{solver.name!r} cannot; use method='alf' or neurode.Reversible({solver.name!r}), "
                f"or gradient='checkpoint' for exact gradients with this solver"
            )

    @property
    def runner_cls(self):
        return _Reverse


class _Reverse(Runner):
    def forward(self, y0: Tensor) -> list[Tensor]:
        outputs, self.x_final, self.traj = forward_no_graph(self, y0)
        return outputs

    def backward(self, grads: list[Tensor], y0: Tensor):
        p = self.p
        solver = p.solver
        traj = self.traj
        acc: list[Tensor | None] = [None] * len(p.params)
        x = self.x_final
        self.x_final = None
        a = _EveryStep._zero_adjoint(x, grads[-1])
        out_at = {s: k for k, s in enumerate(traj.out_steps)}
        fused = hasattr(solver, "backward_step")
        for i in range(len(traj.steps) - 1, -1, -1):
            t, h = traj.steps[i]
            key = traj.keys[i]
            if fused:
                with self.rng_ctx(key):
                    x, a, g = solver.backward_step(p.field, t, h, x, a, p.params)
                add_into(acc, g)
            else:
                with torch.no_grad(), self.rng_ctx(key):
                    x = solver.inverse(p.field, t, h, x)
                a = self.step_vjp(t, h, x, a, key, acc)
            k = out_at.get(i)
            if k is not None and k > 0:
                a = (a[0] + grads[k],) + tuple(a[1:])
        a = (a[0] + grads[0],) + tuple(a[1:])
        return self.init_vjp(y0, a, acc), acc
