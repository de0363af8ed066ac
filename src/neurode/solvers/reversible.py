"""Reversible wrapper around any explicit Runge–Kutta method.

McCallum & Foster, "Efficient, accurate and stable gradients for neural ODEs"
(2024). With ``Ψ_h(t, x)`` one step of the base method (FSAL disabled) and a
coupling ``λ ∈ (0, 1]``, the state ``(y, z)``, ``z₀ = y₀``, advances by::

    y' = λ (y − z) + Ψ_h(t, z)
    z' = z + y' − Ψ_{−h}(t + h, y')

and is undone in closed form::

    z = z' − y' + Ψ_{−h}(t + h, y')
    y = λ⁻¹ (y' − Ψ_h(t, z)) + z

Two base steps per step; the base method's order is kept. ``λ < 1`` couples
``y`` and ``z`` so the pair cannot drift apart, which is what keeps the scheme
stable where ALF and reversible Heun are not.

The backward pass is fused (SPEC §5.5): the inverse evaluates the same two base
steps the forward step took, so evaluating them with their graph gives the
step's vector–Jacobian product directly. With ``B = Ψ_{−h}(t + h, y')``,
``F = Ψ_h(t, z)`` and cotangents ``(a_y', a_z')``::

    ā   = a_y' + a_z' − (∂B/∂y')ᵀ a_z'              (y' reaches z' directly and via B)
    a_y = λ ā
    a_z = a_z' − λ ā + (∂F/∂z)ᵀ ā
    a_θ = −(∂B/∂θ)ᵀ a_z' + (∂F/∂θ)ᵀ ā

Two base steps and their VJPs per step, instead of inverting (two base steps)
and replaying (two more).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from .._rng import cuda_devices, draw_seeds, seeded
from ..errors import InvalidOptionError
from .base import Interpolant, ReversibleSolver, State, VectorField, combine, vjp
from .dense import dense_weights
from .rk import RungeKutta, rk_interpolant, rk_stages, rk_step
from .tableau import TABLEAUS, ButcherTableau


class Reversible(ReversibleSolver):
    """Make an explicit RK method algebraically reversible.

    Args:
        base: a tableau name (``"rk4"``, ``"dopri5"``, …), a
            :class:`ButcherTableau` or a :class:`RungeKutta` solver.
        coupling: λ in (0, 1]; default 0.999.
    """

    rate_slots = ()  # the state holds no rate

    def __init__(self, base: str | ButcherTableau | RungeKutta = "rk4", coupling: float = 0.999):
        if isinstance(base, RungeKutta):
            base = base.tableau
        if isinstance(base, str):
            if base not in TABLEAUS:
                raise InvalidOptionError(
                    f"Reversible base must be one of {sorted(TABLEAUS)}, got {base!r}"
                )
            base = TABLEAUS[base]
        if not isinstance(base, ButcherTableau):
            raise InvalidOptionError(
                f"Reversible base must be an explicit Runge-Kutta method, got {base!r}"
            )
        if isinstance(coupling, bool) or not isinstance(coupling, (int, float)):
            raise InvalidOptionError(f"Reversible coupling λ must be a number, got {coupling!r}")
        coupling = float(coupling)
        if not (0.0 < coupling <= 1.0):
            raise InvalidOptionError(f"Reversible coupling λ must lie in (0, 1], got {coupling}")
        self.base = base
        self.coupling = coupling
        self.order = base.order
        self.error_order = base.error_order
        self.interpolates = dense_weights(base.name) is not None or base.order <= 4
        default = coupling == 0.999
        self.name = (
            f"reversible({base.name})" if default else f"reversible({base.name}, {coupling:g})"
        )

    def _psi(self, f: VectorField, t: float, h: float, x: Tensor) -> tuple[Tensor, Tensor | None]:
        y1, err, _ = rk_step(self.base, f, t, h, x)
        return y1, err

    def init(self, f: VectorField, t0: float, y0: Tensor) -> State:
        return (y0, y0)

    # The inverse evaluates the two base steps in the opposite order. Each runs under its
    # own seed, drawn at the start of the step, so that a random f (dropout) draws the
    # same numbers in the forward step, its inverse and its replay.

    def step(self, f: VectorField, t: float, h: float, x: State) -> tuple[State, Tensor | None]:
        x1, err, _ = self._advance(f, t, h, x, None)
        return x1, err

    def step_dense(self, f, t, h, x, interp="auto"):
        """The step and its interpolant, from the base step's: with ``ψ(θ)`` the base
        method's interpolant of ``Ψ_θh(t, z)``, ``y(θ) = ψ(θ) + (1 + θ(λ − 1))(y − z)``,
        which is ``y`` at θ = 0 and ``y'`` at θ = 1 (``y − z`` is the small parasitic
        component, so the accuracy is the base interpolant's)."""
        return self._advance(f, t, h, x, interp)

    def _advance(self, f, t, h, x, interp):
        y, z = x
        devices = cuda_devices(y.device)
        seed_fwd, seed_bwd = draw_seeds(2)
        with seeded(seed_fwd, devices):
            if interp is None:
                fwd, _ = self._psi(f, t, h, z)
            else:
                fwd, _, ks = rk_stages(self.base, f, t, h, z)
                base = rk_interpolant(self.base, f, t, h, z, fwd, ks, interp)
        y1 = (y - z).mul(self.coupling).add(fwd) if self.coupling != 1.0 else (y - z).add(fwd)
        with seeded(seed_bwd, devices):
            bwd, err = self._psi(f, t + h, -h, y1)
        z1 = (z + y1).sub(bwd)
        if interp is None:
            return (y1, z1), err, None
        return (y1, z1), err, _Coupled(base, y - z, self.coupling)

    def inverse(self, f: VectorField, t: float, h: float, x1: State) -> State:
        y1, z1 = x1
        devices = cuda_devices(y1.device)
        seed_fwd, seed_bwd = draw_seeds(2)
        with seeded(seed_bwd, devices):
            bwd, _ = self._psi(f, t + h, -h, y1)
        z = (z1 - y1).add(bwd)
        with seeded(seed_fwd, devices):
            fwd, _ = self._psi(f, t, h, z)
        y = (y1 - fwd).div(self.coupling).add(z)
        return (y, z)

    def backward_step(self, f, t, h, x1, a1, params, rng=contextlib.nullcontext):
        """Rebuild ``x0`` from ``x1`` and pull ``a1 = (a_y', a_z')`` back through the step.

        Fused (see the module docstring): the inverse's two base steps are evaluated
        with their graph, ``Ψ_{−h}(t + h, y')`` first, and each is pulled back as
        soon as it is evaluated, so one base step's graph is alive at a time. Under
        ``rng()`` the two seeds are drawn as :meth:`step` drew them, and each base
        step runs under the seed it ran under forward. Returns ``(x0, a0, param_grads)``.
        """
        y1, z1 = x1
        a_y1, a_z1 = a1
        lam = self.coupling
        retain = getattr(f, "shared_graph", True)
        devices = cuda_devices(y1.device)
        with rng():
            seed_fwd, seed_bwd = draw_seeds(2)
            # B = Ψ_{−h}(t + h, y'), pulled back with a_z'
            y1_leaf = y1.detach().requires_grad_(True)
            with torch.enable_grad(), seeded(seed_bwd, devices):
                bwd = _base_step(self.base, f, t + h, -h, y1_leaf)
            (g_y1,), g_bwd = vjp((bwd,), (y1_leaf,), (a_z1,), params, retain=retain)
            with torch.no_grad():
                bwd = bwd.detach()
                z = (z1 - y1).add(bwd)
                a_bar = (a_y1 + a_z1).sub(g_y1)
            del bwd, g_y1
            # F = Ψ_h(t, z), pulled back with ā
            z_leaf = z.detach().requires_grad_(True)
            with torch.enable_grad(), seeded(seed_fwd, devices):
                fwd = _base_step(self.base, f, t, h, z_leaf)
            (g_z,), g_fwd = vjp((fwd,), (z_leaf,), (a_bar,), params, retain=retain)
        with torch.no_grad():
            fwd = fwd.detach()
            y = (y1 - fwd).div(lam).add(z)
            a_y = a_bar * lam
            a_z = (a_z1 - a_y).add(g_z) if lam != 1.0 else (a_z1 - a_bar).add(g_z)
            grads = tuple(_combine_grads(gb, gf) for gb, gf in zip(g_bwd, g_fwd))
        return (y, z), (a_y, a_z), grads


