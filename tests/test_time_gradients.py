"""Gradients with respect to the output times (SPEC §5.2).

The adjoint gives the continuous derivative, dL/dt_k = <dL/dy_k, f(t_k, y_k)> for
k >= 1 and dL/dt_0 = -<a(t_0), f(t_0, y_0)>; at tight tolerances it must match
central finite differences of the solve in the times (the discretisation error is
far below the 1e-6 tolerance used). The exact methods differentiate the steps
that ran, their sizes held constant, moving with the times (solvers/moving.py):
their gradient is the derivative of the discrete solution, checked against
gradcheck, central differences of the solve where its grid is a smooth function
of t, and central differences of the recorded adaptive steps rebuilt as a grid
that moves with t. What cannot follow the times refuses t.requires_grad.
"""

from __future__ import annotations

import pytest
import torch
from gradproblems import DT, MLP, randn
from torch import nn

import neurode


def _loss(f, y0, t, G, **kw):
    return (neurode.odeint(f, y0, t, **kw) * G).sum()


def _central(loss, times, eps: float = 1e-6, ks=None):
    """Central differences of ``loss(t)`` in every time (or those in ``ks``), no graph.
    In float64 with eps = 1e-6 they err by ~1e-16/eps = 1e-10 (round-off) + O(eps²)."""
    t, fd = torch.tensor(times, dtype=DT), torch.zeros(len(times), dtype=DT)
    with torch.no_grad():
        for k in range(len(times)) if ks is None else ks:
            e = torch.zeros(len(times), dtype=DT)
            e[k] = eps
            fd[k] = (loss(t + e) - loss(t - e)) / (2 * eps)
    return fd


@pytest.mark.parametrize("times", [[0.0, 0.4, 1.1], [0.2, 1.0], [1.0, 0.3, -0.5]], ids=str)
def test_adjoint_time_gradient_matches_finite_differences(times):
    f = MLP(dim=3, seed=1)
    y0 = randn(3, seed=2).requires_grad_(True)
    t = torch.tensor(times, dtype=DT, requires_grad=True)
    G = randn(len(times), 3, seed=3)
    kw = dict(rtol=1e-11, atol=1e-13)
    loss = _loss(f, y0, t, G, gradient="adjoint", **kw)
    g_t, g_y0 = torch.autograd.grad(loss, (t, y0))
    fd = _central(lambda tt: _loss(f, y0, tt, G, **kw), times)
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


@pytest.mark.parametrize(
    "opts",
    [dict(steps=3), dict(step_size=0.07), dict(step_size=0.07, exact_outputs=True)],
    ids=str,
)
@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
def test_multistep_time_gradient_matches_finite_differences(method, opts):
    # Adams weights come from the step's past times as nodes (t_j − t)/h: when the grid
    # follows t they move, and so do the weights. The grids here are smooth functions
    # of t under ±eps (no output lies on a grid point, no step count changes), so
    # central differences of the solve itself are the reference (tolerance as below)
    f, y0 = _field()
    for times in ([0.1, 0.6, 0.65, 1.3], [1.0, 0.33, 0.25, -0.5]):
        G = randn(len(times), 3, seed=6)
        kw = dict(method=method, options=opts)
        got = []
        for g in ("direct", "checkpoint"):
            t = torch.tensor(times, dtype=DT, requires_grad=True)
            got.append(torch.autograd.grad(_loss(f, y0, t, G, gradient=g, **kw), t)[0])
        assert torch.allclose(got[1], got[0], rtol=1e-12, atol=1e-14)
        fd = _central(lambda tt, G=G, kw=kw: _loss(f, y0, tt, G, **kw), times)
        assert torch.allclose(got[0], fd, rtol=1e-7, atol=1e-8), (times, got[0], fd)


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
    # central differences of a smooth function: O(eps^2) plus round-off / eps ~ 1e-10
    fd = _central(lambda tt: _loss(f, y0, tt, G, **kw), times)
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

    class Euler(neurode.solvers.base.Solver):  # a solver that does not declare rate_slots
        name, order, error_order = "my_euler", 1, None

        def init(self, f, t0, y0):
            return (y0,)

        def step(self, f, t, h, x):
            return (x[0] + h * f(t, x[0]),), None

    with pytest.raises(neurode.UnsupportedCombinationError, match="my_euler"):
        neurode.odeint(f, y0, t, method=Euler(), options=dict(steps=2))
    # a single time: y(t0) = y0 does not depend on t, no solve, no error
    (y,) = neurode.odeint(f, y0, t[:1], method="dopri5")
    assert torch.equal(y, y0)


