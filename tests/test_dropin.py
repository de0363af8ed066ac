"""torchdiffeq's calling conventions work unchanged."""

from __future__ import annotations

import math

import pytest
import torch

import neurode
from neurode import odeint, odeint_adjoint

F64 = torch.float64
Y0 = torch.tensor([1.0, 2.0], dtype=F64)
T = torch.tensor([0.0, 0.5, 1.0], dtype=F64)


def decay(t, y):
    return -y


def test_method_none_is_the_default():
    a = neurode.solve(decay, Y0, T, method=None)
    b = neurode.solve(decay, Y0, T, method="dopri5")
    assert torch.equal(a.ys, b.ys) and a.stats.nfe_forward == b.stats.nfe_forward


def test_single_time_returns_y0():
    y0 = Y0.clone().requires_grad_(True)
    ys = odeint(decay, y0, torch.tensor([0.3], dtype=F64))
    assert ys.shape == (1, 2) and torch.equal(ys[0], y0)
    ys.sum().backward()
    assert torch.equal(y0.grad, torch.ones(2, dtype=F64))
    tup = odeint(lambda t, y: (-y[0], -y[1]), (Y0, Y0[:1]), [0.0])
    assert [p.shape for p in tup] == [(1, 2), (1, 1)]


def test_odeint_adjoint_signature_and_gradient():
    w = torch.tensor(0.8, dtype=F64, requires_grad=True)

    class F(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(0.8, dtype=F64))

        def forward(self, t, y):
            return -self.w * y

    f = F()
    ys = odeint_adjoint(f, Y0, T, rtol=1e-10, atol=1e-12, method="dopri5",
                        adjoint_rtol=1e-10, adjoint_atol=1e-12, adjoint_method="dopri5",
                        adjoint_options={}, adjoint_params=tuple(f.parameters()))  # fmt: skip
    ys[-1].sum().backward()
    # y(1) = e^{-w} y0: d/dw Σ y(1) = -e^{-w} Σ y0
    assert math.isclose(float(f.w.grad), -math.exp(-0.8) * 3.0, rel_tol=1e-7)
    del w


def test_torchdiffeq_one_argument_norm_is_honoured():
    calls = []

    def norm(x):
        calls.append(x.shape)
        return x.abs().max()

    ys = odeint(decay, Y0, T, rtol=1e-8, atol=1e-10, options=dict(norm=norm))
    assert calls and torch.allclose(ys[-1], Y0 * math.exp(-1), rtol=1e-6)


def test_adjoint_options_norm_is_called_in_the_backward_solve():
    calls = {"n": 0}

    def norm(x):
        calls["n"] += 1
        return x.pow(2).mean().sqrt()

    y0 = Y0.clone().requires_grad_(True)
    ys = odeint(decay, y0, T, gradient=neurode.Adjoint(options=dict(norm=norm)))
    assert calls["n"] == 0
    ys.sum().backward()
    assert calls["n"] > 0


def test_registry_grammar_is_shared():
    from neurode.solvers.registry import resolve_solver

    assert resolve_solver("alf:0.8").damping == 0.8
    assert resolve_solver("reversible:rk4").name.startswith("reversible(rk4")
    with pytest.raises(neurode.UnknownMethodError, match="alf:<damping>"):
        resolve_solver("alf:x")


def test_every_train_command_accepts_the_registry_grammar():
    from neurode.app.train import classify, cnf, latent

    assert classify.make_method("alf:0.8").damping == 0.8
    assert classify._is_reversible_method("reversible:rk4")
    assert not classify._is_reversible_method("rk4")
    assert cnf.GRADIENTS == latent.GRADIENTS == classify.GRADIENTS
