"""Every error neurode raises on purpose: the specific class, and a message that
names the problem (and, where there is one, the time or the valid choices)."""

from __future__ import annotations

import math
import re

import pytest
import torch

import neurode
from neurode import odeint

F64 = torch.float64


def decay(t, y):
    return -y


Y0 = torch.tensor([1.0, 2.0], dtype=F64)
T = torch.tensor([0.0, 1.0], dtype=F64)


def _numbers(msg: str, after: str) -> list[float]:
    """Every number printed right after ``after`` (e.g. ``"t="``) in ``msg``."""
    return [float(x) for x in re.findall(re.escape(after) + r"(-?[0-9.]+(?:e[-+]?[0-9]+)?)", msg)]


# ---------------------------------------------------------------------------
# Times
# ---------------------------------------------------------------------------


def test_non_monotone_times():
    with pytest.raises(
        neurode.InvalidTimesError, match="strictly increasing or strictly decreasing"
    ) as e:
        odeint(decay, Y0, [0.0, 1.0, 0.5])
    assert "t[1]=1.0" in str(e.value) and "t[2]=0.5" in str(e.value)


def test_repeated_time():
    with pytest.raises(neurode.InvalidTimesError, match="strictly"):
        odeint(decay, Y0, torch.tensor([0.0, 1.0, 1.0], dtype=F64))


def test_too_short_times():
    # one time is torchdiffeq's y0[None]; no time at all is an error
    with pytest.raises(neurode.InvalidTimesError, match="at least 1 time") as e:
        odeint(decay, Y0, torch.tensor([], dtype=F64))
    assert "got 0" in str(e.value)


def test_two_dimensional_times():
    with pytest.raises(neurode.InvalidTimesError, match=r"1-D.*\(2, 2\)"):
        odeint(decay, Y0, torch.zeros(2, 2, dtype=F64))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_times(bad):
    with pytest.raises(neurode.InvalidTimesError, match="finite"):
        odeint(decay, Y0, torch.tensor([0.0, bad, 2.0], dtype=F64))


def test_times_not_a_sequence():
    with pytest.raises(neurode.InvalidTimesError, match="1-D tensor or sequence"):
        odeint(decay, Y0, 1.0)


def test_complex_times():
    with pytest.raises(neurode.InvalidTimesError, match="real"):
        odeint(decay, Y0, torch.tensor([0.0, 1.0], dtype=torch.complex128))


# ---------------------------------------------------------------------------
# What f returns
# ---------------------------------------------------------------------------


def test_f_wrong_shape():
    with pytest.raises(neurode.FunctionOutputError, match=r"shape \(3,\).*shape \(2,\)"):
        odeint(lambda t, y: torch.cat([y, y[:1]]), Y0, T)


def test_f_wrong_dtype():
    with pytest.raises(neurode.FunctionOutputError, match=r"dtype torch.float32.*torch.float64"):
        odeint(lambda t, y: y.float(), Y0, T)


def test_f_not_a_tensor():
    with pytest.raises(neurode.FunctionOutputError, match="must return a tensor, got list"):
        odeint(lambda t, y: [0.0, 0.0], Y0, T, method="rk4")


def test_f_wrong_tuple_length():
    y0 = (torch.ones(2, dtype=F64), torch.ones(3, dtype=F64))
    with pytest.raises(neurode.FunctionOutputError, match="tuple of 2 tensors") as e:
        odeint(lambda t, ys: (ys[0],), y0, T)
    assert "of 1" in str(e.value)


def test_f_tuple_state_returns_single_tensor():
    y0 = (torch.ones(2, dtype=F64), torch.ones(3, dtype=F64))
    with pytest.raises(neurode.FunctionOutputError, match="tuple of 2 tensors.*Tensor"):
        odeint(lambda t, ys: ys[0], y0, T)


def test_f_tuple_component_wrong_shape():
    y0 = (torch.ones(2, dtype=F64), torch.ones(3, dtype=F64))
    with pytest.raises(neurode.FunctionOutputError, match=r"\[1\] returned shape \(2,\)"):
        odeint(lambda t, ys: (ys[0], ys[1][:2]), y0, T)


# ---------------------------------------------------------------------------
# y0
# ---------------------------------------------------------------------------


def test_integer_y0():
    with pytest.raises(neurode.InvalidStateError, match="floating dtype.*torch.int64"):
        odeint(decay, torch.tensor([1, 2]), T)


def test_complex_y0():
    with pytest.raises(neurode.InvalidStateError, match="real floating"):
        odeint(decay, torch.ones(2, dtype=torch.complex64), T)


def test_tuple_y0_mixed_dtypes():
    y0 = (torch.ones(2, dtype=F64), torch.ones(2, dtype=torch.float32))
    with pytest.raises(neurode.InvalidStateError, match="share dtype") as e:
        odeint(lambda t, ys: tuple(-y for y in ys), y0, T)
    assert "torch.float32" in str(e.value) and "torch.float64" in str(e.value)


