"""``odeint`` / ``solve``: accuracy against independent references, the call
conventions (directions, shapes, tuples, dtypes, options), statistics and
gradients of direct backprop."""

from __future__ import annotations

import math

import pytest
import torch
from problems import (
    LINEAR2,
    LINEAR3,
    LinearODE,
    LotkaVolterra,
    TanhMLP,
    VanDerPol,
    scipy_reference,
)

import neurode
from neurode import odeint, solve

F64 = torch.float64

PROBLEMS = {
    "linear3": (LINEAR3, [1.0, 0.0, 0.5], torch.linspace(0, 4, 5, dtype=F64)),
    "vanderpol": (VanDerPol(mu=1.0), [2.0, 0.0], torch.linspace(0, 6, 7, dtype=F64)),
    "lotka_volterra": (LotkaVolterra(), [1.0, 1.0], torch.linspace(0, 5, 6, dtype=F64)),
}


def _reference(problem, y0, t):
    """Matrix exponential when the problem is linear, scipy DOP853 at 1e-12 otherwise."""
    if isinstance(problem, LinearODE):
        return problem.exact(y0, t)
    return scipy_reference(problem, y0, t)


def _tol_ratio(ys, ref, rtol, atol):
    """max |ys - ref| / (atol + rtol |ref|): the error in units of the requested tolerance."""
    return float(((ys - ref).abs() / (atol + rtol * ref.abs())).max())


# ---------------------------------------------------------------------------
# Accuracy against references
# ---------------------------------------------------------------------------

# The controller bounds the *local* error of each step by ~(atol + rtol|y|); the global
# error is the sum of the local errors propagated through the flow, so it grows with the
# number of steps and the problem's sensitivity. 100x the tolerance is a generous bound
# for these short, non-stiff problems (a few to ~100 steps), yet a solver that ignored
# the tolerance (too few steps, or a wrong error estimate) would exceed it by far.
GLOBAL_FACTOR = 100


@pytest.mark.parametrize("method", ["bosh3", "dopri5", "tsit5", "alf"])
@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_adaptive_agrees_with_reference(name, method):
    problem, y0, t = PROBLEMS[name]
    y0 = torch.tensor(y0, dtype=F64)
    ref = _reference(problem, y0, t)
    ys = odeint(problem, y0, t, method=method, rtol=1e-6, atol=1e-8)
    assert ys.shape == ref.shape
    assert _tol_ratio(ys, ref, 1e-6, 1e-8) <= GLOBAL_FACTOR


def test_heun_adaptive_agrees_with_exact():
    # heun is 2(1): thousands of steps at 1e-6, so use a looser tolerance here
    y0 = torch.tensor([1.0, 0.0, 0.5], dtype=F64)
    t = torch.linspace(0, 2, 3, dtype=F64)
    ys = odeint(LINEAR3, y0, t, method="heun", rtol=1e-4, atol=1e-6)
    assert _tol_ratio(ys, LINEAR3.exact(y0, t), 1e-4, 1e-6) <= GLOBAL_FACTOR


@pytest.mark.parametrize(
    "method", ["dopri5", "tsit5", "bosh3", neurode.Reversible("dopri5")], ids=str
)
def test_tightening_tolerance_reduces_error(method):
    # tolerance proportionality: 1000x tighter tolerances must give a much smaller
    # error (ideally ~1000x; at least 30x leaves room for the global-error constant).
    problem, y0, t = PROBLEMS["vanderpol"]
    y0 = torch.tensor(y0, dtype=F64)
    ref = _reference(problem, y0, t)
    loose = (odeint(problem, y0, t, method=method, rtol=1e-5, atol=1e-7) - ref).abs().max()
    tight = (odeint(problem, y0, t, method=method, rtol=1e-8, atol=1e-10) - ref).abs().max()
    assert tight < loose / 30


