"""Every gradient method against independent references.

References: float64 backprop through the *same* discretisation (``gradient="direct"``:
autograd records every operation of the solver) and central finite differences on
a fixed grid. The checkpoint methods replay exactly the floating-point operations
of the original steps, so they must agree with direct to round-off; the
reversible method rebuilds states algebraically, so it agrees up to the
round-off of the reconstruction; the adjoint solves a different (continuous)
problem, so it agrees only as far as both discretisations are accurate.
"""

from __future__ import annotations

import pytest
import torch
from gradproblems import DT, MLP, grads, randn, rel
from test_schedule import forward_chain_revolve
from torch import nn

import neurode
from neurode.gradients.schedule import free_sweep_steps, minimal_forward_steps
from neurode.odeint import resolve_solver
from neurode.solvers.base import ReversibleSolver

# ---------------------------------------------------------------------------
# The agreement matrix
# ---------------------------------------------------------------------------

SOLVERS = {
    "euler": lambda: "euler",
    "midpoint": lambda: "midpoint",
    "heun": lambda: "heun",
    "rk4": lambda: "rk4",
    "bosh3": lambda: "bosh3",
    "dopri5": lambda: "dopri5",
    "tsit5": lambda: "tsit5",
    "alf": lambda: "alf",
    "alf-damped": lambda: neurode.ALF(damping=0.7),
    "rev-rk4": lambda: neurode.Reversible("rk4"),
    "rev-dopri5": lambda: neurode.Reversible("dopri5"),
}
GRADIENTS = {
    "checkpoint": lambda: "checkpoint",
    "budget2": lambda: neurode.Checkpoint(budget=2),
    "budget5": lambda: neurode.Checkpoint(budget=5),
    "reversible": lambda: "reversible",
}
TIMES = {"one": [0.0, 1.0], "several": [0.0, 0.3, 0.7, 1.0]}
# adaptive tolerances by the order of the error estimate: loose enough to be cheap,
# tight enough that every solver takes 6-60 steps (so budgets 2 and 5 both bind)
RTOL = {1: 1e-3, 2: 1e-5, 3: 1e-7, 4: 1e-7}

# Tolerances. Checkpointing replays the same float64 operations as direct backprop,
# so the two agree to a few ulps (observed ≤ 1e-15); 1e-10 leaves room for summation
# order only. The reversible method rebuilds each state by an algebraic inverse whose
# round-off (~1e-16 per step) is amplified by at most a few per step over ≤ 60 steps
# of a contracting-ish MLP (observed ≤ 1e-14); 1e-9 per the spec.
TOL = {"checkpoint": 1e-10, "budget2": 1e-10, "budget5": 1e-10, "reversible": 1e-9}


def _cases():
    for sname, make in SOLVERS.items():
        solver = resolve_solver(make())
        for grid in ("fixed", "adaptive"):
            if grid == "adaptive" and not solver.adaptive:
                continue
            for tname in TIMES:
                for gname in GRADIENTS:
                    if gname == "reversible" and not isinstance(solver, ReversibleSolver):
                        continue
                    marks = ()
                    if sname == "alf-damped" and gname == "reversible" and grid == "adaptive":
                        # The inverse of damped ALF divides the v-channel by 2η − 1 = 0.4
                        # every step, so its round-off grows like 2.5^N: fine on the
                        # 10-step grid, hopeless over the ~60 adaptive steps.
                        # test_reversible.py pins this growth law; here it must fail.
                        marks = (pytest.mark.xfail(strict=True, reason="2.5^N inverse growth"),)
                    yield pytest.param(sname, grid, tname, gname, marks=marks)


_REF: dict = {}


def _setup(sname, grid, tname):
    f = MLP(dim=3, hidden=12, seed=0)
    params = list(f.parameters())
    y0 = randn(2, 3, seed=1)
    t = TIMES[tname]
    G = randn(len(t), 2, 3, seed=2)
    if tname == "one":
        G[0] = 0.0  # the loss sees only the final output
    solver = resolve_solver(SOLVERS[sname]())
    if grid == "fixed":
        kw = dict(options={"step_size": 0.1})  # 10 steps, last of each interval shortened
    else:
        rtol = RTOL[solver.error_order]
        kw = dict(rtol=rtol, atol=rtol * 1e-2)
    return f, params, y0, t, G, kw


