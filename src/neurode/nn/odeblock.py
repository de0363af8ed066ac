"""The ODE block: a residual block whose depth is an ODE solve."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._loop import SolveStats
from ..gradients.base import frozen_buffers
from ..odeint import solve


class ODEBlock(nn.Module):
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
        method="rk4",
        steps: int | None = None,
        step_size: float | None = None,
        rtol: float = 1e-3,
        atol: float = 1e-4,
        gradient="checkpoint",
        recompute: bool = False,
        options: dict | None = None,
    ):
        super().__init__()
        self.func = func
        self.t0, self.t1 = float(t0), float(t1)
        self.method = method
        self.rtol, self.atol = rtol, atol
        self.gradient = gradient
        self.recompute = recompute
        opts = dict(options or {})
        if steps is not None:
            opts["steps"] = steps
        if step_size is not None:
            opts["step_size"] = step_size
        self.options = opts
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
        sol = solve(
            self.func,
            x,
            [self.t0, self.t1],
            method=self.method,
            rtol=self.rtol,
            atol=self.atol,
            options=self.options,
            gradient=self.gradient if gradient is None else gradient,
        )
        return sol.ys[-1], sol.stats

    def forward(self, x: Tensor) -> Tensor:
        params = [p for p in self.func.parameters() if p.requires_grad]
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or bool(params))
        if self.recompute and needs_grad:
            stats = SolveStats()
            y = _Recompute.apply(self, stats, x, *params)
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


def _devices(x: Tensor) -> Sequence[int]:
    if x.device.type == "cuda":
        return [x.device.index if x.device.index is not None else torch.cuda.current_device()]
    return []


class _Recompute(torch.autograd.Function):
    """ANODE's block scheme: keep the input, rebuild the block's solve in backward."""

    @staticmethod
    def forward(ctx, block: ODEBlock, stats: SolveStats, x: Tensor, *params: Tensor):
        devices = _devices(x)
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = [torch.cuda.get_rng_state(d) for d in devices]
        ctx.devices = devices
        ctx.block, ctx.stats, ctx.n_params = block, stats, len(params)
        with torch.no_grad():
            y, s = block._solve(x)
        stats.nfe_forward += s.nfe_forward
        stats.accepted_steps += s.accepted_steps
        stats.rejected_steps += s.rejected_steps
        ctx.save_for_backward(x, *params)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor):
        x, *params = ctx.saved_tensors
        block: ODEBlock = ctx.block
        # Replay with the random state the forward saw and without touching BatchNorm twice.
        with torch.random.fork_rng(devices=ctx.devices), frozen_buffers([block.func]):
            torch.set_rng_state(ctx.cpu_rng)
            for d, st in zip(ctx.devices, ctx.cuda_rng):
                torch.cuda.set_rng_state(st, d)
            leaf = x.detach().requires_grad_(x.requires_grad)
            with torch.enable_grad():
                y, s = block._solve(leaf)
                inputs = ([leaf] if leaf.requires_grad else []) + list(params)
                grads = torch.autograd.grad(y, inputs, grad_y, allow_unused=True)
        # the rebuild is backward work: count all of it there
        ctx.stats.nfe_backward += s.nfe_forward + s.nfe_backward
        ctx.stats.recomputed_steps += s.accepted_steps + s.recomputed_steps
        g_x = grads[0] if leaf.requires_grad else None
        g_params = grads[1:] if leaf.requires_grad else grads
        return (None, None, g_x, *g_params)
