"""Continuous extensions of explicit Runge–Kutta tableaus (SPEC §5.3).

A continuous extension gives the solution anywhere inside a step from the
step's own stages: ``y(t + θh) = y + h Σ bᵢ(θ) kᵢ`` with ``bᵢ(1) = bᵢ``. Each
``bᵢ(θ)`` is stored as its polynomial coefficients in θ (lowest power first).
Tableaus without an entry use the cubic Hermite interpolant of
:class:`~neurode.solvers.base.Solver`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction as F

import numpy as np

Weights = Callable[[float], Sequence[float]]


def _from_roots(scale: float, roots: Sequence[float], quad: Sequence[float] = ()) -> np.ndarray:
    """Coefficients (lowest power first) of ``scale · θ² · Π(θ − r) · (θ² + q₁θ + q₀)``."""
    p = np.polynomial.polynomial
    out = np.array([0.0, 0.0, scale])
    for r in roots:
        out = p.polymul(out, [-r, 1.0])
    if quad:
        out = p.polymul(out, [quad[1], quad[0], 1.0])
    return out


# Dormand–Prince 5(4): Shampine's order-4 continuous extension, as given by Hairer,
# Nørsett & Wanner, Solving ODEs I (2nd ed.), §II.6: exact rationals, expanded in θ.
_DOPRI5 = (
    (F(0), F(1), F(-4034104133, 1410260304), F(105330401, 33982176),
     F(-13107642775, 11282082432), F(6542295, 470086768)),
    (F(0),),
    (F(0), F(0), F(132343189600, 32700410799), F(-833316000, 131326951),
     F(91412856700, 32700410799), F(-523383600, 10900136933)),
    (F(0), F(0), F(-115792950, 29380423), F(185270875, 16991088),
     F(-12653452475, 1880347072), F(98134425, 235043384)),
    (F(0), F(0), F(70805911779, 24914598704), F(-4531260609, 600351776),
     F(988140236175, 199316789632), F(-14307999165, 24914598704)),
    (F(0), F(0), F(-331320693, 205662961), F(31361737, 7433601),
     F(-2426908385, 822651844), F(97305120, 205662961)),
    (F(0), F(0), F(44764047, 29380423), F(-1532549, 353981),
     F(90730570, 29380423), F(-8293050, 29380423)),
)  # fmt: skip

# Tsitouras 5(4) (Tsitouras 2011, "Runge–Kutta pairs of order 5(4) satisfying only the
# first column simplifying assumption"): its order-4 interpolant in the paper's factored form.
_TSIT5 = (
    np.polynomial.polynomial.polymul(
        [0.0, -1.0530884977290216],
        np.polynomial.polynomial.polymul(
            [-1.3299890189751412, 1.0], [0.7139816917074209, -1.4364028541716351, 1.0]
        ),
    ),
    _from_roots(0.1017, (), (-2.1966568338249754, 1.2949852507374631)),
    _from_roots(2.490627285651252793, (), (-2.38535645472061657, 1.57803468208092486)),
    _from_roots(-16.54810288924490272, (1.21712927295533244, 0.61620406037800089)),
    _from_roots(47.37952196281928122, (1.203071208372362603, 0.658047292653547382)),
    _from_roots(-34.87065786149660974, (1.2, 2.0 / 3.0)),
    _from_roots(2.5, (1.0, 0.6)),
)

_COEFFS: dict[str, tuple] = {"dopri5": _DOPRI5, "tsit5": _TSIT5}
ORDER = {"dopri5": 4, "tsit5": 4}  # the θ-wise order conditions each extension satisfies


def _weights(rows) -> Weights:
    rows = [tuple(float(c) for c in r) for r in rows]

    def weights(theta: float) -> list[float]:
        out = []
        for r in rows:
            acc = 0.0
            for c in reversed(r):  # Horner
                acc = acc * theta + c
            out.append(acc)
        return out

    return weights


def _derivative(rows) -> list[tuple]:
    """Each polynomial's θ-derivative (lowest power first)."""
    return [tuple(i * c for i, c in enumerate(r))[1:] or (0,) for r in rows]


DENSE: dict[str, Weights] = {name: _weights(rows) for name, rows in _COEFFS.items()}
SLOPES: dict[str, Weights] = {name: _weights(_derivative(rows)) for name, rows in _COEFFS.items()}


def dense_weights(name: str) -> Weights | None:
    """``θ ↦ (b₁(θ), …, b_s(θ))`` for the tableau ``name``, or ``None`` if it has none."""
    return DENSE.get(name)


def slope_weights(name: str) -> Weights | None:
    """``θ ↦ (b₁'(θ), …, b_s'(θ))``, the θ-derivatives of :func:`dense_weights`."""
    return SLOPES.get(name)