def _direct(sname, grid, tname):
    key = (sname, grid, tname)
    if key not in _REF:
        f, params, y0, t, G, kw = _setup(sname, grid, tname)
        _REF[key] = grads(
            f, y0, t, G, params=params, method=SOLVERS[sname](), gradient="direct", **kw
        )
    return _REF[key]


@pytest.mark.parametrize("sname, grid, tname, gname", list(_cases()))
def test_agrees_with_direct(sname, grid, tname, gname):
    f, params, y0, t, G, kw = _setup(sname, grid, tname)
    ys_ref, g_ref, st_ref = _direct(sname, grid, tname)
    ys, g, st = grads(
        f, y0, t, G, params=params, method=SOLVERS[sname](), gradient=GRADIENTS[gname](), **kw
    )
    # same accepted grid, same outputs (step decisions are made on identical values)
    assert st.accepted_steps == st_ref.accepted_steps
    assert st.accepted_steps >= (10 if grid == "fixed" else 6)
    torch.testing.assert_close(ys, ys_ref, rtol=1e-13, atol=1e-14)
    assert all(x is not None for x in g)
    err = rel(g, g_ref)
    assert err <= TOL[gname], f"{sname}/{grid}/{tname}/{gname}: relative error {err:.2e}"
    # and per block: the y0 gradient alone, the parameters alone
    assert rel(g[:1], g_ref[:1]) <= TOL[gname]
    assert rel(g[1:], g_ref[1:]) <= TOL[gname]


# ---------------------------------------------------------------------------
# The adjoint
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
@pytest.mark.parametrize("tname", list(TIMES))
def test_adjoint_tight_tolerances(method, tname):
    """On a smooth problem at rtol=1e-10 both the forward discretisation and the adjoint's
    backward solve are accurate to ~1e-10, so their gradients agree far below 1e-5
    (observed ~1e-11); 1e-5 is the spec's bound for "the adjoint is fine here"."""
    f = MLP(seed=0)
    params = list(f.parameters())
    y0 = randn(2, 3, seed=1)
    t = TIMES[tname]
    G = randn(len(t), 2, 3, seed=2)
    kw = dict(method=method, rtol=1e-10, atol=1e-12)
    _, g_ref, _ = grads(f, y0, t, G, params=params, gradient="direct", **kw)
    _, g, st = grads(f, y0, t, G, params=params, gradient="adjoint", **kw)
    assert rel(g, g_ref) <= 1e-5
    assert st.backward_steps > 0 and st.nfe_backward > 0


@pytest.mark.parametrize("sname", list(SOLVERS))
def test_adjoint_converges_to_direct_at_the_solvers_order(sname):
    """On a fixed grid the adjoint and direct backprop are two O(h^p) approximations of
    the true gradient, so their difference shrinks at least like h^p (it may shrink
    faster: heun, bosh3 and dopri5 show one order more). Halving h must divide it by
    at least 0.7·2^p; the 0.7 absorbs pre-asymptotic wobble (observed ratios are
    within 10% of 2^p or above)."""
    make = SOLVERS[sname]
    p = resolve_solver(make()).order
    f = MLP(seed=0)
    params = list(f.parameters())
    y0 = randn(2, 3, seed=1)
    t = TIMES["several"]
    G = randn(len(t), 2, 3, seed=2)
    errs = []
    for h in (0.1, 0.05):
        kw = dict(method=make(), options={"step_size": h})
        _, g_ref, _ = grads(f, y0, t, G, params=params, gradient="direct", **kw)
        _, g, _ = grads(f, y0, t, G, params=params, gradient="adjoint", **kw)
        errs.append(rel(g, g_ref))
    assert errs[0] < 0.2  # the same gradient, roughly, even on the coarse grid
    assert errs[1] > 0  # a different method: not accidentally the same computation
    assert errs[0] / errs[1] >= 0.7 * 2**p, f"{sname}: {errs}"


