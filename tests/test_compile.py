"""A user's ``torch.compile(f)`` works with every gradient method.

A compiled ``f``'s backward refuses ``retain_graph=True``; neurode keeps a
step's graph only when ``f`` reaches a tensor built outside it (whose graph
every step shares), which it learns from the autograd graph of the
evaluations it records for parameter discovery.
"""

from __future__ import annotations

import shutil

import pytest
import torch

import neurode
from neurode import Checkpoint

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None, reason="torch.compile needs a C compiler"
)

GRADIENTS = ["direct", "checkpoint", Checkpoint(budget=2), Checkpoint(per_stage=True),
             "reversible", "adjoint"]  # fmt: skip


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)
        )

    def forward(self, t, y):
        return self.net(y) * torch.cos(t)


@pytest.mark.parametrize("gradient", GRADIENTS, ids=str)
def test_compiled_f_gives_the_eager_gradient(gradient):
    f = Field()
    compiled = torch.compile(f)
    y0 = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    method = "alf" if gradient == "reversible" else "rk4"
    out = []
    for fn in (f, compiled):
        y = y0.clone().requires_grad_(True)
        ys = neurode.odeint(fn, y, torch.tensor([0.0, 0.5, 1.0]), method=method,
                            options=dict(steps=3), gradient=gradient)  # fmt: skip
        out.append(torch.autograd.grad(ys.pow(2).sum(), [y, *f.parameters()]))
    for a, b in zip(*out):
        # float32, a compiled kernel may fuse and reorder: a few ulps of O(1) values
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_shared_graph_is_detected_from_the_recorded_evaluations():
    from neurode._loop import Field as LoopField
    from neurode._loop import SolveStats

    y = torch.randn(2, 3)
    w0 = torch.randn(3, requires_grad=True)
    w = w0 * 2.0  # built before the solve: every evaluation's graph reaches this node
    lin = torch.nn.Linear(3, 3)
    cases = [
        (lambda t, y: lin(y), False),
        (lambda t, y: y * (w0 * 2.0), False),  # built inside f, afresh each time
        (lambda t, y: y * w, True),
    ]
    for func, shared in cases:
        field = LoopField(func, y, SolveStats())
        field.discover = True
        field(0.0, y)
        assert field.shared_graph is shared


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
@pytest.mark.parametrize("gradient", ["direct", "checkpoint"])
def test_compiled_rk_step_equals_the_eager_step(method, gradient):
    from neurode.solvers.rk import RungeKutta

    f = Field().double()
    y0 = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    kw = dict(options=dict(steps=5)) if method == "rk4" else dict(rtol=1e-8, atol=1e-10)
    out = []
    for solver in (RungeKutta(method), RungeKutta(method, compile=True)):
        y = y0.clone().requires_grad_(True)
        sol = neurode.solve(f, y, t, method=solver, gradient=gradient, **kw)
        grads = torch.autograd.grad(sol.ys.pow(2).sum(), [y, *f.parameters()])
        out.append((sol.ys.detach(), grads, sol.stats.nfe_forward, sol.stats.nfe_backward))
    (ya, ga, nfa, nba), (yb, gb, nfb, nbb) = out
    # the same arithmetic, fused differently by the compiler: float64 round-off
    assert torch.allclose(ya, yb, rtol=1e-12, atol=1e-13)
    for a, b in zip(ga, gb):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert (nfa, nba) == (nfb, nbb)  # the compiled step counts its evaluations too


def test_compiled_rk_falls_back_where_it_cannot_bypass_the_field():
    from neurode.solvers.rk import RungeKutta

    # a tuple state, and perturb (the field moves the times it hands f)
    y0 = (torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    ys = neurode.odeint(lambda t, y: (y[1], -y[0]), y0, [0.0, 1.0],
                        method=RungeKutta("rk4", compile=True), options=dict(steps=10))  # fmt: skip
    assert torch.allclose(ys[0][-1], torch.cos(torch.tensor(1.0, dtype=torch.float64)), atol=1e-6)
    seen = []

    def f(t, y):
        seen.append(float(t))
        return -y

    neurode.odeint(f, torch.ones(2, dtype=torch.float64), [0.0, 1.0],
                   method=RungeKutta("rk4", compile=True),
                   options=dict(step_size=0.5, perturb=True))  # fmt: skip
    assert seen and not {0.0, 0.5, 1.0} & set(seen)
    with pytest.raises(neurode.InvalidOptionError, match="compile"):
        RungeKutta("rk4", compile="yes")


def test_compiled_rk_refuses_what_it_would_get_wrong():
    from neurode.solvers.rk import RungeKutta

    y0 = torch.ones(4, 3, dtype=torch.float64)
    solver = RungeKutta("rk4", compile=True)
    # an f whose output broadcasts against y: the combination would hide the wrong shape
    with pytest.raises(neurode.FunctionOutputError, match="shape"):
        neurode.odeint(lambda t, y: -y[:, :1], y0, [0.0, 1.0], method=solver,
                       options=dict(steps=2))  # fmt: skip
    # a random f: the compiled graph draws other numbers than the eager one
    with pytest.raises(neurode.UnsupportedCombinationError, match="random"):
        neurode.odeint(lambda t, y: -y * torch.rand_like(y), y0, [0.0, 1.0], method=solver,
                       options=dict(steps=2))  # fmt: skip
