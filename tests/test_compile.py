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
