"""The fused backward of the reversible RK wrapper (SPEC §5.5).

``Reversible(base).backward_step`` evaluates the inverse's two base steps with
their graph and takes the step's VJP from them, instead of inverting and then
replaying the step. These tests check that its gradient equals float64 direct
backprop through the same discretisation (fixed and adaptive grids, several
bases, couplings λ < 1 and λ = 1, dropout in ``f``), that it agrees with the
invert-then-replay default step by step, and what it costs: two base steps per
step.
"""

from __future__ import annotations

import pytest
import torch
from gradproblems import DT, MLP, grads, randn, rel

import neurode
from neurode.solvers.base import ReversibleSolver

BASES = ["rk4", "bosh3", "dopri5"]
COUPLINGS = [0.999, 1.0]
TOL = 1e-9


def _direct_same_rng():
    """Direct backprop whose steps run under the per-step random state, as the reversible
    gradient's do: the reference for a random ``f``."""
    d = neurode.Direct()
    d.preserve_rng = True
    return d


# rk4 has no error estimate: it runs on fixed grids only
GRIDS = [("fixed", b) for b in BASES] + [("adaptive", b) for b in BASES if b != "rk4"]


@pytest.mark.parametrize("coupling", COUPLINGS)
@pytest.mark.parametrize("grid, base", GRIDS)
def test_fused_matches_direct(base, coupling, grid):
    f = MLP(seed=0)
    params = list(f.parameters())
    y0 = randn(2, 3, seed=1)
    t = [0.0, 0.3, 0.7, 1.2]
    G = randn(len(t), 2, 3, seed=2)
    if grid == "fixed":
        kw = dict(options=dict(step_size=0.05))
    else:
        kw = dict(rtol=1e-5, atol=1e-7, options=dict(exact_outputs=True))
    kw["method"] = neurode.Reversible(base, coupling=coupling)
    ys_ref, g_ref, st_ref = grads(f, y0, t, G, params=params, gradient="direct", **kw)
    ys, g, st = grads(f, y0, t, G, params=params, gradient="reversible", **kw)
    assert st.accepted_steps == st_ref.accepted_steps > 3
    assert torch.equal(ys, ys_ref)
    assert rel(g, g_ref) <= TOL


@pytest.mark.parametrize("coupling", COUPLINGS)
@pytest.mark.parametrize("base", ["rk4", "dopri5"])
def test_fused_with_outputs_inside_steps(base, coupling):
    """Outputs interpolated inside steps take the inverse-and-replay path, the others the
    fused one: both in one backward sweep."""
    f = MLP(seed=3)
    params = list(f.parameters())
    y0 = randn(4, 3, seed=4)
    t = torch.linspace(0.0, 1.5, 11, dtype=DT).tolist()
    G = randn(len(t), 4, 3, seed=5)
    kw = dict(method=neurode.Reversible(base, coupling=coupling), rtol=1e-5, atol=1e-7)
    if base == "rk4":
        kw = dict(method=kw["method"], options=dict(step_size=0.4))
    ys_ref, g_ref, st_ref = grads(f, y0, t, G, params=params, gradient="direct", **kw)
    ys, g, st = grads(f, y0, t, G, params=params, gradient="reversible", **kw)
    assert st.accepted_steps < len(t) - 1  # some outputs do fall inside steps
    assert torch.equal(ys, ys_ref)
    assert rel(g, g_ref) <= TOL


