"""Edge cases of the gradient methods, each against direct backprop through the same
discretisation (checkpoint: 1e-10 relative, reversible: 1e-9) or an independent
reference. The agreement matrix itself lives in test_gradients.py."""

from __future__ import annotations

import pytest
import torch
from gradproblems import DT, MLP, randn, rel
from torch import nn

import neurode
from neurode.errors import FunctionOutputError, UnsupportedCombinationError
from neurode.nn import ODEBlock

FIXED = {"step_size": 0.1}
CK, REV = 1e-10, 1e-9


def _run(f, y0, t, G, params, gradient, **kw):
    """Gradients of sum(ys * G) w.r.t. y0 (if it requires grad) and params."""
    sol = neurode.solve(f, y0, t, gradient=gradient, **kw)
    inputs = ([y0] if y0.requires_grad else []) + list(params)
    g = torch.autograd.grad((sol.ys * G).sum(), inputs, allow_unused=True)
    return sol.ys.detach(), list(g)


def _compare(f, y0, t, G, gradient, tol, **kw):
    params = list(f.parameters())
    ys_ref, g_ref = _run(f, y0.clone().requires_grad_(True), t, G, params, "direct", **kw)
    ys, g = _run(f, y0.clone().requires_grad_(True), t, G, params, gradient, **kw)
    assert torch.equal(ys, ys_ref)
    assert all(x is not None and x.norm() > 0 for x in g_ref)
    assert rel(g, g_ref) <= tol, rel(g, g_ref)


# ---------------------------------------------------------------------------
# Decreasing time grids
# ---------------------------------------------------------------------------

DECREASING = [
    ("rk4", FIXED, "checkpoint", CK),
    ("dopri5", {}, "checkpoint", CK),
    ("rk4", FIXED, neurode.Checkpoint(budget=2), CK),
    ("dopri5", {}, neurode.Checkpoint(budget=2), CK),
    ("tsit5", {}, neurode.Checkpoint(budget=1), CK),
    ("alf", FIXED, "reversible", REV),
    ("alf", {}, "reversible", REV),
    (neurode.Reversible("rk4"), FIXED, "reversible", REV),
    (neurode.Reversible("dopri5"), {}, "reversible", REV),
]


@pytest.mark.parametrize("method, options, gradient, tol", DECREASING)
def test_decreasing_times(method, options, gradient, tol):
    f = MLP(seed=3)
    t = [1.0, 0.7, 0.35, 0.0]
    G = randn(len(t), 2, 3, seed=4)
    kw = dict(method=method, options=options, rtol=1e-6, atol=1e-8)
    _compare(f, randn(2, 3, seed=5), t, G, gradient, tol, **kw)


def test_decreasing_times_adjoint():
    f = MLP(seed=3)
    params = list(f.parameters())
    t = [1.0, 0.7, 0.35, 0.0]
    G = randn(len(t), 2, 3, seed=4)
    y0 = randn(2, 3, seed=5)
    kw = dict(method="dopri5", rtol=1e-10, atol=1e-12)
    _, g_ref = _run(f, y0.clone().requires_grad_(True), t, G, params, "direct", **kw)
    _, g = _run(f, y0.clone().requires_grad_(True), t, G, params, "adjoint", **kw)
    assert rel(g, g_ref) <= 1e-6
    # and the adjoint of the backward-in-time solve is not the forward-in-time one
    _, g_fwd = _run(f, y0.clone().requires_grad_(True), t[::-1], G, params, "adjoint", **kw)
    assert rel(g_fwd, g_ref) > 1e-2


# ---------------------------------------------------------------------------
# Tuple states
# ---------------------------------------------------------------------------


