"""The one stepping loop.

Every gradient method drives this loop; they differ only in what they record
(through ``on_step``) and in what they do with the record afterwards. The loop
hits every requested output time exactly, controls the step size, counts
evaluations and raises clear errors. It knows nothing of autograd: whether a
graph is built is decided by the caller (``torch.no_grad`` or not).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._inputs import graph_leaves
from ._rng import cuda_devices, seeded
from .errors import (
    FunctionOutputError,
    MaxStepsExceededError,
    NonFiniteStateError,
    StepSizeUnderflowError,
)
from .solvers.base import EPS64, Solver, State, same_time
from .solvers.controller import Adaptive, FixedGrid

#: ``(ds, s, q)``: how one step's evaluations move with the times (see ``Field.__call__``)
Move = tuple[Tensor, float, Tensor | None]


@dataclass
class SolveStats:
    """Counters of one solve. Backward counters are filled in when gradients are taken.

    Attributes:
        nfe_forward: evaluations of ``f`` in the forward solve (including the
            initial-step heuristic and the solver's initial state).
        nfe_backward: evaluations of ``f`` during the backward pass.
        accepted_steps / rejected_steps: adaptive bookkeeping of the forward solve.
        recomputed_steps: steps re-run without a graph in backward to rebuild
            states (checkpointing with a budget); each step's graph replay is not counted.
        backward_steps: steps taken by the adjoint's backward solve.
        reconstruction_drift: reversible gradient only — ``‖ŷ0 − y0‖/‖y0‖`` of the
            initial state rebuilt by inverting every step (``None`` until backward).
    """

    nfe_forward: int = 0
    nfe_backward: int = 0
    accepted_steps: int = 0
    rejected_steps: int = 0
    recomputed_steps: int = 0
    backward_steps: int = 0
    reconstruction_drift: float | None = None

    @property
    def nfe(self) -> int:
        return self.nfe_forward + self.nfe_backward

    def as_dict(self) -> dict:
        """The counters (``reconstruction_drift`` only once measured)."""
        out = dataclasses.asdict(self)
        if self.reconstruction_drift is None:
            del out["reconstruction_drift"]
        return out


def _graph_clock() -> int | None:
    """The sequence number autograd gives the next node it creates (this thread), or
    ``None`` where autograd nodes do not expose it (then graphs count as shared)."""
    node = (torch.ones((), requires_grad=True) * 1.0).grad_fn
    number = getattr(node, "_sequence_nr", None)
    return None if number is None else number() + 1


class Field:
    """The user's ``func(t, y)`` seen by solvers as ``f(t: float, y: Tensor)``.

    Converts the float64 time to a 0-d tensor of the state's dtype and device,
    maps flat states to the user's tuple structure and back, checks every
    output and counts evaluations into ``stats`` (forward or backward).
    """

    solve_field = True  # the compiled RK step may call ``func`` directly (solvers/compiled.py)

    def __init__(self, func: Callable, like: Tensor, stats: SolveStats, structure=None):
        self.func = func
        self.shape = like.shape
        self.dtype = like.dtype
        self.device = like.device
        self.stats = stats
        self.backward = False
        self.structure = structure  # None, or the (shapes, numels) of a tuple state
        # parameter discovery (SPEC §5.1): while set, evaluations 1, 2, 4, 8, ... record
        # their graph, and `found` collects every tensor requiring grad they were computed
        # from — the first finds what f uses everywhere, the later ones what it uses only
        # later in the solve (O(log NFE) recordings; `params=` makes sure of the rest)
        self.discover = False
        self.found: list[Tensor] = []
        self.stop: tuple[Tensor, ...] = ()  # params= entries: the walk stops at them
        self._evals = 0
        # whether f's graph reaches nodes built outside it (a parameter f uses through a
        # tensor computed before the solve): every step's VJP then runs through that
        # shared part, so it must keep its graph (retain_graph). Unknown until discovery
        # has looked at an evaluation's graph: assume shared.
        self.shared_graph = True
        self._looked = False
        # jump_t: a time at which f is discontinuous, at an end of this solve, is
        # evaluated one ulp (of the state's dtype) inside it, its one-sided limit:
        # {that end: the time f sees there}
        self.sides: dict[float, float] = {}
        # t.requires_grad with an exact method: how each step moves with the times
        # (solvers/moving.py); the loop hands it the slopes of interpolated outputs
        self.motion = None

    def __call__(self, t: float, y: Tensor, move: Move | None = None) -> Tensor:
        """``f(t, y)``; ``move = (ds, s, q)`` (zero-valued tensors ``ds``, ``q``) evaluates
        it at ``t + ds + (t − s) q`` scaled by ``1 + q``: the same value, differentiable
        in how the step from ``s`` moves with the output times (SPEC §5.2)."""
        if self.discover:
            self._evals += 1
            if self._evals & (self._evals - 1) == 0:
                with torch.enable_grad():
                    mark = _graph_clock()
                    out = self._eval(t, y.detach(), move)
                nodes: set = set()
                self.found.extend(graph_leaves(out, self.stop, nodes))
                # autograd numbers its nodes in creation order: one older than this
                # evaluation was built outside f
                outside = mark is None or any(n._sequence_nr() < mark for n in nodes)
                self.shared_graph = outside or (self.shared_graph and self._looked)
                self._looked = True
                return out.detach()
        return self._eval(t, y, move)

    def user_state(self, y: Tensor):
        """``y`` in the caller's structure (a tuple for tuple states)."""
        if self.structure is None:
            return y
        shapes, numels = self.structure
        return tuple(p.view(s) for p, s in zip(y.split(numels), shapes))

    def _eval(self, t: float, y: Tensor, move: Move | None = None) -> Tensor:
        for end, seen in self.sides.items():  # a step landing there may miss it by an ulp
            if abs(t - end) <= 4 * math.ulp(end):
                t = seen
                break
        if self.backward:
            self.stats.nfe_backward += 1
        else:
            self.stats.nfe_forward += 1
        # scalar_tensor: the same value as torch.tensor(t, dtype=...), at half the cost
        tt = torch.scalar_tensor(t, dtype=self.dtype, device=self.device)
        if move is not None:
            ds, s, q = move
            tt = tt + ds if q is None else tt + ds + (tt - s) * q
            out = self._eval_at(tt, y)
            return out if q is None else out * (1.0 + q)
        return self._eval_at(tt, y)

    def _eval_at(self, tt: Tensor, y: Tensor) -> Tensor:
        if self.structure is None:
            out = self.func(tt, y)
            self._check(out, self.shape, "")
            return out
        shapes, numels = self.structure
        parts = tuple(p.view(s) for p, s in zip(y.split(numels), shapes))
        out = self.func(tt, parts)
        if not isinstance(out, (tuple, list)) or len(out) != len(shapes):
            raise FunctionOutputError(
                f"f(t, y) must return a tuple of {len(shapes)} tensors like y, got "
                f"{type(out).__name__}{'' if not isinstance(out, (tuple, list)) else f' of {len(out)}'}"
            )
        for i, (o, s) in enumerate(zip(out, shapes)):
            self._check(o, s, f"[{i}]")
        return torch.cat([o.reshape(-1) for o in out])

    def check_output(self, out) -> None:
        """The checks of one evaluation's output (single-tensor states)."""
        self._check(out, self.shape, "")

    def _check(self, out, shape, where: str) -> None:
        if not isinstance(out, Tensor):
            raise FunctionOutputError(
                f"f(t, y){where} must return a tensor, got {type(out).__name__}"
            )
        if out.shape != shape:
            raise FunctionOutputError(
                f"f(t, y){where} returned shape {tuple(out.shape)} but the state has shape "
                f"{tuple(shape)}; dy/dt must have the state's shape"
            )
        if out.dtype != self.dtype:
            raise FunctionOutputError(
                f"f(t, y){where} returned dtype {out.dtype} but the state is {self.dtype}; "
                f"cast inside f or give y0 the dtype you want"
            )
        if out.device != self.device:
            raise FunctionOutputError(
                f"f(t, y){where} returned a tensor on {out.device} but the state is on {self.device}"
            )


class StepRNG:
    """Makes every step's random draws reproducible, so replays are faithful.

    One base seed is drawn from the global generator per solve; each step
    attempt runs under a forked generator seeded from (base, attempt). A replay
    of accepted step ``i`` reuses its key and so draws the same dropout masks.
    The caller's global generator advances by one draw per solve and is
    otherwise untouched.
    """

    def __init__(self, device: torch.device):
        self.devices = cuda_devices(device)
        self.base = int(torch.randint(0, 2**31 - 1, (1,)).item())

    def __call__(self, key: int):
        return seeded((self.base * 1_000_003 + key) % (2**63 - 1), self.devices)


class StepRecord:
    """Accepted ``(t_i, h_i)`` in two float64 arrays: 16 bytes a step, not a Python
    tuple's ~100, so that memory stays flat in N_t for the reversible gradient."""

    __slots__ = ("t", "h")

    def __init__(self):
        self.t = array("d")
        self.h = array("d")

    def append(self, step: tuple[float, float]) -> None:
        self.t.append(step[0])
        self.h.append(step[1])

    def __len__(self) -> int:
        return len(self.t)

    def __getitem__(self, i: int) -> tuple[float, float]:
        return self.t[i], self.h[i]

    def __iter__(self) -> Iterator[tuple[float, float]]:
        return zip(self.t, self.h)

    def __reversed__(self) -> Iterator[tuple[float, float]]:
        return zip(reversed(self.t), reversed(self.h))

    def slice(self, start: int) -> Iterator[tuple[float, float]]:
        """The steps from ``start`` on."""
        return zip(self.t[start:], self.h[start:])


@dataclass
class Trajectory:
    """What every solve records, cheaply: the accepted grid and where outputs fell.

    ``steps[i] = (t_i, h_i)`` of accepted step ``i``; ``keys[i]`` is the
    random-state key of step ``i`` (when replays need it). Output ``k`` is either
    a step end — ``out_steps[k]`` is then the number of accepted steps taken when
    it was reached — or inside a step (``out_steps[k] is None``): ``dense[i]``
    lists the ``(k, θ)`` of every output interpolated in step ``i`` at
    ``t_i + θ h_i``, with the interpolant kind ``interp``.
    """

    steps: StepRecord = field(default_factory=StepRecord)
    out_steps: list[int | None] = field(default_factory=list)
    keys: array = field(default_factory=lambda: array("q"))
    dense: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    interp: str = "auto"

    def boundary_outputs(self) -> dict[int, list[int]]:
        """Step-end index ↦ the outputs reached there (several when snapped together)."""
        at: dict[int, list[int]] = {}
        for k, s in enumerate(self.out_steps):
            if s is not None:
                at.setdefault(s, []).append(k)
        return at


OnStep = Callable[[int, float, float, State, State], None]


@dataclass
class Callbacks:
    """torchdiffeq's step callbacks, looked up on the user's ``func``."""

    step: Callable | None = None
    accept: Callable | None = None
    reject: Callable | None = None

    @classmethod
    def of(cls, f, suffix: str) -> Callbacks:
        func = getattr(f, "func", None) if isinstance(f, Field) else f
        return cls(
            *(getattr(func, f"callback_{name}{suffix}", None)
              for name in ("step", "accept_step", "reject_step"))
        )  # fmt: skip

    @staticmethod
    def call(cb: Callable, f, t: float, y: Tensor, h: float) -> None:
        with torch.no_grad():
            tt = torch.scalar_tensor(t, dtype=y.dtype, device=y.device)
            dt = torch.scalar_tensor(h, dtype=y.dtype, device=y.device)
            cb(tt, f.user_state(y) if isinstance(f, Field) else y, dt)


def _first_bad_step(solver, f, x, steps, keys, rng) -> tuple[float, float]:
    """Re-run accepted steps without a graph to find the one that produced non-finite values."""
    t = h = math.nan
    with torch.no_grad():
        for (t, h), key in zip(steps, keys):
            with rng(key) if rng is not None else contextlib.nullcontext():
                x, _ = solver.step(f, t, h, x)
            if not torch.isfinite(x[0]).all():
                break
    return t, h


def _check_fixed_resolution(control: FixedGrid, times: list[float]) -> None:
    """A fixed step too small for float64 time at |t| would collapse to zero-length steps."""
    for a, b in control.segments(times):
        h = abs(b - a) / control.count(a, b)
        scale = max(abs(a), abs(b))
        if h < 16 * EPS64 * scale:
            raise StepSizeUnderflowError(
                f"the fixed step h={h:.3g} between t={a:.6g} and t={b:.6g} is below what float64 "
                f"time resolves at |t|={scale:.3g} (about {16 * EPS64 * scale:.3g}); shift t to "
                f"start near 0 (f(t - t0, y)) or use a larger step"
            )


def integrate(
    solver: Solver,
    f: Field,
    x0: State,
    times: list[float],
    control: FixedGrid | Adaptive,
    stats: SolveStats,
    on_step: OnStep | None = None,
    rng: StepRNG | None = None,
    callbacks: Callbacks | None = None,
) -> tuple[list[Tensor], State, Trajectory]:
    """Integrate from ``times[0]`` through every ``times[k]``.

    ``callbacks`` (default: the ``callback_step`` / ``callback_accept_step`` /
    ``callback_reject_step`` methods of the user's ``func``, torchdiffeq's names)
    are called with ``(t, y, dt)`` before every step attempt and after its
    acceptance or rejection (a fixed grid, as torchdiffeq's, calls only the first and
    warns about the others); replays in backward never call them.

    Returns the solution ``y`` at every time, the final solver state and the
    trajectory record. ``on_step(i, t, h, x_before, x_after)`` is called after
    every accepted step. Steps are chosen by the step control alone: an output
    inside a step comes from the step's interpolant, unless ``exact_outputs``
    asks for every output to be a step end. A fixed grid is a control that
    accepts every step.
    """
    if callbacks is None:
        callbacks = Callbacks.of(f, "")
    fixed = isinstance(control, FixedGrid)
    if fixed and (callbacks.accept is not None or callbacks.reject is not None):
        # as torchdiffeq: a fixed grid decides nothing, so it calls only callback_step
        unused = [n for n, cb in (("accept", callbacks.accept), ("reject", callbacks.reject)) if cb]
        warnings.warn(
            f"a fixed grid accepts and rejects no step: func's "
            f"{' and '.join(f'callback_{n}_step' for n in unused)} is never called "
            f"(only callback_step is)",
            UserWarning,
            stacklevel=4,
        )
        callbacks = Callbacks(step=callbacks.step)
    dense_outputs = not control.exact_outputs and (control.dense if fixed else solver.interpolates)
    # t.requires_grad with an exact method: the forward records how outputs follow t
    motion = None if getattr(f, "backward", False) else getattr(f, "motion", None)
    interp = control.interp if fixed and control.interp == "linear" else "auto"
    traj = Trajectory(interp=interp)
    K = len(times) - 1
    outputs: list[Tensor | None] = [x0[0]] + [None] * K
    traj.out_steps.extend([0] + [None] * K)
    direction = 1.0 if times[-1] > times[0] else -1.0
    x = x0
    t = times[0]
    n_acc = 0
    attempts = 0
    rejected = 0
    k = 1  # the next output
    checked = 0  # accepted steps whose end state is known to be finite

    def ctx(key: int):
        return rng(key) if rng is not None else contextlib.nullcontext()

    def nonfinite(where: str) -> NonFiniteStateError:
        tb, hb = _first_bad_step(
            solver, f, checked_x, traj.steps.slice(checked), traj.keys[checked:], rng
        )
        return NonFiniteStateError(
            f"the state became NaN/Inf in the step from t={tb:.6g} to t={tb + hb:.6g} "
            f"({where}); try a smaller step size or tolerance, check f for overflow, or "
            f"scale the initial state"
        )

    checked_x = x
    if fixed:
        _check_fixed_resolution(control, times)
        total = control.total(times)
        if total > control.max_steps:
            raise MaxStepsExceededError(
                f"the fixed grid needs {total} steps from t={times[0]:.6g} to t={times[-1]:.6g}, "
                f"more than max_steps={control.max_steps}; use a larger step_size or raise max_steps"
            )
        grid = control.grid(times)
    else:
        f0 = solver.derivative(x)
        if f0 is None and control.first_step is None:
            with torch.no_grad():
                f0 = f(t, x[0])
        h = control.initial_step(f, t, x[0], f0, direction, solver.order)
        if control.min_step:
            h = max(h, control.min_step)
        q = solver.error_order
        r_prev = 1.0
        last_nonfinite = False

    while k <= K:
        target = times[-1] if dense_outputs else times[k]
        moves = True
        if not fixed and same_time(t, target):
            t_new, moves = t, False  # outputs closer than float64 resolves: the current state
        elif fixed:
            t, h_step, t_new = next(grid)
        else:
            remaining = abs(target - t)
            h_try = min(h, control.max_step)
            clipped = h_try >= remaining * 0.99  # land exactly; never leave a sliver
            h_step = (target - t) if clipped else direction * h_try
            t_new = target if clipped else t + h_step
            if attempts >= control.max_steps:
                raise MaxStepsExceededError(
                    f"max_steps={control.max_steps} reached at t={t:.6g} (h={h_step:.3g}) "
                    f"before reaching t={times[k]:.6g}; loosen rtol/atol, raise max_steps "
                    f"(options=dict(max_steps=...)), or check whether the problem is stiff"
                )
        if moves:
            key = attempts
            attempts += 1
            if callbacks.step is not None:
                callbacks.call(callbacks.step, f, t, x[0], h_step)
            with ctx(key):
                if dense_outputs:
                    x_new, err, dense = solver.step_dense(f, t, h_step, x, interp)
                else:
                    x_new, err = solver.step(f, t, h_step, x)
            if not fixed:
                r = control.error_ratio(err, x[0], x_new[0])
                forced = control.min_step > 0 and abs(h_step) <= control.min_step * (1 + 1e-12)
                finite = math.isfinite(r)
                accept = finite and (r <= 1.0 or forced)
                if accept:
                    r_prev_next = max(r, 1e-4)
                    last_nonfinite = False
                else:
                    rejected += 1
                    if callbacks.reject is not None:
                        callbacks.call(callbacks.reject, f, t, x[0], h_step)
                    last_nonfinite = not finite
                h_next = abs(h_step) * control.factor(r, r_prev, q)
                if accept and clipped:  # the proposal survives a step shortened to land
                    h_next = max(h_next, h_try)
                h = min(max(h_next, control.min_step), control.max_step)
                if accept:
                    r_prev = r_prev_next
                # `not h >= ...` also catches h = NaN; resolution at the current time
                if not h >= 16 * EPS64 * abs(t) or h == 0.0:
                    if last_nonfinite:
                        raise NonFiniteStateError(
                            f"f(t, y) produces NaN/Inf at every step size tried near t={t:.6g} "
                            f"(last h={h_step:.3g}); the state at t is finite, so f overflows "
                            f"or divides by zero just after it"
                        )
                    raise StepSizeUnderflowError(
                        f"step size underflow at t={t:.6g}: h={h:.3g} is below what float64 "
                        f"time can resolve; the problem may be stiff or singular there. Loosen "
                        f"rtol/atol, set options=dict(min_step=...) to force progress, or use a "
                        f"fixed grid"
                    )
                if not accept:
                    continue
            if callbacks.accept is not None:
                callbacks.call(callbacks.accept, f, t, x[0], h_step)
            traj.steps.append((t, h_step))
            traj.keys.append(key)
            if on_step is not None:
                on_step(n_acc, t, h_step, x, x_new)
            n_acc += 1
        else:
            x_new, h_step = x, 0.0
        # every output this step reached: at its end, or inside it (interpolated)
        first_k = k
        inside: list[tuple[int, float]] = []
        while k <= K:
            if same_time(times[k], t_new):
                outputs[k] = x_new[0]
                traj.out_steps[k] = n_acc
            elif (times[k] - t_new) * direction < 0:
                inside.append((k, (times[k] - t) / h_step))
            else:
                break
            k += 1
        if inside:
            traj.dense[n_acc - 1] = inside
            with ctx(key):  # its own random state: replays evaluate it the same way
                vals = dense.values([th for _, th in inside])
            for (kk, _), v in zip(inside, vals):
                outputs[kk] = v
        if motion is not None and moves:
            # how the outputs this step reached follow their times (SPEC §5.2)
            ends = [kk for kk in range(first_k, k) if traj.out_steps[kk] is not None]
            with ctx(key):
                motion.reached(t, h_step, inside, ends, dense if dense_outputs else None)
        x, t = x_new, t_new
        if k > first_k:  # one check per step that reached outputs (fixed grids: only there)
            bad = not bool(torch.isfinite(x[0]).all())
            bad = bad or any(not bool(torch.isfinite(outputs[kk]).all()) for kk, _ in inside)
            if bad:
                raise nonfinite(f"while integrating towards output t={times[k - 1]:.6g}")
            checked, checked_x = n_acc, x
    stats.accepted_steps += n_acc
    stats.rejected_steps += rejected
    return outputs, x, traj
