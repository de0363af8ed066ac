"""Butcher tableaus as validated, frozen data.

A tableau (c, A, b, b_err) describes one explicit Runge–Kutta step:

    k_i = f(t + c_i h, y + h Σ_{j<i} a_ij k_j)
    y'  = y + h Σ b_i k_i
    err = h Σ b_err_i k_i          (b_err = b − b̂, the difference of the two weight rows)

Invariants are checked once, when a tableau is built: rows of A sum to c, A is
strictly lower triangular, Σ b = 1 and Σ b_err = 0. Whether the method is FSAL
(first same as last: the last stage is evaluated at (t + h, y')) is derived from
the data, never declared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction as F

_TOL = 1e-12


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge–Kutta method as data.

    Args:
        name: short identifier, e.g. ``"dopri5"``.
        c: stage times, ``c[0] == 0``.
        a: lower-triangular rows; ``a[i]`` holds the ``i`` coefficients of stage ``i``.
        b: solution weights.
        order: order of the solution.
        b_err: error weights (difference between the solution and the embedded
            lower-order weights), or ``None`` for a method without error estimate.
        error_order: order of the embedded method (the ``q`` of the controller).
    """

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    b_err: tuple[float, ...] | None = None
    error_order: int | None = None
    fsal: bool = field(init=False)

    def __post_init__(self) -> None:
        s = len(self.c)
        if s == 0 or self.c[0] != 0:
            raise ValueError(f"tableau {self.name}: c must start with 0")
        if len(self.a) != s or any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError(f"tableau {self.name}: A must be strictly lower triangular ({s} rows)")
        for i, row in enumerate(self.a):
            if abs(sum(row) - self.c[i]) > _TOL:
                raise ValueError(
                    f"tableau {self.name}: row {i} of A sums to {sum(row)!r}, not c_{i}={self.c[i]!r}"
                )
        if len(self.b) != s or abs(sum(self.b) - 1.0) > _TOL:
            raise ValueError(
                f"tableau {self.name}: the weights b must have {s} entries summing to 1"
            )
        if self.b_err is not None:
            if len(self.b_err) != s or abs(sum(self.b_err)) > _TOL:
                raise ValueError(
                    f"tableau {self.name}: error weights must have {s} entries summing to 0"
                )
            if self.error_order is None:
                raise ValueError(f"tableau {self.name}: an error estimate needs its error_order")
        # FSAL: the last stage is f(t + h, y') exactly, so it is the next step's first stage.
        fsal = (
            s > 1
            and self.c[-1] == 1.0
            and tuple(self.a[-1]) == tuple(self.b[:-1])
            and self.b[-1] == 0
        )
        object.__setattr__(self, "fsal", fsal)

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        """Whether the tableau carries an embedded error estimate."""
        return self.b_err is not None


def _f(*xs) -> tuple[float, ...]:
    return tuple(float(x) for x in xs)


def _tableau(name, c, a, b, order, b_hat=None, error_order=None) -> ButcherTableau:
    """Build from exact rationals where possible; b_err is stored as b − b̂."""
    b_err = None if b_hat is None else _f(*(bi - bh for bi, bh in zip(b, b_hat)))
    return ButcherTableau(
        name=name,
        c=_f(*c),
        a=tuple(_f(*row) for row in a),
        b=_f(*b),
        order=order,
        b_err=b_err,
        error_order=error_order,
    )


EULER = _tableau("euler", c=[0], a=[[]], b=[1], order=1)

# Explicit midpoint: ANODE's "RK2".
MIDPOINT = _tableau("midpoint", c=[0, F(1, 2)], a=[[], [F(1, 2)]], b=[0, 1], order=2)

# Heun's method with the Euler step as embedded first-order estimate: 2(1).
HEUN = _tableau(
    "heun", c=[0, 1], a=[[], [1]], b=[F(1, 2), F(1, 2)], order=2, b_hat=[1, 0], error_order=1
)

RK4 = _tableau(
    "rk4",
    c=[0, F(1, 2), F(1, 2), 1],
    a=[[], [F(1, 2)], [0, F(1, 2)], [0, 0, 1]],
    b=[F(1, 6), F(1, 3), F(1, 3), F(1, 6)],
    order=4,
)

# Bogacki–Shampine 3(2), FSAL.
BOSH3 = _tableau(
    "bosh3",
    c=[0, F(1, 2), F(3, 4), 1],
    a=[[], [F(1, 2)], [0, F(3, 4)], [F(2, 9), F(1, 3), F(4, 9)]],
    b=[F(2, 9), F(1, 3), F(4, 9), 0],
    order=3,
    b_hat=[F(7, 24), F(1, 4), F(1, 3), F(1, 8)],
    error_order=2,
)

# Dormand–Prince 5(4), FSAL.
_DP_B = [F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), 0]
DOPRI5 = _tableau(
    "dopri5",
    c=[0, F(1, 5), F(3, 10), F(4, 5), F(8, 9), 1, 1],
    a=[
        [],
        [F(1, 5)],
        [F(3, 40), F(9, 40)],
        [F(44, 45), F(-56, 15), F(32, 9)],
        [F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)],
        [F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)],
        _DP_B[:6],
    ],
    b=_DP_B,
    order=5,
    b_hat=[
        F(5179, 57600),
        0,
        F(7571, 16695),
        F(393, 640),
        F(-92097, 339200),
        F(187, 2100),
        F(1, 40),
    ],
    error_order=4,
)

# Tsitouras 5(4) (2011), FSAL. Coefficients are given in the paper as decimals.
_TS_B = [
    0.09646076681806523,
    0.01,
    0.4798896504144996,
    1.379008574103742,
    -3.290069515436081,
    2.324710524099774,
    0.0,
]
_TS_ERR = [
    -0.00178001105222577714,
    -0.0008164344596567469,
    0.007880878010261995,
    -0.1447110071732629,
    0.5823571654525552,
    -0.45808210592918697,
    1.0 / 66.0,
]
TSIT5 = ButcherTableau(
    name="tsit5",
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=(
        (),
        (0.161,),
        (-0.008480655492356989, 0.335480655492357),
        (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
        (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
        (
            5.86145544294642,
            -12.92096931784711,
            8.159367898576159,
            -0.071584973281401,
            -0.028269050394068383,
        ),
        tuple(_TS_B[:6]),
    ),
    b=tuple(_TS_B),
    order=5,
    b_err=tuple(_TS_ERR),
    error_order=4,
)

TABLEAUS: dict[str, ButcherTableau] = {
    t.name: t for t in (EULER, MIDPOINT, HEUN, RK4, BOSH3, DOPRI5, TSIT5)
}
