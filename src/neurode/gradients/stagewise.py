"""Stage-wise replay of an explicit Runge–Kutta step: ``Checkpoint(per_stage=True)``.

A plain replay rebuilds the step with its graph, so the graphs of all ``s``
evaluations of ``f`` are alive at once: ``s·L`` memory (``L`` the activations of
one evaluation). The stage-wise replay first recomputes the stage values without
a graph (``s·S``: one state each), then walks the stages last to first and
rebuilds one evaluation at a time with its graph, taking its vector–Jacobian
product (the discrete adjoint of the Runge–Kutta step):

    k̄ᵢ = h bᵢ ȳ₁ + h Σ_{j>i} a_ji Ȳⱼ (+ the cotangents of outputs inside the step),
    Ȳᵢ = (∂f/∂y)(tᵢ, Yᵢ)ᵀ k̄ᵢ,        ȳ₀ = ȳ₁ + Σᵢ Ȳᵢ,

so backward memory is ``O(N_t·S + s·S + L)`` instead of ``O(N_t·S + s·L)``.
The gradient is the same as a plain replay's (the same products, summed in
another order). Each stage is evaluated once more without a graph; with
``preserve_rng`` every stage sees the random state it saw in the forward step.

Supported: explicit tableaus (:class:`~neurode.RungeKutta`), and outputs inside a
step read from the tableau's continuous extension or by linear interpolation.
Any other step (another solver, a Hermite interpolant, a perturbed grid) is
replayed whole, with the same gradient.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from ..solvers.base import State, combine, vjp
from ..solvers.dense import dense_weights
from ..solvers.rk import RungeKutta
from .base import add_into


def stagewise_vjp(runner, t: float, h: float, x: State, a: State, key: int, acc, inside=()):
    """:meth:`Runner.step_vjp <neurode.gradients.base.Runner.step_vjp>` of step ``(t, h)``,
    stage by stage (same arguments); ``None`` when the step is not one this replay
    supports (the caller replays it whole)."""
    p = runner.p
    solver = p.solver
    if type(solver) is not RungeKutta:  # a subclass may change the step (perturb)
        return None
    tab = solver.tableau
    poly = dense_weights(tab.name) if runner.interp != "linear" else None
    if inside and runner.interp != "linear" and poly is None:
        return None  # a Hermite or quadratic interpolant: replay the step whole
    field, s, fsal = p.field, tab.stages, tab.fsal
    y = x[0]
    cuda = runner.rng.devices if runner.rng is not None else []

    def snapshot():
        if runner.rng is None:
            return None
        return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda]

    # 1. the stage values without a graph, and the random state before each evaluation
    Ys: list[Tensor] = []
    ks: list[Tensor] = []
    rng_at: list = []
    with torch.no_grad(), runner.rng_ctx(key):
        for i in range(s):
            Yi = y if i == 0 else combine(y, h, tab.a[i], ks)
            Ys.append(Yi)
            if i == 0 and fsal:
                ks.append(x[1])
                rng_at.append(None)
                continue
            rng_at.append(snapshot())
            ks.append(field(t + tab.c[i] * h, Yi))
    # 2. cotangents of the stages from the step's output and the outputs inside it
    a_y1 = a[0]
    for th, g in inside:
        if poly is None:  # linear: (1 - θ) y0 + θ y1
            a_y1 = a_y1 + th * g
    kbar = [a_y1 * (h * b) for b in tab.b]
    a_y0 = a_y1
    for th, g in inside:
        if poly is None:
            a_y0 = a_y0 + (1.0 - th) * g
        else:  # y0 + h Σ bᵢ(θ) kᵢ
            a_y0 = a_y0 + g
            for j, w in enumerate(poly(th)):
                if w != 0.0:
                    kbar[j] = kbar[j] + g * (h * w)
    if fsal:
        kbar[s - 1] = kbar[s - 1] + a[1]  # the state's f(t + h, y1) is the last stage
    # 3. the stages last to first, one evaluation with its graph at a time
    for i in range(s - 1, -1, -1):
        if i == 0 and fsal:
            break
        leaf = Ys[i].detach().requires_grad_(True)
        with torch.enable_grad(), _restored(rng_at[i], cuda):
            ki = field(t + tab.c[i] * h, leaf)
        (gY,), gp = vjp((ki,), (leaf,), (kbar[i],), p.params, retain=field.shared_graph)
        add_into(acc, gp)
        del ki, leaf
        a_y0 = a_y0 + gY
        for j in range(i):
            if tab.a[i][j] != 0.0:
                kbar[j] = kbar[j] + gY * (h * tab.a[i][j])
    return (a_y0, kbar[0]) if fsal else (a_y0,)


@contextlib.contextmanager
def _restored(state, cuda: list[int]):
    """Run the block with the random state ``state`` (``None``: as it is)."""
    if state is None:
        yield
        return
    cpu, gpus = state
    with torch.random.fork_rng(devices=cuda):
        torch.set_rng_state(cpu)
        for d, g in zip(cuda, gpus):
            torch.cuda.set_rng_state(g, d)
        yield
