"""Reversible solvers: exact inverses, stability, and what the reversible gradient costs.

ALF (MALI) and the reversible RK wrapper (McCallum & Foster) undo every step in
closed form, so the reversible gradient needs no stored states. These tests check
the inverse over many steps, the damping/coupling trade-off (bounded forward on
dissipative problems vs. growth of round-off in the inverse), the evaluation count
of the backward pass and agreement with direct backprop.
"""

from __future__ import annotations

import math

import pytest
import torch
from gradproblems import DT, MLP, grads, randn, rel

import neurode


def _internal(f):
    """The user's f(t: tensor, y) as solvers see it: f(t: float, y)."""
    return lambda t, y: f(torch.tensor(t, dtype=DT), y)


def _round_trip(solver, f, y0, n, t1=1.0):
    """n forward steps on a uniform grid, then n inverses; returns (x0, x0_rebuilt, x_n)."""
    g = _internal(f)
    h = t1 / n
    with torch.no_grad():
        x0 = solver.init(g, 0.0, y0)
        x = x0
        for i in range(n):
            x, _ = solver.step(g, i * h, h, x)
        xn = x
        for i in reversed(range(n)):
            x = solver.inverse(g, i * h, h, x)
    return x0, x, xn


def _relerr(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("solver", [neurode.ALF(), neurode.Reversible("rk4")], ids=lambda s: s.name)
def test_round_trip_1000_steps(solver):
    """Undoing 1000 steps of a smooth tanh MLP rebuilds y0 (and ALF's v0 / the wrapper's z0)
    to round-off: the inverse of undamped ALF is the same map run backwards, and the
    wrapper's inverse divides by λ = 0.999 per step, (1/0.999)^1000 ≈ e, so round-off
    (~1e-16 per step, ~1e-15 observed in total) stays far below 1e-10."""
    f = MLP(seed=0)
    y0 = randn(2, 3, seed=1)
    x0, back, xn = _round_trip(solver, f, y0, 1000)
    assert _relerr(xn[0], y0) > 0.1  # the solve went somewhere
    for a, b in zip(back, x0):
        assert _relerr(a, b) <= 1e-10


def test_public_reconstruction_diagnostic():
    """neurode.reconstruction_error reports the same inverse round-trip, and shows the
    backward integration (what the adjoint relies on) is far less exact."""
    f = MLP(seed=0)
    y0 = randn(2, 3, seed=1)
    r = neurode.reconstruction_error(f, y0, [0.0, 1.0], method="alf", options={"steps": 1000})
    assert r.steps == 1000
    assert r.inverse <= 1e-10
    r = neurode.reconstruction_error(
        f, y0, [0.0, 1.0], method=neurode.Reversible("rk4"), options={"steps": 100}
    )
    assert r.inverse <= 1e-10
    r = neurode.reconstruction_error(f, y0, [0.0, 1.0], method="alf", options={"steps": 10})
    assert r.inverse <= 1e-12 < 1e-6 < r.backward_integration


# ---------------------------------------------------------------------------
# Damping and coupling: bounded forward on dissipative problems...
# ---------------------------------------------------------------------------

K, H, N = 5.0, 0.06, 200


def _decay(method):
    """dy/dt = −k y, k = 5, h = 0.06 fixed, 200 steps (to t = 12); returns |y| at every step."""
    y0 = torch.tensor([1.0], dtype=DT)
    t = torch.arange(N + 1, dtype=DT) * H
    ys = neurode.odeint(lambda t, y: -K * y, y0, t, method=method, options={"steps": 1})
    return ys.abs().squeeze(-1)


def test_damping_and_coupling_keep_dissipative_solves_bounded():
    """On y' = −k y with z = −kh = −0.3, one step of each scheme is a 2×2 linear map.

    - Undamped ALF (η = 1): v' = 2u − v reflects v, the map has eigenvalues with
      product −1 (|μ| ≈ 0.74 and 1.34): the parasitic v-mode grows 1.34× per step,
      ~1e25 over 200 steps, while the true solution decays to e^{−60}.
    - Damped ALF (η = 0.7): v' = (1 − 2η) v + 2η u; eigenvalues 0.73 and 0.55, bounded.
    - Reversible RK (λ = 0.5): det = λ, eigenvalues R(z) ≈ e^{−0.3} and ≈ λ/R(z) ≈ 0.67.

    (The brief's k·h = 1.5 does not separate them: damped ALF's eigenvalue is 1.73 there
    and the wrapper needs λ < ~0.2; at k·h = 0.3 the separation is clean.)
    """
    undamped = _decay("alf")
    assert undamped[-1] > 1e20
    assert all(undamped[i + 1] > undamped[i] for i in range(150, N))  # steady growth
    for method in (neurode.ALF(damping=0.7), neurode.Reversible("rk4", coupling=0.5)):
        ys = _decay(method)
        assert torch.isfinite(ys).all()
        assert ys.max() <= 1.0 + 1e-12, method.name  # never above |y0|
        assert ys[-1] < 1e-12, method.name  # and it decays (exact: e^{-60} ≈ 1e-26)


def test_default_coupling_is_not_enough_for_this_step():
    """The wrapper's parasitic eigenvalue is ≈ λ·e^{kh}: it stays below 1 only for
    kh < ln(1/λ) ≈ 0.001 at the default λ = 0.999. The stability it buys on dissipative
    problems needs a coupling well below 1 (or small steps)."""
    ys = _decay(neurode.Reversible("rk4"))
    assert ys[-1] > 1e10
    mu = 0.999 / (1 - K * H + (K * H) ** 2 / 2 - (K * H) ** 3 / 6 + (K * H) ** 4 / 24)
    growth = (ys[-1] / ys[-51]) ** (1 / 50)
    assert growth == pytest.approx(mu, rel=1e-2)


# ---------------------------------------------------------------------------
# ...and the price: the inverse expands round-off at the inverse rate
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "solver, rate",
    [(neurode.ALF(damping=0.7), 1 / 0.4), (neurode.Reversible("rk4", coupling=0.5), 2.0)],
    ids=["alf-0.7", "rev-rk4-0.5"],
)
def test_damped_inverses_amplify_round_off(solver, rate):
    """A map that contracts its parasitic mode (by 1 − 2η for ALF, by λ for the wrapper)
    has an inverse that expands round-off in that mode by the reciprocal every step:
    the reconstruction error grows like rate^N. Over 20 extra steps the error must grow
    by rate^20 (1e6–1e8) within a factor 100 (round-off seeds it randomly). Hence the
    reversible gradient with damping/coupling < 1 is exact only for few steps
    (test_gradients.py marks the adaptive damped-ALF case xfail for this reason)."""
    f = MLP(seed=0)
    y0 = randn(2, 3, seed=1)
    errs = []
    for n in (10, 30):
        x0, back, _ = _round_trip(solver, f, y0, n)
        errs.append(_relerr(back[0], x0[0]))
    assert errs[0] <= 1e-10
    ratio = errs[1] / errs[0]
    assert rate**20 / 100 <= ratio <= rate**20 * 100, (errs, rate**20)


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("damping", [0.5, 0.0, -0.3, 1.5, math.nan])
def test_alf_rejects_bad_damping(damping):
    with pytest.raises(neurode.InvalidOptionError) as info:
        neurode.ALF(damping=damping)
    assert "damping" in str(info.value)
    if damping == 0.5:
        assert "2η − 1" in str(info.value)  # says why 1/2 is excluded


