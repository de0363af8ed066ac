"""Inputs that used to be silent, misleading or raw: each raises a specific NeurodeError."""

from __future__ import annotations

import math

import pytest
import torch

import neurode
from neurode import ALF, Adjoint, Checkpoint, Reversible, ReversibleGradient, odeint

F64 = torch.float64


def decay(t, y):
    return -y


def never_called(t, y):
    raise AssertionError("f must not be evaluated before the configuration is checked")


Y0 = torch.tensor([1.0, 2.0], dtype=F64)
T = torch.tensor([0.0, 1.0], dtype=F64)


@pytest.mark.parametrize("gradient", ["checkpoint", Checkpoint(budget=2), "reversible", "adjoint"])
def test_double_backward_raises_naming_direct(gradient):
    w = torch.tensor(0.7, dtype=F64, requires_grad=True)
    method = "alf" if gradient == "reversible" else "rk4"
    ys = odeint(lambda t, y: -w * y, Y0, T, method=method, options=dict(step_size=0.1),
                gradient=gradient)  # fmt: skip
    with pytest.raises(neurode.UnsupportedCombinationError, match="gradient='direct'"):
        torch.autograd.grad(ys.sum(), w, create_graph=True)


def test_double_backward_through_direct_works():
    w = torch.tensor(0.7, dtype=F64, requires_grad=True)
    ys = odeint(lambda t, y: -w * y, Y0, T, method="rk4", options=dict(step_size=0.1))
    (g,) = torch.autograd.grad(ys[-1].sum(), w, create_graph=True)
    (h,) = torch.autograd.grad(g, w)
    # y(1) = e^{-w} y0 up to rk4's O(h^4): d²/dw² = e^{-w} Σy0
    assert math.isclose(float(h), math.exp(-0.7) * 3.0, rel_tol=1e-4)


def test_fixed_step_below_time_resolution_raises():
    t = torch.tensor([1e16, 1e16 + 2], dtype=F64)
    with pytest.raises(neurode.StepSizeUnderflowError, match="float64"):
        odeint(decay, Y0, t, method="rk4", options=dict(step_size=0.1))


def test_underflow_threshold_uses_the_current_time():
    # steps start at 1e-6 and grow tenfold: float64 resolves them near t=0 although it
    # could not at t=1e14 (the old threshold, taken at the far end, aborted at once)
    sol = neurode.solve(lambda t, y: torch.zeros_like(y), Y0, torch.tensor([0.0, 1e14], dtype=F64))
    assert torch.equal(sol.ys[-1], Y0) and sol.stats.accepted_steps < 40
    # y' = -y over [0, 1e14] is limited by dopri5's stability, not by time resolution
    with pytest.raises(neurode.MaxStepsExceededError):
        odeint(decay, Y0, torch.tensor([0.0, 1e14], dtype=F64), options=dict(max_steps=300))


@pytest.mark.parametrize("eta", [0.5 + 1e-10, 0.5 - 1e-6, 0.5004])
def test_alf_damping_too_close_to_half_is_rejected(eta):
    with pytest.raises(neurode.InvalidOptionError, match="2η − 1"):
        ALF(damping=eta)


def _stiff_reversible(on_drift):
    w = torch.tensor(1.0, dtype=F64, requires_grad=True)
    sol = neurode.solve(lambda t, y: -30.0 * w * y, Y0, T, method=ALF(damping=0.6),
                        options=dict(step_size=0.01), gradient=ReversibleGradient(on_drift=on_drift))  # fmt: skip
    sol.ys.sum().backward()
    return sol.stats


def test_reversible_drift_warns_raises_or_is_ignored():
    with pytest.warns(neurode.ReconstructionDriftWarning, match="rebuilt y0"):
        stats = _stiff_reversible("warn")
    assert stats.reconstruction_drift > 1e-6
    with pytest.raises(neurode.ReconstructionDriftError):
        _stiff_reversible("raise")
    assert _stiff_reversible("ignore").reconstruction_drift > 1e-6