# --- adaptive steps and step_size grids (SPEC §5.2): the steps follow the times -------
#
# The exact methods differentiate the solve that ran, its accepted step sizes held
# constant: each step starts at t0 + (its offset) — or, landing on every output, at the
# output its stretch starts from — the step that lands on an output ends there, and an
# output inside a step sits at θ = (t_k − s)/H on its interpolant. The independent
# reference rebuilds that solve as a fixed grid (grid_constructor) from the recorded
# accepted steps, moved with the times exactly so, and takes central differences of it.
# Central differences with eps = 1e-6 in float64 err by ~1e-16/eps = 1e-10 (round-off)
# plus O(eps²) truncation; a step start or length that failed to follow t would err by
# O(1) relative: rtol 1e-7 separates the two with three decades either side.


class _Recorded(nn.Module):
    """A time-dependent field that records the accepted steps (torchdiffeq's callback)."""

    def __init__(self):
        super().__init__()
        self.mlp = MLP(dim=3, seed=4)
        self.accepted: list[float] = []

    def forward(self, t, y):
        return self.mlp(t, y) + 0.3 * torch.sin(t) * y

    def callback_accept_step(self, t0, y0, dt):
        self.accepted.append(float(t0))


def _frozen_grid(starts: list[float], times: list[float], each: bool):
    """The recorded solve as a function of the times: grid points that move with them."""
    sign = 1.0 if times[-1] > times[0] else -1.0

    def points(tt: list[float]) -> list[float]:
        if not each:  # one grid from t0, only the last step lands (on t_K)
            return [tt[0] + (s - times[0]) for s in starts] + [tt[-1]]
        pts = []
        for k in range(len(times) - 1):  # the grid restarts at every output
            inside = [s for s in starts if sign * times[k] <= sign * s < sign * times[k + 1]]
            pts += [tt[k] + (s - times[k]) for s in inside]
        return pts + [tt[-1]]

    return points


def _frozen_fd(f, y0, times, G, method, each, eps=1e-6, **kw):
    with torch.no_grad():
        f.accepted.clear()
        neurode.odeint(f, y0, torch.tensor(times, dtype=DT), method=method, **kw)
        points = _frozen_grid(list(f.accepted), times, each)

        def loss(tt):
            grid = torch.tensor(points(tt.tolist()), dtype=DT)
            opts = dict(grid_constructor=lambda func, y, t: grid, interp="cubic")
            return (neurode.odeint(f, y0, tt, method=method, options=opts) * G).sum()

    return _central(loss, times, eps)


def _time_gradient(f, y0, times, G, method, gradient, **kw):
    t = torch.tensor(times, dtype=DT, requires_grad=True)
    loss = (neurode.odeint(f, y0, t, method=method, gradient=gradient, **kw) * G).sum()
    return torch.autograd.grad(loss, [t, *f.parameters()])


def _adaptive_methods():
    from neurode.solvers.registry import ALIASES, method_names, resolve_solver

    out = []
    for name in method_names():
        solver = resolve_solver(name)
        if name not in ALIASES and solver.adaptive and solver.rate_slots is not None:
            out.append(name)
    return out


ADAPTIVE = [*_adaptive_methods(), "reversible:dopri5"]


@pytest.mark.parametrize("exact_outputs", [False, True], ids=["dense", "landing"])
@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_time_gradient_is_the_derivative_of_the_steps_taken(method, exact_outputs):
    f = _Recorded()
    y0 = randn(3, seed=5)
    times = [0.1, 0.6, 0.65, 1.3]
    G = randn(len(times), 3, seed=6)
    kw = dict(rtol=1e-5, atol=1e-7, options=dict(exact_outputs=exact_outputs))
    solver = neurode.solvers.registry.resolve_solver(method)
    each = exact_outputs or not solver.interpolates
    fd = _frozen_fd(f, y0, times, G, method, each, **kw)
    gradients = ["direct", "checkpoint"]
    if isinstance(solver, neurode.solvers.base.ReversibleSolver):
        gradients.append("reversible")
    for g in gradients:
        g_t = _time_gradient(f, y0, times, G, method, g, **kw)[0]
        assert torch.allclose(g_t, fd, rtol=1e-7, atol=1e-9), (g, g_t, fd)


