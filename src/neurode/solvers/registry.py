"""Every solver name neurode knows, resolved in one place.

``resolve_solver`` serves ``odeint``, the adjoint's backward solver and every
command-line subcommand alike. Names: the tableaus of ``tableau.py``, their
aliases, ``"alf"``, the fixed-grid Adams methods of ``multistep.py``,
``"scipy_solver"`` (``scipy_solver.py``), and two
small grammars for configured solvers — ``"alf:<damping>"`` (ALF with that η)
and ``"reversible:<rk>"`` (the reversible wrapper around an explicit RK
tableau). Solvers defined in other modules
(the implicit family) register themselves with :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UnknownMethodError
from .alf import ALF
from .base import ReversibleSolver, Solver
from .multistep import AdamsBashforth, AdamsBashforthMoulton
from .reversible import Reversible
from .rk import RungeKutta
from .scipy_solver import ScipySolver
from .tableau import TABLEAUS, ButcherTableau

DEFAULT_METHOD = "dopri5"  # torchdiffeq's default, and what method=None means

ALIASES = {
    "rk2": "midpoint",
    "explicit_euler": "euler",
    "rk45": "dopri5",
    # torchdiffeq's name: Heun 2 with the Euler step embedded is neurode's "heun"
    "adaptive_heun": "heun",
    "fixed_adams": "implicit_adams",  # torchdiffeq's older name
}
_EXTRA: dict[str, Callable[[], Solver]] = {"alf": ALF}


def register(name: str, constructor: Callable[[], Solver]) -> None:
    """Make ``name`` resolve to ``constructor()``."""
    _EXTRA[name.lower()] = constructor


register("explicit_adams", AdamsBashforth)
register("implicit_adams", AdamsBashforthMoulton)
register("scipy_solver", ScipySolver)  # odeint hands the whole solve to scipy (forward only)


def method_names() -> list[str]:
    """Every plain method name (the grammars ``alf:<η>`` and ``reversible:<rk>`` aside)."""
    return sorted({*TABLEAUS, *_EXTRA, *ALIASES})


def resolve_solver(method) -> Solver:
    """A solver from ``None`` (the default), a name, a tableau or a solver object."""
    if method is None:
        method = DEFAULT_METHOD
    if isinstance(method, Solver):
        return method
    if isinstance(method, ButcherTableau):
        return RungeKutta(method)
    if isinstance(method, str):
        name = method.strip().lower()
        name = ALIASES.get(name, name)
        if name in TABLEAUS:
            return RungeKutta(TABLEAUS[name])
        if name in _EXTRA:
            return _EXTRA[name]()
        head, sep, arg = name.partition(":")
        if sep and head == "alf":
            try:
                damping = float(arg)
            except ValueError:
                raise UnknownMethodError(
                    f"'alf:<damping>' needs a number after the colon, got {method!r}"
                ) from None
            return ALF(damping=damping)
        if sep and head == "reversible":
            base = ALIASES.get(arg, arg)
            if base not in TABLEAUS:
                raise UnknownMethodError(
                    f"'reversible:<rk>' wraps an explicit Runge–Kutta tableau; {arg!r} is not "
                    f"one. Choose one of {sorted(TABLEAUS)}"
                )
            return Reversible(base)
    raise UnknownMethodError(
        f"unknown method {method!r}; choose one of {method_names()}, 'alf:<damping>', "
        f"'reversible:<rk>', or pass a solver object (neurode.ALF(damping=...), "
        f"neurode.Reversible('rk4'), a ButcherTableau)"
    )


def is_reversible(method) -> bool:
    """Whether ``method`` resolves to a solver that can invert its steps."""
    return isinstance(resolve_solver(method), ReversibleSolver)