def test_tuple_y0_with_integer_part():
    y0 = (torch.ones(2, dtype=F64), torch.ones(2, dtype=torch.int32))
    with pytest.raises(neurode.InvalidStateError, match=r"y0\[1\].*floating"):
        odeint(lambda t, ys: tuple(-y for y in ys), y0, T)


@pytest.mark.parametrize("y0", ["abc", (), 1.0], ids=["str", "empty-tuple", "float"])
def test_y0_not_a_tensor(y0):
    with pytest.raises(neurode.InvalidStateError, match="tensor or a tuple of tensors"):
        odeint(decay, y0, T)


# ---------------------------------------------------------------------------
# Failures during the solve
# ---------------------------------------------------------------------------


def test_state_blows_up_on_fixed_grid():
    # y' = y^2, y(0) = 1 has y = 1/(1 - t): infinite at t = 1; rk4 with h = 0.1 overflows
    # a few steps later. The message must name the step where it happened.
    y0 = torch.ones(2, dtype=F64)
    with pytest.raises(neurode.NonFiniteStateError, match="NaN/Inf") as e:
        odeint(lambda t, y: y**2, y0, [0.0, 0.5, 3.0], method="rk4", options=dict(step_size=0.1))
    msg = str(e.value)
    start, end = _numbers(msg, "from t=")[0], _numbers(msg, "to t=")[0]
    assert 1.0 <= start < 3.0 and end == pytest.approx(start + 0.1)
    assert "output t=3" in msg


def test_state_blows_up_pinpoints_first_bad_step():
    # the reported step is the first whose result is non-finite: the state just before
    # it, rebuilt independently, is finite and the one after it is not
    y0 = torch.ones(1, dtype=F64)

    def f(t, y):
        return y**2

    with pytest.raises(neurode.NonFiniteStateError) as e:
        odeint(f, y0, [0.0, 3.0], method="euler", options=dict(step_size=0.05))
    start = _numbers(str(e.value), "from t=")[0]
    n = round(start / 0.05)
    before = odeint(f, y0, [0.0, n * 0.05], method="euler", options=dict(steps=n))[-1]
    assert torch.isfinite(before).all()
    assert not torch.isfinite(before + 0.05 * before**2).all()


def test_f_non_finite_at_start_adaptive():
    # f is NaN everywhere: no step size helps, and the error must say so (not loop
    # until max_steps)
    with pytest.raises(neurode.NonFiniteStateError, match="NaN/Inf.*near t=0"):
        odeint(lambda t, y: y * math.nan, Y0, T)


def test_f_non_finite_after_some_time_adaptive():
    def f(t, y):
        return torch.where(t > 0.5, math.inf, -1.0) * y

    with pytest.raises(neurode.NonFiniteStateError) as e:
        odeint(f, Y0, T)
    # progress stops right at the point where f becomes infinite
    assert _numbers(str(e.value), "near t=")[0] == pytest.approx(0.5, abs=1e-5)


def test_step_size_underflow_at_singularity():
    # y' = 1/(1 - t) is singular at t = 1; integrating to 2 the step size must collapse
    def f(t, y):
        return (1 / (1 - t)).expand_as(y)

    with pytest.raises(neurode.StepSizeUnderflowError, match="step size underflow") as e:
        odeint(f, torch.zeros(1, dtype=F64), [0.0, 2.0], method="dopri5")
    msg = str(e.value)
    assert _numbers(msg, "at t=")[0] == pytest.approx(1.0, abs=1e-6)
    assert _numbers(msg, "h=")[0] < 1e-10
    assert "min_step" in msg  # says what to try


def test_step_size_underflow_huge_time():
    # at t = 1e20 float64 times are 16384 apart: no step can advance t
    with pytest.raises(neurode.StepSizeUnderflowError, match="float64"):
        odeint(decay, Y0, [1e20, 1e20 + 1e5])


def test_max_steps_exceeded_adaptive():
    with pytest.raises(neurode.MaxStepsExceededError, match="max_steps=3") as e:
        odeint(decay, Y0, [0.0, 30.0], options=dict(max_steps=3))
    msg = str(e.value)
    reached = _numbers(msg, "reached at t=")[0]
    assert 0.0 < reached < 30.0
    assert "before reaching t=30" in msg


def test_max_steps_exceeded_fixed_grid():
    with pytest.raises(neurode.MaxStepsExceededError, match="needs 300 steps.*max_steps=3"):
        odeint(decay, Y0, [0.0, 30.0], method="rk4", options=dict(step_size=0.1, max_steps=3))


# ---------------------------------------------------------------------------
# Options, methods, combinations
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rtol", "atol"])
@pytest.mark.parametrize("value", [-1e-6, math.nan, "tight"])
def test_bad_tolerance(name, value):
    with pytest.raises(neurode.InvalidOptionError, match=f"{name} must be a finite number >= 0"):
        odeint(decay, Y0, T, **{name: value})