@pytest.mark.parametrize(
    "gradient",
    ["checkpoint", neurode.Checkpoint(budget=2), neurode.Checkpoint(per_stage=True)],
    ids=str,
)
@pytest.mark.parametrize("times", [[0.1, 0.6, 0.65, 1.3], [1.0, 0.3, 0.25, -0.5]], ids=str)
def test_adaptive_time_gradient_of_every_exact_method_equals_direct(gradient, times):
    f = _Recorded()
    y0 = randn(3, seed=5)
    G = randn(len(times), 3, seed=7)
    kw = dict(rtol=1e-6, atol=1e-8)
    ref = _time_gradient(f, y0, times, G, "dopri5", "direct", **kw)
    got = _time_gradient(f, y0, times, G, "dopri5", gradient, **kw)
    # the same discretisation differentiated two ways: round-off apart
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, rtol=1e-11, atol=1e-13)


def test_reverse_time_adaptive_time_gradient_matches_the_frozen_steps():
    f = _Recorded()
    y0 = randn(3, seed=5)
    times = [1.0, 0.3, 0.25, -0.5]
    G = randn(len(times), 3, seed=8)
    kw = dict(rtol=1e-6, atol=1e-8)
    fd = _frozen_fd(f, y0, times, G, "dopri5", False, **kw)
    g_t = _time_gradient(f, y0, times, G, "dopri5", "checkpoint", **kw)[0]
    assert torch.allclose(g_t, fd, rtol=1e-7, atol=1e-9), (g_t, fd)


@pytest.mark.parametrize(
    "opts", [dict(interp="linear"), dict(interp="cubic"), dict(exact_outputs=True)], ids=str
)
@pytest.mark.parametrize("gradient", ["direct", "checkpoint"])
def test_step_size_grid_time_gradient_matches_finite_differences(gradient, opts):
    # one grid from t0 (torchdiffeq's step_size): it moves with t0, its last step ends at
    # t_K, outputs between grid points move along the interpolant; landing on every
    # output, the grid restarts at each one instead. The grid's step count
    # does not change under ±eps here (no time lies within eps of a grid point), so
    # central differences of the solve itself are the reference.
    f = _Recorded()
    y0 = randn(3, seed=5)
    times = [0.1, 0.47, 0.66, 1.33]
    G = randn(len(times), 3, seed=9)
    kw = dict(method="rk4", options=dict(step_size=0.1, **opts))
    g_t = _time_gradient(f, y0, times, G, gradient=gradient, **kw)[0]
    fd = _central(lambda tt: _loss(f, y0, tt, G, **kw), times)
    assert torch.allclose(g_t, fd, rtol=1e-7, atol=1e-9), (g_t, fd)


def test_adaptive_time_gradient_leaves_the_forward_solve_as_it_was():
    f = _Recorded()
    y0 = randn(3, seed=5)
    t = torch.tensor([0.1, 0.6, 0.65, 1.3], dtype=DT, requires_grad=True)
    sol = neurode.solve(f, y0, t, gradient="checkpoint")
    with torch.no_grad():
        plain = neurode.solve(f, y0, t.detach(), gradient="checkpoint")
    assert torch.equal(sol.ys.detach(), plain.ys)
    assert sol.stats.nfe_forward == plain.stats.nfe_forward


def test_landing_on_outputs_closer_than_float64_resolves_refuses_their_time_gradient():
    f = _Recorded()
    y0 = randn(3, seed=5)
    t = torch.tensor([0.0, 0.3, 0.1 * 3, 1.0], dtype=DT, requires_grad=True)  # one ulp apart
    with pytest.raises(neurode.UnsupportedCombinationError, match="closer than float64"):
        neurode.odeint(f, y0, t, options=dict(exact_outputs=True))
    # dense outputs: both sit on the interpolant of one step and move along it
    G = randn(4, 3, seed=3)
    (g_t,) = torch.autograd.grad((neurode.odeint(f, y0, t) * G).sum(), t)
    with torch.no_grad():
        ys = neurode.odeint(f, y0, t.detach())
        slope = torch.stack([f(t[k].detach(), ys[k]) for k in (1, 2)])
    # dL/dt_k ≈ <G_k, f(t_k, y_k)>: the interpolant's slope, to the solver's tolerance
    assert torch.allclose(g_t[1:3], (G[1:3] * slope).sum(-1), rtol=1e-4)