# Fixed grids: global error <= C h^p with C ~ T max|y^(p+1)| e^(LT) / (p+1)!. Van der Pol
# from (2, 0) over T = 1 has derivatives of order <= 5 of size O(1-10), so C < 5; a solver
# one order short, or stepping to the wrong times, would be off by >= 1/h >> 5.
FIXED = [("euler", 1, 1e-4), ("midpoint", 2, 1e-3), ("heun", 2, 1e-3), ("rk4", 4, 2e-2)]
FIXED += [("alf", 2, 1e-3), (neurode.Reversible("rk4"), 4, 2e-2)]


@pytest.mark.parametrize("method, order, h", FIXED, ids=lambda v: getattr(v, "name", str(v)))
def test_fixed_grid_agrees_with_scipy(method, order, h):
    problem, y0, _ = PROBLEMS["vanderpol"]
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    if order == 1:  # keep euler's step count small: T = 0.01, 100 steps
        t = t * 1e-2
    y0 = torch.tensor(y0, dtype=F64)
    ref = scipy_reference(problem, y0, t)
    ys = odeint(problem, y0, t, method=method, options=dict(step_size=h))
    assert (ys - ref).abs().max() <= 5 * h**order


# ---------------------------------------------------------------------------
# Direction of time
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method, options", [("dopri5", {}), ("rk4", dict(steps=50)), ("alf", {})])
def test_backward_in_time_matches_exact(method, options):
    y0 = torch.tensor([0.3, -1.0, 2.0], dtype=F64)
    t = torch.tensor([1.5, 1.0, 0.2, -0.5], dtype=F64)  # decreasing, crossing 0
    ys = odeint(LINEAR3, y0, t, method=method, rtol=1e-8, atol=1e-10, options=options)
    ref = LINEAR3.exact(y0, t)
    # rk4 with 50 steps per unit: error ~ (h|A|)^4 ~ 1e-7; adaptive: 100x tolerance as above
    assert (ys - ref).abs().max() < 1e-6


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_forward_then_backward_returns_to_start(method):
    problem = VanDerPol()
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    t = torch.tensor([0.0, 3.0], dtype=F64)
    yT = odeint(problem, y0, t, method=method, rtol=1e-10, atol=1e-12)[-1]
    back = odeint(problem, yT, t.flip(0), method=method, rtol=1e-10, atol=1e-12)
    assert torch.equal(back[0], yT)
    # two solves at 1e-10 of an O(1), mildly expanding problem: ~1e-8 is generous
    assert (back[-1] - y0).abs().max() < 1e-7


def test_backward_solve_equals_reference_on_reversed_grid():
    problem, y0, t = PROBLEMS["lotka_volterra"]
    y0 = torch.tensor(y0, dtype=F64)
    yT = scipy_reference(problem, y0, t)[-1]
    rev = t.flip(0)
    ys = odeint(problem, yT, rev, method="dopri5", rtol=1e-8, atol=1e-10)
    ref = scipy_reference(problem, yT, rev)
    assert _tol_ratio(ys, ref, 1e-8, 1e-10) <= GLOBAL_FACTOR


# ---------------------------------------------------------------------------
# Shapes: batches, images, tuples; dtypes; output times
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method, options", [("dopri5", {}), ("rk4", dict(steps=40))])
def test_batched_states(method, options):
    y0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-2.0, 0.5], [0.1, 0.1]], dtype=F64)
    t = torch.linspace(0, 2, 5, dtype=F64)
    ys = odeint(LINEAR2, y0, t, method=method, rtol=1e-9, atol=1e-11, options=options)
    assert ys.shape == (5, 4, 2)
    # rk4 h=0.05: error ~ (0.05*2)^4 ~ 1e-4 * small constant; adaptive: 100x tolerance
    assert (ys - LINEAR2.exact(y0, t)).abs().max() < 1e-5
    if options:  # on a fixed grid every row is an independent solve of the same steps
        for i in range(len(y0)):
            one = odeint(LINEAR2, y0[i], t, method=method, options=options)
            torch.testing.assert_close(ys[:, i], one, rtol=1e-14, atol=1e-14)


