"""Solvers: how one step is taken."""

from .alf import ALF
from .base import ReversibleSolver, Solver
from .controller import Adaptive, FixedGrid
from .reversible import Reversible
from .rk import RungeKutta
from .tableau import TABLEAUS, ButcherTableau

__all__ = [
    "ALF",
    "Adaptive",
    "ButcherTableau",
    "FixedGrid",
    "Reversible",
    "ReversibleSolver",
    "RungeKutta",
    "Solver",
    "TABLEAUS",
    "ImplicitRK",
    "ImplicitTableau",
]

# last: the implicit family registers its names with the registry at import
from .implicit import ImplicitRK, ImplicitTableau  # noqa: E402
