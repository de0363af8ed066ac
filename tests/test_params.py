"""Parameters get gradients however f reaches them (SPEC §5.1).

Every pattern below used to lose its gradient silently with the non-direct
methods (closure inspection found only some). The reference is direct backprop
through the same discretisation in float64: checkpoint and reversible replay the
same floating-point operations, so 1e-10 relative is ample; the adjoint is
compared with itself given the parameters explicitly.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import neurode
from neurode import Adjoint, Checkpoint, odeint

F64 = torch.float64
torch.manual_seed(0)
MODEL = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3)).to(F64)
W = torch.randn(3, 3, dtype=F64, requires_grad=True)


def global_field(t, y):
    return MODEL(y)


def _partial_body(t, y, weight):
    return torch.tanh(y @ weight)


class Plain:  # not a module: its tensor and its model are plain attributes
    def __init__(self):
        self.w = W
        self.model = MODEL

    def field(self, t, y):
        return self.model(y) + torch.sin(y @ self.w)


class Callable_:
    def __init__(self):
        self.params = {"w": W}

    def __call__(self, t, y):
        return torch.tanh(y @ self.params["w"]) * t


class TimeModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(3, 3).to(F64)

    def forward(self, t, y):
        return torch.tanh(self.net(y))


_MODULE = TimeModule()


def patterns():
    params = {"w": W}
    return {
        "global": (global_field, list(MODEL.parameters())),
        "partial": (functools.partial(_partial_body, weight=W), [W]),
        "bound-method": (Plain().field, [*MODEL.parameters(), W]),
        "dict": (lambda t, y: torch.tanh(y @ params["w"]), [W]),
        "callable-object": (Callable_(), [W]),
        "module": (_MODULE, list(_MODULE.parameters())),
    }


CONFIGS = {
    "checkpoint": ("rk4", dict(step_size=0.1), "checkpoint"),
    "budget": ("dopri5", {}, Checkpoint(budget=2)),
    "reversible": ("alf", dict(step_size=0.1), "reversible"),
    "reversible-rk": (neurode.Reversible("heun"), dict(step_size=0.1), "reversible"),
}
TIMES = torch.tensor([0.0, 0.3, 1.0], dtype=F64)


def _grads(f, params, y0, method, options, gradient):
    for q in params:
        q.grad = None
    ys = odeint(f, y0, TIMES, method=method, options=options, rtol=1e-8, atol=1e-10,
                gradient=gradient)  # fmt: skip
    (ys.sin().sum() + ys[-1].pow(2).sum()).backward()
    return [q.grad.clone() if q.grad is not None else None for q in params]


@pytest.mark.parametrize("y0_grad", [False, True], ids=["y0-nograd", "y0-grad"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("pattern", sorted(patterns()))
def test_exact_methods_find_parameters(pattern, config, y0_grad):
    f, params = patterns()[pattern]
    method, options, gradient = CONFIGS[config]
    y0 = torch.tensor([0.5, -0.2, 0.1], dtype=F64, requires_grad=y0_grad)
    ref = _grads(f, params, y0, method, options, "direct")
    got = _grads(f, params, y0, method, options, gradient)
    for r, g in zip(ref, got):
        assert r is not None and g is not None, "a parameter lost its gradient"
        assert torch.allclose(g, r, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("y0_grad", [False, True])
@pytest.mark.parametrize("pattern", sorted(patterns()))
def test_adjoint_finds_parameters(pattern, y0_grad):
    f, params = patterns()[pattern]
    y0 = torch.tensor([0.5, -0.2, 0.1], dtype=F64, requires_grad=y0_grad)
    found = _grads(f, params, y0, "dopri5", {}, "adjoint")
    for q in params:
        q.grad = None
    ys = odeint(f, y0, TIMES, rtol=1e-8, atol=1e-10, gradient=Adjoint(), params=params)
    (ys.sin().sum() + ys[-1].pow(2).sum()).backward()
    for q, g in zip(params, found):
        assert g is not None and torch.allclose(g, q.grad, rtol=1e-12, atol=1e-14)


def test_direct_keeps_callers_grad_mode_with_y0_without_grad():
    # y0 needs no gradient, the parameters do: direct must still record the graph
    y0 = torch.tensor([0.5, -0.2, 0.1], dtype=F64)
    ys = odeint(global_field, y0, TIMES, method="rk4", options=dict(step_size=0.1))
    assert ys.requires_grad
    ys.sum().backward()
    assert all(p.grad is not None for p in MODEL.parameters())
    with torch.no_grad():
        assert not odeint(global_field, y0, TIMES, method="rk4").requires_grad


def test_non_leaf_tensor_computed_outside_f():
    # w is a function of a leaf: the gradient reaches the leaf through w's outside graph,
    # once per step, and lands once (no double counting, no freed-graph error)
    gen = torch.Generator().manual_seed(1)
    base = (0.3 * torch.randn(3, 3, dtype=F64, generator=gen)).requires_grad_(True)
    y0 = torch.tensor([0.5, -0.2, 0.1], dtype=F64)

    def grad_of_base(method, gradient, explicit=False):
        w = base * 2.0 + base.pow(2)  # a fresh outside graph each time, as a training step has
        base.grad = None
        ys = odeint(lambda t, y: torch.tanh(y @ w), y0, TIMES, method=method,
                    options=dict(step_size=0.1), gradient=gradient,
                    params=[w] if explicit else None)  # fmt: skip
        (ys.sin().sum() + ys[-1].pow(2).sum()).backward()
        return base.grad.clone()

    for method, gradient in (("rk4", "checkpoint"), ("alf", "reversible"), ("rk4", "adjoint")):
        ref = grad_of_base(method, "direct")
        # adjoint: the continuous gradient against the discrete one at h=0.1 (rk4: O(h^4))
        tol = 1e-10 if gradient != "adjoint" else 1e-3
        assert torch.allclose(grad_of_base(method, gradient), ref, rtol=tol)
        # given explicitly, the non-leaf itself is the parameter and its graph is followed once
        assert torch.allclose(grad_of_base(method, gradient, explicit=True), ref, rtol=tol)


def test_params_adds_tensors_used_only_later():
    late = torch.tensor(0.7, dtype=F64, requires_grad=True)

    def f(t, y):
        return -y * (late if float(t) > 0.5 else 1.0)

    y0 = torch.tensor([1.0], dtype=F64)
    kw = dict(method="rk4", options=dict(step_size=0.1))
    ref = torch.autograd.grad(odeint(f, y0, TIMES, **kw)[-1].sum(), late)[0]
    got = torch.autograd.grad(
        odeint(f, y0, TIMES, gradient="checkpoint", params=[late], **kw)[-1].sum(), late
    )[0]
    assert torch.allclose(got, ref, rtol=1e-12)


def test_discovery_costs_no_extra_evaluation():
    y0 = torch.tensor([0.5, -0.2, 0.1], dtype=F64)
    kw = dict(method="rk4", options=dict(step_size=0.1))
    a = neurode.solve(global_field, y0, TIMES, gradient="checkpoint", **kw).stats.nfe_forward
    with torch.no_grad():
        b = neurode.solve(global_field, y0, TIMES, gradient="checkpoint", **kw).stats.nfe_forward
    assert a == b == 40


def test_tensor_first_used_late_in_the_solve_is_found():
    # `late` enters f only after t=0.5: the first evaluation cannot see it, a later
    # recorded one (evaluations 1, 2, 4, 8, ... are walked) does
    late = torch.tensor(0.7, dtype=F64, requires_grad=True)

    def f(t, y):
        return -y * (late if float(t) > 0.5 else 1.0)

    y0 = torch.tensor([1.0], dtype=F64)
    kw = dict(method="rk4", options=dict(step_size=0.1))
    ref = torch.autograd.grad(odeint(f, y0, TIMES, **kw)[-1].sum(), late)[0]
    for gradient in ("checkpoint", Checkpoint(budget=2), "adjoint"):
        ys = odeint(f, y0, TIMES, gradient=gradient, **kw)
        got = torch.autograd.grad(ys[-1].sum(), late)[0]
        tol = 1e-12 if gradient != "adjoint" else 1e-2
        assert torch.allclose(got, ref, rtol=tol)