def _base_step(tab: ButcherTableau, f: VectorField, t: float, h: float, y: Tensor) -> Tensor:
    """``Ψ_h(t, y)`` as :func:`rk_stages` computes it (the same floating-point operations),
    without the error estimate, which the backward pass does not need."""
    ks = [f(t, y)]
    s = tab.stages
    for i in range(1, s):
        yi = combine(y, h, tab.a[i], ks)
        if tab.fsal and i == s - 1:
            return yi  # the last stage is evaluated at the solution itself (f unused)
        ks.append(f(t + tab.c[i] * h, yi))
    return combine(y, h, tab.b, ks)


def _combine_grads(g_bwd: Tensor | None, g_fwd: Tensor | None) -> Tensor | None:
    """``−g_bwd + g_fwd`` where ``None`` means zero (a parameter a base step does not use)."""
    if g_bwd is None:
        return g_fwd
    if g_fwd is None:
        return -g_bwd
    return g_fwd - g_bwd


class _Coupled(Interpolant):
    """``ψ(θ) + (1 + θ(λ − 1))(y − z)`` (see :meth:`Reversible.step_dense`)."""

    def __init__(self, base: Interpolant, gap: Tensor, coupling: float):
        self.base, self.gap, self.coupling = base, gap, coupling
        self.order = base.order

    def values(self, thetas):
        vals = self.base.values(thetas)
        return [
            v.add(self.gap, alpha=1.0 + th * (self.coupling - 1.0)) for v, th in zip(vals, thetas)
        ]

    def slopes(self, thetas):
        return [v.add(self.gap, alpha=self.coupling - 1.0) for v in self.base.slopes(thetas)]
