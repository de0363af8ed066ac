"""Checkpoint(per_stage=True): a replay one stage at a time gives the plain replay's
gradient (the same products summed in another order: float64 round-off, 1e-12)."""

from __future__ import annotations

import pytest
import torch
from gradproblems import MLP, randn

import neurode
from neurode import Checkpoint, odeint
from neurode.solvers.registry import resolve_solver
from neurode.solvers.rk import RungeKutta

F64 = torch.float64
EXPLICIT_RK = [
    name
    for name in ("euler", "midpoint", "heun", "heun3", "rk4", "bosh3", "dopri5", "tsit5", "dopri8")
    if isinstance(resolve_solver(name), RungeKutta)
]


def _grads(f, y0, t, gradient, **kw):
    y = y0.clone().requires_grad_(True)
    ys = odeint(f, y, t, gradient=gradient, **kw)
    loss = (ys * torch.linspace(0.5, 1.5, ys.numel(), dtype=F64).view_as(ys)).sum()
    return torch.autograd.grad(loss, [y, *f.parameters()])


def _close(ga, gb, tol=1e-12):
    for a, b in zip(ga, gb):
        assert torch.allclose(a, b, rtol=tol, atol=tol * float(b.abs().max()))


@pytest.mark.parametrize("method", EXPLICIT_RK)
@pytest.mark.parametrize("budget", [None, 2])
def test_per_stage_equals_direct_fixed_grid(method, budget):
    f = MLP(seed=0)
    y0 = randn(2, 3, seed=1)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    kw = dict(method=method, options=dict(steps=4))
    ref = _grads(f, y0, t, "direct", **kw)
    _close(_grads(f, y0, t, Checkpoint(budget, per_stage=True), **kw), ref)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_per_stage_equals_direct_adaptive_with_outputs_inside_steps(method):
    # many outputs: most fall inside steps and come from the interpolant (dopri5 and
    # tsit5: their continuous extensions, stage-wise; bosh3: Hermite, replayed whole)
    f = MLP(seed=2)
    y0 = randn(2, 3, seed=3)
    t = torch.linspace(0.0, 2.0, 23, dtype=F64)
    kw = dict(method=method, rtol=1e-6, atol=1e-8)
    ref = _grads(f, y0, t, "direct", **kw)
    for budget in (None, 3):
        _close(_grads(f, y0, t, Checkpoint(budget, per_stage=True), **kw), ref)


def test_per_stage_with_linear_interpolation_on_a_step_size_grid():
    f = MLP(seed=4)
    y0 = randn(2, 3, seed=5)
    t = torch.tensor([0.0, 0.13, 0.5, 0.77, 1.0], dtype=F64)
    kw = dict(method="rk4", options=dict(step_size=0.2))
    _close(_grads(f, y0, t, Checkpoint(per_stage=True), **kw), _grads(f, y0, t, "direct", **kw))


class _Dropout(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2, dtype=F64)

    def forward(self, t, y):
        return torch.nn.functional.dropout(torch.tanh(self.lin(y)), 0.3, training=True)


def test_per_stage_replays_each_stage_with_its_random_state():
    # dropout inside f: every stage must draw the mask it drew in the forward step,
    # as the plain replay does (preserve_rng)
    f = _Dropout()
    y0 = randn(4, 2, seed=6)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    out = []
    for gradient in (Checkpoint(), Checkpoint(per_stage=True)):
        torch.manual_seed(0)
        out.append(_grads(f, y0, t, gradient, method="dopri5", options=dict(steps=4)))
    _close(out[1], out[0])


def test_per_stage_evaluates_each_stage_once_more():
    f = MLP(seed=7)
    y0 = randn(2, 3, seed=8).requires_grad_(True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    stats = {}
    for per_stage in (False, True):
        sol = neurode.solve(f, y0, t, method="rk4", options=dict(steps=5),
                            gradient=Checkpoint(per_stage=per_stage))  # fmt: skip
        sol.ys.sum().backward()
        stats[per_stage] = sol.stats.nfe_backward
    assert stats[False] == 4 * 5 and stats[True] == 2 * 4 * 5


def test_per_stage_other_solvers_replay_whole():
    # ALF and the implicit solvers are not explicit RK: the step is replayed whole
    f = MLP(seed=9)
    y0 = randn(2, 3, seed=10)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    for method in ("alf", "gl4", "explicit_adams"):
        kw = dict(method=method, options=dict(steps=4))
        _close(_grads(f, y0, t, Checkpoint(per_stage=True), **kw),
               _grads(f, y0, t, "direct", **kw), tol=1e-10)  # fmt: skip


def test_per_stage_must_be_a_bool():
    with pytest.raises(neurode.InvalidOptionError, match="per_stage"):
        Checkpoint(per_stage="yes")
