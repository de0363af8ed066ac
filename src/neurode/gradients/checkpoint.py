"""Discretise-then-optimise with checkpoints: ANODE (Gholami et al. 2019), ACA (Zhuang et al. 2020).

The forward solve runs without a graph and keeps solver states; the backward
pass replays every step with its graph, last first, and takes its
vector–Jacobian product. The replay performs exactly the floating-point
operations of the original step, so the gradient is *identical* to backprop
through the solver (to ~1e-12 relative in float64, tested).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import InvalidOptionError
from ..solvers.controller import FixedGrid
from .base import FunctionMethod, Runner, Sweep, forward_no_graph
from .schedule import OnlineCheckpoints, forward_chain, reverse_all
from .stagewise import stagewise_vjp


class Checkpoint(FunctionMethod):
    """Checkpointed backprop through the solver: exact gradient, bounded memory.

    Args:
        budget: ``None`` keeps the state of every accepted step (ANODE / ACA):
            memory ``O(N_t·S + L)``, one extra evaluation pass in backward
            (replays), total compute ≈ 2× the forward. An integer ``c ≥ 1`` keeps
            at most ``c`` states: binomial checkpointing with the chain that
            minimises recomputation after the (free) forward sweep when the number
            of steps is known (fixed grids), an online schedule otherwise (adaptive
            steps); memory ``O(c·S + L)``, compute grows by a logarithmic factor
            (``stats.recomputed_steps`` reports it).
        preserve_rng: replay each step with the random state the original step
            saw, so dropout masks (and any other draws in ``f``) match.
        per_stage: replay an explicit Runge–Kutta step one stage at a time
            (:mod:`neurode.gradients.stagewise`): backward memory
            ``O(N_t·S + s·S + L)`` instead of ``O(N_t·S + s·L)`` for ``s`` stages,
            the same gradient, ``s`` more evaluations of ``f`` per replayed step.

    ``S`` is the memory of one solver state, ``L`` that of one evaluation of
    ``f`` with its graph, ``N_t`` the number of accepted steps. Rejected trial
    steps cost nothing in memory.
    """

    name = "checkpoint"

    def __init__(
        self, budget: int | None = None, preserve_rng: bool = True, per_stage: bool = False
    ):
        if budget is not None:
            ok = isinstance(budget, (int, float)) and not isinstance(budget, bool)
            if not ok or not math.isfinite(budget) or int(budget) != budget or budget < 1:
                raise InvalidOptionError(
                    f"Checkpoint budget must be None or an integer >= 1, got {budget!r}"
                )
            budget = int(budget)
        if not isinstance(per_stage, bool):
            raise InvalidOptionError(
                f"Checkpoint per_stage must be True or False, got {per_stage!r}"
            )
        self.budget = budget
        self.preserve_rng = preserve_rng
        self.per_stage = per_stage

    def __repr__(self) -> str:
        extra = ", per_stage=True" if self.per_stage else ""
        return f"Checkpoint(budget={self.budget}{extra})"

    @property
    def runner_cls(self):
        return _EveryStep if self.budget is None else _Budget


class _Replays(Runner):
    """A checkpoint runner's step replay: whole, or stage by stage (``per_stage``)."""

    def step_vjp(self, t, h, x, a, key, acc, inside=()):
        if self.method.per_stage:
            out = stagewise_vjp(self, t, h, x, a, key, acc, inside)
            if out is not None:
                return out
        return super().step_vjp(t, h, x, a, key, acc, inside)


class _EveryStep(_Replays):
    def forward(self, y0: Tensor) -> list[Tensor]:
        self.states = []

        def keep(i, t, h, x, x1):
            self.states.append(x)

        outputs, self.x_final, self.traj = forward_no_graph(self, y0, keep)
        return outputs

    def backward(self, grads: list[Tensor], y0: Tensor):
        states = self.states
        sweep = Sweep(self, grads, self.traj, self.x_final)
        self.x_final = None
        for i in range(len(states) - 1, -1, -1):
            sweep.replay(i, states[i])
            states[i] = None  # release memory as we go
        return sweep.finish(y0)


class _Budget(_Replays):
    """At most ``budget`` states alive at once; replays recompute the rest."""

    def forward(self, y0: Tensor) -> list[Tensor]:
        budget = self.method.budget
        p = self.p
        stored: dict[int, tuple] = {}
        if isinstance(p.control, FixedGrid):
            n_known = p.control.total(p.times)
            chain = set(forward_chain(n_known, budget))

            def keep(i, t, h, x, x1):
                if i in chain:
                    stored[i] = x
        else:
            online = OnlineCheckpoints(budget)

            def keep(i, t, h, x, x1):
                online.offer(i, x, stored)

        outputs, self.x_final, self.traj = forward_no_graph(self, y0, keep)
        self.stored = stored
        return outputs

    def backward(self, grads: list[Tensor], y0: Tensor):
        engine = _Engine(self, Sweep(self, grads, self.traj, self.x_final))
        self.x_final = None
        positions = sorted(self.stored)
        reverse_all(engine, positions, len(self.traj.steps), self.method.budget)
        self.p.stats.recomputed_steps += engine.recomputed
        return engine.sweep.finish(y0)


class _Engine:
    """Connects the pure schedule to tensors: stores, recomputes and replays steps."""

    def __init__(self, runner: _Budget, sweep: Sweep):
        self.r = runner
        self.sweep = sweep
        self.recomputed = 0
        self.next_vjp = len(runner.traj.steps) - 1

    def load(self, pos):
        return self.r.stored[pos]

    def store(self, pos, state):
        self.r.stored[pos] = state

    def drop(self, pos):
        self.r.stored.pop(pos, None)

    def advance(self, x, start, stop):
        r = self.r
        p = r.p
        with torch.no_grad():
            for i in range(start, stop):
                t, h = r.traj.steps[i]
                with r.rng_ctx(r.traj.keys[i]):
                    x, _ = p.solver.step(p.field, t, h, x)
        self.recomputed += stop - start
        return x

    def vjp(self, pos, x):
        assert pos == self.next_vjp, "schedule must reverse steps in order"
        self.sweep.replay(pos, x)
        self.next_vjp -= 1
