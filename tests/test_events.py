"""Terminal events (SPEC §5.4): the event time and the state there, with gradients.

References are closed forms (a falling body, exponential decay to a threshold) and
central finite differences of the whole event solve; checkpointed gradients must
equal direct ones to round-off (the same computation, replayed).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import neurode
from neurode import EventError, odeint_event

DT = torch.float64
G = 9.81


def falling(t, y):
    return torch.stack([y[1], torch.full_like(y[1], -G)])


def ground(t, y):
    return y[0]


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "alf"])
def test_falling_body_event_time(method):
    y0 = torch.tensor([10.0, 0.0], dtype=DT)
    t_ev, sol = odeint_event(
        falling, y0, 0.0, event_fn=ground, method=method, rtol=1e-9, atol=1e-11
    )
    assert sol.shape == (2, 2)
    assert torch.equal(sol[0], y0)
    exact = math.sqrt(2 * 10.0 / G)
    # the root is located on the interpolant, the state there re-solved: ~tolerance
    assert abs(float(t_ev) - exact) < 1e-7, float(t_ev) - exact
    assert abs(float(sol[1, 0])) < 1e-6
    assert abs(float(sol[1, 1]) + G * exact) < 1e-6


@pytest.mark.parametrize(
    "gradient", ["direct", "checkpoint", neurode.Checkpoint(budget=2)], ids=str
)
def test_event_time_gradient_closed_form(gradient):
    # y' = -k y, event y = c: t* = ln(y0/c)/k, y(t*) = c
    def run():
        k = torch.tensor(0.7, dtype=DT, requires_grad=True)
        c = torch.tensor(0.3, dtype=DT, requires_grad=True)
        y0 = torch.tensor([1.5], dtype=DT, requires_grad=True)
        t_ev, sol = odeint_event(
            lambda t, y: -k * y, y0, 0.0, event_fn=lambda t, y: y[0] - c,
            rtol=1e-11, atol=1e-13, gradient=gradient,
        )  # fmt: skip
        return (k, c, y0), t_ev, sol

    t_star = math.log(1.5 / 0.3) / 0.7
    leaves, t_ev, _ = run()
    assert abs(float(t_ev.detach()) - t_star) < 1e-8
    dk, dc, dy0 = torch.autograd.grad(t_ev, leaves)
    assert abs(float(dk) + t_star / 0.7) < 1e-6
    assert abs(float(dc) + 1 / (0.7 * 0.3)) < 1e-6
    assert abs(float(dy0) - 1 / (0.7 * 1.5)) < 1e-6
    # the state at the event is c whatever k and y0 are: its gradient w.r.t. them is 0
    leaves, _, sol = run()
    gk, gc, gy0 = torch.autograd.grad(sol[1, 0], leaves)
    assert abs(float(gk)) < 1e-7 and abs(float(gy0)) < 1e-7
    assert abs(float(gc) - 1.0) < 1e-7


def test_event_gradients_match_finite_differences_and_checkpoint():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).to(
        DT
    )
    with torch.no_grad():
        net[2].bias.copy_(torch.tensor([1.0, 0.2], dtype=DT))  # y[0] grows: an event exists

    def f(t, y):
        return net(y)

    def event(t, y):
        return y[0] - 1.0

    def loss(y0, gradient="direct"):
        t_ev, sol = odeint_event(
            f, y0, 0.0, event_fn=event, rtol=1e-10, atol=1e-12, gradient=gradient
        )
        return t_ev + (sol[1] ** 2).sum()

    y0 = torch.tensor([0.1, -0.3], dtype=DT, requires_grad=True)
    g_direct = torch.autograd.grad(loss(y0), y0)[0]
    g_ckpt = torch.autograd.grad(loss(y0, "checkpoint"), y0)[0]
    assert torch.allclose(g_ckpt, g_direct, rtol=1e-10, atol=1e-12)
    eps = 1e-5
    fd = torch.zeros(2, dtype=DT)
    with torch.no_grad():
        for i in range(2):
            e = torch.zeros(2, dtype=DT)
            e[i] = eps
            fd[i] = (loss(y0 + e) - loss(y0 - e)) / (2 * eps)
    assert torch.allclose(g_direct, fd, rtol=1e-5, atol=1e-7), (g_direct, fd)


def test_reverse_time_and_fixed_grid():
    y0 = torch.tensor([1.0], dtype=DT)
    # y' = y backwards from t0 = 0 until y = 0.5: t* = ln(0.5)
    t_ev, _ = odeint_event(
        lambda t, y: y, y0, 0.0, event_fn=lambda t, y: y[0] - 0.5, reverse_time=True, rtol=1e-10
    )
    assert abs(float(t_ev) - math.log(0.5)) < 1e-8
    t_ev, sol = odeint_event(
        lambda t, y: -y, y0, 0.0, event_fn=lambda t, y: y[0] - 0.5,
        method="rk4", options=dict(step_size=0.01),
    )  # fmt: skip
    assert abs(float(t_ev) - math.log(2.0)) < 1e-8


def test_odeint_with_event_fn_is_odeint_event():
    y0 = torch.tensor([10.0, 0.0], dtype=DT)
    t_ev, sol = neurode.odeint(falling, y0, torch.tensor([0.0], dtype=DT), event_fn=ground)
    t_ev2, sol2 = odeint_event(falling, y0, 0.0, event_fn=ground)
    assert torch.equal(t_ev, t_ev2) and torch.equal(sol, sol2)


def test_no_event_raises():
    y0 = torch.tensor([1.0], dtype=DT)
    with pytest.raises(EventError, match="did not change sign"):
        odeint_event(lambda t, y: -y, y0, 0.0, event_fn=lambda t, y: y[0] + 1.0, t_max=5.0)
    with pytest.raises(EventError):
        odeint_event(lambda t, y: -y, y0, 0.0, event_fn=lambda t, y: y[0] + 1.0)


def test_bad_event_inputs_raise():
    y0 = torch.tensor([1.0], dtype=DT)
    with pytest.raises(neurode.InvalidOptionError, match="scalar"):
        odeint_event(lambda t, y: -y, y0.repeat(2), 0.0, event_fn=lambda t, y: y - 0.5)
    with pytest.raises(neurode.InvalidOptionError, match="t_max"):
        odeint_event(lambda t, y: -y, y0, 0.0, event_fn=lambda t, y: y[0] - 0.5, t_max=-1.0)
    with pytest.raises(neurode.InvalidOptionError, match="step_size"):
        odeint_event(
            lambda t, y: -y,
            y0,
            0.0,
            event_fn=lambda t, y: y[0] - 0.5,
            method="rk4",
            options=dict(steps=3),
        )


def test_odeint_event_direction_follows_t_and_odeint_adjoint_accepts_event_fn():
    y0 = torch.tensor([1.0], dtype=DT)
    # decreasing t: search backwards (y' = y, y = 0.5 at t = ln 0.5)
    t_ev, _ = neurode.odeint(
        lambda t, y: y, y0, torch.tensor([0.0, -1.0], dtype=DT),
        event_fn=lambda t, y: y[0] - 0.5, rtol=1e-10,
    )  # fmt: skip
    assert abs(float(t_ev) - math.log(0.5)) < 1e-8
    k = torch.tensor(0.7, dtype=DT, requires_grad=True)
    t_ev, sol = neurode.odeint_adjoint(
        lambda t, y: -k * y, y0, torch.tensor([0.0, 1.0], dtype=DT),
        event_fn=lambda t, y: y[0] - 0.5, rtol=1e-10, atol=1e-12,
    )  # fmt: skip
    (dk,) = torch.autograd.grad(t_ev, k)
    assert abs(float(dk) + math.log(2.0) / 0.7**2) < 1e-6


def test_event_search_refuses_options_it_would_not_honour():
    # jump_t and perturb change how steps see f; the event search would ignore them
    y0 = torch.tensor([1.0], dtype=torch.float64)
    g = lambda t, y: y[0] - 0.5  # noqa: E731
    with pytest.raises(neurode.InvalidOptionError, match="jump_t"):
        neurode.odeint_event(lambda t, y: -y, y0, 0.0, event_fn=g, options=dict(jump_t=[0.2]))
    with pytest.raises(neurode.InvalidOptionError, match="perturb"):
        neurode.odeint_event(lambda t, y: -y, y0, 0.0, event_fn=g, method="rk4",
                             options=dict(step_size=0.1, perturb=True))  # fmt: skip


@pytest.mark.parametrize("gradient", ["direct", "checkpoint", "adjoint"])
def test_event_time_gradient_with_respect_to_t0(gradient):
    # y' = t from y(t0) = 0 until y = 2: t* = sqrt(4 + t0²), dt*/dt0 = t0/t*; y(t*) = 2
    # whatever t0, so its gradient in t0 is 0. Exact to the solver's tolerance
    def d_dt0(which):  # one backward per solve (the non-direct methods free their record)
        t0 = torch.tensor(1.0, dtype=DT, requires_grad=True)
        t_ev, sol = odeint_event(
            lambda t, y: t.expand_as(y), torch.tensor([0.0], dtype=DT), t0,
            event_fn=lambda t, y: y[0] - 2.0, rtol=1e-10, atol=1e-12, gradient=gradient,
        )  # fmt: skip
        assert abs(float(t_ev) - math.sqrt(5.0)) < 1e-9
        return float(torch.autograd.grad(t_ev if which == "t" else sol[1, 0], t0)[0])

    assert abs(d_dt0("t") - 1.0 / math.sqrt(5.0)) < 1e-8
    assert abs(d_dt0("y")) < 1e-8


def test_event_time_gradient_with_respect_to_t0_in_reverse_time():
    # y' = y backwards from t0 until y = 0.5: t* = t0 + ln 0.5, dt*/dt0 = 1
    t0 = torch.tensor(0.3, dtype=DT, requires_grad=True)
    t_ev, _ = odeint_event(
        lambda t, y: y, torch.tensor([1.0], dtype=DT), t0, event_fn=lambda t, y: y[0] - 0.5,
        reverse_time=True, rtol=1e-10, atol=1e-12, gradient="checkpoint",
    )  # fmt: skip
    assert abs(float(t_ev) - (0.3 + math.log(0.5))) < 1e-9
    (d_t0,) = torch.autograd.grad(t_ev, t0)
    assert abs(float(d_t0) - 1.0) < 1e-8


def _drop(h0: Tensor, odeint_event_fn, **kw):
    """A ball dropped from rest at height h0: (impact time, d impact time / d h0)."""
    y0 = torch.stack([h0, torch.zeros_like(h0)])
    t_ev, _ = odeint_event_fn(
        falling, y0, torch.tensor(0.0, dtype=DT), event_fn=ground, rtol=1e-10, atol=1e-12, **kw
    )
    (d_h0,) = torch.autograd.grad(t_ev, h0)
    return float(t_ev), float(d_h0)


@pytest.mark.parametrize("gradient", ["direct", "checkpoint", "adjoint"])
def test_bouncing_ball_impact_time_and_its_gradient_in_the_drop_height(gradient):
    # t* = sqrt(2 h0 / g), dt*/dh0 = 1 / sqrt(2 g h0): closed forms; a quadratic y(t) is
    # integrated exactly by dopri5, so only the root location's tolerance remains
    h0 = torch.tensor(10.0, dtype=DT, requires_grad=True)
    t_star, d_h0 = _drop(h0, odeint_event, gradient=gradient)
    assert abs(t_star - math.sqrt(2 * 10.0 / G)) < 1e-9
    assert abs(d_h0 - 1.0 / math.sqrt(2 * G * 10.0)) < 1e-9


def test_bouncing_ball_agrees_with_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")  # a test extra (pip install -e .[dev])
    ours = _drop(torch.tensor(7.5, dtype=DT, requires_grad=True), odeint_event)
    theirs = _drop(torch.tensor(7.5, dtype=DT, requires_grad=True), torchdiffeq.odeint_event)
    # both are the closed form to ~1e-9: they agree to that
    assert abs(ours[0] - theirs[0]) < 1e-8 and abs(ours[1] - theirs[1]) < 1e-8, (ours, theirs)
