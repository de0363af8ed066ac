"""The ODE block: a residual block whose depth is an ODE solve."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._loop import SolveStats
from ..config import Configured, SolveConfig
from ..gradients.recompute import recompute
from ..odeint import GradientLike, MethodLike


class ODEBlock(Configured, nn.Module):
    """``y(t1)`` of ``dy/dt = func(t, y)``, ``y(t0) = x``, as a layer.

    Args:
        func: an ``nn.Module`` called as ``func(t, y)``; if it should depend on
            time it uses ``t`` itself (see :class:`~neurode.nn.ConvODEFunc`).
        t0, t1: integration interval (default ``[0, 1]``).
        method: solver name or object (default ``"rk4"``).
        steps / step_size: fixed grid; neither means adaptive stepping with
            ``rtol``/``atol`` (the method must have an error estimate).
        gradient: ``"direct"``, ``"checkpoint"``, ``"adjoint"``, ``"reversible"``
            or a configured object.
        recompute: ANODE's network-level scheme. The block keeps only its input
            in forward (running the solve without a graph) and, during
            backward, re-runs its own solve with ``gradient`` (checkpointing by
            default) to rebuild its per-step checkpoints. A network of ``B``
            blocks then needs ``O(B·S) + O(N_t·S) + O(L)`` memory instead of
            ``O(B·N_t·S)``. Replays restore the random state and leave
            BatchNorm statistics untouched.
        options: further solver options (see :func:`neurode.odeint`).

    After a forward pass ``last_stats`` holds the solve's
    :class:`~neurode.SolveStats` (``nfe_backward`` fills in after backward);
    ``nfe_forward``/``nfe_backward`` accumulate over calls until
    :meth:`reset_nfe`.
    """

    def __init__(
        self,
        func: nn.Module,
        t0: float = 0.0,
        t1: float = 1.0,
        *,
        method: MethodLike = "rk4",
        steps: int | None = None,
        step_size: float | None = None,
        rtol: float = 1e-3,
        atol: float = 1e-4,
        gradient: GradientLike = "checkpoint",
        recompute: bool = False,
        options: dict | None = None,
    ):
        super().__init__()
        self.func = func
        self.t0, self.t1 = float(t0), float(t1)
        self.recompute = recompute
        opts = dict(options or {})
        if steps is not None:
            opts["steps"] = steps
        if step_size is not None:
            opts["step_size"] = step_size
        self.solve_config = SolveConfig(method, rtol, atol, opts, gradient)
        self.last_stats: SolveStats | None = None
        self.reset_nfe()

    def reset_nfe(self) -> None:
        self._all_stats: list[SolveStats] = []

    @property
    def nfe_forward(self) -> int:
        return sum(s.nfe_forward for s in self._all_stats)

    @property
    def nfe_backward(self) -> int:
        return sum(s.nfe_backward for s in self._all_stats)

    def _solve(self, x: Tensor, gradient=None) -> tuple[Tensor, SolveStats]:
        kw = {} if gradient is None else {"gradient": gradient}
        sol = self.solve_config.solve(self.func, x, [self.t0, self.t1], **kw)
        return sol.ys[-1], sol.stats

    def forward(self, x: Tensor) -> Tensor:
        params = [p for p in self.func.parameters() if p.requires_grad]
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or bool(params))
        if self.recompute and needs_grad:
            stats = SolveStats()
            y = recompute(self._solve, x, params, [self.func], stats)
        else:
            y, stats = self._solve(x)
        self.last_stats = stats
        self._all_stats.append(stats)
        if len(self._all_stats) > 10_000:  # bounded history for long training runs
            self._all_stats = self._all_stats[-1000:]
        return y

    def extra_repr(self) -> str:
        return (
            f"t=[{self.t0}, {self.t1}], method={self.method!r}, options={self.options}, "
            f"gradient={self.gradient!r}, recompute={self.recompute}"
        )
