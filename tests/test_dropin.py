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


def _jump(t, x):  # f jumps at t = 0.5 (torchdiffeq's discontinuity example)
    return -0.5 * x if t < 0.5 else x**2


@pytest.mark.parametrize("method", ["midpoint", "rk4", "heun3", "trapezoid", "gl4"])
def test_perturb_integrates_each_smooth_piece(method):
    # perturb=True: a step's evaluations at its ends move one ulp inside it, so a grid
    # point on the jump splits the solve into the two smooth pieces exactly
    x0 = torch.tensor([0.3, 0.6], dtype=F64)
    opts = dict(step_size=0.25)
    whole = odeint(_jump, x0, torch.tensor([0.0, 1.0], dtype=F64), method=method,
                   options={**opts, "perturb": True})  # fmt: skip
    left = odeint(lambda t, x: -0.5 * x, x0, torch.tensor([0.0, 0.5], dtype=F64),
                  method=method, options=opts)  # fmt: skip
    right = odeint(lambda t, x: x**2, left[-1], torch.tensor([0.5, 1.0], dtype=F64),
                   method=method, options=opts)  # fmt: skip
    assert torch.allclose(whole[-1], right[-1], rtol=1e-14, atol=0)
    if method in ("rk4", "trapezoid"):  # a stage at the step's end: it saw the other side
        plain = odeint(_jump, x0, torch.tensor([0.0, 1.0], dtype=F64), method=method, options=opts)
        assert (plain[-1] - right[-1]).abs().max() > 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("gradient", ["checkpoint", "adjoint", "reversible"])
def test_perturb_reaches_no_grid_point_forward_or_backward(gradient, dtype):
    seen = []

    def f(t, x):
        seen.append(float(t))
        return -x

    x0 = torch.tensor([1.0, 2.0], dtype=dtype, requires_grad=True)
    method = "alf" if gradient == "reversible" else "rk4"
    xs = odeint(f, x0, torch.tensor([0.0, 1.0]), method=method, gradient=gradient,
                options=dict(step_size=0.5, perturb=True))  # fmt: skip
    xs.sum().backward()  # the replays (and the adjoint's backward solve) too
    assert seen and not {0.0, 0.5, 1.0} & set(seen)


def test_perturbed_gradients_are_exact():
    # checkpoint replays the perturbed steps: its gradient is direct backprop's
    lin = torch.nn.Linear(2, 2, dtype=F64)
    x0 = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=F64)

    def f(t, x):
        return torch.tanh(lin(x)) * (1.0 if t < 0.5 else -2.0)

    out = {}
    for gradient in ("direct", "checkpoint"):
        xs = odeint(f, x0, t, method="rk4", gradient=gradient,
                    options=dict(step_size=0.25, perturb=True))  # fmt: skip
        out[gradient] = torch.autograd.grad(xs.pow(2).sum(), [x0, *lin.parameters()])
    for a, b in zip(out["direct"], out["checkpoint"]):
        assert torch.allclose(a, b, rtol=1e-13, atol=1e-15)


def test_perturb_is_a_fixed_grid_option():
    with pytest.raises(neurode.InvalidOptionError, match="jump_t"):
        odeint(_jump, torch.ones(2), torch.tensor([0.0, 1.0]), options=dict(perturb=True))
    with pytest.raises(neurode.InvalidOptionError, match="perturb"):
        odeint(_jump, torch.ones(2), torch.tensor([0.0, 1.0]), method="rk4",
               options=dict(step_size=0.5, perturb="yes"))  # fmt: skip


def _jump_exact(x0: torch.Tensor, t: float) -> torch.Tensor:
    # -x/2 until 0.5, then x²: x(t) = 1 / (1/x(0.5) - (t - 0.5))
    if t <= 0.5:
        return x0 * math.exp(-0.5 * t)
    xh = x0 * math.exp(-0.25)
    return 1.0 / (1.0 / xh - (t - 0.5))


