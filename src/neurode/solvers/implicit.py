r"""Implicit Runge–Kutta methods for stiff problems (SPEC §5.6).

One generic step serves every tableau, as for the explicit methods: the stage
equations

    K_i = F_i(K, y) = f(t + c_i h, y + h Σ_j a_ij K_j),     i = 1..s
    y'  = y + h Σ b_i K_i,        err = h Σ b_err_i K_i   (embedded pairs only)

are solved by a simplified Newton iteration with the Jacobian ``J = ∂f/∂y`` at
``(t, y)``: for a fully implicit tableau (Gauss–Legendre, Radau IIA) one
``sn × sn`` system ``(I − h A⊗J) ΔK = −(K − F(K))`` per iteration, for a
diagonally implicit one (SDIRK, ESDIRK, TR-BDF2) one ``n × n`` system
``(I − h a_ii J) ΔK_i = …`` per stage, stage after stage. ``J`` comes from
autograd (dense, batched dimensions flattened) for small states and the systems
are LU-factorised; for large states the Newton systems are solved matrix-free
by GMRES with finite-difference Jacobian–vector products (Newton–Krylov).

**Gradients by the implicit function theorem.** Newton runs without a graph.
With gradients enabled the step then evaluates ``F(K*, y)`` once more *with* its
graph (``s`` evaluations; this connects ``y`` and every tensor ``f`` uses — no
parameter list needed) and routes it through :class:`_StageGradient`, whose
value is ``K*`` and whose backward replaces the incoming cotangent ``g`` by the
solution ``λ`` of the transposed linear system ``(I − ∂F/∂K)ᵀ λ = g``. Autograd
then pulls ``λ`` through ``F``'s graph, giving
``gᵀ (I − ∂F/∂K)⁻¹ ∂F/∂(y, θ) = gᵀ dK*/d(y, θ)``: the exact derivative of the
converged stages (the deep-equilibrium construction), one transposed solve per
step, never a backward pass through Newton's iterations. ``∂F_i/∂K_j =
h a_ij J(Y_i)`` is read off the same graph: one batched vector–Jacobian product
per stage gives every ``J(Y_i)`` exactly (dense), or GMRES uses the products
directly (Krylov). The values of a step do not depend on whether a graph is
built, so the checkpoint gradient's replays compute exactly what the forward
computed.

Newton failure: an adaptive method (an embedded pair) returns a NaN state with
an infinite error, so the step-size control rejects the step and shrinks ``h``;
a fixed-grid method raises :class:`~neurode.errors.NewtonConvergenceError`
naming ``t`` and ``h``. ``f`` must be deterministic within a step (no dropout
drawn afresh on every evaluation): Newton evaluates it many times.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import weakref
from dataclasses import dataclass, field, fields
from math import sqrt

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..errors import InvalidOptionError, NewtonConvergenceError, UnknownMethodError
from .base import Solver, State, VectorField, combine
from .registry import register
from .tableau import RungeKuttaData

# ---------------------------------------------------------------------------
# Tableaus
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ImplicitTableau(RungeKuttaData):
    """An implicit Runge–Kutta method as data: the full ``s × s`` matrix ``A``.

    Validated once (the checks of :class:`~neurode.solvers.tableau.RungeKuttaData`
    plus the shape of ``A``). Whether the method is diagonally implicit (stages
    solved one after another) is derived from ``A``.
    """

    diagonal: bool = field(init=False)

    def __post_init__(self) -> None:
        s = len(self.c)
        if s == 0 or len(self.a) != s or any(len(r) != s for r in self.a):
            raise ValueError(f"tableau {self.name}: A must be {s}×{s}")
        self._check_weights()
        lower = all(self.a[i][j] == 0.0 for i in range(s) for j in range(i + 1, s))
        if all(self.a[i][i] == 0.0 for i in range(s)) and lower:
            raise ValueError(f"tableau {self.name}: explicit; use ButcherTableau")
        object.__setattr__(self, "diagonal", lower)


_s2, _s3, _s6, _s15 = sqrt(2.0), sqrt(3.0), sqrt(6.0), sqrt(15.0)
_g2 = 1.0 - _s2 / 2.0  # SDIRK2's γ and TR-BDF2's d
_w = _s2 / 4.0  # TR-BDF2's outer weight


def _kvaerno(name: str, rows: tuple, order: int) -> ImplicitTableau:
    # Kværnø's ESDIRKs are stiffly accurate: the solution is the last stage (b is the
    # last row of A) and the embedded solution the stage before it; c is taken from
    # the row sums of A.
    b, emb = tuple(rows[-1]), tuple(rows[-2])
    return ImplicitTableau(
        name,
        c=tuple(sum(r) for r in rows),
        a=rows,
        b=b,
        order=order,
        b_err=tuple(x - y for x, y in zip(b, emb)),
        error_order=order - 1,
    )


def _kvaerno3() -> ImplicitTableau:
    # Kværnø, "Singly diagonally implicit Runge–Kutta methods with an explicit first
    # stage", BIT 44 (2004): A–L stable, stiffly accurate ESDIRK 3(2), 4 stages; the
    # embedded solution is stage 3 (its row of A), the solution stage 4.
    g = 0.43586652150
    a31 = (-4 * g**2 + 6 * g - 1) / (4 * g)
    a32 = (-2 * g + 1) / (4 * g)
    a41 = (6 * g - 1) / (12 * g)
    a42 = -1 / ((24 * g - 12) * g)
    a43 = (-6 * g**2 + 6 * g - 1) / (6 * g - 3)
    return _kvaerno(
        "kvaerno3", ((0, 0, 0, 0), (g, g, 0, 0), (a31, a32, g, 0), (a41, a42, a43, g)), 3
    )


def _kvaerno4() -> ImplicitTableau:
    # Kværnø (2004): ESDIRK 4(3), 5 stages, advancing with the 4th-order last stage.
    g = 0.5728160625

    def p(*coef):
        v = 0.0
        for x in coef:
            v = v * g + x
        return v

    a31 = p(144, -180, 81, -15, 1) * g / p(12, -6, 1) ** 2
    a32 = p(-36, 39, -15, 2) * g / p(12, -6, 1) ** 2
    a41 = p(-144, 396, -330, 117, -18, 1) / (12 * g**2 * p(12, -9, 2))
    a42 = p(72, -126, 69, -15, 1) / (12 * g**2 * p(3, -1))
    a43 = (p(-6, 6, -1) * p(12, -6, 1) ** 2) / (12 * g**2 * p(12, -9, 2) * p(3, -1))
    a51 = p(288, -312, 120, -18, 1) / (48 * g**2 * p(12, -9, 2))
    a52 = p(24, -12, 1) / (48 * g**2 * p(3, -1))
    a53 = -(p(12, -6, 1) ** 3) / (48 * g**2 * p(3, -1) * p(12, -9, 2) * p(6, -6, 1))
    a54 = p(-24, 36, -12, 1) / p(24, -24, 4)
    rows = (
        (0, 0, 0, 0, 0),
        (g, g, 0, 0, 0),
        (a31, a32, g, 0, 0),
        (a41, a42, a43, g, 0),
        (a51, a52, a53, a54, g),
    )
    return _kvaerno("kvaerno4", rows, 4)


def _kvaerno5() -> ImplicitTableau:
    # Kværnø (2004): ESDIRK 5(4), 7 stages (coefficients as printed in the paper).
    g = 0.26
    rows = (
        (0.0,) * 7,
        (g, g, 0, 0, 0, 0, 0),
        (0.13, 0.84033320996790809, g, 0, 0, 0, 0),
        (0.22371961478320505, 0.47675532319799699, -0.06470895363112615, g, 0, 0, 0),
        (
            0.16648564323248321,
            0.10450018841591720,
            0.03631482272098715,
            -0.13090704451073998,
            g,
            0,
            0,
        ),
        (
            0.13855640231268224,
            0.0,
            -0.04245337201752043,
            0.02446657898003141,
            0.61943039072480676,
            g,
            0,
        ),
        (
            0.13659751177640291,
            0.0,
            -0.05496908796538376,
            -0.04118626728321046,
            0.62993304899016403,
            0.06962479448202728,
            g,
        ),
    )
    # the printed rows sum to the paper's c to ~1e-16
    return _kvaerno("kvaerno5", rows, 5)


IMPLICIT_TABLEAUS: dict[str, ImplicitTableau] = {
    t.name: t
    for t in (
        ImplicitTableau("implicit_euler", c=(1.0,), a=((1.0,),), b=(1.0,), order=1),
        ImplicitTableau("implicit_midpoint", c=(0.5,), a=((0.5,),), b=(1.0,), order=2),
        ImplicitTableau(
            "trapezoid", c=(0.0, 1.0), a=((0.0, 0.0), (0.5, 0.5)), b=(0.5, 0.5), order=2
        ),
        ImplicitTableau(
            "gl4",
            c=(0.5 - _s3 / 6, 0.5 + _s3 / 6),
            a=((0.25, 0.25 - _s3 / 6), (0.25 + _s3 / 6, 0.25)),
            b=(0.5, 0.5),
            order=4,
        ),
        ImplicitTableau(
            "gl6",
            c=(0.5 - _s15 / 10, 0.5, 0.5 + _s15 / 10),
            a=(
                (5 / 36, 2 / 9 - _s15 / 15, 5 / 36 - _s15 / 30),
                (5 / 36 + _s15 / 24, 2 / 9, 5 / 36 - _s15 / 24),
                (5 / 36 + _s15 / 30, 2 / 9 + _s15 / 15, 5 / 36),
            ),
            b=(5 / 18, 4 / 9, 5 / 18),
            order=6,
        ),
        ImplicitTableau(
            "radauiia3",
            c=(1 / 3, 1.0),
            a=((5 / 12, -1 / 12), (3 / 4, 1 / 4)),
            b=(3 / 4, 1 / 4),
            order=3,
        ),
        ImplicitTableau(
            "radauiia5",
            c=((4 - _s6) / 10, (4 + _s6) / 10, 1.0),
            a=(
                ((88 - 7 * _s6) / 360, (296 - 169 * _s6) / 1800, (-2 + 3 * _s6) / 225),
                ((296 + 169 * _s6) / 1800, (88 + 7 * _s6) / 360, (-2 - 3 * _s6) / 225),
                ((16 - _s6) / 36, (16 + _s6) / 36, 1 / 9),
            ),
            b=((16 - _s6) / 36, (16 + _s6) / 36, 1 / 9),
            order=5,
        ),
        # Alexander's 2-stage L-stable SDIRK, γ = 1 − √2/2 (torchdiffeq's sdirk2)
        ImplicitTableau(
            "sdirk2",
            c=(_g2, 1.0),
            a=((_g2, 0.0), (1 - _g2, _g2)),
            b=(1 - _g2, _g2),
            order=2,
        ),
        # TR-BDF2 as an ESDIRK (Bank et al. 1985; Hosea & Shampine 1996): a trapezoidal
        # stage to t + (2 − √2)h, then BDF2 to t + h (torchdiffeq's trbdf2)
        ImplicitTableau(
            "trbdf2",
            c=(0.0, 2 * _g2, 1.0),
            a=((0.0, 0.0, 0.0), (_g2, _g2, 0.0), (_w, _w, _g2)),
            b=(_w, _w, _g2),
            order=2,
        ),
        _kvaerno3(),
        _kvaerno4(),
        _kvaerno5(),
    )
}

FIXED_GRID = (
    "implicit_euler",
    "implicit_midpoint",
    "trapezoid",
    "gl4",
    "gl6",
    "radauiia3",
    "radauiia5",
    "sdirk2",
    "trbdf2",
)
ADAPTIVE = ("kvaerno3", "kvaerno4", "kvaerno5")


# ---------------------------------------------------------------------------
# Linear algebra helpers
# ---------------------------------------------------------------------------


def gmres(matvec, b: Tensor, tol: float, restart: int = 30, max_restarts: int = 20):
    """Restarted GMRES for ``matvec(x) = b`` (flat tensors). Returns ``(x, iterations, ok)``.

    Arnoldi with modified Gram–Schmidt (and one re-orthogonalisation); the small
    least-squares problem is solved afresh each iteration, in float64.
    """
    x = torch.zeros_like(b)
    bnorm = float(b.norm())
    if bnorm == 0.0 or not math.isfinite(bnorm):
        return x, 0, math.isfinite(bnorm)
    target = tol * bnorm
    its = 0
    m = max(1, min(restart, b.numel()))
    for _ in range(max_restarts):
        r = b - matvec(x) if its else b.clone()
        beta = float(r.norm())
        if beta <= target:
            return x, its, True
        V = [r / beta]
        H = torch.zeros(m + 1, m, dtype=torch.float64)
        y = None
        for j in range(m):
            w = matvec(V[j])
            its += 1
            for _rep in range(2):
                for i in range(j + 1):
                    hij = torch.dot(w, V[i])
                    H[i, j] += float(hij)
                    w = w - hij * V[i]
            hn = float(w.norm())
            H[j + 1, j] = hn
            e1 = torch.zeros(j + 2, dtype=torch.float64)
            e1[0] = beta
            Hj = H[: j + 2, : j + 1]
            y = torch.linalg.lstsq(Hj, e1.unsqueeze(1)).solution.squeeze(1)
            res = float((e1 - Hj @ y).norm())
            if res <= target or hn <= 1e-14 * beta:
                break
            V.append(w / hn)
        upd = torch.zeros_like(b)
        for i in range(y.numel()):
            upd.add_(V[i], alpha=float(y[i]))
        x = x + upd
        if res <= target:
            return x, its, True
    return x, its, float((b - matvec(x)).norm()) <= target * 10


class _StageGradient(torch.autograd.Function):
    """Value ``K*``; backward maps the cotangent ``g`` of the stages to
    ``λ = (I − ∂F/∂K)⁻ᵀ g``, which autograd then pulls through the graph of
    ``F(K*, y)`` (the first input) to ``y`` and every parameter."""

    @staticmethod
    def forward(ctx, F: Tensor, K: Tensor, solve_t):  # noqa: D102
        ctx.solve_t = solve_t
        return K.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):  # noqa: D102
        # solve_t stays: a backward with retain_graph=True may come again (it holds
        # F's graph, which autograd frees with this node)
        return ctx.solve_t(g), None, None


# ---------------------------------------------------------------------------
# The solver
# ---------------------------------------------------------------------------


@dataclass
class ImplicitStats:
    """Counters accumulated by one :class:`ImplicitRK` object over its lifetime."""

    steps: int = 0
    newton_iterations: int = 0
    newton_failures: int = 0
    jacobians: int = 0
    factorizations: int = 0
    krylov_iterations: int = 0
    backward_solves: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, 0)


_DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


class ImplicitRK(Solver):
    """An implicit Runge–Kutta method given by an :class:`ImplicitTableau` (or its name).

    Args:
        tableau: a tableau or one of :data:`FIXED_GRID` / :data:`ADAPTIVE`.
        newton_tol: relative tolerance of the Newton solve on ``h·K`` (default
            1e-10 in float64, 1e-5 in float32, 1e-3 otherwise) — well below any
            step tolerance, so the step is the converged one its gradient assumes.
        newton_atol: absolute floor of that tolerance (default ``newton_tol·1e-3·RMS(y)``).
        max_iter: Newton iterations per solve before it is declared failed.
        linear_solver: ``"auto"`` (dense up to ``dense_max`` state entries, Krylov
            above), ``"dense"`` or ``"krylov"`` (GMRES, matrix-free).
        dense_max: the ``"auto"`` threshold on the state's number of entries.
        krylov_tol: relative tolerance of GMRES in the backward transposed solve
            (default 1e-12 in float64, 1e-6 in float32); the forward's inexact
            Newton uses 1e-3.
        reuse_jacobian: keep ``J`` across steps while Newton converges fast
            (rate < 0.1), recomputing it when convergence slows or fails. Saves
            the Jacobian's vector–Jacobian products; replays (checkpoint) then
            agree with the forward to the Newton tolerance instead of bitwise.
            ``J`` is always reused across retries of a rejected step (same ``t``, ``y``).

    ``stats`` (:class:`ImplicitStats`) counts Newton iterations, Jacobians,
    factorizations and backward transposed solves.
    """

    rate_slots = ()  # the state holds no rate

    def __init__(
        self,
        tableau: ImplicitTableau | str,
        *,
        newton_tol: float | None = None,
        newton_atol: float | None = None,
        max_iter: int = 30,
        linear_solver: str = "auto",
        dense_max: int = 256,
        krylov_tol: float | None = None,
        reuse_jacobian: bool = False,
    ):
        if isinstance(tableau, str):
            key = tableau.strip().lower()
            if key not in IMPLICIT_TABLEAUS:
                raise UnknownMethodError(
                    f"no implicit Runge–Kutta tableau is called {tableau!r}; choose one of "
                    f"{sorted(IMPLICIT_TABLEAUS)}"
                )
            tableau = IMPLICIT_TABLEAUS[key]
        if linear_solver not in ("auto", "dense", "krylov"):
            raise InvalidOptionError(
                f"linear_solver must be 'auto', 'dense' or 'krylov', got {linear_solver!r}"
            )
        for nm, v in (("newton_tol", newton_tol), ("newton_atol", newton_atol)):
            if v is not None and not (math.isfinite(v) and v > 0):
                raise InvalidOptionError(f"{nm} must be a positive number, got {v!r}")
        if not isinstance(max_iter, int) or max_iter < 1:
            raise InvalidOptionError(f"max_iter must be a positive integer, got {max_iter!r}")
        self.tableau = tableau
        self.name = tableau.name
        self.order = tableau.order
        self.error_order = tableau.error_order
        self.newton_tol = newton_tol
        self.newton_atol = newton_atol
        self.max_iter = max_iter
        self.linear_solver = linear_solver
        self.dense_max = int(dense_max)
        self.krylov_tol = krylov_tol
        self.reuse_jacobian = bool(reuse_jacobian)
        self.stats = ImplicitStats()
        s = tableau.stages
        self._A = torch.tensor(tableau.a, dtype=torch.float64)
        # rows whose stage depends on K (their F_i has a Jacobian w.r.t. the stages)
        self._coupled_rows = [i for i in range(s) if any(x != 0.0 for x in tableau.a[i])]
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"ImplicitRK({self.name!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ImplicitRK) and other.tableau == self.tableau

    def __hash__(self) -> int:
        return hash(("implicit", self.tableau.name))

    # --- tolerances ---------------------------------------------------------------
    def _tols(self, y: Tensor) -> tuple[float, float]:
        rtol = self.newton_tol if self.newton_tol is not None else _DEFAULT_TOL.get(y.dtype, 1e-3)
        if self.newton_atol is not None:
            atol = self.newton_atol
        else:
            rms = float(y.pow(2).mean().sqrt()) if y.numel() else 0.0
            atol = rtol * 1e-3 * rms if rms > 0 else rtol * 1e-3
        return rtol, max(atol, torch.finfo(y.dtype).tiny)

    def _dense(self, n: int) -> bool:
        if self.linear_solver == "auto":
            return n <= self.dense_max
        return self.linear_solver == "dense"

    # --- Jacobian -----------------------------------------------------------------
    def _jacobian(self, f: VectorField, ff, t: float, y: Tensor, dense: bool):
        """``(J, f(t, y))`` at ``(t, y)`` (``J`` is ``None`` in Krylov mode: products by
        finite differences). Autograd when ``f`` is differentiable in ``y``, finite
        differences otherwise (e.g. the adjoint's augmented field)."""
        if not dense:
            return None, ff(t, y)
        n = y.numel()
        # a Field discovering parameters evaluates some calls on a detached input: let
        # this one through untouched (the Newton evaluations still serve discovery)
        disc = getattr(f, "discover", False) is True
        if disc:
            f.discover = False
        try:
            with torch.enable_grad():
                yl = y.detach().requires_grad_(True)
                out = ff(t, yl)
                if out.requires_grad:
                    J = _batched_jacobian(out, yl)
                    self.stats.jacobians += 1
                    return J.detach(), out.detach()
        finally:
            if disc:
                f.discover = True
        f0 = out.detach()
        eps = sqrt(torch.finfo(y.dtype).eps)
        J = y.new_zeros(n, n)
        for k in range(n):
            d = eps * max(1.0, abs(float(y[k])))
            yk = y.clone()
            yk[k] += d
            J[:, k] = (ff(t, yk) - f0) / d
        self.stats.jacobians += 1
        return J, f0

    def _jacobian_cached(self, f, ff, t, y, dense, stale_ok):
        try:
            fref = weakref.ref(f)
        except TypeError:
            fref = None
        c = self._cache
        same_f = fref is not None and c.get("f") is not None and c["f"]() is f
        if same_f and c.get("dense") == dense and c["y"].shape == y.shape:
            if c["t"] == t and torch.equal(c["y"], y):
                return c["J"], c["f0"], True
            if stale_ok and dense and c.get("fast", False):
                return c["J"], ff(t, y), False
        J, f0 = self._jacobian(f, ff, t, y, dense)
        self._cache = {"f": fref, "t": t, "y": y.clone(), "J": J, "f0": f0, "dense": dense}
        self._cache["lu"] = {}
        return J, f0, True

    def _lu(self, J: Tensor, key, build):
        lus = self._cache.setdefault("lu", {})
        if self._cache.get("J") is not J:
            lus.clear()
        if key not in lus:
            if len(lus) > 8:
                lus.clear()
            lus[key] = torch.linalg.lu_factor(build())
            self.stats.factorizations += 1
        return lus[key]

    # --- Newton -------------------------------------------------------------------
    def _newton(self, f, ff, t: float, h: float, y: Tensor):
        """Solve the stage equations without a graph. Returns ``(K (s, n), ok, message)``."""
        dense = self._dense(y.numel())
        J, f0, fresh = self._jacobian_cached(f, ff, t, y, dense, self.reuse_jacobian)
        K, ok, msg, rate = self._newton_with(ff, t, h, y, J, f0, dense)
        if not ok and not fresh:  # a stale Jacobian: refresh and try once more
            self._cache = {}
            J, f0, _ = self._jacobian_cached(f, ff, t, y, dense, False)
            K, ok, msg, rate = self._newton_with(ff, t, h, y, J, f0, dense)
        if "J" in self._cache:
            self._cache["fast"] = ok and rate < 0.1
        return K, ok, msg

    def _newton_with(self, ff, t, h, y, J, f0, dense):
        tab = self.tableau
        s, n = tab.stages, y.numel()
        rtol, atol = self._tols(y)
        base_scale = y.abs() * rtol + atol
        eps = torch.finfo(y.dtype).eps
        K = f0.expand(s, n).clone()
        worst = 0.0

        def scaled(dK: Tensor, Kc: Tensor) -> float:
            # never ask for less than round-off in h·K
            sc = base_scale + (100 * eps * abs(h)) * Kc.abs().amax(0)
            return float(((h * dK) / sc).pow(2).mean().sqrt())

        def iterate(solve_lin, residual, Kc):
            """Simplified Newton on one block; returns (ok, rate)."""
            d_prev = None
            rate = 0.0
            for it in range(self.max_iter):
                dK = solve_lin(-residual(Kc))
                self.stats.newton_iterations += 1
                d = scaled(dK, Kc + dK)
                if not math.isfinite(d):  # NaN/Inf in f or in the linear solve
                    return False, math.inf
                Kc.add_(dK)
                if d <= 1e-3:
                    return True, rate
                if d_prev is not None:
                    rate = d / d_prev
                    if rate >= 1.0:
                        return False, rate
                    eta = rate / (1 - rate)
                    if eta * d <= 1.0:
                        return True, rate
                    left = self.max_iter - 1 - it
                    if rate**left / (1 - rate) * d > 1.0:
                        return False, rate  # will not converge in the iterations left
                d_prev = d
            return False, rate

        if tab.diagonal:
            ok = True
            for i in range(s):
                aii = tab.a[i][i]
                base = combine(y, h, tab.a[i][:i], [K[j] for j in range(i)]) if i else y
                ti = t + tab.c[i] * h
                if aii == 0.0:
                    K[i] = f0 if (i == 0 and tab.c[0] == 0.0) else ff(ti, base)
                    continue
                if i:
                    K[i] = K[i - 1]
                Ki = K[i]
                if dense:
                    lu, piv = self._lu(J, ("d", h * aii), lambda aii=aii: _eye_minus(J, h * aii))

                    def solve_lin(r, lu=lu, piv=piv):
                        return torch.linalg.lu_solve(lu, piv, r.unsqueeze(1)).squeeze(1)
                else:
                    jv = _fd_jvp(ff, t, y, f0)

                    def solve_lin(r, jv=jv, aii=aii):
                        x, its, _ = gmres(lambda v: v - (h * aii) * jv(v), r, 1e-3)
                        self.stats.krylov_iterations += its
                        return x

                def residual(Kc, base=base, ti=ti, aii=aii):
                    return Kc - ff(ti, base + (h * aii) * Kc)

                ok_i, rate = iterate(solve_lin, residual, Ki)
                worst = max(worst, rate)
                if not ok_i:
                    ok = False
                    break
            return K, ok, "" if ok else f"stage {i + 1} of {s}", worst

        A = self._A.to(dtype=y.dtype, device=y.device)
        if dense:
            lu, piv = self._lu(J, ("c", h), lambda: _eye_minus(torch.kron(A, J), h))

            def solve_lin(r):
                return torch.linalg.lu_solve(lu, piv, r.reshape(-1, 1)).view(s, n)
        else:
            jv = _fd_jvp(ff, t, y, f0)

            def op(v):
                W = A @ v.view(s, n)
                return v - h * torch.cat([jv(W[i]) for i in range(s)])

            def solve_lin(r):
                x, its, _ = gmres(op, r.reshape(-1), 1e-3)
                self.stats.krylov_iterations += its
                return x.view(s, n)

        def residual(Kc):
            Y = y + h * (A @ Kc)
            return Kc - torch.stack([ff(t + tab.c[i] * h, Y[i]) for i in range(s)])

        ok, rate = iterate(solve_lin, residual, K)
        return K, ok, "", rate

    # --- the step -----------------------------------------------------------------
    def step(self, f: VectorField, t: float, h: float, x: State) -> tuple[State, Tensor | None]:
        y = x[0]
        shape = y.shape

        def ff(tt: float, v: Tensor) -> Tensor:
            return f(tt, v.view(shape)).reshape(-1)

        self.stats.steps += 1
        with torch.no_grad():
            yd = y.detach().reshape(-1)
            K, ok, where = self._newton(f, ff, t, h, yd)
        if not ok:
            self.stats.newton_failures += 1
            if self.adaptive:  # the controller rejects the step and shrinks h
                bad = torch.full_like(y, math.nan)
                return (bad,), torch.full_like(y, math.inf)
            raise NewtonConvergenceError(
                f"Newton's method did not converge in the {self.name!r} step from t={t:.6g} "
                f"with h={h:.3g}{' (' + where + ')' if where else ''}; use a smaller step "
                f"(options=dict(step_size=...) or steps=...), an adaptive implicit method "
                f"({', '.join(ADAPTIVE)}), or ImplicitRK({self.name!r}, max_iter=...)"
            )
        yf = y.reshape(-1)
        Ks = K
        if torch.is_grad_enabled():
            Ks = self._attach(ff, t, h, yf, K)
        rows = list(Ks.unbind(0))
        tab = self.tableau
        y1 = combine(yf, h, tab.b, rows).view(shape)
        err = None
        if tab.b_err is not None:
            err = combine(None, h, tab.b_err, rows).view(shape)
        return (y1,), err

    def _attach(self, ff, t: float, h: float, y: Tensor, K: Tensor) -> Tensor:
        """``K*`` as a differentiable function of ``y`` and ``f``'s tensors (see the module)."""
        tab = self.tableau
        s, n = tab.stages, y.numel()
        Kc = [K[j] for j in range(s)]
        rows = self._coupled_rows

        def evaluate(leaves: bool):
            Ys, Fs = [], []
            for i in range(s):
                Y = combine(y, h, tab.a[i], Kc) if i in rows else y
                if leaves and i in rows:
                    Y = Y.detach().requires_grad_(True)
                Ys.append(Y)
                Fs.append(ff(t + tab.c[i] * h, Y))
            return Ys, Fs

        with torch.enable_grad():
            Ys, Fs = evaluate(leaves=False)
            if not any(F.requires_grad for F in Fs):
                return K  # nothing to differentiate
            if not y.requires_grad:
                # f's tensors require grad but y does not: the stage inputs must be leaves
                # so that ∂F/∂K can be read off the graph (only the first step of a solve
                # whose y0 does not require grad pays these s evaluations twice)
                Ys, Fs = evaluate(leaves=True)
            F = torch.stack(Fs)
        A = tab.a
        dense = self._dense(n)
        Yr = [Ys[i] for i in rows]
        Fr = [Fs[i] for i in rows]
        dtype = y.dtype
        ktol = (
            self.krylov_tol
            if self.krylov_tol is not None
            else (1e-12 if dtype == torch.float64 else 1e-6)
        )
        stats = self.stats

        def jt_products(v: Tensor) -> Tensor:
            """``(∂F/∂K)ᵀ v`` for ``v`` of shape ``(s, n)``."""
            us = torch.autograd.grad(
                Fr, Yr, [v[i] for i in rows], retain_graph=True, allow_unused=True
            )
            out = torch.zeros_like(v)
            for i, u in zip(rows, us):
                if u is None:
                    continue
                for j in range(s):
                    if A[i][j] != 0.0:
                        out[j].add_(u, alpha=h * A[i][j])
            return out

        def solve_t(g: Tensor) -> Tensor:
            stats.backward_solves += 1
            if dense:
                D = g.new_zeros(s * n, s * n)
                eye = torch.eye(n, dtype=dtype, device=g.device)
                for i, Fi, Yi in zip(rows, Fr, Yr):
                    Ji = _batched_jacobian(Fi, Yi, eye=eye)
                    for j in range(s):
                        if A[i][j] != 0.0:
                            D[i * n : (i + 1) * n, j * n : (j + 1) * n] = (h * A[i][j]) * Ji
                M = torch.eye(s * n, dtype=dtype, device=g.device) - D
                return torch.linalg.solve(M.T, g.reshape(-1)).view(s, n)
            lam, its, ok = gmres(
                lambda v: v - jt_products(v.view(s, n)).reshape(-1),
                g.reshape(-1),
                ktol,
                restart=50,
                max_restarts=50,
            )
            stats.krylov_iterations += its
            if not ok:
                warnings.warn(
                    f"{self.name}: GMRES did not reach the tolerance {ktol:g} in the backward "
                    f"transposed solve at t={t:.6g}; the gradient of this step is approximate",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return lam.view(s, n)

        return _StageGradient.apply(F, K, solve_t)


def _eye_minus(M: Tensor, scale: float) -> Tensor:
    out = M * (-scale)
    out.diagonal().add_(1.0)
    return out


def _fd_jvp(ff, t: float, y: Tensor, f0: Tensor):
    """``v ↦ J v`` at ``(t, y)`` by a forward difference (one evaluation per product)."""
    eps = sqrt(torch.finfo(y.dtype).eps)
    ynorm = float(y.norm())

    def jv(v: Tensor) -> Tensor:
        vn = float(v.norm())
        if vn == 0.0:
            return torch.zeros_like(v)
        d = eps * (1.0 + ynorm) / vn
        return (ff(t, y + d * v) - f0) / d

    return jv


def _batched_jacobian(out: Tensor, inp: Tensor, eye=None) -> Tensor:
    """``∂out/∂inp`` (both flat, length n) from n vector–Jacobian products, batched
    when autograd can vmap the backward, one by one otherwise."""
    n = out.numel()
    if eye is None:
        eye = torch.eye(n, dtype=out.dtype, device=out.device)
    J = None
    batched = n > 16  # below this a loop of products beats vmap's set-up cost
    try:
        if batched:
            (J,) = torch.autograd.grad(
                out, inp, eye, retain_graph=True, allow_unused=True, is_grads_batched=True
            )
    except RuntimeError:
        batched = False
    if not batched:
        rows = []
        for k in range(n):
            (r,) = torch.autograd.grad(out, inp, eye[k], retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(inp) if r is None else r)
        J = torch.stack(rows)
    elif J is None:
        J = out.new_zeros(n, inp.numel())
    return J


def _register() -> None:
    for name in (*FIXED_GRID, *ADAPTIVE):
        register(name, lambda name=name: ImplicitRK(name))


_register()