def _moving_grid(func, y0, t):
    # torchdiffeq's way: a grid built from t by arithmetic, so it follows t
    u = torch.tensor([0.0, 0.13, 0.3, 0.52, 0.71, 0.9, 1.0], dtype=t.dtype)
    return t[0] + (t[-1] - t[0]) * u


@pytest.mark.parametrize("method", ["rk4", "dopri5", "alf", "explicit_adams"])
def test_grid_constructor_grid_built_from_t_moves_with_it(method):
    # the reference: central differences of the solve, whose grid is rebuilt from t ± eps
    f, y0 = _field()
    times = [0.1, 0.45, 0.8, 1.3]
    G = randn(len(times), 3, seed=10)
    kw = dict(method=method, options=dict(grid_constructor=_moving_grid, interp="cubic"))
    got = []
    for g in ("direct", "reversible" if method == "alf" else "checkpoint"):
        t = torch.tensor(times, dtype=DT, requires_grad=True)
        got.append(torch.autograd.grad(_loss(f, y0, t, G, gradient=g, **kw), t)[0])
    assert torch.allclose(got[1], got[0], rtol=1e-11, atol=1e-13)
    fd = _central(lambda tt: _loss(f, y0, tt, G, **kw), times)
    assert torch.allclose(got[0], fd, rtol=1e-7, atol=1e-9), (got[0], fd)


@pytest.mark.parametrize("opts", [dict(steps=2), dict(step_size=0.07)], ids=str)
def test_perturbed_steps_follow_the_times_too(opts):
    # perturb moves f's evaluations at a step's ends one ulp inside it; the steps still
    # move with t, and central differences of the solve are the reference
    f, y0 = _field()
    times = [0.1, 0.6, 0.65, 1.3]
    G = randn(len(times), 3, seed=14)
    kw = dict(method="rk4", options=dict(perturb=True, **opts))
    for g in ("direct", "checkpoint"):
        t = torch.tensor(times, dtype=DT, requires_grad=True)
        (g_t,) = torch.autograd.grad(_loss(f, y0, t, G, gradient=g, **kw), t)
        fd = _central(lambda tt: _loss(f, y0, tt, G, **kw), times)
        assert torch.allclose(g_t, fd, rtol=1e-7, atol=1e-9), (g, g_t, fd)


def test_grid_constructor_constant_grid_moves_only_the_outputs_inside_it():
    # a grid that does not depend on t stays put (as in torchdiffeq): an output time
    # moves along the interpolant of the step it falls in; t0 and t_K end the grid, so
    # only the interior times can be perturbed (the grid must start and end on t)
    f, y0 = _field()
    times = [0.0, 0.45, 0.8, 1.0]
    G = randn(len(times), 3, seed=11)

    def grid(func, y0, t):
        return torch.linspace(0.0, 1.0, 7, dtype=DT)

    kw = dict(method="rk4", options=dict(grid_constructor=grid, interp="cubic"))
    t = torch.tensor(times, dtype=DT, requires_grad=True)
    (g_t,) = torch.autograd.grad(_loss(f, y0, t, G, gradient="checkpoint", **kw), t)
    fd = _central(lambda tt: _loss(f, y0, tt, G, **kw), times, ks=(1, 2))
    for k in (1, 2):
        assert abs(float(g_t[k] - fd[k])) < 1e-8 * max(1.0, abs(float(fd[k])))
    assert float(g_t[0]) == 0.0  # the grid does not start later when t0 does