def test_image_shaped_state_elementwise_linear():
    g = torch.Generator().manual_seed(0)
    rates = -torch.rand(3, 1, 1, generator=g, dtype=F64) + 0.2  # per channel, in (-0.8, 0.2]
    y0 = torch.randn(2, 3, 4, 5, generator=g, dtype=F64)
    t = torch.tensor([0.0, 0.7, 2.0], dtype=F64)
    ys = odeint(lambda t, y: rates * y, y0, t, rtol=1e-9, atol=1e-11)
    assert ys.shape == (3, 2, 3, 4, 5)
    exact = y0 * torch.exp(rates * t[:, None, None, None, None])
    assert (ys - exact).abs().max() < 100 * (1e-11 + 1e-9 * exact.abs().max())


def _tuple_system():
    A = torch.tensor(
        [
            [-0.2, 1.0, 0.0, 0.0, 0.3],
            [-1.0, -0.2, 0.0, 0.1, 0.0],
            [0.0, 0.0, -0.5, 0.0, 0.0],
            [0.0, 0.2, 0.0, -0.1, 1.0],
            [0.0, 0.0, 0.0, -1.0, -0.1],
        ],
        dtype=F64,
    )
    full = LinearODE(A)

    def f_tuple(t, ys):
        a, b = ys  # a: (2,), b: (3, 1)
        d = full(t, torch.cat([a, b.reshape(-1)]))
        return d[:2], d[2:].reshape(3, 1)

    return full, f_tuple