def test_both_tolerances_zero():
    with pytest.raises(neurode.InvalidOptionError, match="cannot both be 0"):
        odeint(decay, Y0, T, rtol=0, atol=0)


def test_unknown_method_lists_valid_ones():
    with pytest.raises(neurode.UnknownMethodError, match="'rk5'") as e:
        odeint(decay, Y0, T, method="rk5")
    for name in ("euler", "midpoint", "heun", "rk4", "bosh3", "dopri5", "tsit5", "alf"):
        assert f"'{name}'" in str(e.value)


def test_unknown_gradient_lists_valid_ones():
    with pytest.raises(neurode.UnknownMethodError, match="'magic'") as e:
        odeint(decay, Y0, T, gradient="magic")
    for name in ("direct", "checkpoint", "adjoint", "reversible"):
        assert f"'{name}'" in str(e.value)


def test_unknown_option_lists_valid_options():
    with pytest.raises(neurode.InvalidOptionError, match="'stepsize'") as e:
        odeint(decay, Y0, T, options=dict(stepsize=0.1))
    for name in ("step_size", "steps", "first_step", "max_step", "max_num_steps"):
        assert f"'{name}'" in str(e.value)


@pytest.mark.parametrize("opt", [dict(first_step=0.1), dict(max_step=0.2), dict(safety=0.8)])
def test_adaptive_option_on_fixed_grid(opt):
    (name,) = opt
    with pytest.raises(neurode.InvalidOptionError, match="only apply to adaptive") as e:
        odeint(decay, Y0, T, method="dopri5", options=dict(step_size=0.1, **opt))
    assert name in str(e.value) and "fixed grid" in str(e.value)


def test_adaptive_option_with_fixed_only_method():
    with pytest.raises(neurode.InvalidOptionError, match="'rk4' has no error estimate"):
        odeint(decay, Y0, T, method="rk4", options=dict(first_step=0.1))


def test_reversible_gradient_with_rk4():
    y0 = Y0.clone().requires_grad_(True)
    with pytest.raises(neurode.UnsupportedCombinationError, match="'rk4' cannot") as e:
        odeint(decay, y0, T, method="rk4", gradient="reversible")
    assert "alf" in str(e.value) and "Reversible" in str(e.value)  # says what to use


@pytest.mark.parametrize(
    "options, words",
    [
        (dict(steps=2, step_size=0.1), "either step_size or steps"),
        (dict(steps=2.5), "positive integer"),
        (dict(steps=0), "positive integer"),
        (dict(step_size=-1.0), "step_size must be finite and > 0"),
        (dict(max_steps=0), "max_steps must be a positive integer"),
        (dict(max_steps=5, max_num_steps=5), "not both"),
        (dict(first_step=0.0), "first_step must be finite and > 0"),
        (dict(min_step=1.0, max_step=0.1), "exceeds max_step"),
        (dict(max_step=0.0), "max_step must be > 0"),
        (dict(safety=-1.0), "safety must be finite and > 0"),
        (dict(ifactor=0.5), "dfactor < 1 < ifactor"),
        (dict(dfactor=1.5), "dfactor < 1 < ifactor"),
        (dict(controller="PID"), "'I' or 'PI'"),
    ],
)
def test_bad_option_values(options, words):
    with pytest.raises(neurode.InvalidOptionError, match=re.escape(words)):
        odeint(decay, Y0, T, options=options)


def test_params_must_be_tensors():
    with pytest.raises(neurode.InvalidOptionError, match="params must be tensors, got float"):
        odeint(decay, Y0, T, params=[1.0])


@pytest.mark.parametrize("damping", [0.5, 0.0, 1.5, -1.0])
def test_bad_alf_damping(damping):
    with pytest.raises(neurode.InvalidOptionError, match="damping"):
        neurode.ALF(damping=damping)


def test_bad_reversible_base_and_coupling():
    with pytest.raises(neurode.InvalidOptionError, match="base must be one of.*'rk4'"):
        neurode.Reversible("rk9")
    with pytest.raises(neurode.InvalidOptionError, match="coupling"):
        neurode.Reversible("rk4", coupling=0.0)


# ---------------------------------------------------------------------------
# The hierarchy
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls",
    [
        neurode.InvalidTimesError,
        neurode.InvalidStateError,
        neurode.FunctionOutputError,
        neurode.InvalidOptionError,
        neurode.UnknownMethodError,
        neurode.UnsupportedCombinationError,
        neurode.NonFiniteStateError,
        neurode.StepSizeUnderflowError,
        neurode.MaxStepsExceededError,
    ],
)
def test_all_errors_derive_from_neurode_error(cls):
    assert issubclass(cls, neurode.NeurodeError)
    assert issubclass(cls, Exception)


def test_neurode_error_catches_a_real_failure():
    with pytest.raises(neurode.NeurodeError):
        odeint(decay, Y0, [0.0, 0.0])