class Coupled(nn.Module):
    """(p, q) with p of shape (2,), q of shape (2, 3), coupled both ways."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(randn(2, 2, seed=20) * 0.5)
        self.b = nn.Parameter(randn(3, seed=21) * 0.5)

    def forward(self, t, y):
        p, q = y
        dp = torch.tanh(self.a @ p + q.sum(1))
        dq = torch.sin(q * self.b + p[:, None]) * (1 + t)
        return dp, dq


TUPLE_METHODS = [
    ("rk4", FIXED, "checkpoint", CK),
    ("dopri5", {}, neurode.Checkpoint(budget=3), CK),
    ("alf", FIXED, "reversible", REV),
    (neurode.Reversible("rk4"), FIXED, "reversible", REV),
    ("dopri5", {"rtol": 1e-10, "atol": 1e-12}, "adjoint", 1e-6),
]


@pytest.mark.parametrize("method, options, gradient, tol", TUPLE_METHODS)
@pytest.mark.parametrize("which", ["p_only", "q_only"])
def test_tuple_state_gradient_on_one_element(method, options, gradient, tol, which):
    """Loss on one element only; only that element of y0 requires grad. Gradients
    still flow through the coupling to the parameters."""
    f = Coupled()
    params = list(f.parameters())
    t = [0.0, 0.4, 1.0]
    options = dict(options)
    tols = {k: options.pop(k) for k in ("rtol", "atol") if k in options}
    kw = dict(method=method, options=options, rtol=1e-6, atol=1e-8)
    kw.update(tols)
    Gp, Gq = randn(len(t), 2, seed=22), randn(len(t), 2, 3, seed=23)

    def run(gradient):
        p, q = randn(2, seed=24), randn(2, 3, seed=25)
        leaf = p if which == "p_only" else q
        leaf.requires_grad_(True)
        ps, qs = neurode.odeint(f, (p, q), t, gradient=gradient, **kw)
        loss = (ps * Gp).sum() if which == "p_only" else (qs * Gq).sum()
        return torch.autograd.grad(loss, [leaf, *params])

    g_ref, g = run("direct"), run(gradient)
    assert all(x.norm() > 0 for x in g_ref)
    assert rel(g, g_ref) <= tol, rel(g, g_ref)


# ---------------------------------------------------------------------------
# Parameter dtype differing from the state's
# ---------------------------------------------------------------------------


class Float32Params(nn.Module):
    """float32 parameters, float64 state: f casts its parameters to the state's dtype."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(randn(3, 3, seed=30).float() * 0.5)
        self.c = nn.Parameter(randn(3, seed=31).float())

    def forward(self, t, y):
        return torch.tanh(y @ self.w.to(y.dtype).T + t * self.c.to(y.dtype))


@pytest.mark.parametrize(
    "method, options, gradient, tol",
    [
        ("rk4", FIXED, "checkpoint", CK),
        ("dopri5", {}, neurode.Checkpoint(budget=2), CK),
        ("alf", FIXED, "reversible", REV),
        ("dopri5", {}, neurode.Adjoint(rtol=1e-11, atol=1e-13), 1e-6),
    ],
)
def test_float32_params_float64_state(method, options, gradient, tol):
    f = Float32Params()
    params = list(f.parameters())
    t = [0.0, 0.5, 1.0]
    G = randn(len(t), 2, 3, seed=32)
    kw = dict(method=method, options=options, rtol=1e-8, atol=1e-10)
    y0 = randn(2, 3, seed=33)
    _, g_ref = _run(f, y0.clone().requires_grad_(True), t, G, params, "direct", **kw)
    _, g = _run(f, y0.clone().requires_grad_(True), t, G, params, gradient, **kw)
    assert g[0].dtype == DT and all(x.dtype == torch.float32 for x in g[1:])
    # params' gradients are rounded to float32 by both methods: compare at float32 level
    assert rel(g[:1], g_ref[:1]) <= tol
    assert rel(g[1:], g_ref[1:]) <= max(tol, 1e-6)