def test_adjoint_with_its_own_backward_solver():
    """Adjoint(method=, rtol=, atol=): forward rk4 on a fine fixed grid (global error
    ~1e-9), backward adaptive dopri5 at 1e-10: both near the true gradient."""
    f = MLP(seed=0)
    params = list(f.parameters())
    y0 = randn(2, 3, seed=1)
    t = TIMES["several"]
    G = randn(len(t), 2, 3, seed=2)
    kw = dict(method="rk4", options={"step_size": 0.01})
    _, g_ref, _ = grads(f, y0, t, G, params=params, gradient="direct", **kw)
    adj = neurode.Adjoint(method="dopri5", rtol=1e-10, atol=1e-12, options={})
    _, g, st = grads(f, y0, t, G, params=params, gradient=adj, **kw)
    assert rel(g, g_ref) <= 1e-6
    # an adaptive dopri5 backward takes far fewer steps than the forward's 100
    assert 0 < st.backward_steps < st.accepted_steps


def test_adjoint_seminorm_needs_no_more_evaluations():
    """Kidger et al.: leaving the a_θ channels (644 of them here, vs 2·12 for y and a)
    out of the error norm lets the backward solve take larger steps."""
    f = MLP(dim=4, hidden=64, seed=5)
    params = list(f.parameters())
    assert sum(q.numel() for q in params) > 500
    y0 = randn(3, 4, seed=6)
    t = [0.0, 1.0, 2.0]
    G = randn(3, 3, 4, seed=7)
    kw = dict(method="dopri5", rtol=1e-8, atol=1e-10)
    _, g_full, s_full = grads(f, y0, t, G, params=params, gradient=neurode.Adjoint(), **kw)
    _, g_semi, s_semi = grads(
        f, y0, t, G, params=params, gradient=neurode.Adjoint(seminorm=True), **kw
    )
    assert s_semi.nfe_backward <= s_full.nfe_backward
    assert s_semi.backward_steps <= s_full.backward_steps
    # both still approximate the same gradient
    _, g_ref, _ = grads(f, y0, t, G, params=params, gradient="direct", **kw)
    assert rel(g_full, g_ref) <= 1e-5
    assert rel(g_semi, g_ref) <= 1e-5


class ReluConv(nn.Module):
    """conv 3x3 → ReLU → conv 3x3 on 8 channels, weights scaled up so the dynamics expand."""

    def __init__(self, scale: float = 4.0, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1).to(DT)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1).to(DT)
        with torch.no_grad():
            for p in self.parameters():
                p.mul_(scale)

    def forward(self, t, y):
        return self.c2(torch.relu(self.c1(y)))


def test_adjoint_fails_on_relu_conv_with_coarse_steps():
    """ANODE's point: with coarse fixed steps the adjoint's reverse-time solve does not
    retrace the forward trajectory of a ReLU-conv field (non-smooth, expanding: ‖y(1)‖
    grows ~8×), so its gradient is wrong by O(1) while checkpointing stays exact."""
    f = ReluConv()
    params = list(f.parameters())
    y0 = randn(2, 8, 8, 8, seed=3)
    t = [0.0, 1.0]
    G = randn(2, 2, 8, 8, 8, seed=4)
    kw = dict(method="euler", options={"steps": 10})
    ys, g_ref, _ = grads(f, y0, t, G, params=params, gradient="direct", **kw)
    assert ys[-1].norm() > 3 * ys[0].norm()  # the dynamics really expand
    _, g_ckpt, _ = grads(f, y0, t, G, params=params, gradient="checkpoint", **kw)
    _, g_adj, _ = grads(f, y0, t, G, params=params, gradient="adjoint", **kw)
    e_ckpt, e_adj = rel(g_ckpt, g_ref), rel(g_adj, g_ref)
    assert e_ckpt <= 1e-10
    assert e_adj >= 100 * e_ckpt
    assert e_adj > 0.1, e_adj  # observed ~0.7: not a subtle difference


# ---------------------------------------------------------------------------
# Finite differences
# ---------------------------------------------------------------------------

FD_CASES = [
    ("rk4", "direct"),
    ("midpoint", "checkpoint"),
    ("dopri5", "budget2"),
    ("tsit5", "budget5"),
    ("alf", "reversible"),
    ("rev-rk4", "reversible"),
]


