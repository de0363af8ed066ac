"""Dense output (SPEC §5.3): outputs inside steps come from each step's interpolant.

Checked here: every solver's interpolant reaches its declared order; adaptive steps
do not depend on how many outputs are asked for; fixed ``step_size`` grids follow
torchdiffeq's convention (one grid from t0, linear or cubic interpolation); every
gradient method stays exact with many outputs falling inside steps (against float64
direct backprop through the same computation, and central finite differences).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gradproblems import DT, MLP, grads, randn, rel

import neurode
from neurode.errors import InvalidOptionError
from neurode.solvers.base import ReversibleSolver
from neurode.solvers.registry import method_names, resolve_solver

# y' = A y: exact solution by the matrix exponential
A = torch.tensor([[-0.3, 1.0], [-1.0, -0.2]], dtype=DT)
Y0 = torch.tensor([1.0, 0.5], dtype=DT)


def linear(t, y):
    return y @ A.T


def exact(ts):
    return torch.stack([torch.linalg.matrix_exp(A * float(t)) @ Y0 for t in ts])


def _solvers():
    """Every solver the registry knows (plus configured reversible ones)."""
    out = {}
    for name in method_names():
        try:
            solver = resolve_solver(name)
        except Exception:  # a solver that needs configuration
            continue
        out.setdefault(solver.name, solver)
    out["reversible(rk4)"] = neurode.Reversible("rk4")
    out["reversible(bosh3)"] = neurode.Reversible("bosh3")
    return out


SOLVERS = _solvers()
EXPLICIT = {
    n: s for n, s in SOLVERS.items() if type(s).__module__.endswith(("rk", "alf", "reversible"))
}


def _interp_order(solver, interp="auto") -> int:
    x = solver.init(linear, 0.0, Y0)
    _, _, dense = solver.step_dense(linear, 0.0, 0.1, x, interp)
    return dense.order


@pytest.mark.parametrize("name", sorted(EXPLICIT))
@pytest.mark.parametrize("interp", ["cubic", "linear"])
def test_interpolant_reaches_its_order(name, interp):
    # outputs in the middle of every step of a step_size grid: their error is the global
    # error (order p) plus the interpolant's local error (order q + 1): slope min(p, q + 1)
    solver = EXPLICIT[name]
    q = _interp_order(solver, "linear" if interp == "linear" else "auto")
    expected = min(solver.order, q + 1)
    hs = [0.2, 0.1, 0.05] if expected <= 4 else [0.4, 0.2, 0.1]
    errs = []
    for h in hs:
        ts = [0.0] + [h * (i + 0.37) for i in range(int(round(2.0 / h)))] + [2.0]
        ys = neurode.odeint(linear, Y0, ts, method=solver, options=dict(step_size=h, interp=interp))
        errs.append(float((ys[1:-1] - exact(ts)[1:-1]).abs().max()))
    slopes = np.diff(np.log(errs)) / np.diff(np.log(hs))
    assert abs(slopes[-1] - expected) <= 0.3, (errs, slopes, expected)


def test_dense_weights_satisfy_order_conditions():
    # the continuous extensions of dopri5 and tsit5 are order 4 at every θ (Butcher's
    # conditions with right-hand sides θ^k / γ), and equal the step's weights at θ = 1
    from neurode.solvers.dense import DENSE
    from neurode.solvers.tableau import TABLEAUS

    for name, weights in DENSE.items():
        tab = TABLEAUS[name]
        s = tab.stages
        a = np.zeros((s, s))
        for i, row in enumerate(tab.a):
            a[i, : len(row)] = row
        c = np.array(tab.c)
        for th in (0.0, 0.25, 0.5, 0.8, 1.0):
            b = np.array(weights(th))
            conds = [
                b.sum() - th,
                b @ c - th**2 / 2,
                b @ c**2 - th**3 / 3,
                b @ a @ c - th**3 / 6,
                b @ c**3 - th**4 / 4,
                (b * c) @ a @ c - th**4 / 8,
                b @ a @ c**2 - th**4 / 12,
                b @ a @ a @ c - th**4 / 24,
            ]
            assert max(abs(x) for x in conds) < 1e-13, (name, th, conds)
        assert np.allclose(weights(1.0), tab.b, atol=1e-13)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "heun", "alf"])
def test_adaptive_cost_does_not_grow_with_outputs(method):
    def f(t, y):
        return torch.tanh(y @ A.T) * 1.5

    gen = torch.Generator().manual_seed(0)
    nfe = []
    for k in (2, 10, 50, 200):
        ts = torch.sort(torch.rand(k - 2, generator=gen, dtype=DT) * 5.0).values
        ts = torch.cat([torch.tensor([0.0, 5.0], dtype=DT)[:1], ts, torch.tensor([5.0], dtype=DT)])
        sol = neurode.solve(f, Y0, ts, method=method, rtol=1e-6, atol=1e-8)
        nfe.append(sol.stats.nfe_forward)
    assert len(set(nfe)) == 1, nfe


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_adaptive_dense_outputs_are_accurate(method):
    ts = torch.linspace(0, 10, 301, dtype=DT)
    for rtol in (1e-4, 1e-7):
        dense = neurode.odeint(linear, Y0, ts, method=method, rtol=rtol, atol=rtol * 1e-2)
        landed = neurode.odeint(
            linear, Y0, ts, method=method, rtol=rtol, atol=rtol * 1e-2,
            options=dict(exact_outputs=True),
        )  # fmt: skip
        ref = exact(ts)
        err_dense = float((dense - ref).abs().max())
        err_landed = float((landed - ref).abs().max())
        # the interpolant adds an error of the step's own size: same order as landing
        assert err_dense <= 30 * rtol, (err_dense, rtol)
        assert err_dense <= 20 * err_landed + 10 * rtol, (err_dense, err_landed)


def test_step_size_grid_runs_from_t0_like_torchdiffeq():
    # one grid 0, 0.2, 0.4, ... over the whole solve; an output at 0.3 is interpolated
    ts = [0.0, 0.3, 1.0]
    sol = neurode.solve(linear, Y0, ts, method="rk4", options=dict(step_size=0.2))
    assert sol.stats.accepted_steps == 5
    grid = neurode.odeint(
        linear, Y0, [0.0, 0.2, 0.4, 1.0], method="rk4", options=dict(step_size=0.2)
    )
    assert torch.equal(sol.ys[1], torch.lerp(grid[1], grid[2], 0.5))
    assert torch.equal(sol.ys[-1], grid[-1])
    landed = neurode.solve(
        linear, Y0, ts, method="rk4", options=dict(step_size=0.2, exact_outputs=True)
    )
    assert landed.stats.accepted_steps == 2 + 4  # each interval restarts its grid
    # cubic: the solver's own interpolant, much closer than the linear one
    cubic = neurode.odeint(
        linear, Y0, ts, method="rk4", options=dict(step_size=0.2, interp="cubic")
    )
    ref = exact(ts)
    assert float((cubic[1] - ref[1]).abs().max()) < 0.01 * float((sol.ys[1] - ref[1]).abs().max())


def test_steps_per_interval_keeps_outputs_on_the_grid():
    ts = [0.0, 0.3, 1.0]
    sol = neurode.solve(linear, Y0, ts, method="rk4", options=dict(steps=3))
    first = neurode.odeint(linear, Y0, [0.0, 0.3], method="rk4", options=dict(steps=3))
    assert sol.stats.accepted_steps == 6
    assert torch.equal(sol.ys[1], first[1])


@pytest.mark.parametrize("exact_outputs", [False, True])
def test_output_times_an_ulp_apart(exact_outputs):
    ts = [0.0, 0.3, 0.1 * 3, 1.0]
    assert ts[1] != ts[2]
    y = neurode.odeint(
        lambda t, y: -y, torch.ones(2, dtype=DT), ts, options=dict(exact_outputs=exact_outputs)
    )
    assert torch.allclose(y[1], y[2], rtol=1e-14)
    assert torch.allclose(y[-1], torch.full((2,), math.exp(-1.0), dtype=DT), rtol=1e-6)


@pytest.mark.parametrize("exact_outputs", [False, True])
def test_close_output_pairs_cost_little(exact_outputs):
    base = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    pairs = sorted(base + [b + 1e-9 for b in base[1:-1]])
    opts = dict(exact_outputs=exact_outputs)
    ref = neurode.solve(linear, Y0, base, rtol=1e-7, options=opts).stats.nfe_forward
    got = neurode.solve(linear, Y0, pairs, rtol=1e-7, options=opts).stats.nfe_forward
    # dense: identical steps; landing: each 1e-9 step costs one step, the proposal survives
    assert got <= (ref if not exact_outputs else ref + 6 * 9 + 12), (ref, got)


def test_interp_option_is_checked():
    with pytest.raises(InvalidOptionError, match="interp"):
        neurode.odeint(linear, Y0, [0.0, 1.0], method="dopri5", options=dict(interp="cubic"))
    with pytest.raises(InvalidOptionError, match="interp"):
        neurode.odeint(linear, Y0, [0.0, 1.0], method="rk4", options=dict(steps=2, interp="cubic"))
    with pytest.raises(InvalidOptionError, match="interp"):
        neurode.odeint(
            linear, Y0, [0.0, 1.0], method="rk4", options=dict(step_size=0.1, interp="quintic")
        )
    with pytest.raises(InvalidOptionError, match="exact_outputs"):
        neurode.odeint(linear, Y0, [0.0, 1.0], options=dict(exact_outputs="yes"))


# ---------------------------------------------------------------------------
# Exact gradients with outputs inside steps
# ---------------------------------------------------------------------------

DENSE_CASES = {
    "dopri5": dict(method="dopri5", rtol=1e-6, atol=1e-8),
    "tsit5": dict(method="tsit5", rtol=1e-6, atol=1e-8),
    "bosh3": dict(method="bosh3", rtol=1e-5, atol=1e-7),
    "heun": dict(method="heun", rtol=1e-4, atol=1e-6),
    "rk4-linear": dict(method="rk4", options=dict(step_size=0.13)),
    "rk4-cubic": dict(method="rk4", options=dict(step_size=0.13, interp="cubic")),
    "euler-cubic": dict(method="euler", options=dict(step_size=0.05, interp="cubic")),
    "alf": dict(method="alf", rtol=1e-3, atol=1e-5),
    "alf-fixed": dict(method="alf", options=dict(step_size=0.07, interp="cubic")),
    "rev-bosh3": dict(method=neurode.Reversible("bosh3"), rtol=1e-5, atol=1e-7),
    "rev-rk4": dict(method=neurode.Reversible("rk4"), options=dict(step_size=0.13, interp="cubic")),
}
GRADS = {
    "checkpoint": (lambda: "checkpoint", 1e-10),
    "budget2": (lambda: neurode.Checkpoint(budget=2), 1e-10),
    "budget5": (lambda: neurode.Checkpoint(budget=5), 1e-10),
    "reversible": (lambda: "reversible", 1e-9),
}
T_MANY = [0.0, 0.05, 0.11, 0.2, 0.33, 0.41, 0.5, 0.58, 0.77, 0.9, 0.93, 1.2, 1.5]


def _matrix():
    for cname, kw in DENSE_CASES.items():
        reversible = isinstance(resolve_solver(kw["method"]), ReversibleSolver)
        for gname in GRADS:
            if gname == "reversible" and not reversible:
                continue
            yield pytest.param(cname, gname, id=f"{cname}-{gname}")


@pytest.mark.parametrize("cname, gname", list(_matrix()))
def test_dense_gradients_agree_with_direct(cname, gname):
    kw = DENSE_CASES[cname]
    f = MLP(dim=3, seed=1)
    params = list(f.parameters())
    y0 = randn(3, seed=2)
    G = randn(len(T_MANY), 3, seed=3)
    ys_d, g_d, st = grads(f, y0, T_MANY, G, params=params, gradient="direct", **kw)
    make, tol = GRADS[gname]
    ys, g, st2 = grads(f, y0, T_MANY, G, params=params, gradient=make(), **kw)
    assert st.accepted_steps == st2.accepted_steps
    if "options" not in kw:  # adaptive: outputs fell inside steps (landing takes more)
        opts = dict(exact_outputs=True)
        landed = neurode.solve(f, y0, T_MANY, options=opts, **kw).stats.accepted_steps
        assert st.accepted_steps < landed
    assert torch.equal(ys, ys_d)
    assert rel(g, g_d) <= tol, rel(g, g_d)


@pytest.mark.parametrize("cname", ["dopri5", "rk4-linear", "alf-fixed"])
def test_dense_direct_gradient_matches_finite_differences(cname):
    # fixed step decisions: finite differences of the computed solution (tight tolerances
    # make the adaptive grid stable under ±1e-6 perturbations of y0 for dopri5)
    kw = dict(DENSE_CASES[cname])
    if cname == "dopri5":
        kw["options"] = dict(first_step=0.1, max_step=0.3)
    f = MLP(dim=3, seed=1)
    y0 = randn(3, seed=2)
    G = randn(len(T_MANY), 3, seed=3)
    _, g, _ = grads(f, y0, T_MANY, G, params=[], gradient="checkpoint", **kw)
    eps = 1e-6
    fd = torch.zeros(3, dtype=DT)
    with torch.no_grad():
        for i in range(3):
            e = torch.zeros(3, dtype=DT)
            e[i] = eps
            lp = (neurode.odeint(f, y0 + e, T_MANY, **kw) * G).sum()
            lm = (neurode.odeint(f, y0 - e, T_MANY, **kw) * G).sum()
            fd[i] = (lp - lm) / (2 * eps)
    assert rel([g[0]], [fd]) < 1e-6


def test_adjoint_with_dense_outputs_converges_to_direct():
    f = MLP(dim=3, seed=1)
    params = list(f.parameters())
    y0 = randn(3, seed=2)
    G = randn(len(T_MANY), 3, seed=3)
    kw = dict(method="dopri5", rtol=1e-10, atol=1e-12)
    _, g_d, _ = grads(f, y0, T_MANY, G, params=params, gradient="direct", **kw)
    _, g_a, _ = grads(f, y0, T_MANY, G, params=params, gradient="adjoint", **kw)
    assert rel(g_a, g_d) < 1e-6


def test_dense_replay_with_dropout_is_faithful():
    # dropout inside f: every replay (and the interpolant's extra evaluation) draws what
    # the forward drew, so budgeted checkpointing equals keeping every state
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 3)
    ).to(DT)

    def f(t, y):
        return net(y)

    y0 = randn(3, seed=2)
    G = randn(len(T_MANY), 3, seed=3)
    out = {}
    for name, g in (("every", "checkpoint"), ("budget", neurode.Checkpoint(budget=2))):
        torch.manual_seed(5)
        out[name] = grads(
            f, y0, T_MANY, G, params=list(net.parameters()), gradient=g,
            method="rk4", options=dict(step_size=0.13, interp="cubic"),
        )  # fmt: skip
    assert torch.equal(out["every"][0], out["budget"][0])
    assert rel(out["budget"][1], out["every"][1]) <= 1e-10


def test_grid_constructor_gives_the_grid():
    # torchdiffeq's option: grid_constructor(func, y0, t) returns the grid; outputs
    # between its points are interpolated
    def constructor(func, y0, t):
        assert func is linear and torch.equal(y0, Y0)
        return torch.tensor([0.0, 0.1, 0.35, 0.6, 1.0], dtype=DT)

    ts = [0.0, 0.5, 1.0]
    sol = neurode.solve(linear, Y0, ts, method="rk4", options=dict(grid_constructor=constructor))
    assert sol.stats.accepted_steps == 4
    grid = neurode.odeint(linear, Y0, [0.0, 0.1, 0.35, 0.6, 1.0], method="rk4")
    assert torch.allclose(sol.ys[1], torch.lerp(grid[2], grid[3], 0.6), rtol=1e-14)
    assert torch.equal(sol.ys[-1], grid[-1])
    for bad in ([0.0, 0.5], [0.0, 0.7, 0.6, 1.0], [0.1, 1.0]):
        with pytest.raises(InvalidOptionError, match="grid_constructor"):
            neurode.odeint(
                linear,
                Y0,
                ts,
                method="rk4",
                options=dict(grid_constructor=lambda f, y, t, b=bad: b),
            )
    with pytest.raises(InvalidOptionError, match="not both"):
        neurode.odeint(
            linear, Y0, ts, method="rk4", options=dict(grid_constructor=constructor, step_size=0.1)
        )


@pytest.mark.parametrize("name", ["dopri5", "tsit5"])
def test_many_outputs_in_one_step_equal_one_at_a_time(name):
    # The polynomial interpolant evaluates several outputs of one step as one matrix
    # product; it must give each output's own y0 + h Σ bᵢ(θ) kᵢ, values and gradients.
    from neurode.solvers.base import Polynomial, combine
    from neurode.solvers.dense import dense_weights

    torch.manual_seed(0)
    w = dense_weights(name)
    s = len(w(0.5))
    y0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    ks = [torch.randn(3, 4, dtype=torch.float64, requires_grad=True) for _ in range(s)]
    thetas = [0.1, 0.35, 0.8, 1.0]
    many = Polynomial(w, 0.3, y0, ks, order=4).values(thetas)
    one = [combine(y0, 0.3, w(th), ks) for th in thetas]
    for a, b in zip(many, one):
        # a different summation order: a few ulps of O(1) values
        assert torch.allclose(a, b, rtol=0, atol=1e-14)
    cot = [torch.randn(3, 4, dtype=torch.float64) for _ in thetas]
    ga = torch.autograd.grad(many, [y0, *ks], cot, allow_unused=True)
    gb = torch.autograd.grad(one, [y0, *ks], cot, allow_unused=True)  # None: weight 0 (dopri5's k2)
    for a, b, k in zip(ga, gb, [y0, *ks]):
        a = torch.zeros_like(k) if a is None else a
        b = torch.zeros_like(k) if b is None else b
        assert torch.allclose(a, b, rtol=0, atol=1e-14)