def test_grid_constructor_grid_depending_on_a_parameter_gets_its_gradient():
    f, y0 = _field()
    s = torch.tensor(0.4, dtype=DT, requires_grad=True)

    def grid(func, y0, t):  # where the middle point sits depends on s
        return torch.stack([t[0], t[0] + s * (t[-1] - t[0]), t[-1]])

    times = torch.tensor([0.0, 1.0], dtype=DT)
    G = randn(2, 3, seed=12)
    kw = dict(method="rk4", options=dict(grid_constructor=grid))
    (g_s,) = torch.autograd.grad(_loss(f, y0, times, G, gradient="checkpoint", **kw), s)
    eps = 1e-6
    with torch.no_grad():
        ref = []
        for v in (0.4 + eps, 0.4 - eps):
            s.fill_(v)
            ref.append(_loss(f, y0, times, G, **kw))
        s.fill_(0.4)
    assert abs(float(g_s) - float((ref[0] - ref[1]) / (2 * eps))) < 1e-8
    with pytest.raises(neurode.UnsupportedCombinationError, match="other than t"):
        _loss(f, y0, times, G, gradient="adjoint", **kw)
    # ... also when t requires grad (the adjoint differentiates t, not the grid's s)
    t = times.clone().requires_grad_(True)
    with pytest.raises(neurode.UnsupportedCombinationError, match="other than t"):
        _loss(f, y0, t, G, gradient="adjoint", **kw)


def test_grid_constructor_grid_built_from_t_alone_works_with_the_adjoint():
    # the adjoint's t-gradient is the continuous one, whatever grid the forward used
    f, y0 = _field()
    times = [0.1, 0.45, 0.8, 1.3]
    G = randn(len(times), 3, seed=15)
    kw = dict(method="rk4", options=dict(grid_constructor=_moving_grid), gradient="adjoint")
    t = torch.tensor(times, dtype=DT, requires_grad=True)
    (g_t,) = torch.autograd.grad(_loss(f, y0, t, G, **kw), t)
    with torch.no_grad():  # dL/dt_k = <G_k, f(t_k, y_k)> for k >= 1
        ys = neurode.odeint(f, y0, t.detach(), **kw)
        want = torch.stack([(G[k] * f(t[k], ys[k])).sum() for k in range(1, len(times))])
    assert torch.allclose(g_t[1:], want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("gradient", ["direct", "checkpoint"])
def test_time_gradient_across_jump_t_chains_the_pieces(gradient):
    # f jumps at t = 0.5; with jump_t=[0.5] the solve is two pieces, each seeing f's
    # one-sided limit at the jump. The reference solves the two pieces by hand with the
    # two smooth branches (the jump time a constant) and chains them: its t-gradient
    # is the single-piece one tested above
    mlp = MLP(dim=3, seed=4)

    def left(t, y):
        return mlp(t, y)

    def right(t, y):
        return mlp(t, y) - 0.7 * y

    def f(t, y):
        return left(t, y) if float(t) < 0.5 else right(t, y)

    y0 = randn(3, seed=5)
    times = [0.1, 0.3, 0.8, 1.3]
    G = randn(len(times), 3, seed=13)
    kw = dict(rtol=1e-8, atol=1e-10, gradient=gradient)
    t = torch.tensor(times, dtype=DT, requires_grad=True)
    ys = neurode.odeint(f, y0, t, options=dict(jump_t=[0.5]), **kw)
    (g_t,) = torch.autograd.grad((ys * G).sum(), t)

    t_ref = torch.tensor(times, dtype=DT, requires_grad=True)
    jump = torch.tensor([0.5], dtype=DT)
    first = neurode.odeint(left, y0, torch.cat([t_ref[:2], jump]), **kw)
    second = neurode.odeint(right, first[-1], torch.cat([jump, t_ref[2:]]), **kw)
    ref = torch.cat([first[:2], second[1:]])
    (g_ref,) = torch.autograd.grad((ref * G).sum(), t_ref)
    assert torch.allclose(ys, ref, rtol=1e-12, atol=1e-13)
    assert torch.allclose(g_t, g_ref, rtol=1e-10, atol=1e-12), (g_t, g_ref)


def test_time_gradient_with_jump_t_refused_at_an_output_or_with_the_adjoint():
    f, y0 = _field()
    t = torch.tensor([0.0, 0.5, 1.0], dtype=DT, requires_grad=True)
    with pytest.raises(neurode.UnsupportedCombinationError, match="jump time"):
        neurode.odeint(f, y0, t, options=dict(jump_t=[0.5]))
    with pytest.raises(neurode.UnsupportedCombinationError, match="adjoint"):
        neurode.odeint(f, y0, t, options=dict(jump_t=[0.7]), gradient="adjoint")