@pytest.mark.parametrize("method, options", [("dopri5", {}), ("rk4", dict(steps=20)), ("alf", {})])
def test_tuple_state_equals_concatenated_system(method, options):
    full, f_tuple = _tuple_system()
    a0 = torch.tensor([1.0, -0.5], dtype=F64)
    b0 = torch.tensor([[0.2], [0.4], [-1.0]], dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.5], dtype=F64)
    out = odeint(f_tuple, (a0, b0), t, method=method, options=options)
    assert isinstance(out, tuple) and len(out) == 2
    assert out[0].shape == (3, 2) and out[1].shape == (3, 3, 1)
    flat = odeint(full, torch.cat([a0, b0.reshape(-1)]), t, method=method, options=options)
    # the same arithmetic on the same flat vector: equal up to summation order
    torch.testing.assert_close(out[0], flat[:, :2], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(out[1], flat[:, 2:].reshape(3, 3, 1), rtol=1e-13, atol=1e-13)
    assert torch.equal(out[0][0], a0) and torch.equal(out[1][0], b0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method, options", [("dopri5", {}), ("rk4", dict(steps=100))])
def test_dtypes(dtype, method, options):
    problem = VanDerPol()
    y0 = torch.tensor([2.0, 0.0], dtype=dtype)
    t = torch.linspace(0, 3, 4, dtype=dtype)
    rtol, atol = (1e-5, 1e-6) if dtype == torch.float32 else (1e-9, 1e-11)
    ys = odeint(problem, y0, t, method=method, rtol=rtol, atol=atol, options=options)
    assert ys.dtype == dtype
    ref = scipy_reference(problem, y0, t)
    # float32: tolerances 1e-5 plus ~100 steps of float32 round-off (eps 6e-8 each) on
    # O(1) values -> 1e-3 is safe; float64: 100x tolerance, plus rk4 h=0.03 error ~1e-6.
    bound = 1e-3 if dtype == torch.float32 else 1e-5
    assert (ys.double() - ref).abs().max() < bound


def test_float32_times_with_float64_state():
    # times are float64 internally whatever t's dtype; t=0.1 in float32 is 0.10000000149
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    t32 = torch.tensor([0.0, 0.1, 1.0], dtype=torch.float32)
    sol = solve(LINEAR2, y0, t32, rtol=1e-10, atol=1e-12)
    assert sol.ts.dtype == F64 and sol.ys.dtype == F64
    assert torch.equal(sol.ts, t32.double())
    assert (sol.ys - LINEAR2.exact(y0, t32.double())).abs().max() < 1e-8


@pytest.mark.parametrize(
    "method, options",
    [("dopri5", {}), ("bosh3", {}), ("rk4", dict(step_size=0.07)), ("alf", {})],
)
def test_outputs_exactly_at_requested_times(method, options):
    # dy/dt = 1 is integrated exactly by every method, so y(t_k) - y0 = t_k - t0 holds
    # to round-off only if each output lands exactly on t_k (no interpolation, no overshoot)
    t = torch.tensor([0.0, 1e-3, 0.1, 0.30000001, 1 / 3, 2.5], dtype=F64)
    y0 = torch.tensor([[5.0, -1.0, 0.0]], dtype=F64)
    ys = odeint(lambda t, y: torch.ones_like(y), y0, t, method=method, options=options)
    assert ys.shape == (len(t), *y0.shape)
    assert torch.equal(ys[0], y0)
    torch.testing.assert_close(ys - y0, (t - t[0])[:, None, None].expand_as(ys), rtol=0, atol=1e-13)


def test_time_dependent_field_hits_output_times():
    # dy/dt = cos(t): y(t) = y0 + sin(t) - sin(t0), independent of the grid
    t = torch.tensor([0.0, 0.25, 0.26, 3.0, 3.0001, 7.0], dtype=F64)
    y0 = torch.tensor([0.5], dtype=F64)
    ys = odeint(lambda t, y: torch.cos(t).expand_as(y), y0, t, rtol=1e-10, atol=1e-12)
    exact = y0 + torch.sin(t)[:, None]
    assert (ys - exact).abs().max() < 1e-9


def test_y0_returned_exactly_and_not_aliased_wrongly():
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    ys = odeint(LINEAR2, y0, [0.0, 1.0])
    assert torch.equal(ys[0], y0)
    assert torch.equal(y0, torch.tensor([1.0, 2.0], dtype=F64))  # input untouched


@pytest.mark.parametrize("method, options", [("dopri5", {}), ("rk4", dict(steps=3)), ("alf", {})])
def test_empty_state(method, options):
    # a state with no elements has nothing to integrate; the adaptive error norm of an
    # empty tensor must not be NaN (which used to loop until max_steps)
    y0 = torch.ones(3, 0, dtype=F64)
    sol = solve(lambda t, y: -y, y0, [0.0, 1.0, 2.0], method=method, options=options)
    assert sol.ys.shape == (3, 3, 0)
    assert sol.stats.accepted_steps < 100


def test_scalar_state_and_list_times():
    y0 = torch.tensor(1.0, dtype=F64)
    ys = odeint(lambda t, y: -y, y0, [0.0, 0.5, 1.0], rtol=1e-10, atol=1e-12)
    assert ys.shape == (3,)
    torch.testing.assert_close(ys, torch.exp(-torch.tensor([0.0, 0.5, 1.0], dtype=F64)))


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


def test_torchdiffeq_style_call():
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    sol = solve(LINEAR2, y0, t, rtol=1e-6, atol=1e-8, method="rk4", options=dict(step_size=0.1))
    ys = odeint(LINEAR2, y0, t, rtol=1e-6, atol=1e-8, method="rk4", options=dict(step_size=0.1))
    assert torch.equal(ys, sol.ys)
    assert sol.stats.accepted_steps == 10 and sol.stats.nfe_forward == 40
    # rk4 with h = 0.1, |A| ~ 2: error ~ (0.2)^5/120 * 10 steps ~ 3e-5 at most
    assert (ys - LINEAR2.exact(y0, t)).abs().max() < 1e-4


def test_step_size_not_dividing_interval_lands_exactly():
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    t = torch.tensor([0.0, 0.25], dtype=F64)
    sol = solve(LINEAR2, y0, t, method="rk4", options=dict(step_size=0.1))
    assert sol.stats.accepted_steps == 3  # 0.1, 0.1, 0.05
    assert (sol.ys - LINEAR2.exact(y0, t)).abs().max() < 1e-5


class _Recorder:
    """Wraps a vector field and records the times it is evaluated at."""

    def __init__(self, f):
        self.f = f
        self.times: list[float] = []

    def __call__(self, t, y):
        self.times.append(float(t))
        return self.f(t, y)


def test_first_step_is_used():
    rec = _Recorder(LINEAR2)
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    solve(rec, y0, [0.0, 1.0], method="dopri5", options=dict(first_step=1e-3))
    # evaluation 0: the FSAL stage f(t0); evaluation 1: the second stage of the first
    # step, at t0 + c_2 h = 0.2 h (no initial-step heuristic when first_step is given)
    assert rec.times[0] == 0.0
    assert rec.times[1] == pytest.approx(0.2 * 1e-3, rel=1e-12)


def test_max_step_bounds_accepted_steps():
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    span, max_step = 4.0, 0.05
    free = solve(LINEAR2, y0, [0.0, span], rtol=1e-3, atol=1e-5)
    assert free.stats.accepted_steps < span / max_step  # otherwise the test shows nothing
    capped = solve(LINEAR2, y0, [0.0, span], rtol=1e-3, atol=1e-5, options=dict(max_step=max_step))
    # the last step of an interval may stretch by <1% to land on the output time
    assert capped.stats.accepted_steps >= span / (max_step / 0.99)


def test_max_step_bounds_every_step():
    rec = _Recorder(LINEAR2)
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    sol = solve(
        rec, y0, [0.0, 2.0], method="bosh3", rtol=1e-2, atol=1e-4, options=dict(max_step=0.1)
    )
    assert sol.stats.rejected_steps == 0
    # bosh3 evaluations: f(t0) (FSAL), the heuristic's trial, then per step t + h/2,
    # t + 3h/4, t + h; so h = 2 ((t + h) - (t + h/2)) for every step
    halves, ends = rec.times[2::3], rec.times[4::3]
    hs = [2 * (e - m) for m, e in zip(halves, ends)]
    assert len(hs) == sol.stats.accepted_steps >= 20
    # the last step of an interval may stretch by < 1% to land on the output time
    assert max(hs) <= 0.1 * 1.01


def test_min_step_forces_progress():
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    span, min_step = 2.0, 0.1
    tight = solve(LINEAR2, y0, [0.0, span], rtol=1e-12, atol=1e-14)
    assert tight.stats.accepted_steps > span / min_step  # the tolerance wants small steps
    forced = solve(
        LINEAR2, y0, [0.0, span], rtol=1e-12, atol=1e-14, options=dict(min_step=min_step)
    )
    assert forced.stats.accepted_steps <= math.ceil(span / min_step)


def test_max_num_steps_alias():
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    with pytest.raises(neurode.MaxStepsExceededError):
        odeint(LINEAR2, y0, [0.0, 10.0], rtol=1e-10, atol=1e-12, options=dict(max_num_steps=5))
    ys = odeint(
        LINEAR2, y0, [0.0, 10.0], rtol=1e-10, atol=1e-12, options=dict(max_num_steps=10_000)
    )
    assert torch.isfinite(ys).all()


def test_safety_changes_step_count():
    problem = VanDerPol()
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    base = solve(problem, y0, [0.0, 6.0], rtol=1e-6, atol=1e-8)
    careful = solve(problem, y0, [0.0, 6.0], rtol=1e-6, atol=1e-8, options=dict(safety=0.5))
    # a smaller safety factor shrinks every proposed step: more, smaller steps
    assert careful.stats.accepted_steps > base.stats.accepted_steps


def _dopri5_attempts(rec: _Recorder, first_step_given: bool) -> list[tuple[float, float]]:
    """(t, h) of every dopri5 step attempt, from the times f was evaluated at.

    Evaluations: f(t0) (FSAL stage), the heuristic's trial (unless first_step is given),
    then 6 per attempt at t + c_i h with c = (1/5, 3/10, 4/5, 8/9, 1, 1).
    """
    times = rec.times[1 if first_step_given else 2 :]
    out = []
    for j in range(0, len(times) - 5, 6):
        h = (times[j + 4] - times[j]) / 0.8
        out.append((times[j + 4] - h, h))
    return out


def test_ifactor_limits_step_growth():
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    h0, span, ifactor = 1e-6, 1.0, 1.5
    rec = _Recorder(LINEAR2)
    opts = dict(first_step=h0, ifactor=ifactor)
    sol = solve(rec, y0, [0.0, span], rtol=1e-3, atol=1e-5, options=opts)
    hs = [h for _, h in _dopri5_attempts(rec, first_step_given=True)]
    assert hs[0] == pytest.approx(h0, rel=1e-6)
    # each proposal is at most ifactor x the last step (the landing step may stretch 1%)
    assert max(b / a for a, b in zip(hs[:-1], hs[1:])) <= ifactor / 0.99
    # so the steps sum to at most h0 (ifactor^n - 1) / (ifactor - 1) / 0.99
    n_min = math.log(1 + 0.99 * span * (ifactor - 1) / h0) / math.log(ifactor)
    assert sol.stats.accepted_steps >= n_min
    free = solve(LINEAR2, y0, [0.0, span], rtol=1e-3, atol=1e-5, options=dict(first_step=h0))
    assert free.stats.accepted_steps < n_min  # the default ifactor=10 grows much faster


@pytest.mark.parametrize("dfactor", [0.9, 0.2])
def test_dfactor_limits_step_reduction(dfactor):
    problem = _Recorder(VanDerPol())
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    # a first step of 1.0 at 1e-8 is far too large and must be cut down repeatedly
    opts = dict(first_step=1.0, dfactor=dfactor)
    sol = solve(problem, y0, [0.0, 2.0], rtol=1e-8, atol=1e-10, options=opts)
    attempts = _dopri5_attempts(problem, first_step_given=True)
    assert len(attempts) == sol.stats.accepted_steps + sol.stats.rejected_steps
    # the attempts from t = 0: the rejected tries, then the accepted one (t is rebuilt
    # from the evaluation times, so it is 0 up to round-off)
    initial = [h for t, h in attempts if abs(t) <= 1e-9 * h]
    assert len(initial) >= 2
    ratios = [b / a for a, b in zip(initial[:-1], initial[1:])]
    # each rejection cuts h by at most dfactor (clamp) ...
    assert min(ratios) >= dfactor * (1 - 1e-9)
    # ... and the error ratio of a step 1.0 at 1e-8 calls for a much larger cut than 0.9
    if dfactor == 0.9:
        assert max(ratios) <= 0.9 * (1 + 1e-9)


@pytest.mark.parametrize("name", ["vanderpol", "lotka_volterra"])
def test_pi_controller(name):
    problem, y0, t = PROBLEMS[name]
    y0 = torch.tensor(y0, dtype=F64)
    ref = _reference(problem, y0, t)
    pi = solve(problem, y0, t, rtol=1e-6, atol=1e-8, options=dict(controller="PI"))
    i = solve(problem, y0, t, rtol=1e-6, atol=1e-8, options=dict(controller="I"))
    assert _tol_ratio(pi.ys, ref, 1e-6, 1e-8) <= GLOBAL_FACTOR
    # a different controller takes a different sequence of steps
    assert (pi.stats.accepted_steps, pi.stats.rejected_steps) != (
        i.stats.accepted_steps,
        i.stats.rejected_steps,
    )


def test_custom_norm_is_used():
    calls = []

    def max_norm(err, y0, y1):
        calls.append(1)
        scale = 1e-8 + 1e-6 * torch.maximum(y0.abs(), y1.abs())
        return (err / scale).abs().max()

    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    sol = solve(VanDerPol(), y0, [0.0, 3.0], rtol=1e-6, atol=1e-8, options=dict(norm=max_norm))
    assert len(calls) >= sol.stats.accepted_steps + sol.stats.rejected_steps
    ref = scipy_reference(VanDerPol(), y0, [0.0, 3.0])
    assert _tol_ratio(sol.ys, ref, 1e-6, 1e-8) <= GLOBAL_FACTOR


# ---------------------------------------------------------------------------
# solve(): Solution and statistics
# ---------------------------------------------------------------------------


def test_solution_fields():
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float32)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float32)
    sol = solve(LINEAR2, y0, t)
    assert isinstance(sol, neurode.Solution)
    assert sol.ts.dtype == F64 and sol.ts.shape == (3,)
    assert sol.ys.shape == (3, 2) and sol.ys.dtype == torch.float32
    assert isinstance(sol.stats, neurode.SolveStats)
    assert sol.stats.nfe == sol.stats.nfe_forward > 0 and sol.stats.nfe_backward == 0