@pytest.mark.parametrize("coupling", COUPLINGS)
@pytest.mark.parametrize(
    "grid, base", [("fixed", "rk4"), ("fixed", "dopri5"), ("adaptive", "dopri5")]
)
def test_fused_with_dropout(base, coupling, grid):
    """Dropout in f: each base step of the fused backward runs under the seed it ran under
    forward, so the masks match and the gradient is direct backprop's through the same
    masks."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 24), torch.nn.Tanh(), torch.nn.Dropout(0.3), torch.nn.Linear(24, 3)
    ).to(DT)

    def f(t, y):
        return net(y)

    params = list(net.parameters())
    y0 = randn(5, 3, seed=2)
    t = [0.0, 0.4, 1.0]
    G = randn(len(t), 5, 3, seed=3)
    if grid == "fixed":
        kw = dict(options=dict(step_size=0.1))
    else:
        # dropout makes the error estimate noisy: a loose tolerance keeps the steps few
        kw = dict(rtol=1e-3, atol=1e-5, options=dict(exact_outputs=True))
    kw["method"] = neurode.Reversible(base, coupling=coupling)
    out = {}
    for name, g in (("direct", _direct_same_rng()), ("reversible", "reversible")):
        torch.manual_seed(7)
        out[name] = grads(f, y0, t, G, params=params, gradient=g, **kw)
    assert torch.equal(out["reversible"][0], out["direct"][0])
    assert rel(out["reversible"][1], out["direct"][1]) <= TOL
    # and the masks do matter: another seed gives another gradient
    torch.manual_seed(8)
    other = grads(f, y0, t, G, params=params, gradient="reversible", **kw)
    assert rel(other[1], out["direct"][1]) > 1e-3


@pytest.mark.parametrize("coupling", [0.5, 0.999, 1.0])
@pytest.mark.parametrize("base", BASES)
def test_fused_step_equals_invert_then_replay(base, coupling):
    """One step: the fused backward_step against the base class's default (invert without a
    graph, replay with it, VJP), on a state with y ≠ z."""
    f = MLP(seed=1)
    params = list(f.parameters())

    def g(t, y):
        return f(torch.tensor(t, dtype=DT), y)

    solver = neurode.Reversible(base, coupling=coupling)
    with torch.no_grad():
        x1 = (randn(3, 3, seed=1), randn(3, 3, seed=2))
    a1 = (randn(3, 3, seed=3), randn(3, 3, seed=4))
    t, h = 0.2, 0.15
    x0, a0, gp = solver.backward_step(g, t, h, x1, a1, params)
    x0r, a0r, gpr = ReversibleSolver.backward_step(solver, g, t, h, x1, a1, params)
    assert rel(x0, x0r) <= 1e-14
    assert rel(a0, a0r) <= 1e-12
    assert rel(gp, gpr) <= 1e-12


def test_fused_field_without_state_dependence():
    """f depends on the parameters and t only: the state VJPs are zero, not missing."""
    w = torch.nn.Parameter(randn(3, seed=1))

    def f(t, y):
        return torch.sin(t) * w + 0.0 * y.detach()

    y0 = randn(2, 3, seed=2)
    t = [0.0, 0.5, 1.0]
    G = randn(len(t), 2, 3, seed=3)
    kw = dict(method=neurode.Reversible("rk4"), options=dict(step_size=0.1))
    _, g_ref, _ = grads(f, y0, t, G, params=[w], explicit=True, gradient="direct", **kw)
    _, g, _ = grads(f, y0, t, G, params=[w], explicit=True, gradient="reversible", **kw)
    assert rel(g, g_ref) <= TOL


@pytest.mark.parametrize(
    "base, forward, backward",
    # (evaluations per step forward, backward): FSAL bases skip their last stage backward,
    # which only the error estimate uses
    [("rk4", 8, 8), ("bosh3", 8, 6), ("dopri5", 14, 12)],
)
def test_fused_backward_evaluation_count(base, forward, backward):
    """Backward: two base steps per step, as many evaluations as forward (FSAL: fewer);
    the init evaluates nothing."""
    f = MLP(seed=0)
    y0 = randn(2, 3, seed=1).requires_grad_(True)
    n = 9
    sol = neurode.solve(
        f,
        y0,
        [0.0, 1.0],
        method=neurode.Reversible(base),
        options={"step_size": 1.0 / n},
        gradient="reversible",
    )
    sol.ys.sum().backward()
    assert sol.stats.accepted_steps == n
    assert sol.stats.nfe_forward == n * forward
    assert sol.stats.nfe_backward == n * backward
