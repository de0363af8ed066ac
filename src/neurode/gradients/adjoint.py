"""The continuous adjoint (Chen et al., "Neural Ordinary Differential Equations", 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._loop import Callbacks, SolveStats, integrate
from ..errors import InvalidOptionError, UnsupportedCombinationError
from ..solvers.controller import Adaptive, resolve_control, rms_norm
from ..solvers.perturb import perturbed
from ..solvers.registry import resolve_solver
from .base import FunctionMethod, Runner, forward_no_graph


class Adjoint(FunctionMethod):
    """Optimise-then-discretise: solve the adjoint ODE backwards in time.

    Backward integrates ``[y, a, a_θ]`` from ``t_K`` to ``t_0`` with
    ``dy/dt = f``, ``da/dt = −aᵀ∂f/∂y``, ``da_θ/dt = −aᵀ∂f/∂θ``, adding the
    incoming output gradients to ``a`` (and resetting ``y`` to the stored
    forward output) at every output time.

    Memory ``O(S + L)``, flat in ``N_t``. Compute: a second solve of a system
    three times the size, each evaluation costing one VJP.

    **The gradient is approximate.** It is the exact gradient of the ODE, not
    of the discretisation that produced the forward output, and its ``y`` is
    rebuilt by integrating backwards, which drifts for non-reversible dynamics
    (ReLU, convolutions, dissipative ``f``). ANODE (Gholami et al. 2019) shows
    training can then diverge. Check ``neurode.reconstruction_error`` for your
    ``f`` before trusting it; prefer ``"checkpoint"`` or ``"reversible"``.

    Args:
        method: solver for the backward solve (default: the forward solver).
        rtol, atol: tolerances of the backward solve (default: the forward's).
        seminorm: leave the ``a_θ`` channels out of the error norm (Kidger,
            Chen & Lyons 2021); typically ~40% fewer backward evaluations.
        options: step options for the backward solve (default: the forward's).
    """

    name = "adjoint"

    def __init__(self, method=None, rtol=None, atol=None, seminorm: bool = False, options=None):
        self.method = method
        self.rtol = rtol
        self.atol = atol
        self.options = dict(options) if options is not None else None  # {} = no step options
        if self.options is not None and self.options.get("norm") == "seminorm":
            # torchdiffeq's spelling: adjoint_options=dict(norm="seminorm")
            del self.options["norm"]
            seminorm = True
        self.seminorm = bool(seminorm)
        self.preserve_rng = False

    def __repr__(self) -> str:
        return (
            f"Adjoint(method={self.method!r}, rtol={self.rtol}, atol={self.atol}, "
            f"seminorm={self.seminorm})"
        )

    exact = False

    def check(self, problem) -> None:
        self.backward_config(problem, n=problem.y0.numel())

    def backward_config(self, problem, n: int):
        """The backward solve's solver and step control (raises if they cannot work)."""
        p = problem
        solver = p.solver if self.method is None else resolve_solver(self.method)
        user_norm = None
        if self.options is not None or self.rtol is not None or self.atol is not None:
            opts = dict(p.options) if self.options is None else dict(self.options)
            rtol = self.rtol if self.rtol is not None else getattr(p.control, "rtol", 1e-7)
            atol = self.atol if self.atol is not None else getattr(p.control, "atol", 1e-9)
            control = resolve_control(solver, rtol, atol, opts)
            if getattr(control, "grid_constructor", None) is not None:
                # torchdiffeq calls it for the backward pass with the times reversed
                t_rev = torch.tensor(p.times[::-1], dtype=p.y0.dtype)
                points = control.grid_constructor(p.field.func, p.y0, t_rev)
                if hasattr(points, "flip") and points.numel() > 1:
                    if float(points[0]) == p.times[0] and float(points[-1]) == p.times[-1]:
                        points = points.flip(0)  # the forward's grid: walk it back
                control = control.with_grid(points, p.times[::-1])
            if self.options is not None and "norm" in self.options:
                user_norm = control.norm
        elif isinstance(p.control, Adaptive):
            control = Adaptive(**{**p.control.__dict__, "norm": None})
            if not solver.adaptive:
                raise UnsupportedCombinationError(
                    f"the adjoint's backward solver {solver.name!r} has no error estimate; give "
                    f"it step options, e.g. Adjoint(options=dict(step_size=...))"
                )
        else:
            control = p.control
        if user_norm is not None and self.seminorm:
            raise InvalidOptionError(
                "Adjoint(seminorm=True) sets the backward norm itself; do not also give "
                "options=dict(norm=...)"
            )
        if isinstance(control, Adaptive) and user_norm is None:
            # the forward's norm measured y; the backward state is [y, a, a_θ] (torchdiffeq
            # drops it too): RMS over all of it, or over [y, a] alone with the seminorm
            rtol, atol = control.rtol, control.atol
            cut = 2 * n if self.seminorm else None

            def norm(err, y0, y1):
                if cut is not None:
                    err, y0, y1 = err[:cut], y0[:cut], y1[:cut]
                return rms_norm(err / (torch.maximum(y0.abs(), y1.abs()) * rtol + atol))

            control.norm = norm
        if getattr(control, "perturb", False) and not getattr(solver, "perturbed", False):
            solver = perturbed(solver, p.times[0] - p.times[-1])  # the backward solve's sign
        elif not getattr(control, "perturb", False) and getattr(solver, "perturbed", False):
            solver = solver.unperturbed  # adjoint_options without perturb: honour that
        return solver, control

    @property
    def runner_cls(self):
        return _AdjointRunner


class _AdjointRunner(Runner):
    reusable = True  # it keeps only the outputs: backward may run again (retain_graph)

    def forward(self, y0: Tensor) -> list[Tensor]:
        outputs, _, _ = forward_no_graph(self, y0)
        self.outputs = outputs
        return outputs

    def backward(self, grads: list[Tensor], y0: Tensor):
        p = self.p
        shape = y0.shape
        n = y0.numel()
        params = p.params
        numels = [q.numel() for q in params]
        dtype = y0.dtype

        def aug(t: float, s: Tensor) -> Tensor:
            y = s[:n].view(shape).detach().requires_grad_(True)
            a = s[n : 2 * n].view(shape)
            with torch.enable_grad():
                fy = p.field(t, y)
                if fy.requires_grad:
                    gs = torch.autograd.grad(
                        fy, (y, *params), a, allow_unused=True,
                        retain_graph=p.field.shared_graph,
                    )  # fmt: skip
                else:  # f depends on neither y nor params
                    gs = (None,) * (1 + len(params))
            parts = [
                fy.detach().reshape(-1),
                -(gs[0] if gs[0] is not None else torch.zeros_like(y)).reshape(-1),
            ]
            for g, k in zip(gs[1:], numels):
                parts.append(-g.reshape(-1).to(dtype) if g is not None else y.new_zeros(k))
            return torch.cat(parts)

        solver, control = self.method.backward_config(p, n)
        callbacks = Callbacks.of(p.field.func, "_adjoint")  # torchdiffeq's names
        a = grads[-1].reshape(-1)
        a_theta = y0.new_zeros(sum(numels))
        stats = SolveStats()
        K = len(p.times) - 1
        with torch.no_grad():
            for k in range(K, 0, -1):
                s0 = torch.cat([self.outputs[k].reshape(-1), a, a_theta])
                x0 = solver.init(aug, p.times[k], s0)
                # a grid_constructor grid (over the whole solve) walked back one interval
                ctl = control
                if getattr(control, "grid_points", None) is not None:
                    ctl = control.between(p.times[k], p.times[k - 1])
                outs, _, _ = integrate(
                    solver, aug, x0, [p.times[k], p.times[k - 1]], ctl, stats,
                    callbacks=callbacks,
                )  # fmt: skip
                s1 = outs[-1]
                a = s1[n : 2 * n] + (grads[k - 1].reshape(-1) if k > 1 else 0.0)
                a_theta = s1[2 * n :]
        a_flow = a  # the adjoint at t_0 before output 0's own cotangent
        a = a_flow + grads[0].reshape(-1)
        p.stats.backward_steps += stats.accepted_steps
        if p.t_input is not None:
            # SPEC §5.2, the continuous derivative (as torchdiffeq's adjoint):
            # dL/dt_k = <g_k, f(t_k, y_k)> for k >= 1, dL/dt_0 = -<a(t_0), f(t_0, y_0)>
            # with a(t_0) the adjoint the flow carries back to y_0 (g_0 aside: y(t_0) = y_0)
            with torch.no_grad():
                fs = [p.field(tk, self.outputs[k]) for k, tk in enumerate(p.times)]
                tg = [float((grads[k] * fs[k]).sum()) for k in range(1, K + 1)]
                a_flow = a_flow.view(shape)
                self.t_grads = [-float((a_flow * fs[0]).sum()), *tg]
        g_params = list(a_theta.split(numels)) if numels else []
        g_params = [g.view_as(q) for g, q in zip(g_params, params)]
        return a.view(shape), g_params
