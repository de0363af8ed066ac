"""``method="scipy_solver"``: any ``scipy.integrate.solve_ivp`` method, forward only.

As in torchdiffeq, ``odeint(f, y0, t, method="scipy_solver",
options=dict(solver="LSODA"))`` hands the whole solve to
:func:`scipy.integrate.solve_ivp` (its own step control and dense output, ``t`` as
``t_eval``), evaluating ``f`` on float64 NumPy copies of the state. Options:
``solver`` (any ``solve_ivp`` method: ``"LSODA"`` (the default, as in
torchdiffeq), ``"RK45"``, ``"RK23"``, ``"DOP853"``, ``"Radau"``, ``"BDF"``),
``first_step``, ``max_step`` and ``min_step`` (LSODA only); others raise.

**No gradients.** SciPy computes on detached NumPy arrays, so the result cannot
carry a gradient. Rather than return a silently detached result, a solve raises
:class:`~neurode.UnsupportedCombinationError` when grad mode is on and anything
the result depends on requires grad: ``y0``, ``t``, ``params=``, or a tensor
``f`` uses (found by walking the graph of one evaluation of ``f``, as parameter
discovery does). Run it under ``torch.no_grad()`` for a forward-only solve, or
use a neurode method (``"dopri5"``, ``"dopri8"``, ...) for gradients. SciPy is
imported on first use only (it is not a dependency of the library).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from ..errors import (
    InvalidOptionError,
    MaxStepsExceededError,
    NonFiniteStateError,
    StepSizeUnderflowError,
    UnsupportedCombinationError,
)
from .base import Solver, State, VectorField

OPTIONS = ("solver", "first_step", "max_step", "min_step")
SCIPY_METHODS = ("LSODA", "RK45", "RK23", "DOP853", "Radau", "BDF")
_WHY = (
    "scipy_solver computes on detached NumPy copies and cannot give gradients; run it "
    "under torch.no_grad() for a forward-only solve, or use a neurode method such as "
    "'dopri5' or 'dopri8' (every gradient method works with those)"
)


def _solve_ivp():
    try:
        from scipy.integrate import solve_ivp
    except ImportError as e:  # scipy is not a dependency of the library
        raise ImportError(
            "method='scipy_solver' needs SciPy: pip install scipy (or neurode[app])"
        ) from e
    return solve_ivp


class ScipySolver(Solver):
    """A :func:`scipy.integrate.solve_ivp` method as a neurode method (forward only).

    Args:
        solver: the ``solve_ivp`` method name (default ``"LSODA"``, torchdiffeq's).
        rtol, atol: tolerances of :meth:`step` (a whole ``odeint`` solve uses odeint's).
        first_step, max_step, min_step: passed to ``solve_ivp`` when given.

    ``odeint`` hands the whole solve to SciPy (:meth:`solve`); :meth:`step` solves
    one interval, for callers that drive the stepping loop themselves (e.g. a
    fixed-grid backward solve of the adjoint).
    """

    name = "scipy_solver"
    order = 1  # unknown (scipy's methods pick their own); only used as a hint
    error_order = None  # neurode does not control its steps

    def __init__(
        self,
        solver: str = "LSODA",
        rtol: float = 1e-7,
        atol: float = 1e-9,
        first_step: float | None = None,
        max_step: float | None = None,
        min_step: float | None = None,
    ):
        if solver not in SCIPY_METHODS and not isinstance(solver, type):
            raise InvalidOptionError(
                f"option solver must be a scipy.integrate.solve_ivp method, one of "
                f"{list(SCIPY_METHODS)} (or an OdeSolver subclass), got {solver!r}"
            )
        self.solver = solver
        self.rtol, self.atol = rtol, atol
        self.kwargs = {}
        if first_step is not None:
            self.kwargs["first_step"] = _positive("first_step", first_step)
        if max_step is not None:  # inf: no bound (solve_ivp's own default)
            self.kwargs["max_step"] = _positive("max_step", max_step, allow_inf=True)
        if min_step is not None:
            self.kwargs["min_step"] = _positive("min_step", value=min_step, allow_zero=True)

    def __repr__(self) -> str:
        return f"ScipySolver({self.solver!r})"

    def configured(self, options: dict | None) -> ScipySolver:
        """This solver with ``odeint``'s ``options`` applied (unknown names raise)."""
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise InvalidOptionError(
                f"options must be a dict such as dict(solver='LSODA'), got {type(options).__name__}"
            )
        unknown = sorted(str(k) for k in set(options) - set(OPTIONS))
        if unknown:
            raise InvalidOptionError(
                f"unknown option(s) {unknown} for method='scipy_solver'; valid options are "
                f"{list(OPTIONS)} (scipy's solve_ivp controls its own steps)"
            )
        kw = dict(self.kwargs)
        kw.update({k: v for k, v in options.items() if k != "solver"})
        return ScipySolver(options.get("solver", self.solver), self.rtol, self.atol, **kw)

    # --- the whole solve (odeint) ------------------------------------------------------
    def solve(self, field, y0: Tensor, times: list[float], rtol, atol, inputs=()):
        """Solve through every time in ``times``: ``ys`` of shape ``(len(times), *y0.shape)``
        (a tuple for tuple states).

        ``field`` is odeint's checked, counting ``f``; ``inputs`` are the tensors the
        caller passed (``t``, ``params=``) that must not require grad. Raises
        :class:`~neurode.UnsupportedCombinationError` if a gradient is asked for.
        """
        rtol, atol = _tolerance("rtol", rtol), _tolerance("atol", atol)
        if rtol == 0 and atol == 0:
            raise InvalidOptionError("rtol and atol cannot both be 0")
        solve_ivp = _solve_ivp()  # a missing scipy fails before f runs
        if len(times) == 1:  # no solve: y0 itself, and its gradient, as every method gives
            ys = y0[None]
            if field.structure is not None:
                shapes, numels = field.structure
                return tuple(p.reshape(1, *s) for p, s in zip(ys.split(numels, dim=1), shapes))
            return ys
        _warn_uncalled_callbacks(field)
        if torch.is_grad_enabled():
            asked = [q for q in (y0, *inputs) if isinstance(q, Tensor) and q.requires_grad]
            if asked:
                raise UnsupportedCombinationError(f"y0, t or params= requires grad, but {_WHY}")
            # a tensor f uses that requires grad (a module's parameters, a closure) would get
            # no gradient: find it on one evaluation's graph, as parameter discovery does
            from .._inputs import graph_leaves

            used = graph_leaves(field(times[0], y0))
            if used:
                shapes = ", ".join(str(tuple(q.shape)) for q in used[:3])
                raise UnsupportedCombinationError(
                    f"f uses {len(used)} tensor(s) that require grad (shapes {shapes}"
                    f"{', ...' if len(used) > 3 else ''}), but {_WHY}"
                )
        ys = self._run(solve_ivp, field, y0, times, rtol, atol).reshape(len(times), *y0.shape)
        if field.structure is not None:  # a tuple state: odeint's flat layout back to a tuple
            shapes, numels = field.structure
            parts = ys.split(numels, dim=1)
            return tuple(part.reshape(len(times), *s) for part, s in zip(parts, shapes))
        return ys

    def _run(self, solve_ivp, f, y0: Tensor, times: list[float], rtol, atol) -> Tensor:
        shape, dtype, device = y0.shape, y0.dtype, y0.device

        def fun(t, y):
            y = torch.from_numpy(y).to(device=device, dtype=dtype).reshape(shape)
            with torch.no_grad():
                out = f(float(t), y).detach().to("cpu", torch.float64).reshape(-1)
            if not bool(torch.isfinite(out).all()):
                # scipy would shrink its step on NaN/Inf (LSODA can loop for very long)
                raise NonFiniteStateError(
                    f"f(t, y) returned NaN/Inf at t={float(t):.6g} during scipy's solve_ivp "
                    f"({self.solver}); the solution may blow up there. Check f for overflow, "
                    f"or end the solve earlier"
                )
            return out.numpy()

        start = y0.detach().to("cpu", torch.float64).reshape(-1).numpy()
        span = (times[0], times[-1])
        kw = dict(method=self.solver, t_eval=times, rtol=rtol, atol=atol, **self.kwargs)
        sol = solve_ivp(fun, span, start, **kw)
        if sol.status != 0 or sol.y.shape[1] != len(times):
            reached = sol.t[-1] if len(sol.t) else times[0]
            msg = (
                f"scipy's solve_ivp ({self.solver}) failed after the output at t={reached:.6g}, "
                f"before t={times[-1]:.6g}: {str(sol.message).rstrip('.')}"
            )
            if "excess work" in str(sol.message).lower():
                raise MaxStepsExceededError(msg)
            raise StepSizeUnderflowError(
                f"{msg}; the problem may be stiff or singular there, or f may return NaN/Inf. "
                f"Try solver='LSODA', 'BDF' or 'Radau', or loosen rtol/atol"
            )
        return torch.from_numpy(sol.y.T.copy()).to(device=device, dtype=dtype)

    # --- one step (for callers that drive the stepping loop) -----------------------------
    def step(self, f: VectorField, t: float, h: float, x: State) -> tuple[State, None]:
        y = x[0]
        if torch.is_grad_enabled() and y.requires_grad:
            raise UnsupportedCombinationError(f"the state requires grad, but {_WHY}")
        ys = self._run(_solve_ivp(), f, y, [t, t + h], self.rtol, self.atol)
        return (ys[-1].reshape(y.shape),), None


def _warn_uncalled_callbacks(field) -> None:
    """scipy takes its steps out of reach: ``func``'s step callbacks are never called."""
    func = getattr(field, "func", None)
    names = [
        f"callback_{n}"
        for n in ("step", "accept_step", "reject_step")
        if callable(getattr(func, f"callback_{n}", None))
    ]
    if names:
        warnings.warn(
            f"scipy_solver never calls func.{', func.'.join(names)}: scipy's solve_ivp takes "
            "the steps; use a neurode method (e.g. 'dopri5') for step callbacks",
            UserWarning,
            stacklevel=4,
        )


def _positive(name: str, value, allow_zero: bool = False, allow_inf: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        value = float(value)
        finite = math.isfinite(value) or (allow_inf and value == math.inf)
        ok = finite and (value > 0 or (allow_zero and value == 0))
    if not ok:
        kind = "a number" if allow_inf else "a finite number"
        raise InvalidOptionError(
            f"option {name} must be {kind} {'>= 0' if allow_zero else '> 0'}, got {value!r}"
        )
    return value


def _tolerance(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InvalidOptionError(f"{name} must be a finite number >= 0, got {value!r}") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidOptionError(f"{name} must be a finite number >= 0, got {value}")
    return value
