"""Step-size control: fixed grids, the adaptive I/PI controller, the initial step.

Step-size decisions are made on detached values and are never differentiated:
every gradient method treats the accepted grid ``(t_i, h_i)`` as constants. This
is what makes checkpoint and reversible gradients *the* gradient of the
discretisation that was actually run, and it matches torchdiffeq and diffrax.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InvalidOptionError, NonFiniteStateError, UnsupportedCombinationError

_HALF = (torch.float16, torch.bfloat16)


def _positive(name: str, value, allow_zero: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InvalidOptionError(f"option {name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidOptionError(f"option {name} must be finite and {bound}, got {value}")
    return value


DEFAULT_MAX_STEPS = 100_000


def _count(name: str, value) -> int:
    """A positive integer option (``max_steps``, ``steps``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and isinstance(value, float):
        ok = math.isfinite(value) and value == int(value)
    if not ok or int(value) < 1:
        raise InvalidOptionError(f"option {name} must be a positive integer, got {value!r}")
    return int(value)


def norm_option(norm, rtol: float, atol: float, structure=None):
    """The ``norm`` option in neurode's form ``norm(err, y0, y1) -> scalar``.

    torchdiffeq's one-argument form ``norm(x)`` is applied, as torchdiffeq does,
    to the error already divided by ``atol + rtol·max(|y0|, |y1|)``; for a tuple
    state (``structure``: its shapes and sizes) ``x`` is the tuple of its parts.
    """
    if not callable(norm):
        raise InvalidOptionError(f"option norm must be callable, got {type(norm).__name__}")
    try:
        sig = inspect.signature(norm)
        positional = [
            p
            for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
        varargs = any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: assume neurode's form
        return norm
    if len(positional) == 1 and not varargs:

        def scaled(err: Tensor, y0: Tensor, y1: Tensor) -> Tensor:
            x = err / (torch.maximum(y0.abs(), y1.abs()) * rtol + atol)
            if structure is not None and x.dim() == 1:
                shapes, numels = structure
                x = tuple(p.view(s) for p, s in zip(x.split(numels), shapes))
            return norm(x)

        return scaled
    if len(positional) == 3 or varargs:
        return norm
    raise InvalidOptionError(
        f"option norm must take one argument (torchdiffeq's norm(x) of the scaled error) or "
        f"three (norm(err, y0, y1)), got a function of {len(positional)}"
    )


def _scalar(value, what: str = "norm") -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise InvalidOptionError(
                f"option {what} must return a scalar, got a tensor of shape {tuple(value.shape)}"
            )
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidOptionError(
            f"option {what} must return a scalar, got {type(value).__name__}"
        ) from None


@dataclass(frozen=True)
class FixedGrid:
    """A fixed grid, always accepted.

    - ``step_size``: one grid ``t0, t0 + h, t0 + 2h, …`` over the whole solve, its last
      step ending on the last output (torchdiffeq's convention); outputs between
      grid points are interpolated (``interp="linear"``, torchdiffeq's default, or
      ``"cubic"``: the solver's own interpolant). With ``exact_outputs=True`` the
      grid restarts at every output instead, its last step shortened to land on it.
    - ``steps``: that many equal steps per output interval (outputs are grid points).
    - ``grid_constructor(func, y0, t)`` (torchdiffeq's): the grid it returns, from
      ``t[0]`` to ``t[-1]``, outputs between its points interpolated; ``odeint``
      calls it and hands the points over as ``grid_points``.
    - neither: one step per output interval.
    - ``perturb`` (torchdiffeq's): evaluations of ``f`` at either end of a step move
      one ulp of the state's dtype into the step (``f`` at a grid point is then its
      one-sided limit from inside the step: for ``f`` discontinuous at grid points).
    """

    step_size: float | None = None
    steps: int | None = None
    max_steps: int = DEFAULT_MAX_STEPS
    exact_outputs: bool = False
    interp: str = "linear"
    grid_constructor: Callable | None = None
    grid_points: tuple[float, ...] | None = None
    perturb: bool = False

    def __post_init__(self):
        object.__setattr__(self, "perturb", _flag("perturb", self.perturb))
        if self.step_size is not None and self.steps is not None:
            raise InvalidOptionError("give either step_size or steps, not both")
        if self.step_size is not None:
            object.__setattr__(self, "step_size", _positive("step_size", self.step_size))
        if self.steps is not None:
            object.__setattr__(self, "steps", _count("steps", self.steps))
        if self.max_steps is None:
            object.__setattr__(self, "max_steps", DEFAULT_MAX_STEPS)
        object.__setattr__(self, "max_steps", _count("max_steps", self.max_steps))
        object.__setattr__(self, "exact_outputs", _flag("exact_outputs", self.exact_outputs))
        if self.interp not in INTERPOLATIONS:
            raise InvalidOptionError(
                f"option interp must be one of {INTERPOLATIONS}, got {self.interp!r}"
            )
        if self.grid_constructor is not None:
            if self.step_size is not None or self.steps is not None:
                raise InvalidOptionError("give grid_constructor or step_size/steps, not both")
            if not callable(self.grid_constructor):
                raise InvalidOptionError(
                    "option grid_constructor must be callable as grid_constructor(func, y0, t)"
                )
            if self.exact_outputs:
                raise InvalidOptionError(
                    "grid_constructor gives the grid itself; put the output times in it "
                    "instead of exact_outputs=True"
                )

    def with_grid(self, points, times: list[float]) -> FixedGrid:
        """This grid with the points a ``grid_constructor`` returned, validated."""
        try:
            pts = [
                float(v)
                for v in (
                    points.detach().cpu().reshape(-1).tolist()
                    if hasattr(points, "detach")
                    else points
                )
            ]
        except (TypeError, ValueError):
            raise InvalidOptionError(
                f"grid_constructor must return a 1-D tensor of times, got {type(points).__name__}"
            ) from None
        if len(pts) < 2 or pts[0] != times[0] or pts[-1] != times[-1]:
            raise InvalidOptionError(
                f"grid_constructor's grid must start at t[0]={times[0]} and end at "
                f"t[-1]={times[-1]} (got {pts[:1]} … {pts[-1:]})"
            )
        sign = 1.0 if times[-1] > times[0] else -1.0
        if not all(math.isfinite(v) for v in pts) or any(
            (b - a) * sign <= 0 for a, b in zip(pts[:-1], pts[1:])
        ):
            raise InvalidOptionError(
                "grid_constructor's grid must be finite and strictly monotone in t's direction"
            )
        return dataclasses.replace(self, grid_constructor=None, grid_points=tuple(pts))

    def between(self, t0: float, t1: float) -> FixedGrid:
        """This ``grid_points`` grid cut to ``[t0, t1]`` (either order): its points strictly
        inside, with ``t0`` and ``t1`` as ends (the adjoint walks a forward grid back
        one output interval at a time)."""
        lo, hi = min(t0, t1), max(t0, t1)
        inner = sorted((g for g in self.grid_points if lo < g < hi), reverse=t1 < t0)
        return dataclasses.replace(self, grid_points=(t0, *inner, t1))

    @property
    def dense(self) -> bool:
        """Whether outputs may fall inside steps (one grid over the whole solve)."""
        if self.grid_points is not None:
            return True
        return self.step_size is not None and not self.exact_outputs

    def segments(self, times: list[float]) -> list[tuple[float, float]]:
        """The stretches the grid restarts on: the whole solve, or every output interval."""
        if self.dense:
            return [(times[0], times[-1])]
        return list(zip(times[:-1], times[1:]))

    def count(self, t0: float, t1: float) -> int:
        """Number of steps from ``t0`` to ``t1``."""
        if self.grid_points is not None:
            return len(self.grid_points) - 1
        if self.steps is not None:
            return self.steps
        if self.step_size is not None:
            # a remainder below 1e-9 of a step would be a meaningless sliver: absorb it
            return max(1, math.ceil(abs(t1 - t0) / self.step_size - 1e-9))
        return 1

    def iter_interval(self, t0: float, t1: float) -> Iterator[tuple[float, float, float]]:
        """The ``(t, h, t + h)`` of every step from ``t0`` to ``t1``, generated lazily
        (memory stays flat in the number of steps); the last step ends exactly on ``t1``."""
        span = t1 - t0
        n = self.count(t0, t1)
        h = math.copysign(self.step_size, span) if self.step_size is not None else None
        start = t0
        for i in range(1, n + 1):
            end = t1 if i == n else (t0 + i * h if h is not None else t0 + span * i / n)
            yield start, end - start, end
            start = end

    def grid(self, times: list[float]) -> Iterator[tuple[float, float, float]]:
        """Every step of the solve, in order."""
        if self.grid_points is not None:
            pts = self.grid_points
            for a, b in zip(pts[:-1], pts[1:]):
                yield a, b - a, b
            return
        for a, b in self.segments(times):
            yield from self.iter_interval(a, b)

    def total(self, times: list[float]) -> int:
        return sum(self.count(a, b) for a, b in self.segments(times))


INTERPOLATIONS = ("linear", "cubic")


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise InvalidOptionError(f"option {name} must be True or False, got {value!r}")
    return value


def rms_norm(x: Tensor) -> Tensor:
    if x.numel() == 0:  # an empty state has no error (mean() of nothing is NaN)
        return x.new_zeros(())
    return x.pow(2).mean().sqrt()


@dataclass
class Adaptive:
    """Adaptive step-size control.

    Error ratio ``r = RMS(err / (atol + rtol·max(|y|, |y'|)))``; a step is
    accepted when ``r ≤ 1``. The next step is
    ``h · clamp(safety · r^(−β₁) · r_prev^(β₂), dfactor, ifactor)`` with
    ``β₁ = 1/(q+1)`` and ``β₂ = 0`` for the I controller (default) or the PI
    controller's ``β₁ = 0.7/(q+1)``, ``β₂ = 0.4/(q+1)`` (Hairer–Wanner II, IV.2),
    ``q`` the order of the embedded error estimate.
    """

    rtol: float = 1e-7
    atol: float = 1e-9
    first_step: float | None = None
    max_steps: int = 100_000  # DEFAULT_MAX_STEPS
    min_step: float = 0.0
    max_step: float = math.inf
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    controller: str = "I"
    norm: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None
    exact_outputs: bool = False
    jump_t: tuple[float, ...] = ()

    def __post_init__(self):
        self.rtol = _positive("rtol", self.rtol, allow_zero=True)
        self.atol = _positive("atol", self.atol, allow_zero=True)
        if self.rtol == 0 and self.atol == 0:
            raise InvalidOptionError("rtol and atol cannot both be 0")
        if self.first_step is not None:
            self.first_step = _positive("first_step", self.first_step)
        self.jump_t = _times("jump_t", self.jump_t)
        self.max_steps = _count("max_steps", self.max_steps)
        self.min_step = _positive("min_step", self.min_step, allow_zero=True)
        self.max_step = float(self.max_step)
        if not self.max_step > 0:
            raise InvalidOptionError(f"max_step must be > 0, got {self.max_step}")
        if self.min_step > self.max_step:
            raise InvalidOptionError(f"min_step {self.min_step} exceeds max_step {self.max_step}")
        self.safety = _positive("safety", self.safety)
        if self.safety > 1.0:
            raise InvalidOptionError(
                f"option safety must lie in (0, 1] (it shrinks the proposed step), got {self.safety}"
            )
        self.ifactor = _positive("ifactor", self.ifactor)
        self.dfactor = _positive("dfactor", self.dfactor)
        if not (self.dfactor < 1.0 < self.ifactor):
            raise InvalidOptionError(
                f"need dfactor < 1 < ifactor, got dfactor={self.dfactor}, ifactor={self.ifactor}"
            )
        self.exact_outputs = _flag("exact_outputs", self.exact_outputs)
        if self.controller not in ("I", "PI"):
            raise InvalidOptionError(f"controller must be 'I' or 'PI', got {self.controller!r}")

    def error_ratio(self, err: Tensor, y0: Tensor, y1: Tensor) -> float:
        with torch.no_grad():
            if self.norm is not None:
                return _scalar(self.norm(err, y0, y1))
            if err.dtype in _HALF:  # half precision cannot hold err / tol: norm in float32
                err, y0, y1 = err.float(), y0.float(), y1.float()
            # two state-sized temporaries instead of five; the same values as
            # rms_norm(err / (atol + rtol * max(|y0|, |y1|)))
            scale = y0.abs()
            other = y1.abs()
            torch.maximum(scale, other, out=scale)
            scale.mul_(self.rtol).add_(self.atol)
            ratio = torch.div(err, scale, out=other)
            if ratio.numel() == 0:
                return float(rms_norm(ratio))
            return float(ratio.square_().mean().sqrt())  # rms_norm, squaring in place

    def scaled_norm(self, x: Tensor, y0: Tensor) -> float:
        with torch.no_grad():
            if self.norm is not None:
                return _scalar(self.norm(x, y0, y0))
            if x.dtype in _HALF:
                x, y0 = x.float(), y0.float()
            return float(rms_norm(x / (y0.abs() * self.rtol + self.atol)))

    def factor(self, r: float, r_prev: float, q: int) -> float:
        """The factor by which to multiply h after a step with error ratio ``r``."""
        if r == 0.0:
            return self.ifactor
        if not math.isfinite(r):
            return self.dfactor
        if self.controller == "PI":
            fac = self.safety * r ** (-0.7 / (q + 1)) * r_prev ** (0.4 / (q + 1))
        else:
            fac = self.safety * r ** (-1.0 / (q + 1))
        return min(self.ifactor, max(self.dfactor, fac))

    def initial_step(
        self, f, t0: float, y0: Tensor, f0: Tensor, direction: float, order: int
    ) -> float:
        """Hairer, Nørsett & Wanner, Solving ODEs I, §II.4: one extra evaluation of f."""
        if self.first_step is not None:
            return self.first_step
        with torch.no_grad():
            d0 = self.scaled_norm(y0, y0)
            d1 = self.scaled_norm(f0, y0)
            if not math.isfinite(d1):
                raise NonFiniteStateError(
                    f"f(t, y) produces NaN/Inf near t={t0:.6g}: already f(t0, y0) is not finite "
                    f"(y0 is), so f overflows or divides by zero at the initial state"
                )
            h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
            h0 = min(h0, self.max_step)
            y1 = y0 + f0 * (direction * h0)
            f1 = f(t0 + direction * h0, y1)
            d2 = self.scaled_norm(f1 - f0, y0) / h0
            if not math.isfinite(d2):  # f blows up just after t0: start small, let control decide
                return min(h0 * 1e-3, self.max_step)
            if max(d1, d2) <= 1e-15:
                h1 = max(1e-6, h0 * 1e-3)
            else:
                h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
        return min(100 * h0, h1, self.max_step)


def _no_grad_times(name: str, value) -> None:
    """Jump times are constants to every gradient method: a gradient would be dropped."""
    if getattr(value, "requires_grad", False) and torch.is_grad_enabled():
        raise UnsupportedCombinationError(
            f"option {name} requires grad, but the solve is split at those times as "
            f"constants (their gradient would be silently zero): pass them detached"
        )


def _times(name: str, value) -> tuple[float, ...]:
    """A list of finite times (a tensor, a sequence or one number), sorted, no repeats."""
    _no_grad_times(name, value)
    try:
        if hasattr(value, "detach"):
            value = value.detach().cpu().reshape(-1).tolist()
        elif isinstance(value, (int, float)):
            value = [value]
        out = sorted({float(v) for v in value})
    except (TypeError, ValueError):
        raise InvalidOptionError(f"option {name} must be a list or 1-D tensor of times") from None
    if not all(math.isfinite(v) for v in out):
        raise InvalidOptionError(f"option {name} must hold finite times, got {out}")
    return tuple(out)


_FIXED_OPTIONS = {"step_size", "steps", "grid_constructor"}
# fixed-grid options that do not by themselves ask for a fixed grid
_FIXED_ONLY = {"interp", "perturb"}
_ADAPTIVE_OPTIONS = {
    "first_step",
    "max_num_steps",
    "min_step",
    "max_step",
    "safety",
    "ifactor",
    "dfactor",
    "controller",
    "norm",
    "jump_t",
}
OPTIONS = sorted(_FIXED_OPTIONS | _FIXED_ONLY | _ADAPTIVE_OPTIONS | {"max_steps", "exact_outputs"})


def resolve_control(solver, rtol, atol, options, structure=None) -> FixedGrid | Adaptive:
    """Fixed grid if ``step_size``/``steps`` is given or the solver has no error
    estimate; adaptive otherwise. Options that would have no effect raise."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise InvalidOptionError(
            f"options must be a dict such as dict(step_size=0.1), got {type(options).__name__}"
        )
    bad_keys = [k for k in options if not isinstance(k, str)]
    if bad_keys:
        raise InvalidOptionError(f"option names must be strings, got {bad_keys}")
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise InvalidOptionError(
            f"unknown option(s) {sorted(unknown)}; valid options are {OPTIONS}"
        )
    max_steps = options.get("max_steps", options.get("max_num_steps"))
    if "max_steps" in options and "max_num_steps" in options:
        raise InvalidOptionError("give max_steps or its torchdiffeq name max_num_steps, not both")
    fixed = _FIXED_OPTIONS & set(options)
    for name, tol in (("rtol", rtol), ("atol", atol)):
        try:
            ok = math.isfinite(float(tol)) and float(tol) >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InvalidOptionError(f"{name} must be a finite number >= 0, got {tol!r}")
    if fixed or not solver.adaptive:
        extra = (_ADAPTIVE_OPTIONS - {"max_num_steps"}) & set(options)
        if extra:
            why = (
                "a fixed grid was requested" if fixed else f"{solver.name!r} has no error estimate"
            )
            raise InvalidOptionError(
                f"option(s) {sorted(extra)} only apply to adaptive stepping, but {why}; "
                f"remove them, or drop step_size/steps and use an adaptive method"
            )
        if (
            "interp" in options
            and options.get("step_size") is None
            and "grid_constructor" not in options
        ):
            raise InvalidOptionError(
                "option interp applies to a step_size grid, where outputs fall between grid "
                "points; with steps=N (or one step per interval) every output is a grid point"
            )
        return FixedGrid(
            step_size=options.get("step_size"),
            steps=options.get("steps"),
            max_steps=DEFAULT_MAX_STEPS if max_steps is None else max_steps,
            exact_outputs=options.get("exact_outputs", False),
            interp=options.get("interp", "linear"),
            grid_constructor=options.get("grid_constructor"),
            perturb=options.get("perturb", False),
        )
    if options.get("perturb"):
        raise InvalidOptionError(
            f"option perturb applies to fixed grids (step_size/steps), where f may be "
            f"discontinuous at grid points; adaptive {solver.name!r} does not take it: give "
            f"a known discontinuity as jump_t instead"
        )
    if "interp" in options:
        raise InvalidOptionError(
            f"option interp applies to fixed step_size grids; adaptive {solver.name!r} "
            f"interpolates outputs with its own interpolant"
        )
    kw = {k: options[k] for k in _ADAPTIVE_OPTIONS - {"max_num_steps"} if k in options}
    if "exact_outputs" in options:
        kw["exact_outputs"] = options["exact_outputs"]
    if "norm" in kw:
        kw["norm"] = norm_option(kw["norm"], float(rtol), float(atol), structure)
    if max_steps is not None:
        kw["max_steps"] = max_steps
    return Adaptive(rtol=rtol, atol=atol, **kw)
