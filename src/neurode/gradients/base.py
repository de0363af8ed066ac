r"""What a gradient method is, and the pieces every method shares.

A gradient method decides what the forward solve keeps and how the backward
pass uses it. The protocol (:class:`GradientMethod`):

- ``check(solver, control)`` raises before ``f`` runs if the combination cannot work;
- ``solve(problem)`` returns the stacked outputs, differentiable w.r.t. ``y0`` and
  the parameters.

Methods other than :class:`~neurode.Direct` are :class:`FunctionMethod`\ s: a
per-solve :class:`Runner` runs the forward solve without a graph (``forward``),
keeping what its backward needs, and ``backward`` walks the recorded steps last
to first with a :class:`Sweep` — the one reverse sweep (output cotangents added
where outputs fell, the init's VJP at the end). All of them drive the single
stepping loop in ``neurode._loop``.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._inputs import unique_tensors
from .._loop import Field, SolveStats, StepRNG, Trajectory, integrate
from ..errors import RepeatedBackwardError, UnsupportedCombinationError
from ..solvers.base import Solver, State, vjp
from ..solvers.controller import Adaptive, FixedGrid

# Random-state key of the solver's initial state (ALF's v0, an FSAL stage): step
# attempts use keys 0, 1, 2, ...; the init gets its own so its replay in
# ``init_vjp`` draws what the forward drew and leaves the global generator alone.
INIT_KEY = -1


@dataclass
class Problem:
    """Everything one solve needs, resolved and validated by ``odeint``."""

    solver: Solver
    field: Field
    y0: Tensor
    times: list[float]
    control: FixedGrid | Adaptive
    params: tuple[Tensor, ...]
    stats: SolveStats
    modules: tuple[nn.Module, ...] = ()
    options: dict = field(default_factory=dict)
    rng: StepRNG | None = None  # per-step random state, when the method replays steps
    t_input: Tensor | None = None  # the caller's t, when it requires grad (adjoint only)
    declared: tuple[Tensor, ...] = ()  # the params= tensors (the others were found)


class GradientMethod(abc.ABC):
    """What a gradient method implements.

    Attributes:
        name: the string that selects it (``gradient="..."``).
        preserve_rng: whether steps run under per-step random state, so that a
            replay draws what the original step drew.
        exact: whether the gradient equals backprop through the discretisation.
    """

    name: str = "gradient"
    preserve_rng: bool = False
    exact: bool = True

    def check(self, problem: Problem) -> None:  # noqa: B027
        """Raise a :class:`~neurode.NeurodeError` if this method cannot solve ``problem``
        (its solver, step control, options). Called before ``f`` is evaluated; the default
        accepts everything."""

    @abc.abstractmethod
    def solve(self, problem: Problem) -> Tensor:
        """Return the solution at every time, stacked, differentiable w.r.t. ``y0`` and ``params``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Runner:
    """One solve of a non-direct gradient method: ``forward`` keeps what backward needs."""

    def __init__(self, method: GradientMethod, problem: Problem):
        self.method = method
        self.p = problem
        self.rng = problem.rng
        self.interp = "auto"  # the interpolant kind of the forward solve (Trajectory.interp)

    def forward(self, y0: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def backward(self, grads: list[Tensor], y0: Tensor) -> tuple[Tensor, list[Tensor | None]]:
        """Given the gradient on every output, return the gradients of ``y0`` and ``params``.

        A method that differentiates the times sets ``self.t_grads`` (one per time)."""
        raise NotImplementedError

    t_grads: list[float] | None = None
    # whether backward may run again on the same record (retain_graph=True, gradcheck):
    # only when what the forward keeps is small (the adjoint's outputs)
    reusable: bool = False

    # --- shared pieces -------------------------------------------------------------
    def rng_ctx(self, key: int):
        return self.rng(key) if self.rng is not None else contextlib.nullcontext()

    def step_vjp(
        self,
        t: float,
        h: float,
        x: State,
        a: State,
        key: int,
        acc: list[Tensor | None],
        inside: Sequence[tuple[float, Tensor]] = (),
    ) -> State:
        """Replay one step from ``x`` with its graph and pull ``a`` back through it.

        ``inside`` lists the ``(θ, cotangent)`` of outputs interpolated inside the
        step: the interpolant is rebuilt from the replayed step, as the forward built
        it, and their cotangents are pulled back with the step's own.
        Adds the parameter gradients into ``acc``; returns the adjoint of ``x``.
        """
        p = self.p
        leaves = tuple(xi.detach().requires_grad_(True) for xi in x)
        with torch.enable_grad():
            if not inside:
                with self.rng_ctx(key):
                    x1, _ = p.solver.step(p.field, t, h, leaves)
                return self._pull(x1, leaves, a, acc)
            with self.rng_ctx(key):
                x1, _, dense = p.solver.step_dense(p.field, t, h, leaves, self.interp)
            with self.rng_ctx(key):
                vals = dense.values([th for th, _ in inside])
        return self._pull((*x1, *vals), leaves, (*a, *(g for _, g in inside)), acc)

    def init_vjp(self, y0: Tensor, a: State, acc: list[Tensor | None]) -> Tensor:
        """Pull the adjoint of the initial solver state back to ``y0`` (and params)."""
        p = self.p
        leaf = y0.detach().requires_grad_(True)
        with torch.enable_grad(), self.rng_ctx(INIT_KEY):
            x0 = p.solver.init(p.field, p.times[0], leaf)
        if len(x0) == 1 and x0[0] is leaf:
            return a[0]
        return self._pull(x0, (leaf,), a, acc)[0]

    def _pull(self, outs: State, leaves: State, a: State, acc: list[Tensor | None]) -> State:
        a_x, g = vjp(outs, leaves, a, self.p.params, retain=self.p.field.shared_graph)
        add_into(acc, g)
        return a_x


class Sweep:
    """The reverse sweep over recorded steps, written once.

    Starts from the adjoint of the final state (the cotangents of the outputs
    reached there on ``y``, zero on solver extras). Replaying step ``i`` pulls
    back, with the step's own adjoint, the cotangents of the outputs
    interpolated inside it; after step ``i`` is reversed the outputs at its start
    are added; :meth:`finish` adds those at ``t0`` and pulls the adjoint through
    the init.
    """

    def __init__(self, runner: Runner, grads: list[Tensor], traj: Trajectory, x_final: State):
        self.runner = runner
        runner.interp = traj.interp
        self.grads = grads
        self.traj = traj
        self.acc: list[Tensor | None] = [None] * len(runner.p.params)
        self.out_at = traj.boundary_outputs()
        self.a: State = (self._boundary(len(traj.steps), torch.zeros_like(x_final[0])),) + tuple(
            xi.new_zeros(()).expand_as(xi) for xi in x_final[1:]
        )

    def _boundary(self, i: int, a_y: Tensor) -> Tensor:
        for k in self.out_at.get(i, ()):
            a_y = a_y + self.grads[k]
        return a_y

    def inside(self, i: int) -> list[tuple[float, Tensor]]:
        """The ``(θ, cotangent)`` of the outputs interpolated inside step ``i``."""
        return [(th, self.grads[k]) for k, th in self.traj.dense.get(i, ())]

    def replay(self, i: int, x: State) -> None:
        """Reverse step ``i`` from its starting state ``x`` (replayed with its graph)."""
        t, h = self.traj.steps[i]
        key = self.traj.keys[i]
        self.a = self.runner.step_vjp(t, h, x, self.a, key, self.acc, self.inside(i))
        self.reached(i)

    def reached(self, i: int) -> None:
        """Step ``i`` has been reversed: add the outputs that fell at its start (``t0``'s
        are added by :meth:`finish`)."""
        if i > 0 and i in self.out_at:
            self.a = (self._boundary(i, self.a[0]),) + tuple(self.a[1:])

    def finish(self, y0: Tensor) -> tuple[Tensor, list[Tensor | None]]:
        self.a = (self._boundary(0, self.a[0]),) + tuple(self.a[1:])
        return self.runner.init_vjp(y0, self.a, self.acc), self.acc


def add_into(acc: list[Tensor | None], grads: Sequence[Tensor | None]) -> None:
    for i, g in enumerate(grads):
        if g is None:
            continue
        acc[i] = g if acc[i] is None else acc[i] + g


@contextlib.contextmanager
def frozen_buffers(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Restore every buffer of ``modules`` on exit.

    A replayed step runs ``f`` again; in training mode BatchNorm would update
    its running statistics a second time. Snapshotting the buffers and putting
    them back makes a replay compute exactly what the original step computed
    and leave exactly what it left.
    """
    saved = [(b, b.detach().clone()) for m in modules for b in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in saved:
                b.copy_(s)


class _SolveFunction(torch.autograd.Function):
    # The forward solve has already run (it finds the parameters, SPEC §5.1):
    # ``forward`` hands its outputs to autograd; ``backward`` runs the runner's.
    @staticmethod
    def forward(ctx, runner: Runner, ys: Tensor, y0: Tensor, t: Tensor | None, *params: Tensor):
        ctx.runner = runner
        ctx.y0 = y0.detach()
        ctx.t = None if t is None else (t.dtype, t.device)
        return ys

    @staticmethod
    def backward(ctx, grad_ys: Tensor):
        runner: Runner = ctx.runner
        if torch.is_grad_enabled():
            # create_graph=True (a gradient penalty, a Hessian-vector product): this backward
            # is not itself differentiable, and a graph-less gradient would be silently wrong
            raise UnsupportedCombinationError(
                f"a double backward (torch.autograd.grad(..., create_graph=True)) through a "
                f"solve with gradient={runner.method.name!r} is not supported: its backward is "
                f"not differentiable. Use gradient='direct' for higher-order gradients"
            )
        if runner is None:
            # the first backward released what the forward kept (states, step record)
            raise RepeatedBackwardError(
                "Trying to backward through a neurode solve a second time: a "
                "non-direct gradient method frees its record after the first backward "
                "(retain_graph=True does not keep it). Solve again, or use "
                "gradient='direct' to backward through one solve several times"
            )
        runner.p.field.backward = True
        try:
            with frozen_buffers(runner.p.modules):
                g_y0, g_params = runner.backward(list(grad_ys.unbind(0)), ctx.y0)
        finally:
            runner.p.field.backward = False
        if not runner.reusable:
            ctx.runner = None  # free what the forward kept as soon as it is used
        # a tensor handed over as params= (torchdiffeq's adjoint_params) gets a gradient,
        # zero where f does not use it, as torchdiffeq gives it
        declared = {id(q) for q in runner.p.declared}
        g_params = [
            (torch.zeros_like(p) if id(p) in declared else None) if g is None else g.to(p.dtype)
            for g, p in zip(g_params, runner.p.params)
        ]
        g_t = None
        if ctx.t is not None:
            if runner.t_grads is None:  # odeint refuses t.requires_grad for such methods
                raise UnsupportedCombinationError(
                    f"gradient={runner.method.name!r} does not differentiate the times"
                )
            g_t = torch.tensor(runner.t_grads, dtype=ctx.t[0], device=ctx.t[1])
        return (None, None, g_y0, g_t, *g_params)


class FunctionMethod(GradientMethod):
    """A gradient method implemented by a :class:`Runner` inside ``_SolveFunction``.

    The forward solve runs without a graph; ``f``'s first evaluation runs with
    one, so that walking it finds every tensor ``f`` uses that requires grad
    (however ``f`` reaches it). Those, and ``params=``, get gradients.
    """

    runner_cls: type[Runner] = Runner

    def solve(self, problem: Problem) -> Tensor:
        runner = self.runner_cls(self, problem)
        y0 = problem.y0
        field = problem.field
        field.discover = torch.is_grad_enabled()
        with torch.no_grad():
            ys = torch.stack(runner.forward(y0.detach()))
        field.discover = False
        problem.params = unique_tensors([*problem.params, *field.found])
        t_in = problem.t_input
        if not torch.is_grad_enabled() or not (
            y0.requires_grad or problem.params or t_in is not None
        ):
            return ys
        return _SolveFunction.apply(runner, ys, y0, t_in, *problem.params)


def forward_no_graph(runner: Runner, y0: Tensor, on_step=None):  # noqa: D103
    """The forward solve of every non-direct method: the one loop, no graph."""
    p = runner.p
    with torch.no_grad():
        with runner.rng_ctx(INIT_KEY):
            x0 = p.solver.init(p.field, p.times[0], y0)
        return integrate(p.solver, p.field, x0, p.times, p.control, p.stats, on_step, runner.rng)