def test_promoting_params_give_a_clear_dtype_error():
    """float64 params in f with a float32 state promote dy/dt to float64: a clear error,
    not a silent upcast of the state."""
    w = torch.ones(3, dtype=DT, requires_grad=True)
    y0 = torch.ones(3, dtype=torch.float32, requires_grad=True)
    for gradient in ("direct", "checkpoint", "adjoint"):
        with pytest.raises(FunctionOutputError, match="dtype"):
            neurode.odeint(lambda t, y: w * y, y0, [0.0, 1.0], method="rk4", gradient=gradient)


# ---------------------------------------------------------------------------
# Which inputs require grad; params given twice
# ---------------------------------------------------------------------------

ALL_EXACT = [
    ("rk4", FIXED, "checkpoint", CK),
    ("dopri5", {}, neurode.Checkpoint(budget=2), CK),
    ("alf", FIXED, "reversible", REV),
    (neurode.Reversible("rk4"), FIXED, "reversible", REV),
]


@pytest.mark.parametrize("method, options, gradient, tol", ALL_EXACT)
def test_y0_without_grad_params_with_grad(method, options, gradient, tol):
    f = MLP(seed=6)
    params = list(f.parameters())
    t = [0.0, 0.5, 1.0]
    G = randn(len(t), 2, 3, seed=7)
    kw = dict(method=method, options=options, rtol=1e-6, atol=1e-8)
    y0 = randn(2, 3, seed=8)
    _, g_ref = _run(f, y0, t, G, params, "direct", **kw)
    _, g = _run(f, y0, t, G, params, gradient, **kw)
    assert rel(g, g_ref) <= tol


@pytest.mark.parametrize("method, options, gradient, tol", ALL_EXACT)
def test_y0_with_grad_params_frozen(method, options, gradient, tol):
    f = MLP(seed=6).requires_grad_(False)
    t = [0.0, 0.5, 1.0]
    G = randn(len(t), 2, 3, seed=7)
    kw = dict(method=method, options=options, rtol=1e-6, atol=1e-8)
    y0 = randn(2, 3, seed=8)
    _, g_ref = _run(f, y0.clone().requires_grad_(True), t, G, [], "direct", **kw)
    _, g = _run(f, y0.clone().requires_grad_(True), t, G, [], gradient, **kw)
    assert rel(g, g_ref) <= tol


@pytest.mark.parametrize("gradient", ["checkpoint", "reversible", "adjoint"])
def test_params_from_module_and_params_are_not_double_counted(gradient):
    f = MLP(seed=9)
    params = list(f.parameters())
    t = [0.0, 1.0]
    G = randn(len(t), 2, 3, seed=10)
    kw = dict(method="alf", options=FIXED)
    y0 = randn(2, 3, seed=11)
    sol_ref = neurode.solve(f, y0, t, gradient=gradient, **kw)
    g_ref = torch.autograd.grad((sol_ref.ys * G).sum(), params)
    sol = neurode.solve(f, y0, t, gradient=gradient, params=params + params[:2], **kw)
    g = torch.autograd.grad((sol.ys * G).sum(), params)
    assert rel(g, g_ref) <= 1e-14


# ---------------------------------------------------------------------------
# Outputs one step apart, online thinning, gradients on intermediate outputs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, gradient, tol",
    [
        ("rk4", "checkpoint", CK),
        ("rk4", neurode.Checkpoint(budget=1), CK),
        ("rk4", neurode.Checkpoint(budget=3), CK),
        ("alf", "reversible", REV),
    ],
)
def test_an_output_after_every_step(method, gradient, tol):
    """steps=1: one step per output interval, so every step ends at an output."""
    f = MLP(seed=12)
    t = torch.linspace(0, 1, 11, dtype=DT)
    G = randn(len(t), 2, 3, seed=13)
    G[-1] = 0  # nothing on the final output
    kw = dict(method=method, options={"steps": 1})
    sol = neurode.solve(f, randn(2, 3, seed=14), t, **kw)
    assert sol.stats.accepted_steps == len(t) - 1
    _compare(f, randn(2, 3, seed=14), t, G, gradient, tol, **kw)


