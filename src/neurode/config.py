"""One value for how a model solves its ODE: method, tolerances, options, gradient."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .odeint import GradientLike, MethodLike, Solution, solve


@dataclass
class SolveConfig:
    """The arguments of :func:`neurode.solve` a model keeps between calls.

    ``config.solve(func, y0, t, **overrides)`` solves with them (``overrides``
    replace fields for one call, e.g. ``gradient=...``).
    """

    method: MethodLike = None
    rtol: float = 1e-7
    atol: float = 1e-9
    options: dict = field(default_factory=dict)
    gradient: GradientLike = "direct"

    def __post_init__(self):
        self.options = dict(self.options or {})

    def solve(self, func: Callable, y0, t, **overrides) -> Solution:
        kw = dict(
            method=self.method, rtol=self.rtol, atol=self.atol, options=self.options,
            gradient=self.gradient,
        )  # fmt: skip
        kw.update(overrides)
        return solve(func, y0, t, **kw)

    def replace(self, **changes) -> SolveConfig:
        return replace(self, **changes)


def _delegate(name: str) -> property:
    def get(self):
        return getattr(self.solve_config, name)

    def set_(self, value):
        setattr(self.solve_config, name, value)

    return property(get, set_, doc=f"``solve_config.{name}``")


class Configured:
    """Mixin for modules holding a :class:`SolveConfig` as ``solve_config``: its fields
    read and write as attributes (``block.method``, ``block.options``, …)."""

    solve_config: SolveConfig
    method = _delegate("method")
    rtol = _delegate("rtol")
    atol = _delegate("atol")
    options = _delegate("options")
    gradient = _delegate("gradient")
