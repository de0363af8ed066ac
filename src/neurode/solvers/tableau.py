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
class RungeKuttaData:
    """The fields every Runge–Kutta tableau has, explicit or implicit, and the
    checks they share: rows of ``A`` sum to ``c``, ``Σ b = 1``, ``Σ b_err = 0``,
    and an error estimate comes with its order.

    Args:
        name: short identifier, e.g. ``"dopri5"``.
        c: stage times.
        a: the rows of ``A``.
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

    @property
    def stages(self) -> int:
        return len(self.c)

    def _check_weights(self) -> None:
        s = len(self.c)
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
        elif self.error_order is not None:
            raise ValueError(f"tableau {self.name}: error_order given without error weights b_err")


@dataclass(frozen=True)
class ButcherTableau(RungeKuttaData):
    """An explicit Runge–Kutta method as data.

    The fields are :class:`RungeKuttaData`'s, with ``c[0] == 0`` and ``a[i]``
    holding the ``i`` coefficients of stage ``i`` (``A`` strictly lower triangular).
    """

    fsal: bool = field(init=False)

    def __post_init__(self) -> None:
        s = len(self.c)
        if s == 0 or self.c[0] != 0:
            raise ValueError(f"tableau {self.name}: c must start with 0")
        if len(self.a) != s or any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError(f"tableau {self.name}: A must be strictly lower triangular ({s} rows)")
        self._check_weights()
        # FSAL: the last stage is f(t + h, y') exactly, so it is the next step's first stage.
        fsal = (
            s > 1
            and self.c[-1] == 1.0
            and tuple(self.a[-1]) == tuple(self.b[:-1])
            and self.b[-1] == 0
        )
        object.__setattr__(self, "fsal", fsal)

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

# Heun's method with the Euler step as embedded first-order estimate: 2(1). It is
# torchdiffeq's "adaptive_heun" (an alias in registry.py).
HEUN = _tableau(
    "heun", c=[0, 1], a=[[], [1]], b=[F(1, 2), F(1, 2)], order=2, b_hat=[1, 0], error_order=1
)
# The same step without the estimate: torchdiffeq's "heun2", a fixed-grid method.
HEUN2 = _tableau("heun2", c=[0, 1], a=[[], [1]], b=[F(1, 2), F(1, 2)], order=2)

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

# Heun's third-order method (Heun 1900; Hairer, Nørsett & Wanner I, §II.1), fixed grid.
# torchdiffeq's "heun3".
HEUN3 = _tableau(
    "heun3",
    c=[0, F(1, 3), F(2, 3)],
    a=[[], [F(1, 3)], [0, F(2, 3)]],
    b=[F(1, 4), 0, F(3, 4)],
    order=3,
)

# Runge–Kutta–Fehlberg 2(1) (Fehlberg 1969, NASA TR R-315). Fehlberg's third stage is
# f at the first-order solution; like torchdiffeq, the second-order solution is the one
# propagated (local extrapolation), so the method is not FSAL.
FEHLBERG2 = _tableau(
    "fehlberg2",
    c=[0, F(1, 2), 1],
    a=[[], [F(1, 2)], [F(1, 256), F(255, 256)]],
    b=[F(1, 512), F(255, 256), F(1, 512)],
    order=2,
    b_hat=[F(1, 256), F(255, 256), 0],
    error_order=1,
)

# Dormand–Prince 8(7), the 13-stage RK8(7)13M pair of Prince & Dormand, "High order
# embedded Runge–Kutta formulae", J. Comput. Appl. Math. 7 (1981) 67–75 (torchdiffeq's
# "dopri8"; not Hairer's DOP853, which is a different 8(5,3) scheme). The eighth-order
# weights b are propagated, the seventh-order b̂ estimate the error. The published
# rationals are approximations of irrational coefficients: rows of A sum to c, and the
# 200 order conditions of order ≤ 8 hold, to ~1e-17 (checked exactly with Fractions;
# tests/test_new_methods.py re-checks them in float64). Not FSAL: b_13 = 1/4.
_DP8_C = [0, F(1, 18), F(1, 12), F(1, 8), F(5, 16), F(3, 8), F(59, 400), F(93, 200),
          F(5490023248, 9719169821), F(13, 20), F(1201146811, 1299019798), 1, 1]  # fmt: skip
_DP8_A = [
    [],
    [F(1, 18)],
    [F(1, 48), F(1, 16)],
    [F(1, 32), 0, F(3, 32)],
    [F(5, 16), 0, F(-75, 64), F(75, 64)],
    [F(3, 80), 0, 0, F(3, 16), F(3, 20)],
    [F(29443841, 614563906), 0, 0, F(77736538, 692538347), F(-28693883, 1125000000),
     F(23124283, 1800000000)],
    [F(16016141, 946692911), 0, 0, F(61564180, 158732637), F(22789713, 633445777),
     F(545815736, 2771057229), F(-180193667, 1043307555)],
    [F(39632708, 573591083), 0, 0, F(-433636366, 683701615), F(-421739975, 2616292301),
     F(100302831, 723423059), F(790204164, 839813087), F(800635310, 3783071287)],
    [F(246121993, 1340847787), 0, 0, F(-37695042795, 15268766246),
     F(-309121744, 1061227803), F(-12992083, 490766935), F(6005943493, 2108947869),
     F(393006217, 1396673457), F(123872331, 1001029789)],
    [F(-1028468189, 846180014), 0, 0, F(8478235783, 508512852), F(1311729495, 1432422823),
     F(-10304129995, 1701304382), F(-48777925059, 3047939560), F(15336726248, 1032824649),
     F(-45442868181, 3398467696), F(3065993473, 597172653)],
    [F(185892177, 718116043), 0, 0, F(-3185094517, 667107341), F(-477755414, 1098053517),
     F(-703635378, 230739211), F(5731566787, 1027545527), F(5232866602, 850066563),
     F(-4093664535, 808688257), F(3962137247, 1805957418), F(65686358, 487910083)],
    [F(403863854, 491063109), 0, 0, F(-5068492393, 434740067), F(-411421997, 543043805),
     F(652783627, 914296604), F(11173962825, 925320556), F(-13158990841, 6184727034),
     F(3936647629, 1978049680), F(-160528059, 685178525), F(248638103, 1413531060), 0],
]  # fmt: skip
DOPRI8 = _tableau(
    "dopri8",
    c=_DP8_C,
    a=_DP8_A,
    b=[F(14005451, 335480064), 0, 0, 0, 0, F(-59238493, 1068277825),
       F(181606767, 758867731), F(561292985, 797845732), F(-1041891430, 1371343529),
       F(760417239, 1151165299), F(118820643, 751138087), F(-528747749, 2220607170),
       F(1, 4)],
    order=8,
    b_hat=[F(13451932, 455176623), 0, 0, 0, 0, F(-808719846, 976000145),
           F(1757004468, 5645159321), F(656045339, 265891186), F(-3867574721, 1518517206),
           F(465885868, 322736535), F(53011238, 667516719), F(2, 45), 0],
    error_order=7,
)  # fmt: skip

TABLEAUS: dict[str, ButcherTableau] = {
    t.name: t
    for t in (EULER, MIDPOINT, HEUN, HEUN2, HEUN3, RK4, BOSH3, FEHLBERG2, DOPRI5, TSIT5, DOPRI8)
}