@pytest.mark.parametrize("budget", [1, 3])
@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_online_thinning_gradients_on_intermediate_outputs(budget, method):
    f = MLP(seed=15, scale=2.0)
    t = [0.0, 0.1, 0.2, 0.5, 0.55, 1.0]
    G = randn(len(t), 2, 3, seed=16)
    G[0] = G[-1] = 0  # only intermediate outputs carry a gradient
    kw = dict(method=method, rtol=1e-7, atol=1e-9)
    n = neurode.solve(f, randn(2, 3, seed=17), t, **kw).stats.accepted_steps
    assert n > 3 * budget  # thinning has to drop states
    _compare(f, randn(2, 3, seed=17), t, G, neurode.Checkpoint(budget=budget), CK, **kw)


# ---------------------------------------------------------------------------
# ODEBlock(recompute=True)
# ---------------------------------------------------------------------------


def _block_grads(blocks, x0):
    x = x0.clone().requires_grad_(True)
    net = nn.Sequential(*blocks)
    params = list(net.parameters())
    loss = (net(x) ** 2).sum()
    return torch.autograd.grad(loss, [x, *params])


@pytest.mark.parametrize(
    "method, gradient, tol",
    [("dopri5", "adjoint", 1e-14), ("alf", "reversible", 1e-14), ("rk4", "checkpoint", 1e-14)],
)
def test_odeblock_recompute_matches_plain_block(method, gradient, tol):
    """Recompute re-runs the same gradient method in backward: the same numbers."""
    func = MLP(seed=18)
    kw = dict(method=method, gradient=gradient)
    if method != "dopri5":
        kw["steps"] = 8
    x0 = randn(2, 3, seed=19)
    g_ref = _block_grads([ODEBlock(func, **kw)], x0)
    g = _block_grads([ODEBlock(func, recompute=True, **kw)], x0)
    assert rel(g, g_ref) <= tol


def test_nested_recompute_blocks_match_direct():
    f1, f2 = MLP(seed=40), MLP(seed=41)
    x0 = randn(2, 3, seed=42)
    ref = [
        ODEBlock(f1, method="rk4", steps=6, gradient="direct"),
        ODEBlock(f2, method="alf", steps=6, gradient="direct"),
    ]
    rec = [
        ODEBlock(f1, method="rk4", steps=6, gradient="checkpoint", recompute=True),
        ODEBlock(f2, method="alf", steps=6, gradient="reversible", recompute=True),
    ]
    g_ref, g = _block_grads(ref, x0), _block_grads(rec, x0)
    assert rel(g, g_ref) <= REV


def test_recompute_block_can_backward_twice():
    """The block keeps its input, so a second backward (retain_graph) rebuilds again."""
    func = MLP(seed=43)
    block = ODEBlock(func, method="rk4", steps=4, recompute=True)
    x = randn(2, 3, seed=44).requires_grad_(True)
    y = block(x).sum()
    g1 = torch.autograd.grad(y, [x], retain_graph=True)[0]
    g2 = torch.autograd.grad(y, [x])[0]
    assert torch.equal(g1, g2)


# ---------------------------------------------------------------------------
# Backward twice through one solve
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("gradient", ["checkpoint", neurode.Checkpoint(budget=2), "reversible"])
def test_second_backward_raises_clearly(gradient):
    """Non-direct methods free their record after the first backward (memory is the
    point of them); a second backward raises instead of returning wrong numbers."""
    f = MLP(seed=45)
    y0 = randn(2, 3, seed=46).requires_grad_(True)
    ys = neurode.odeint(f, y0, [0.0, 1.0], method="alf", options=FIXED, gradient=gradient)
    loss = ys.sum()
    loss.backward(retain_graph=True)
    with pytest.raises(neurode.RepeatedBackwardError, match="second time"):
        loss.backward()