@pytest.mark.parametrize(
    "method, per_step", [("euler", 1), ("midpoint", 2), ("rk4", 4), ("heun", 2)]
)
def test_nfe_fixed_grid(method, per_step):
    rec = _Recorder(LINEAR2)
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    sol = solve(rec, y0, [0.0, 0.5, 1.0], method=method, options=dict(steps=7))
    assert sol.stats.accepted_steps == 2 * 7
    assert sol.stats.nfe_forward == per_step * 2 * 7 == len(rec.times)


def test_nfe_fixed_grid_fsal_method():
    # FSAL tableaus carry f(t, y) in their state: 1 initial evaluation + (s - 1) per step
    rec = _Recorder(LINEAR2)
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    sol = solve(rec, y0, [0.0, 1.0], method="dopri5", options=dict(steps=10))
    assert sol.stats.nfe_forward == 1 + 6 * 10 == len(rec.times)


# adaptive: nfe = per_step * attempts + extra, with extra = 1 (f(t0, y0): the FSAL stage,
# ALF's v0, or - for solvers whose state does not carry it - computed for the heuristic)
# + 1 (the Hairer-Norsett-Wanner initial-step heuristic's trial evaluation).
ADAPTIVE_NFE = [
    ("dopri5", 6, 2),
    ("tsit5", 6, 2),
    ("bosh3", 3, 2),
    ("heun", 2, 2),
    ("alf", 1, 2),
    (neurode.Reversible("bosh3"), 8, 2),
]


