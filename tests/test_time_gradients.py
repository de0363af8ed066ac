"""Gradients with respect to the output times (SPEC §5.2), continuous adjoint.

The adjoint gives the continuous derivative, dL/dt_k = <dL/dy_k, f(t_k, y_k)> for
k >= 1 and dL/dt_0 = -<a(t_0), f(t_0, y_0)>; at tight tolerances it must match
central finite differences of the solve in the times (the discretisation error is
far below the 1e-6 tolerance used). The exact methods refuse t.requires_grad.
"""

from __future__ import annotations

import pytest
import torch
from gradproblems import DT, MLP, randn

import neurode


def _loss(f, y0, t, G, **kw):
    return (neurode.odeint(f, y0, t, **kw) * G).sum()


@pytest.mark.parametrize("times", [[0.0, 0.4, 1.1], [0.2, 1.0], [1.0, 0.3, -0.5]], ids=str)
def test_adjoint_time_gradient_matches_finite_differences(times):
    f = MLP(dim=3, seed=1)
    y0 = randn(3, seed=2).requires_grad_(True)
    t = torch.tensor(times, dtype=DT, requires_grad=True)
    G = randn(len(times), 3, seed=3)
    kw = dict(rtol=1e-11, atol=1e-13)
    loss = _loss(f, y0, t, G, gradient="adjoint", **kw)
    g_t, g_y0 = torch.autograd.grad(loss, (t, y0))
    eps = 1e-6
    fd = torch.zeros(len(times), dtype=DT)
    with torch.no_grad():
        for k in range(len(times)):
            e = torch.zeros(len(times), dtype=DT)
            e[k] = eps
            fd[k] = (_loss(f, y0, t + e, G, **kw) - _loss(f, y0, t - e, G, **kw)) / (2 * eps)
    assert torch.allclose(g_t, fd, rtol=1e-6, atol=1e-8), (g_t, fd)
    # the y0 gradient is unchanged by asking for the times' too
    loss2 = _loss(f, y0, t.detach(), G, gradient="adjoint", **kw)
    assert torch.allclose(torch.autograd.grad(loss2, y0)[0], g_y0, rtol=1e-12)


def test_odeint_adjoint_time_gradient_torchdiffeq_style():
    a = torch.tensor(0.8, dtype=DT, requires_grad=True)
    t = torch.tensor([0.0, 1.5], dtype=DT, requires_grad=True)
    y0 = torch.tensor([2.0], dtype=DT)
    ys = neurode.odeint_adjoint(lambda t, y: -a * y, y0, t, rtol=1e-10, atol=1e-12)
    ys[-1].sum().backward()
    # y(T) = y0 exp(-a (T - t0)): d/dT = -a y(T), d/dt0 = +a y(T)
    yT = 2.0 * torch.exp(torch.tensor(-0.8 * 1.5, dtype=DT))
    assert torch.allclose(t.grad, torch.stack([0.8 * yT, -0.8 * yT]), rtol=1e-8)


@pytest.mark.parametrize("gradient", ["direct", "checkpoint", "reversible"])
def test_exact_methods_refuse_time_gradients(gradient):
    t = torch.tensor([0.0, 1.0], dtype=DT, requires_grad=True)
    with pytest.raises(neurode.UnsupportedCombinationError, match="adjoint"):
        neurode.odeint(lambda t, y: -y, torch.ones(2, dtype=DT), t, method="alf", gradient=gradient)
    with torch.no_grad():  # no gradient asked for: fine
        neurode.odeint(lambda t, y: -y, torch.ones(2, dtype=DT), t, method="alf", gradient=gradient)


def test_adjoint_options_norm_seminorm_is_torchdiffeqs_spelling():
    f = MLP(dim=3, seed=1)
    y0 = randn(3, seed=2).requires_grad_(True)
    stats = {}
    for name, opts in (("str", dict(norm="seminorm")), ("flag", None)):
        g = neurode.Adjoint(options=opts, seminorm=opts is None)
        sol = neurode.solve(f, y0, [0.0, 1.0], rtol=1e-6, atol=1e-8, gradient=g)
        sol.ys.sum().backward()
        stats[name] = sol.stats.nfe_backward
    assert stats["str"] == stats["flag"]
    ys = neurode.odeint_adjoint(f, y0, [0.0, 1.0], adjoint_options=dict(norm="seminorm"))
    ys.sum().backward()
