"""ANODE's network-level recompute (Gholami et al. 2019), as a gradient-side component.

A block of a network keeps only its input in forward (its solve runs without a
graph) and, during backward, re-runs its own solve with its gradient method to
rebuild what that method needs. A network of ``B`` blocks then holds
``O(B·S) + O(N_t·S) + O(L)`` instead of ``O(B·N_t·S)``. Replays restore the
random state the forward saw and leave BatchNorm statistics untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .._loop import SolveStats
from .base import frozen_buffers

Run = Callable[[Tensor], tuple[Tensor, SolveStats]]


def recompute(
    run: Run, x: Tensor, params: Sequence[Tensor], modules: Sequence[nn.Module], stats: SolveStats
) -> Tensor:
    """``run(x)[0]``, differentiable w.r.t. ``x`` and ``params``, keeping only ``x``.

    ``run(x) -> (y, stats)`` solves; it is called without a graph in forward and
    again, with its gradient method, in backward. ``stats`` receives the forward's
    counters and, in backward, the rebuild's (as backward work).
    """
    return _Recompute.apply(run, tuple(modules), stats, x, *params)


def _devices(x: Tensor) -> Sequence[int]:
    if x.device.type == "cuda":
        return [x.device.index if x.device.index is not None else torch.cuda.current_device()]
    return []


class _Recompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run: Run, modules, stats: SolveStats, x: Tensor, *params: Tensor):
        devices = _devices(x)
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = [torch.cuda.get_rng_state(d) for d in devices]
        ctx.devices = devices
        ctx.run, ctx.modules, ctx.stats = run, modules, stats
        with torch.no_grad():
            y, s = run(x)
        stats.nfe_forward += s.nfe_forward
        stats.accepted_steps += s.accepted_steps
        stats.rejected_steps += s.rejected_steps
        ctx.save_for_backward(x, *params)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor):
        x, *params = ctx.saved_tensors
        # replay with the random state the forward saw, without touching BatchNorm twice
        with torch.random.fork_rng(devices=ctx.devices), frozen_buffers(ctx.modules):
            torch.set_rng_state(ctx.cpu_rng)
            for d, st in zip(ctx.devices, ctx.cuda_rng):
                torch.cuda.set_rng_state(st, d)
            leaf = x.detach().requires_grad_(x.requires_grad)
            with torch.enable_grad():
                y, s = ctx.run(leaf)
                inputs = ([leaf] if leaf.requires_grad else []) + list(params)
                grads = torch.autograd.grad(y, inputs, grad_y, allow_unused=True)
        # the rebuild is backward work: count all of it there
        ctx.stats.nfe_backward += s.nfe_forward + s.nfe_backward
        ctx.stats.recomputed_steps += s.accepted_steps + s.recomputed_steps
        g_x = grads[0] if leaf.requires_grad else None
        g_params = grads[1:] if leaf.requires_grad else grads
        return (None, None, None, g_x, *g_params)