@pytest.mark.parametrize("method, per_step, extra", ADAPTIVE_NFE, ids=str)
def test_nfe_adaptive(method, per_step, extra):
    rec = _Recorder(VanDerPol())
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    sol = solve(rec, y0, [0.0, 1.0, 2.0], method=method, rtol=1e-4, atol=1e-6)
    s = sol.stats
    assert s.nfe_forward == per_step * (s.accepted_steps + s.rejected_steps) + extra
    assert s.nfe_forward == len(rec.times)


def test_nfe_adaptive_with_first_step():
    # with first_step given there is no heuristic: only the FSAL stage at t0 is extra
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    s = solve(VanDerPol(), y0, [0.0, 2.0], options=dict(first_step=0.01)).stats
    assert s.nfe_forward == 6 * (s.accepted_steps + s.rejected_steps) + 1


def test_rejections_are_counted():
    # a first step of 1.0 at rtol 1e-8 is far too large and must be rejected
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    s = solve(VanDerPol(), y0, [0.0, 2.0], rtol=1e-8, atol=1e-10, options=dict(first_step=1.0))
    assert s.stats.rejected_steps >= 1


# ---------------------------------------------------------------------------
# Gradients of direct backprop
# ---------------------------------------------------------------------------


def _param_field():
    """f(t, y) = tanh(y @ W^T) + t * b with W read from a holder the finder cannot see."""
    holder = {}

    def f(t, y):
        return torch.tanh(y @ holder["W"].T) - 0.3 * y + t * holder["b"]

    return holder, f


