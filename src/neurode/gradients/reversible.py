"""Gradients through reversible solvers: rebuild each state instead of storing it.

MALI (Zhuang et al., ICLR 2021) for ALF; McCallum & Foster (2024) for the
reversible Runge–Kutta wrapper.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..errors import (
    InvalidOptionError,
    ReconstructionDriftError,
    ReconstructionDriftWarning,
    UnsupportedCombinationError,
)
from ..solvers.base import ReversibleSolver
from .base import FunctionMethod, Runner, Sweep, add_into, forward_no_graph

DRIFT_ACTIONS = ("warn", "raise", "ignore")
DRIFT_TOLERANCE_FACTOR = 1.0  # × √ε of the state's dtype


class ReversibleGradient(FunctionMethod):
    """Exact gradients with memory constant in the number of steps.

    The forward solve keeps only its final state and the accepted step sizes.
    Backward inverts each step algebraically to rebuild the previous state,
    replays it with its graph and takes its vector–Jacobian product.

    Memory ``O(S + L)``, flat in ``N_t`` (plus two floats per step). Compute:
    ALF evaluates ``f`` once per step in backward (the inverse and the forward
    step share their evaluation point) plus one VJP; the reversible RK wrapper
    evaluates the inverse's two base steps with their graph and takes the VJP
    from them (fused, SPEC §5.5; a step with outputs interpolated inside it is
    inverted, then replayed: four base steps). The gradient equals
    backprop through the same discretisation up to the round-off of the
    reconstruction. Needs a :class:`~neurode.solvers.ReversibleSolver`
    (``"alf"``, :class:`~neurode.ALF`, :class:`~neurode.Reversible`).

    Args:
        preserve_rng: run every step, its inverse and its replay under the
            step's own random state (dropout masks match).
        on_drift: what to do when the ``y0`` rebuilt by inverting every step
            differs from the given one by more than √ε of the dtype (relative):
            ``"warn"`` (default, :class:`~neurode.ReconstructionDriftWarning`),
            ``"raise"`` (:class:`~neurode.ReconstructionDriftError`) or
            ``"ignore"``. ``stats.reconstruction_drift`` reports it either way.
    """

    name = "reversible"

    def __init__(self, preserve_rng: bool = True, on_drift: str = "warn"):
        if on_drift not in DRIFT_ACTIONS:
            raise InvalidOptionError(f"on_drift must be one of {DRIFT_ACTIONS}, got {on_drift!r}")
        self.preserve_rng = preserve_rng
        self.on_drift = on_drift

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
            inside = sweep.inside(i)
            weights = [p.solver.end_weights(h, th, self.traj.interp) for th, _ in inside]
            if inside and any(w is None for w in weights):
                # outputs inside the step from an interpolant of its stages: rebuild the
                # step's start, then replay it with the interpolant
                with torch.no_grad(), self.rng_ctx(key):
                    x = p.solver.inverse(p.field, t, h, x)
                sweep.replay(i, x)
                continue
            # outputs that are linear in the step's ends: their cotangents join the ends'
            sweep.a = _add_ends(sweep.a, inside, [w[1] for w in weights])
            x, sweep.a, g = p.solver.backward_step(
                p.field, t, h, x, sweep.a, p.params, lambda key=key: self.rng_ctx(key)
            )
            sweep.a = _add_ends(sweep.a, inside, [w[0] for w in weights])
            add_into(sweep.acc, g)
            sweep.reached(i)
        self._check_drift(x[0], y0)
        return sweep.finish(y0)

    def _check_drift(self, rebuilt: Tensor, y0: Tensor) -> None:
        """Compare the y0 rebuilt by inverting every step with the y0 the solve was given.

        Beyond √ε of the dtype the gradient was taken along a wrong trajectory: the
        inverse amplified round-off (damped ALF, strongly contracting dynamics).
        """
        with torch.no_grad():
            scale = float(y0.norm())
            drift = float((rebuilt - y0).norm()) / (scale if scale > 0 else 1.0)
        self.p.stats.reconstruction_drift = drift
        tol = DRIFT_TOLERANCE_FACTOR * torch.finfo(y0.dtype).eps ** 0.5
        if not (drift <= tol) and self.method.on_drift != "ignore":
            msg = (
                f"the reversible backward rebuilt y0 with relative error {drift:.3g} "
                f"(tolerance {tol:.2g} for {y0.dtype}): inverting the steps amplified "
                f"round-off, so the gradient is unreliable. Use float64, ALF damping 1.0, "
                f"fewer/larger steps, or gradient='checkpoint'"
            )
            if self.method.on_drift == "raise":
                raise ReconstructionDriftError(msg)
            warnings.warn(msg, ReconstructionDriftWarning, stacklevel=2)


def _add_ends(a, inside, coeffs):
    """``a + Σ_k c_k g_k`` entry by entry, for outputs ``y_k = Σ c_k,i x_i`` at a step end."""
    if not inside:
        return a
    out = list(a)
    with torch.no_grad():
        for (_, g), c in zip(inside, coeffs):
            for j, cj in enumerate(c):
                if cj != 0.0:
                    out[j] = out[j] + g * cj
    return tuple(out)