@pytest.mark.parametrize("sname, gname", FD_CASES)
def test_finite_differences(sname, gname):
    """Central differences of L(y0, θ) = Σ G·ys on a fixed grid (so the discretisation is
    the same function of the inputs). With ε = 1e-6 the truncation error is O(ε²) ~ 1e-12
    and the cancellation error ~1e-16·|L|/ε ~ 1e-10·|L|, so 1e-6 relative is generous
    yet far below any real gradient bug."""
    make = SOLVERS[sname]
    grad = GRADIENTS.get(gname, lambda: gname)()
    f = MLP(seed=0)
    params = list(f.parameters())
    y0 = randn(2, 3, seed=1)
    t = TIMES["several"]
    G = randn(len(t), 2, 3, seed=2)
    kw = dict(method=make(), options={"step_size": 0.1})
    _, g, _ = grads(f, y0, t, G, params=params, gradient=grad, **kw)

    def loss(y):
        with torch.no_grad():
            return float((neurode.odeint(f, y, t, **kw) * G).sum())

    eps = 1e-6
    fd, an = [], []
    for i in range(y0.numel()):
        e = torch.zeros_like(y0).view(-1)
        e[i] = eps
        e = e.view_as(y0)
        fd.append((loss(y0 + e) - loss(y0 - e)) / (2 * eps))
        an.append(float(g[0].view(-1)[i]))
    # the parameter gradient along random directions (and one coordinate of each tensor)
    dirs = [
        [randn(*q.shape, seed=100 + 10 * j + k) for k, q in enumerate(params)] for j in range(3)
    ]
    for k in range(len(params)):
        d = [torch.zeros_like(p) for p in params]
        d[k].view(-1)[0] = 1.0
        dirs.append(d)
    for d in dirs:
        vals = []
        for sign in (1, -1):
            with torch.no_grad():
                for q, dq in zip(params, d):
                    q.add_(dq, alpha=sign * eps)
            vals.append(loss(y0))
            with torch.no_grad():
                for q, dq in zip(params, d):
                    q.sub_(dq, alpha=sign * eps)
        fd.append((vals[0] - vals[1]) / (2 * eps))
        an.append(sum(float((gq * dq).sum()) for gq, dq in zip(g[1:], d)))
    fd_t, an_t = torch.tensor(fd), torch.tensor(an)
    assert rel([an_t], [fd_t]) <= 1e-6, (fd_t, an_t)


# ---------------------------------------------------------------------------
# Closures, tuple states, partial output gradients
# ---------------------------------------------------------------------------

EXACT_METHODS = [
    ("alf", "checkpoint", 1e-10),
    ("alf", "budget2", 1e-10),
    ("alf", "reversible", 1e-9),
    ("rev-rk4", "reversible", 1e-9),
    ("dopri5", "budget5", 1e-10),
]


def _grad(gname):
    return GRADIENTS.get(gname, lambda: gname)()


@pytest.mark.parametrize("sname, gname, tol", EXACT_METHODS)
def test_closure_with_explicit_params(sname, gname, tol):
    """Tensors hidden in a container are invisible to neurode; ``params=`` provides them."""
    g0 = torch.Generator().manual_seed(3)
    theta = {
        "W1": torch.randn(8, 3, generator=g0, dtype=DT) * 0.5,
        "W2": torch.randn(3, 8, generator=g0, dtype=DT) * 0.5,
        "b": torch.randn(8, generator=g0, dtype=DT) * 0.1,
    }
    for v in theta.values():
        v.requires_grad_(True)

    def f(t, y):
        return torch.tanh(y @ theta["W1"].T + theta["b"] * t) @ theta["W2"].T

    params = list(theta.values())
    y0 = randn(2, 3, seed=1)
    t = TIMES["several"]
    G = randn(len(t), 2, 3, seed=2)
    kw = dict(method=SOLVERS[sname](), options={"step_size": 0.1})
    _, g_ref, _ = grads(f, y0, t, G, params=params, explicit=True, gradient="direct", **kw)
    _, g, _ = grads(f, y0, t, G, params=params, explicit=True, gradient=_grad(gname), **kw)
    assert all(x is not None for x in g)
    assert rel(g, g_ref) <= tol