# On a fixed grid the solution is a smooth function of (y0, W) and direct backprop is its
# exact derivative, so gradcheck's central differences agree to ~eps^2 + round-off/eps.
@pytest.mark.parametrize(
    "method, options",
    [
        ("rk4", dict(steps=8)),
        ("midpoint", dict(step_size=0.15)),
        ("alf", dict(steps=8)),
        (neurode.Reversible("rk4"), dict(steps=4)),
        # adaptive, with the grid frozen: first_step = max_step and loose tolerances make
        # every step exactly max_step (all accepted), so perturbing the inputs cannot move
        # the grid (step-size decisions are not differentiated; a moving grid would make
        # finite differences disagree with autograd by dy/dh * dh/dy0).
        ("dopri5", dict(first_step=0.25, max_step=0.25)),
        ("tsit5", dict(first_step=0.25, max_step=0.25)),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_gradcheck_direct(method, options):
    holder, f = _param_field()
    g = torch.Generator().manual_seed(1)
    W = (0.5 * torch.randn(3, 3, generator=g, dtype=F64)).requires_grad_(True)
    b = torch.randn(3, generator=g, dtype=F64)
    holder["b"] = b
    y0 = torch.randn(2, 3, generator=g, dtype=F64).requires_grad_(True)
    t = torch.tensor([0.0, 0.6, 1.0], dtype=F64)

    def fn(y0, W):
        holder["W"] = W
        return odeint(f, y0, t, method=method, rtol=1e-2, atol=1e-2, options=options, params=[W])

    assert torch.autograd.gradcheck(fn, (y0, W), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_params_argument_is_needed_for_hidden_tensors():
    holder, f = _param_field()
    W = torch.eye(3, dtype=F64).requires_grad_(True)
    holder.update(W=W, b=torch.zeros(3, dtype=F64))
    y0 = torch.ones(3, dtype=F64)
    t = [0.0, 1.0]
    odeint(f, y0, t, method="rk4", options=dict(steps=4), params=[W])[-1].sum().backward()
    assert W.grad is not None and W.grad.abs().sum() > 0


def test_gradient_matches_matrix_exponential():
    # d y(T) / d y0 = expm(A T) for the linear system: an independent reference
    y0 = torch.tensor([1.0, 0.5, -0.2], dtype=F64, requires_grad=True)
    T = 1.5
    jac = torch.autograd.functional.jacobian(
        lambda y: odeint(LINEAR3, y, [0.0, T], rtol=1e-11, atol=1e-13)[-1], y0
    )
    # the derivative of the discrete solution differs from expm by ~the global error
    torch.testing.assert_close(jac, torch.linalg.matrix_exp(LINEAR3.A * T), rtol=1e-8, atol=1e-8)


def test_module_parameters_gradient_matches_finite_differences():
    mlp = TanhMLP(dim=2, hidden=6, seed=3)
    y0 = torch.tensor([[0.5, -0.3], [1.0, 0.2]], dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.2], dtype=F64)
    opts = dict(steps=10)

    def loss():
        ys = odeint(mlp, y0, t, method="rk4", options=opts)
        return (ys[1:] ** 2).sum()

    mlp.zero_grad()
    loss().backward()  # the module's parameters are found without params=
    for p in (mlp.l1.weight, mlp.c):
        assert p.grad is not None
        idx = (0, 1) if p.dim() == 2 else (2,)
        eps = 1e-6
        with torch.no_grad():
            p[idx] += eps
            up = loss()
            p[idx] -= 2 * eps
            down = loss()
            p[idx] += eps
        fd = (up - down) / (2 * eps)
        # central differences in float64: truncation ~eps^2, round-off ~1e-16/eps = 1e-10
        assert float(p.grad[idx]) == pytest.approx(float(fd), rel=1e-6, abs=1e-8)
