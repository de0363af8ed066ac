"""Models hold one SolveConfig; ANODE's block recompute is a gradient-side component."""

from __future__ import annotations

import torch

import neurode
from neurode.gradients.recompute import recompute
from neurode.nn import ODEBlock

DT = torch.float64


def test_solve_config_is_solve_with_its_fields():
    cfg = neurode.SolveConfig(method="rk4", options=dict(steps=4), gradient="checkpoint")
    y0 = torch.ones(3, dtype=DT)
    a = cfg.solve(lambda t, y: -y, y0, [0.0, 1.0]).ys
    b = neurode.odeint(lambda t, y: -y, y0, [0.0, 1.0], method="rk4", options=dict(steps=4))
    assert torch.equal(a, b)
    c = cfg.solve(lambda t, y: -y, y0, [0.0, 1.0], options=dict(steps=1)).ys
    assert not torch.equal(a, c)  # an override replaces the field for one call
    assert cfg.options == {"steps": 4}


def test_block_attributes_are_its_config():
    block = ODEBlock(torch.nn.Linear(2, 2).to(DT), method="euler", steps=3)
    assert block.solve_config.method == "euler" and block.options == {"steps": 3}
    block.method = "rk4"
    block.options["steps"] = 5
    assert block.solve_config.method == "rk4" and block.solve_config.options["steps"] == 5


def test_recompute_keeps_the_gradient():
    lin = torch.nn.Linear(3, 3).to(DT)
    x = torch.randn(4, 3, dtype=DT, requires_grad=True)
    cfg = neurode.SolveConfig(method="rk4", options=dict(steps=5), gradient="checkpoint")

    def run(v):
        sol = cfg.solve(lambda t, y: torch.tanh(lin(y)), v, [0.0, 1.0])
        return sol.ys[-1], sol.stats

    stats = neurode.SolveStats()
    y = recompute(run, x, list(lin.parameters()), [lin], stats)
    g = torch.autograd.grad(y.sum(), [x, *lin.parameters()])
    y_ref, _ = run(x)
    g_ref = torch.autograd.grad(y_ref.sum(), [x, *lin.parameters()])
    assert torch.equal(y, y_ref)
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-14) for a, b in zip(g, g_ref))
    assert stats.nfe_forward == 20 and stats.nfe_backward > 0