class _Counted:
    def __init__(self):
        self.nfe = 0

    def __call__(self, t, x):
        self.nfe += 1
        return _jump(t, x)


@pytest.mark.parametrize("gradient", ["direct", "checkpoint", "adjoint"])
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_jump_t_solves_each_smooth_piece(method, gradient):
    x0 = torch.tensor([0.3, 0.6], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.25, 0.5, 0.8, 1.0], dtype=F64)
    kw = dict(method=method, rtol=1e-10, atol=1e-12, gradient=gradient)
    f = _Counted()
    xs = odeint(f, x0, t, options=dict(jump_t=torch.tensor([0.5])), **kw)
    nfe = f.nfe
    ref = torch.stack([_jump_exact(x0, float(tk)) for tk in t])
    # both pieces are smooth: the tolerance holds (1e-10 relative, with margin 100)
    assert torch.allclose(xs, ref, rtol=1e-8, atol=0)
    # d x(1) / d x0 against the closed form's autograd derivative
    g = torch.autograd.grad(xs[-1].sum(), x0)[0]
    g_ref = torch.autograd.grad(ref[-1].sum(), x0)[0]
    assert torch.allclose(g, g_ref, rtol=1e-6 if gradient == "adjoint" else 1e-8, atol=0)
    plain = _Counted()
    odeint(plain, x0.detach(), t, **kw)
    assert nfe < plain.nfe  # no step fights the discontinuity


def test_jump_t_checkpoint_equals_direct_and_reverse_time():
    x0 = torch.tensor([0.3, 0.6], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.7, 1.0], dtype=F64)
    opts = dict(jump_t=[0.5, 3.0])  # a jump outside the solve is ignored
    gs = [
        torch.autograd.grad(odeint(_jump, x0, t, options=opts, gradient=g)[-1].sum(), x0)[0]
        for g in ("direct", "checkpoint")
    ]
    assert torch.allclose(gs[0], gs[1], rtol=1e-13, atol=0)
    # backwards in time from x(1): the pieces in the other order, back to x0
    x1 = torch.stack([_jump_exact(x0.detach(), 1.0)])[0]
    back = odeint(_jump, x1, torch.tensor([1.0, 0.0], dtype=F64), rtol=1e-10, atol=1e-12,
                  options=dict(jump_t=[0.5]))  # fmt: skip
    assert torch.allclose(back[-1], x0.detach(), rtol=1e-8, atol=0)


