"""Property: whatever reasonable call is made, ``odeint`` either returns finite
values of the right shape and dtype, or raises a :class:`neurode.NeurodeError`.

Any other exception (a crash inside a solver, a TypeError from a bad internal
conversion, an endless loop ending in a misleading error, ...) fails the test.
"""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import neurode
from neurode.gradients.registry import EXACT_GRADIENTS, gradient_names

METHODS = ["euler", "midpoint", "heun", "rk4", "bosh3", "dopri5", "tsit5", "alf", "rk2"]
SOLVER_OBJECTS = {
    "alf(0.8)": lambda: neurode.ALF(damping=0.8),
    "reversible(rk4)": lambda: neurode.Reversible("rk4"),
    "reversible(bosh3)": lambda: neurode.Reversible("bosh3"),
}
ADAPTIVE = {"heun", "bosh3", "dopri5", "tsit5", "alf", "alf(0.8)", "reversible(bosh3)"}


def field(t, y):
    """Elementwise, nonlinear, with f'(0) = -0.1 (stable at 0) and |f(y)| <= 0.9 |y|."""
    return -0.5 * y + 0.25 * torch.tanh(y) + 0.05 * torch.sin(3 * y)


@st.composite
def times(draw):
    n = draw(st.integers(2, 5))
    start = draw(st.sampled_from([0.0, 1.0, -3.0, 123.456]))
    span = 10 ** draw(st.floats(-6, 1.5))  # from 1e-6 to ~30 time units
    direction = draw(st.sampled_from([1.0, -1.0]))
    gaps = draw(st.lists(st.floats(0.05, 1.0), min_size=n - 1, max_size=n - 1))
    total = sum(gaps)
    t = [start]
    for g in gaps:
        t.append(t[-1] + direction * span * g / total)
    return t


@st.composite
def calls(draw):
    shape = tuple(draw(st.lists(st.integers(0, 3), min_size=0, max_size=3)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    name = draw(st.sampled_from(METHODS + sorted(SOLVER_OBJECTS)))
    t = draw(times())
    t_as_tensor = draw(st.booleans())
    rtol = 10 ** draw(st.floats(-7, -2))
    atol = 10 ** draw(st.floats(-9, -3))
    fixed = draw(st.sampled_from(["steps", "step_size", None])) if name in ADAPTIVE else "steps"
    options: dict = {}
    if fixed == "steps":
        options["steps"] = draw(st.integers(1, 20))
    elif fixed == "step_size":
        options["step_size"] = abs(t[-1] - t[0]) / draw(st.floats(0.5, 30))
    else:
        # bound the work so slow, low-order methods at tight tolerances stay fast; going
        # over is a MaxStepsExceededError, which the property allows
        options["max_steps"] = 2000
        if draw(st.booleans()):
            options["controller"] = "PI"
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from([1e-3, 1.0, 10.0]))
    return shape, dtype, name, t, t_as_tensor, rtol, atol, options, seed, scale


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls())
def test_odeint_returns_finite_or_raises_neurode_error(call):
    shape, dtype, name, t, t_as_tensor, rtol, atol, options, seed, scale = call
    g = torch.Generator().manual_seed(seed)
    y0 = scale * torch.randn(shape, generator=g, dtype=dtype)
    method = SOLVER_OBJECTS[name]() if name in SOLVER_OBJECTS else name
    tt = torch.tensor(t, dtype=dtype) if t_as_tensor else t
    try:
        ys = neurode.odeint(field, y0, tt, method=method, rtol=rtol, atol=atol, options=options)
    except neurode.NeurodeError as e:
        event(f"raised {type(e).__name__}")  # see pytest --hypothesis-show-statistics
        return
    event("solved")
    assert isinstance(ys, torch.Tensor)
    assert ys.shape == (len(t), *shape)
    assert ys.dtype == dtype
    assert torch.isfinite(ys).all()
    assert torch.equal(ys[0], y0)
    # |f(y)| <= 0.9 |y| elementwise, so the exact solution satisfies |y(t)| <= |y0| e^{0.9|t - t0|}
    # in either direction of time; an adaptive answer far beyond that (10x) means the
    # error control failed silently.
    if y0.numel() and name in ADAPTIVE and "steps" not in options and "step_size" not in options:
        bound = y0.abs().max() * math.exp(0.9 * abs(t[-1] - t[0])) * 10 + 1e-6
        assert ys.abs().max() <= bound


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls(), st.sampled_from(gradient_names()))
def test_gradients_are_finite_or_raise_neurode_error(call, gradient):
    shape, dtype, name, t, t_as_tensor, rtol, atol, options, seed, scale = call
    g = torch.Generator().manual_seed(seed)
    y0 = (scale * torch.randn(shape, generator=g, dtype=dtype)).requires_grad_(True)
    method = SOLVER_OBJECTS[name]() if name in SOLVER_OBJECTS else name
    try:
        ys = neurode.odeint(
            field, y0, t, method=method, rtol=rtol, atol=atol, options=options, gradient=gradient
        )
        (ys**2).sum().backward()
    except neurode.NeurodeError as e:
        event(f"raised {type(e).__name__}")
        return
    event("solved")
    assert y0.grad is not None and y0.grad.shape == y0.shape and y0.grad.dtype == dtype
    assert torch.isfinite(y0.grad).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calls(),
    st.sampled_from([g for g in EXACT_GRADIENTS if g != "direct"] + ["budget"]),
    st.booleans(),
)
def test_exact_gradients_equal_direct_on_random_calls(call, gradient, many_outputs):
    # every exact method's backward() is backprop through the same computation: on any
    # call both can solve, in float64, it equals direct's (round-off; the reversible
    # rebuild adds its own, bounded by the drift check at √ε)
    shape, dtype, name, t, t_as_tensor, rtol, atol, options, seed, scale = call
    if dtype != torch.float64:
        return
    if many_outputs and len(t) == 2:  # outputs falling inside steps
        t = [t[0] + (t[1] - t[0]) * i / 9 for i in range(10)]
    g = torch.Generator().manual_seed(seed)
    y0 = scale * torch.randn(shape, generator=g, dtype=dtype)
    w = torch.randn((len(t), *shape), generator=g, dtype=dtype)
    method = SOLVER_OBJECTS[name]() if name in SOLVER_OBJECTS else name
    grad = neurode.Checkpoint(budget=2) if gradient == "budget" else gradient
    out = {}
    for key, gm in (("direct", "direct"), ("other", grad)):
        leaf = y0.clone().requires_grad_(True)
        try:
            ys = neurode.odeint(
                field, leaf, t, method=method, rtol=rtol, atol=atol, options=options, gradient=gm
            )
            (ys * w).sum().backward()
        except neurode.NeurodeError as e:
            event(f"{key} raised {type(e).__name__}")
            return
        out[key] = leaf.grad
    event("compared")
    ref = out["direct"]
    err = float((out["other"] - ref).norm()) / max(float(ref.norm()), 1e-300)
    assert err <= (1e-6 if gradient == "reversible" else 1e-10), err