def test_second_backward_adjoint_works():
    # the adjoint keeps only its outputs, so a retained graph can be backpropagated
    # again (torch.autograd.gradcheck does so), as with torchdiffeq's odeint_adjoint
    f = MLP(seed=45)
    y0 = randn(2, 3, seed=46).requires_grad_(True)
    ys = neurode.odeint(f, y0, [0.0, 1.0], method="alf", options=FIXED, gradient="adjoint")
    g1 = torch.autograd.grad(ys.sum(), [y0, *f.parameters()], retain_graph=True)
    g2 = torch.autograd.grad(ys.sum(), [y0, *f.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


def test_second_backward_direct_works():
    f = MLP(seed=45)
    y0 = randn(2, 3, seed=46).requires_grad_(True)
    ys = neurode.odeint(f, y0, [0.0, 1.0], method="alf", options=FIXED)
    g1 = torch.autograd.grad(ys.sum(), [y0], retain_graph=True)[0]
    g2 = torch.autograd.grad(ys.sum(), [y0])[0]
    assert torch.equal(g1, g2)


# ---------------------------------------------------------------------------
# Unsupported pairs still raise without a graph
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_reversible_with_plain_solver_raises_under_no_grad(method):
    with torch.no_grad(), pytest.raises(UnsupportedCombinationError, match="reversible"):
        neurode.odeint(
            lambda t, y: -y,
            torch.ones(2, dtype=DT),
            [0.0, 1.0],
            method=method,
            gradient="reversible",
        )


# ---------------------------------------------------------------------------
# Vector fields that ignore y (and params)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["alf", "rk4"])
@pytest.mark.parametrize("gradient", ["checkpoint", "reversible", "adjoint"])
@pytest.mark.parametrize("uses_params", [True, False])
def test_field_independent_of_y(method, gradient, uses_params):
    """f(t, y) = θ·t or f(t, y) = t: dL/dy0 is the identity. Used to crash the fused ALF
    backward step (None + tensor) and the adjoint (grad of a graph-less output)."""
    if gradient == "reversible" and method == "rk4":
        method = neurode.Reversible("rk4")
    theta = randn(3, seed=50).requires_grad_(True)
    if uses_params:

        def f(t, y):
            return theta * t

        params = [theta]
    else:

        def f(t, y):
            return torch.zeros_like(y) + t

        params = []
    t = [0.0, 0.5, 1.0]
    G = randn(len(t), 3, seed=51)
    y0 = randn(3, seed=52)
    kw = dict(method=method, options={"steps": 4})
    _, g_ref = _run(f, y0.clone().requires_grad_(True), t, G, params, "direct", **kw)
    _, g = _run(f, y0.clone().requires_grad_(True), t, G, params, gradient, **kw)
    assert len(g) == 1 + len(params)
    assert torch.allclose(g_ref[0], G.sum(0), rtol=0, atol=1e-14)
    assert rel(g, g_ref) <= 1e-12


# ---------------------------------------------------------------------------
# reconstruction_error
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["alf", neurode.Reversible("rk4")])
def test_reconstruction_error_tuple_state_decreasing_t(method):
    f = Coupled()
    p, q = randn(2, seed=60), randn(2, 3, seed=61)
    t = [1.0, 0.5, 0.0]
    r = neurode.reconstruction_error(f, (p, q), t, method=method, options={"steps": 20})
    assert r.steps == 20
    assert r.inverse is not None and r.inverse < 1e-12
    assert r.backward_integration < 1e-2

    # the same numbers as the flat state with the same dynamics
    def flat(t, y):
        dp, dq = f(t, (y[:2], y[2:].view(2, 3)))
        return torch.cat([dp, dq.reshape(-1)])

    r_flat = neurode.reconstruction_error(
        flat, torch.cat([p, q.reshape(-1)]), t, method=method, options={"steps": 20}
    )
    assert r.inverse == pytest.approx(r_flat.inverse, abs=1e-15)
    assert r.backward_integration == pytest.approx(r_flat.backward_integration, rel=1e-12)
    assert r.growth == pytest.approx(r_flat.growth, rel=1e-14)