def test_jump_t_errors():
    y0 = torch.ones(2, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(neurode.InvalidOptionError, match="adaptive"):
        odeint(_jump, y0, t, method="rk4", options=dict(step_size=0.1, jump_t=[0.5]))
    with pytest.raises(neurode.InvalidOptionError, match="jump_t"):
        odeint(_jump, y0, t, options=dict(jump_t=[float("nan")]))
    with pytest.raises(neurode.UnsupportedCombinationError, match="jump_t"):
        odeint_adjoint(_jump, y0, t.clone().requires_grad_(True), options=dict(jump_t=[0.5]))


@pytest.mark.parametrize("direction_aware", [True, False])
def test_grid_constructor_grid_is_walked_back_by_the_adjoint(direction_aware):
    # Euler on dx/dt = x over 10 grid steps: x(1) = 1.1^10, and the adjoint's backward
    # Euler over the same grid reversed gives dx(1)/dx0 = 1.1^10 as well (before, the
    # backward solve ignored the grid and took one step per output interval)
    calls = []

    def grid(f, y0, t):
        calls.append(t.tolist())
        a, b = (float(t[0]), float(t[-1])) if direction_aware else (0.0, 1.0)
        return torch.linspace(a, b, 11, dtype=F64)

    x0 = torch.tensor(1.0, dtype=F64, requires_grad=True)
    xs = odeint_adjoint(lambda t, x: x, x0, torch.tensor([0.0, 1.0], dtype=F64),
                        method="euler", options=dict(grid_constructor=grid))  # fmt: skip
    assert abs(float(xs[1]) - 1.1**10) < 1e-12
    xs[1].backward()
    assert abs(float(x0.grad) - 1.1**10) < 1e-12
    assert calls[0] == [0.0, 1.0] and calls[-1] == [1.0, 0.0]  # torchdiffeq's backward call


def test_one_argument_norm_sees_a_tuple_state_as_a_tuple():
    # torchdiffeq's norm(x) of the scaled error gets the state's own structure
    seen = []

    def norm(x):
        seen.append(tuple(p.shape for p in x) if isinstance(x, tuple) else x.shape)
        return torch.cat([p.reshape(-1) for p in x]).pow(2).mean().sqrt()

    y0 = (torch.tensor(1.0, dtype=F64), torch.full((2, 2), 0.5, dtype=F64))
    t = torch.tensor([0.0, 1.0], dtype=F64)
    ys = odeint(lambda t, y: (y[0], -y[1]), y0, t, options=dict(norm=norm))
    ref = odeint(lambda t, y: (y[0], -y[1]), y0, t)  # the default RMS norm: the same steps
    assert seen and set(seen) == {((), (2, 2))}
    assert all(torch.equal(a, b) for a, b in zip(ys, ref))


def test_jump_t_that_requires_grad_raises():
    # the split points are constants: a learnable jump time would get no gradient
    j = torch.tensor([0.5], dtype=F64, requires_grad=True)
    with pytest.raises(neurode.UnsupportedCombinationError, match="jump_t requires grad"):
        odeint(_jump, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
               options=dict(jump_t=j))  # fmt: skip
    with torch.no_grad():  # nothing to differentiate: fine
        odeint(_jump, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
               options=dict(jump_t=j))  # fmt: skip


def test_adjoint_options_without_perturb_are_honoured():
    # the forward perturbs its steps; adjoint_options=dict(step_size=...) without perturb
    # must give an unperturbed backward solve (it reused the forward's perturbed solver)
    seen = []

    class F(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(1.0, dtype=F64))

        def forward(self, t, y):
            seen.append(float(t))
            return -self.a * y

    f = F()
    ys = odeint_adjoint(f, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                        method="rk4", options=dict(step_size=0.5, perturb=True),
                        adjoint_options=dict(step_size=0.5))  # fmt: skip
    assert not {0.0, 0.5, 1.0} & set(seen)
    seen.clear()
    ys.sum().backward()
    assert {1.0, 0.5} <= set(seen)  # the backward evaluates at the grid points themselves


def test_odeint_adjoint_gives_unused_adjoint_params_a_zero_gradient():
    # torchdiffeq's adjoint_params default to func.parameters() and each gets a gradient,
    # zero for one func never uses (an optimizer then still applies its weight decay)
    class F(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used = torch.nn.Linear(2, 2).double()
            self.unused = torch.nn.Linear(2, 2).double()

        def forward(self, t, y):
            return torch.tanh(self.used(y))

    f = F()
    y0 = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    odeint_adjoint(f, y0, [0.0, 1.0], rtol=1e-10, atol=1e-12).sum().backward()
    assert torch.equal(f.unused.weight.grad, torch.zeros_like(f.unused.weight))
    adjoint = f.used.weight.grad.clone()
    f.zero_grad(set_to_none=True)
    neurode.odeint(f, y0, [0.0, 1.0], rtol=1e-10, atol=1e-12).sum().backward()
    assert f.unused.weight.grad is None  # direct backprop: autograd's own None
    assert torch.allclose(adjoint, f.used.weight.grad, rtol=1e-7)
    # params= with an exact method: the declared tensor gets its (zero) gradient too
    w = torch.ones(2, dtype=torch.float64, requires_grad=True)
    ys = neurode.odeint(f, y0, [0.0, 1.0], gradient="checkpoint", params=[w])
    assert torch.equal(torch.autograd.grad(ys.sum(), w)[0], torch.zeros(2, dtype=torch.float64))
