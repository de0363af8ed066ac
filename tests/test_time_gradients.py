"""Gradients with respect to the output times (SPEC §5.2), continuous adjoint.

The adjoint gives the continuous derivative, dL/dt_k = <dL/dy_k, f(t_k, y_k)> for
k >= 1 and dL/dt_0 = -<a(t_0), f(t_0, y_0)>; at tight tolerances it must match
central finite differences of the solve in the times (the discretisation error is
far below the 1e-6 tolerance used). The exact methods differentiate the times on
fixed grids of N steps per output interval (the grid moves with t): their
gradient is the derivative of the discrete solution, checked by gradcheck and
finite differences; elsewhere they refuse t.requires_grad.
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


def _field():
    f = MLP(dim=3, seed=4)
    return f, randn(3, seed=5)


@pytest.mark.parametrize("method", ["euler", "rk4", "dopri5", "gl4"])
def test_exact_time_gradient_passes_gradcheck_on_a_fixed_grid(method):
    # the discrete solution is a smooth function of y0 and t on a grid of N steps per
    # interval: gradcheck's finite differences (float64) must match the analytic one
    f, y0 = _field()
    t = torch.tensor([0.1, 0.6, 1.3], dtype=DT, requires_grad=True)

    def solve(y0, t):
        return neurode.odeint(f, y0, t, method=method, options=dict(steps=3))

    assert torch.autograd.gradcheck(solve, (y0.requires_grad_(True), t), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "gradient",
    ["checkpoint", neurode.Checkpoint(budget=2), neurode.Checkpoint(per_stage=True)],
    ids=str,
)
@pytest.mark.parametrize("times", [[0.1, 0.6, 1.3], [1.0, 0.3, -0.5]], ids=str)
def test_exact_time_gradient_of_every_exact_method_equals_direct(gradient, times):
    f, y0 = _field()
    G = randn(len(times), 3, seed=6)
    out = []
    for g in ("direct", gradient):
        t = torch.tensor(times, dtype=DT, requires_grad=True)
        y = y0.clone().requires_grad_(True)
        loss = _loss(f, y, t, G, method="rk4", options=dict(steps=4), gradient=g)
        out.append(torch.autograd.grad(loss, [t, y, *f.parameters()]))
    for a, b in zip(*out):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_exact_time_gradient_against_finite_differences_and_same_forward():
    f, y0 = _field()
    times = [0.0, 0.45, 1.0]
    G = randn(3, 3, seed=7)
    kw = dict(method="rk4", options=dict(steps=2), gradient="checkpoint")
    t = torch.tensor(times, dtype=DT, requires_grad=True)
    ys = neurode.odeint(f, y0, t, **kw)
    with torch.no_grad():  # asking for t's gradient leaves the forward solve as it was
        plain = neurode.odeint(f, y0, t.detach(), **kw)
    assert torch.allclose(ys, plain, rtol=0, atol=1e-15)
    (g_t,) = torch.autograd.grad((ys * G).sum(), t)
    eps, fd = 1e-6, torch.zeros(3, dtype=DT)
    with torch.no_grad():
        for k in range(3):
            e = torch.zeros(3, dtype=DT)
            e[k] = eps
            fd[k] = (_loss(f, y0, t + e, G, **kw) - _loss(f, y0, t - e, G, **kw)) / (2 * eps)
    # central differences of a smooth function: O(eps^2) plus round-off / eps ~ 1e-10
    assert torch.allclose(g_t, fd, rtol=1e-7, atol=1e-9), (g_t, fd)


def test_exact_time_gradient_with_tuple_state_and_callbacks():
    calls = []

    class F(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(0.7, dtype=DT))

        def forward(self, t, y):
            return (-self.a * y[0] + t, y[0] * y[1])

        def callback_step(self, t0, y0, dt):
            calls.append((float(t0), float(dt)))

    f = F()
    t = torch.tensor([0.0, 0.5, 1.5], dtype=DT, requires_grad=True)
    y0 = (torch.tensor([1.0], dtype=DT), torch.tensor([0.5], dtype=DT))
    ys = neurode.odeint(f, y0, t, method="rk4", options=dict(steps=2))
    (g_t,) = torch.autograd.grad(ys[0].sum() + ys[1].sum(), t)
    assert torch.isfinite(g_t).all() and g_t.abs().sum() > 0
    # the callbacks see the caller's times and step sizes
    assert calls == [(0.0, 0.25), (0.25, 0.25), (0.5, 0.5), (1.0, 0.5)]


def test_exact_time_gradient_refused_where_the_grid_does_not_follow_t():
    f, y0 = _field()
    t = torch.tensor([0.0, 1.0], dtype=DT, requires_grad=True)
    for kw in (dict(method="dopri5"), dict(method="rk4", options=dict(step_size=0.1))):
        with pytest.raises(neurode.UnsupportedCombinationError, match="steps per output"):
            neurode.odeint(f, y0, t, **kw)
    with pytest.raises(neurode.UnsupportedCombinationError, match="perturb"):
        neurode.odeint(f, y0, t, method="rk4", options=dict(steps=2, perturb=True))
    # a single time: y(t0) = y0 does not depend on t, no solve, no error
    (y,) = neurode.odeint(f, y0, t[:1], method="dopri5")
    assert torch.equal(y, y0)
