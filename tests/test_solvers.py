"""Solvers: tableau invariants and the observed order of convergence of every method."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from problems import LINEAR2, LINEAR3, TanhMLP

import neurode
from neurode.odeint import resolve_solver
from neurode.solvers import TABLEAUS, ButcherTableau

# ---------------------------------------------------------------------------
# Tableau invariants
# ---------------------------------------------------------------------------

# Tableau entries are float conversions of exact rationals (or Tsitouras' decimals),
# so the invariants hold to a few ulps of the largest coefficient (|a_ij| < 13).
TAB_TOL = 1e-13


@pytest.mark.parametrize("name", sorted(TABLEAUS))
def test_tableau_row_sums_equal_c(name):
    tab = TABLEAUS[name]
    assert tab.c[0] == 0.0
    for i, row in enumerate(tab.a):
        assert len(row) == i  # strictly lower triangular
        assert math.fsum(row) == pytest.approx(tab.c[i], abs=TAB_TOL)


@pytest.mark.parametrize("name", sorted(TABLEAUS))
def test_tableau_weights(name):
    tab = TABLEAUS[name]
    assert len(tab.b) == tab.stages
    assert math.fsum(tab.b) == pytest.approx(1.0, abs=TAB_TOL)
    if tab.b_err is not None:
        assert len(tab.b_err) == tab.stages
        assert math.fsum(tab.b_err) == pytest.approx(0.0, abs=TAB_TOL)
        assert tab.error_order is not None and tab.error_order < tab.order


def test_expected_tableaus_present():
    assert {"euler", "midpoint", "heun", "rk4", "bosh3", "dopri5", "tsit5"} <= set(TABLEAUS)
    assert TABLEAUS["heun"].adaptive and TABLEAUS["bosh3"].adaptive
    assert TABLEAUS["dopri5"].adaptive and TABLEAUS["tsit5"].adaptive
    assert not TABLEAUS["euler"].adaptive and not TABLEAUS["rk4"].adaptive


@pytest.mark.parametrize("name", sorted(TABLEAUS))
def test_fsal_derived(name):
    assert TABLEAUS[name].fsal == (name in {"dopri5", "tsit5", "bosh3"})


def _valid_kwargs():
    return dict(name="x", c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2)


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(c=(0.0, 0.5)), "row 1"),  # row sum of A != c
        (dict(c=(0.1, 1.0), a=((), (0.9,))), "c must start with 0"),
        (dict(b=(0.5, 0.6)), "summing to 1"),
        (dict(a=((), (0.5, 0.5))), "lower triangular"),
        (dict(b_err=(0.5, 0.4), error_order=1), "summing to 0"),
        (dict(b_err=(0.5, -0.5)), "error_order"),
        (dict(error_order=1), "without error weights"),  # an order with nothing to estimate
    ],
)
def test_invalid_tableau_raises(change, words):
    with pytest.raises(ValueError, match=words):
        ButcherTableau(**{**_valid_kwargs(), **change})


def test_valid_custom_tableau_is_fsal_and_usable():
    # Heun written with an FSAL-shaped extra stage: last row of A equals b, b_last = 0.
    tab = ButcherTableau(
        name="heun_fsal",
        c=(0.0, 1.0, 1.0),
        a=((), (1.0,), (0.5, 0.5)),
        b=(0.5, 0.5, 0.0),
        order=2,
        b_err=(-0.5, 0.5, 0.0),
        error_order=1,
    )
    assert tab.fsal
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ys = neurode.odeint(LINEAR2, y0, t, method=tab, options=dict(steps=64))
    ref = LINEAR2.exact(y0, t)
    # second order, h = 1/64: error ~ C h^2 with C ~ |A|^3/6 ~ 1.5 -> ~4e-4
    assert (ys[-1] - ref[-1]).abs().max() < 2e-3


# ---------------------------------------------------------------------------
# Observed order of convergence
# ---------------------------------------------------------------------------

SOLVERS = [
    "euler",
    "midpoint",
    "heun",
    "rk4",
    "bosh3",
    "dopri5",
    "tsit5",
    "alf",
    neurode.ALF(damping=0.8),
    neurode.Reversible("euler"),
    neurode.Reversible("midpoint"),
    neurode.Reversible("heun"),
    neurode.Reversible("rk4"),
    neurode.Reversible("bosh3"),
    neurode.Reversible("dopri5"),
    neurode.Reversible("tsit5"),
    neurode.Reversible("rk4", coupling=0.5),
]


def _id(m):
    return m if isinstance(m, str) else m.name


def _steps_for(order: int) -> list[int]:
    # Over [0, 1] with |eigenvalues| ~ 2, these ranges are in the asymptotic regime
    # and stay far above float64 round-off: for order 5 the finest error is ~1e-12.
    return [8, 16, 32, 64] if order <= 3 else [12, 24, 48, 96]


def observed_order(method, problem, y0, span=1.0) -> float:
    t = torch.tensor([0.0, span], dtype=torch.float64)
    exact = problem.exact(y0, t)[-1]
    order = resolve_solver(method).order
    ns = _steps_for(order)
    errs = []
    for n in ns:
        ys = neurode.odeint(problem, y0, t, method=method, options=dict(steps=n))
        errs.append(float((ys[-1] - exact).norm()))
    hs = span / np.array(ns)
    return float(np.polyfit(np.log(hs), np.log(errs), 1)[0])


@pytest.mark.parametrize("method", SOLVERS, ids=_id)
def test_observed_order_matches_declared(method):
    declared = resolve_solver(method).order
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    slope = observed_order(method, LINEAR2, y0)
    # the spec's acceptance band: within 0.3 of the declared order
    assert abs(slope - declared) <= 0.3, f"{_id(method)}: slope {slope:.3f} vs {declared}"


@pytest.mark.parametrize("method", ["midpoint", "rk4", "dopri5", "alf"], ids=_id)
def test_observed_order_on_3x3_batched(method):
    # same check on another system, with a batch of states (all must converge)
    declared = resolve_solver(method).order
    y0 = torch.tensor([[1.0, 0.0, 0.5], [-0.3, 0.7, 1.0]], dtype=torch.float64)
    slope = observed_order(method, LINEAR3, y0)
    assert abs(slope - declared) <= 0.3, f"{_id(method)}: slope {slope:.3f} vs {declared}"


def test_declared_orders():
    # the orders the literature gives; the convergence tests check them numerically
    expected = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4, "bosh3": 3, "dopri5": 5}
    for name, p in expected.items():
        assert resolve_solver(name).order == p
    assert resolve_solver("tsit5").order == 5
    assert resolve_solver("alf").order == 2
    assert neurode.Reversible("dopri5").order == 5


# ---------------------------------------------------------------------------
# Single steps and inverses
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "solver",
    [
        neurode.ALF(),
        neurode.ALF(damping=0.8),
        neurode.Reversible("rk4"),
        neurode.Reversible("dopri5"),
    ],
    ids=_id,
)
def test_inverse_undoes_step(solver):
    mlp = TanhMLP(dim=3)

    def f(t, y):  # the solver's internal signature: float t
        return mlp(torch.tensor(t, dtype=y.dtype), y)

    y0 = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    with torch.no_grad():
        x0 = solver.init(f, 0.1, y0)
        x = x0
        for i in range(5):
            x, _ = solver.step(f, 0.1 + 0.07 * i, 0.07, x)
        for i in reversed(range(5)):
            x = solver.inverse(f, 0.1 + 0.07 * i, 0.07, x)
    for a, b in zip(x, x0):
        # algebraic inverse: exact up to a few ulps per step (amplified by 1/(2η-1) for ALF)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_rk_step_matches_hand_computed_rk4():
    # one classic RK4 step written out by hand, on y' = t*y + sin(y)
    def f(t, y):
        return t * y + torch.sin(y)

    t, h = 0.3, 0.2
    y = torch.tensor([0.5, -1.0], dtype=torch.float64)
    k1 = f(t, y)
    k2 = f(t + h / 2, y + h / 2 * k1)
    k3 = f(t + h / 2, y + h / 2 * k2)
    k4 = f(t + h, y + h * k3)
    expected = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    solver = resolve_solver("rk4")
    (y1,), err = solver.step(f, t, h, solver.init(f, t, y))
    assert err is None
    # same arithmetic up to the order of additions: a few ulps
    torch.testing.assert_close(y1, expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("name", ["heun", "bosh3", "dopri5", "tsit5"])
def test_error_estimate_has_embedded_order(name):
    # local error estimate ~ C h^(q+1) with q the embedded order: halving h divides it by 2^(q+1)
    solver = resolve_solver(name)
    q = solver.error_order

    def f(t, y):
        return y @ LINEAR2.A.T

    y = torch.tensor([1.0, 0.5], dtype=torch.float64)
    errs = []
    hs = [0.1, 0.05, 0.025]
    for h in hs:
        _, err = solver.step(f, 0.0, h, solver.init(f, 0.0, y))
        errs.append(float(err.norm()))
    slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert abs(slope - (q + 1)) <= 0.3