@pytest.mark.parametrize("coupling", [0.0, -0.5, 1.5])
def test_reversible_rejects_bad_coupling(coupling):
    with pytest.raises(neurode.InvalidOptionError):
        neurode.Reversible("rk4", coupling=coupling)


# ---------------------------------------------------------------------------
# The reversible gradient
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "adaptive"])
def test_alf_reversible_backward_evaluates_once_per_step(adaptive):
    """ALF's backward_step evaluates f once per accepted step (the inverse and the step's
    VJP share u = f(t + h/2, y_m)), and init_vjp re-evaluates v0 = f(t0, y0) once with its
    graph: nfe_backward = N + 1 exactly. Rejected adaptive attempts are never replayed."""
    f = MLP(seed=0)
    y0 = randn(2, 3, seed=1).requires_grad_(True)
    t = [0.0, 0.3, 0.7, 1.0]
    kw = dict(rtol=1e-3, atol=1e-5) if adaptive else dict(options={"step_size": 0.05})
    sol = neurode.solve(f, y0, t, method="alf", gradient="reversible", **kw)
    sol.ys.sum().backward()
    n = sol.stats.accepted_steps
    assert n > 5
    if not adaptive:
        assert n == 6 + 8 + 6  # step_size 0.05 over intervals 0.3, 0.4, 0.3
    assert sol.stats.nfe_backward == n + 1
    assert sol.stats.recomputed_steps == 0
    # the forward: v0, one evaluation per attempt, plus the adaptive initial-step heuristic
    extra = 1 if adaptive else 0
    assert sol.stats.nfe_forward == 1 + n + sol.stats.rejected_steps + extra


def test_reversible_rk_backward_evaluation_count():
    """The fused backward (SPEC §5.5) evaluates the inverse's two base steps with their
    graph and takes the step's VJP from them: rk4 has 4 stages, so 8 evaluations per step,
    as many as forward (it was 16 when the step was inverted, then replayed); its init
    evaluates nothing."""
    f = MLP(seed=0)
    y0 = randn(2, 3, seed=1).requires_grad_(True)
    sol = neurode.solve(
        f,
        y0,
        [0.0, 1.0],
        method=neurode.Reversible("rk4"),
        options={"steps": 7},
        gradient="reversible",
    )
    sol.ys.sum().backward()
    assert sol.stats.nfe_forward == 7 * 8
    # 2 base steps per step (was 7 * 16: invert, then replay)
    assert sol.stats.nfe_backward == 7 * 8


@pytest.mark.parametrize("method", ["alf", neurode.Reversible("dopri5")], ids=["alf", "rev-dopri5"])
def test_reversible_adaptive_several_outputs_matches_direct(method):
    """Adaptive steps, five outputs, loss on all of them: ≤ 1e-9 relative (the inverse's
    round-off, ~1e-15 observed, see test_round_trip_1000_steps)."""
    f = MLP(seed=0)
    params = list(f.parameters())
    y0 = randn(2, 3, seed=1)
    t = [0.0, 0.2, 0.5, 0.9, 1.3]
    G = randn(len(t), 2, 3, seed=2)
    # outputs as step ends (tests/test_dense.py covers outputs inside steps)
    kw = dict(method=method, rtol=1e-4, atol=1e-6, options=dict(exact_outputs=True))
    ys_ref, g_ref, st_ref = grads(f, y0, t, G, params=params, gradient="direct", **kw)
    ys, g, st = grads(f, y0, t, G, params=params, gradient="reversible", **kw)
    assert st.accepted_steps == st_ref.accepted_steps > len(t)
    assert torch.equal(ys, ys_ref)
    assert rel(g, g_ref) <= 1e-9