@pytest.mark.parametrize("gname", ["checkpoint", "reversible"])
def test_closure_capturing_tensors_directly_is_found(gname):
    """Tensors captured directly by the closure need no ``params=``."""
    W = (randn(3, 3, seed=4) * 0.5).requires_grad_(True)
    c = randn(3, seed=5).requires_grad_(True)

    def f(t, y):
        return torch.tanh(y @ W.T) + c * t

    y0 = randn(2, 3, seed=1)
    t = TIMES["several"]
    G = randn(len(t), 2, 3, seed=2)
    kw = dict(method="alf", options={"step_size": 0.1})
    _, g_ref, _ = grads(f, y0, t, G, params=[W, c], gradient="direct", **kw)
    y = y0.clone().requires_grad_(True)
    ys = neurode.odeint(f, y, t, gradient=gname, **kw)  # no params=
    g = torch.autograd.grad((ys * G).sum(), [y, W, c])
    assert rel(g, g_ref) <= 1e-9


class TupleField(nn.Module):
    """A state (p, q) of shapes (2,) and (2, 3), coupled both ways."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.w = nn.Parameter(torch.randn(3, generator=g, dtype=DT) * 0.5)
        self.W = nn.Parameter(torch.randn(3, 3, generator=g, dtype=DT) * 0.5)
        self.u = nn.Parameter(torch.randn(3, generator=g, dtype=DT) * 0.5)

    def forward(self, t, state):
        p, q = state
        dp = torch.tanh(q @ self.w)
        dq = torch.tanh(q @ self.W.T + p[:, None] * self.u) - 0.1 * t * q
        return dp, dq


TUPLE_CASES = [
    ("rk4", "checkpoint", 1e-10),
    ("dopri5", "budget2", 1e-10),
    ("alf", "reversible", 1e-9),
    ("rev-rk4", "reversible", 1e-9),
]


@pytest.mark.parametrize("sname, gname, tol", TUPLE_CASES)
def test_tuple_state(sname, gname, tol):
    f = TupleField()
    params = list(f.parameters())
    p0, q0 = randn(2, seed=8), randn(2, 3, seed=9)
    t = TIMES["several"]
    Gp, Gq = randn(len(t), 2, seed=10), randn(len(t), 2, 3, seed=11)
    kw = dict(method=SOLVERS[sname](), options={"step_size": 0.1})

    def run(gradient):
        p, q = p0.clone().requires_grad_(True), q0.clone().requires_grad_(True)
        ps, qs = neurode.odeint(f, (p, q), t, gradient=gradient, **kw)
        assert ps.shape == (len(t), 2) and qs.shape == (len(t), 2, 3)
        return torch.autograd.grad((ps * Gp).sum() + (qs * Gq).sum(), [p, q, *params])

    g_ref = run("direct")
    g = run(_grad(gname))
    assert rel(g, g_ref) <= tol
    assert rel(g[:2], g_ref[:2]) <= tol


def test_tuple_state_adjoint():
    f = TupleField()
    params = list(f.parameters())
    p0, q0 = randn(2, seed=8), randn(2, 3, seed=9)
    t = TIMES["several"]
    Gp, Gq = randn(len(t), 2, seed=10), randn(len(t), 2, 3, seed=11)
    kw = dict(method="dopri5", rtol=1e-10, atol=1e-12)

    def run(gradient):
        p, q = p0.clone().requires_grad_(True), q0.clone().requires_grad_(True)
        ps, qs = neurode.odeint(f, (p, q), t, gradient=gradient, **kw)
        return torch.autograd.grad((ps * Gp).sum() + (qs * Gq).sum(), [p, q, *params])

    assert rel(run("adjoint"), run("direct")) <= 1e-5


PARTIAL_METHODS = [
    ("rk4", "checkpoint"),
    ("dopri5", "budget2"),
    ("alf", "reversible"),
    ("rev-dopri5", "reversible"),
    ("tsit5", "adjoint"),
]


@pytest.mark.parametrize("sname, gname", PARTIAL_METHODS)
def test_gradient_on_one_middle_output(sname, gname):
    """Only ys[1] carries a gradient: backward must start from zero at the end, inject
    at output 1 and carry it to y0."""
    f = MLP(seed=0)
    params = list(f.parameters())
    y0 = randn(2, 3, seed=1)
    t = [0.0, 0.25, 0.5, 1.0]
    G = torch.zeros(len(t), 2, 3, dtype=DT)
    G[1] = randn(2, 3, seed=2)
    if gname == "adjoint":
        kw, tol = dict(method=SOLVERS[sname](), rtol=1e-10, atol=1e-12), 1e-5
    else:
        kw, tol = dict(method=SOLVERS[sname](), options={"step_size": 0.1}), 1e-9
    _, g_ref, _ = grads(f, y0, t, G, params=params, gradient="direct", **kw)
    _, g, _ = grads(f, y0, t, G, params=params, gradient=_grad(gname), **kw)
    assert g_ref[0].norm() > 0 and all(x.norm() > 0 for x in g_ref[1:])
    assert rel(g, g_ref) <= tol


@pytest.mark.parametrize(
    "sname, gname",
    [("rk4", "direct"), *PARTIAL_METHODS],
)
def test_gradient_on_first_output_only_flows_to_y0(sname, gname):
    """ys[0] is y0 itself: dL/dy0 = G0 exactly and the parameters get nothing."""
    f = MLP(seed=0)
    params = list(f.parameters())
    y0 = randn(2, 3, seed=1)
    t = [0.0, 0.5, 1.0]
    G = torch.zeros(len(t), 2, 3, dtype=DT)
    G[0] = randn(2, 3, seed=2)
    kw = dict(method=SOLVERS[sname](), options={"step_size": 0.1})
    if gname == "adjoint":
        kw = dict(method=SOLVERS[sname](), rtol=1e-8, atol=1e-10)
    _, g, _ = grads(f, y0, t, G, params=params, gradient=_grad(gname), **kw)
    assert torch.equal(g[0], G[0])
    for gq in g[1:]:
        assert gq is None or torch.count_nonzero(gq) == 0


# ---------------------------------------------------------------------------
# Resolution of gradient names, unsupported pairs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["rk4", "dopri5", "euler"])
def test_reversible_gradient_needs_a_reversible_solver(method):
    calls = []

    def f(t, y):
        calls.append(t)
        return -y

    y0 = torch.ones(3, dtype=DT, requires_grad=True)
    with pytest.raises(neurode.UnsupportedCombinationError) as info:
        neurode.odeint(f, y0, [0.0, 1.0], method=method, gradient="reversible")
    msg = str(info.value)
    assert "gradient='reversible'" in msg
    assert repr(method) in msg  # names the offending solver
    assert "method='alf'" in msg and f"neurode.Reversible('{method}')" in msg  # what to try
    assert "checkpoint" in msg
    assert calls == []  # raised at call time, before any work
    # the object form raises the same way
    with pytest.raises(neurode.UnsupportedCombinationError):
        neurode.odeint(f, y0, [0.0, 1.0], method=method, gradient=neurode.ReversibleGradient())


@pytest.mark.parametrize(
    "name, obj, method, kw",
    [
        ("direct", neurode.Direct(), "alf", {"options": {"step_size": 0.1}}),
        ("checkpoint", neurode.Checkpoint(), "alf", {"options": {"step_size": 0.1}}),
        ("reversible", neurode.ReversibleGradient(), "alf", {"options": {"step_size": 0.1}}),
        ("adjoint", neurode.Adjoint(), "dopri5", {"rtol": 1e-6, "atol": 1e-8}),
        ("CheckPoint", neurode.Checkpoint(budget=None), "dopri5", {"rtol": 1e-6, "atol": 1e-8}),
    ],
)
def test_string_and_object_forms_are_identical(name, obj, method, kw):
    f = MLP(seed=0)
    params = list(f.parameters())
    y0 = randn(2, 3, seed=1)
    t = TIMES["several"]
    G = randn(len(t), 2, 3, seed=2)
    ys_s, g_s, st_s = grads(f, y0, t, G, params=params, method=method, gradient=name, **kw)
    ys_o, g_o, st_o = grads(f, y0, t, G, params=params, method=method, gradient=obj, **kw)
    assert torch.equal(ys_s, ys_o)
    for a, b in zip(g_s, g_o):
        assert torch.equal(a, b)
    assert st_s.as_dict() == st_o.as_dict()


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, gradient",
    [
        ("rk4", "checkpoint"),
        ("rk4", neurode.Checkpoint(budget=2)),
        ("dopri5", "adjoint"),
        ("alf", "reversible"),
        (neurode.Reversible("rk4"), "reversible"),
    ],
    ids=["checkpoint", "budget2", "adjoint", "reversible-alf", "reversible-rk4"],
)
def test_backward_evaluations_are_counted(method, gradient):
    f = MLP(seed=0)
    y0 = randn(2, 3, seed=1).requires_grad_(True)
    sol = neurode.solve(f, y0, [0.0, 1.0], method=method, gradient=gradient, options={"steps": 8})
    assert sol.stats.nfe_forward > 0
    assert sol.stats.nfe_backward == 0  # nothing happens in backward until backward
    sol.ys[-1].sum().backward()
    assert sol.stats.nfe_backward > 0
    assert y0.grad is not None and all(q.grad is not None for q in f.parameters())


def test_direct_counts_no_backward_evaluations():
    f = MLP(seed=0)
    y0 = randn(2, 3, seed=1).requires_grad_(True)
    sol = neurode.solve(f, y0, [0.0, 1.0], method="rk4", options={"steps": 5})
    nfe = sol.stats.nfe_forward
    sol.ys[-1].sum().backward()
    assert sol.stats.nfe_backward == 0 and sol.stats.nfe_forward == nfe == 20


@pytest.mark.parametrize("n", [1, 2, 7, 20, 33])
@pytest.mark.parametrize("budget", [1, 2, 3, 5])
def test_budget_recompute_count_on_a_fixed_grid(n, budget):
    """For a fixed grid of N steps the forward sweep stores forward_chain(N, c), the
    chain that minimises recomputation after the (free) forward sweep; the backward
    recomputes exactly free_sweep_steps(N, c) steps (the brute-force optimum, see
    test_schedule.py). rk4 has no FSAL stage, so backward evaluates f 4× per
    replayed step plus 4× per recomputed step."""
    f = MLP(seed=0)
    y0 = randn(2, 3, seed=1).requires_grad_(True)
    # several output times: the count is over all steps, not per interval
    t = [0.0, 0.5, 1.0] if n % 2 == 0 else [0.0, 1.0]
    steps = n // 2 if n % 2 == 0 else n
    sol = neurode.solve(
        f, y0, t, method="rk4", options={"steps": steps}, gradient=neurode.Checkpoint(budget)
    )
    assert sol.stats.accepted_steps == n
    sol.ys.sum().backward()
    expected = free_sweep_steps(n, budget)
    assert expected <= minimal_forward_steps(n, budget) - forward_chain_revolve(n, budget)[-1]
    assert sol.stats.recomputed_steps == expected
    assert sol.stats.nfe_backward == 4 * (n + expected)


def test_checkpoint_every_step_recomputes_nothing():
    f = MLP(seed=0)
    y0 = randn(2, 3, seed=1).requires_grad_(True)
    sol = neurode.solve(
        f, y0, [0.0, 1.0], method="alf", options={"steps": 12}, gradient="checkpoint"
    )
    sol.ys.sum().backward()
    assert sol.stats.recomputed_steps == 0
    # one replayed evaluation per ALF step, plus the init's v0 = f(t0, y0)
    assert sol.stats.nfe_backward == 12 + 1


@pytest.mark.parametrize("budget", [1, 2, 3, 6])
def test_budget_recompute_on_adaptive_steps(budget):
    """Adaptive: online thinning. Recompute ≤ the naive N(N−1)/2, and the backward
    evaluation count is consistent with it (ALF: one evaluation per step)."""
    f = MLP(seed=0)
    y0 = randn(2, 3, seed=1).requires_grad_(True)
    sol = neurode.solve(
        f, y0, [0.0, 1.0], method="alf", rtol=1e-3, atol=1e-5, gradient=neurode.Checkpoint(budget)
    )
    sol.ys.sum().backward()
    n = sol.stats.accepted_steps
    assert n > 2 * budget
    assert 0 < sol.stats.recomputed_steps <= n * (n - 1) // 2
    assert sol.stats.nfe_backward == n + sol.stats.recomputed_steps + 1
