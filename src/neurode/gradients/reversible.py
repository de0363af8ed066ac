"""Gradients through reversible solvers: rebuild each state instead of storing it.

MALI (Zhuang et al., ICLR 2021) for ALF; McCallum & Foster (2024) for the
reversible Runge–Kutta wrapper.
"""

from __future__ import annotations

from torch import Tensor

from ..errors import UnsupportedCombinationError
from ..solvers.base import ReversibleSolver
from .base import FunctionMethod, Runner, Sweep, add_into, forward_no_graph


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

    def check(self, problem) -> None:
        solver = problem.solver
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
        x = self.x_final
        self.x_final = None
        sweep = Sweep(self, grads, self.traj, x)
        for i in range(len(self.traj.steps) - 1, -1, -1):
            t, h = self.traj.steps[i]
            key = self.traj.keys[i]
            x, sweep.a, g = p.solver.backward_step(
                p.field, t, h, x, sweep.a, p.params, lambda key=key: self.rng_ctx(key)
            )
            add_into(sweep.acc, g)
            sweep.reached(i)
        return sweep.finish(y0)