def test_reversible_reports_small_drift_when_exact():
    y0 = Y0.clone().requires_grad_(True)
    sol = neurode.solve(decay, y0, T, method="alf", options=dict(step_size=0.1),
                        gradient="reversible")  # fmt: skip
    sol.ys.sum().backward()
    assert sol.stats.reconstruction_drift < 1e-13


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_y0_is_named_before_the_first_step(bad):
    with pytest.raises(neurode.InvalidStateError, match="NaN or Inf.*index \\(1,\\)"):
        odeint(never_called, torch.tensor([1.0, bad]), T)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_adaptive_measures_error_in_float32(dtype):
    ys = odeint(decay, torch.tensor([1.0, 2.0], dtype=dtype), T, rtol=1e-2, atol=1e-3)
    assert ys.dtype == dtype
    assert torch.allclose(ys[-1].float(), torch.tensor([1.0, 2.0]) * math.exp(-1), rtol=2e-2)


def test_f_infinite_at_t0_names_t0_not_zero_division():
    with pytest.raises(neurode.NonFiniteStateError, match="f\\(t0, y0\\)"):
        odeint(lambda t, y: 1.0 / y, torch.tensor([0.0, 1.0], dtype=F64), T)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: odeint(decay, Y0, ["a", "b"]), neurode.InvalidTimesError, "numbers"),
        (lambda: odeint(decay, Y0, "01"), neurode.InvalidTimesError, "sequence"),
        (lambda: odeint(decay, torch.empty(2, device="meta"), T), neurode.InvalidStateError, "meta"),
        (lambda: odeint(decay, torch.eye(2).to_sparse(), T), neurode.InvalidStateError, "layout"),
        (lambda: odeint(decay, Y0, T, options=[("step_size", 0.1)]), neurode.InvalidOptionError, "dict"),
        (lambda: odeint(decay, Y0, T, options=dict(max_num_steps=math.inf)), neurode.InvalidOptionError, "max_steps"),
        (lambda: odeint(decay, Y0, T, options=dict(norm=3)), neurode.InvalidOptionError, "callable"),
        (lambda: odeint(decay, Y0, T, options=dict(norm=lambda x: x.abs())), neurode.InvalidOptionError, "scalar"),
        (lambda: odeint(decay, Y0, T, options=dict(safety=2)), neurode.InvalidOptionError, "safety"),
        (lambda: Checkpoint(budget=math.nan), neurode.InvalidOptionError, "budget"),
        (lambda: ALF(damping=None), neurode.InvalidOptionError, "number"),
        (lambda: Reversible(coupling="x"), neurode.InvalidOptionError, "number"),
        (lambda: neurode.RungeKutta("nope"), neurode.UnknownMethodError, "nope"),
        (lambda: odeint(3, Y0, T), neurode.InvalidOptionError, "callable"),
    ],
)  # fmt: skip
def test_raw_exceptions_became_neurode_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_fixed_grid_has_the_default_step_cap_before_stepping():
    with pytest.raises(neurode.MaxStepsExceededError, match="max_steps=100000"):
        odeint(never_called, Y0, T, method="rk4", options=dict(step_size=1e-12))


def test_adjoint_backward_configuration_raises_before_f_runs():
    with pytest.raises(neurode.UnsupportedCombinationError, match="no error estimate"):
        odeint(never_called, Y0.requires_grad_(False), T, gradient=Adjoint(method="rk4"))
    with pytest.raises(neurode.UnknownMethodError):
        odeint(never_called, Y0, T, gradient=Adjoint(method="nope"))


def test_times_requiring_grad_are_refused_not_treated_as_constants():
    # the adjoint's time derivative is not given across jump_t's pieces
    t = T.clone().requires_grad_(True)
    kw = dict(options=dict(jump_t=[0.5]), gradient="adjoint")
    with pytest.raises(neurode.UnsupportedCombinationError, match="t.detach"):
        odeint(decay, Y0, t, **kw)
    with torch.no_grad():  # without gradients there is nothing to drop
        odeint(decay, Y0, t, **kw)
