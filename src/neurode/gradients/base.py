"""What a gradient method is, and the pieces every method shares.

A gradient method decides what the forward solve keeps and how the backward
pass uses it. Methods other than :class:`~neurode.Direct` run the forward solve
without a graph inside one ``torch.autograd.Function`` and implement
``forward``/``backward`` on a per-solve *runner*; all of them drive the single
stepping loop in ``neurode._loop``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._loop import Field, SolveStats, StepRNG, integrate
from ..errors import RepeatedBackwardError
from ..solvers.base import Solver, State
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


class GradientMethod:
    """Base class. Subclasses set ``name`` and implement :meth:`solve`."""

    name = "gradient"

    def check(self, solver: Solver) -> None:
        """Raise :class:`~neurode.UnsupportedCombinationError` if ``solver`` cannot be used."""

    def solve(self, problem: Problem) -> Tensor:
        """Return the solution at every time, stacked, differentiable w.r.t. ``y0`` and ``params``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Runner:
    """One solve of a non-direct gradient method: ``forward`` keeps what backward needs."""

    def __init__(self, method: GradientMethod, problem: Problem):
        self.method = method
        self.p = problem
        self.rng = StepRNG(problem.y0.device) if method_preserves_rng(method) else None

    def forward(self, y0: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def backward(self, grads: list[Tensor], y0: Tensor) -> tuple[Tensor, list[Tensor | None]]:
        """Given the gradient on every output, return the gradients of ``y0`` and ``params``."""
        raise NotImplementedError

    # --- shared pieces -------------------------------------------------------------
    def rng_ctx(self, key: int):
        return self.rng(key) if self.rng is not None else contextlib.nullcontext()

    def step_vjp(
        self, t: float, h: float, x: State, a: State, key: int, acc: list[Tensor | None]
    ) -> State:
        """Replay one step from ``x`` with its graph and pull ``a`` back through it.

        Adds the parameter gradients into ``acc``; returns the adjoint of ``x``.
        """
        p = self.p
        leaves = tuple(xi.detach().requires_grad_(True) for xi in x)
        with torch.enable_grad(), self.rng_ctx(key):
            x1, _ = p.solver.step(p.field, t, h, leaves)
        return self._pull(x1, leaves, a, acc)

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
        outs_g = [o for o in outs if o.requires_grad]
        a_g = [ai for o, ai in zip(outs, a) if o.requires_grad]
        n = len(leaves)
        if not outs_g:
            return tuple(torch.zeros_like(v) for v in leaves)
        grads = torch.autograd.grad(outs_g, (*leaves, *self.p.params), a_g, allow_unused=True)
        add_into(acc, grads[n:])
        return tuple(torch.zeros_like(v) if g is None else g for v, g in zip(leaves, grads[:n]))


def method_preserves_rng(method: GradientMethod) -> bool:
    return getattr(method, "preserve_rng", False)


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
    @staticmethod
    def forward(ctx, runner: Runner, y0: Tensor, *params: Tensor):
        outputs = runner.forward(y0)
        ctx.runner = runner
        ctx.y0 = y0.detach()
        return torch.stack(outputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ys: Tensor):
        runner: Runner = ctx.runner
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
        ctx.runner = None  # free what the forward kept as soon as it is used
        g_params = [
            None if g is None else g.to(dtype=p.dtype) for g, p in zip(g_params, runner.p.params)
        ]
        return (None, g_y0, *g_params)


class FunctionMethod(GradientMethod):
    """A gradient method implemented by a :class:`Runner` inside ``_SolveFunction``."""

    runner_cls: type[Runner] = Runner

    def solve(self, problem: Problem) -> Tensor:
        runner = self.runner_cls(self, problem)
        return _SolveFunction.apply(runner, problem.y0, *problem.params)


def forward_no_graph(runner: Runner, y0: Tensor, on_step=None):
    """The forward solve of every non-direct method: the one loop, no graph."""
    p = runner.p
    with torch.no_grad():
        with runner.rng_ctx(INIT_KEY):
            x0 = p.solver.init(p.field, p.times[0], y0)
        return integrate(p.solver, p.field, x0, p.times, p.control, p.stats, on_step, runner.rng)
