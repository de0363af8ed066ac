"""Every gradient-method name, resolved in one place.

Strings are a convenience (``gradient="checkpoint"``); objects configure
(``gradient=Checkpoint(budget=8)``); both resolve to the same thing. The CLI,
benchmarks, the reproduce report and the tests read :data:`GRADIENTS`, so a new
method registered here reaches all of them.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UnknownMethodError
from .adjoint import Adjoint
from .base import GradientMethod
from .checkpoint import Checkpoint
from .direct import Direct
from .reversible import ReversibleGradient

GRADIENTS: dict[str, Callable[[], GradientMethod]] = {
    "direct": Direct,
    "checkpoint": Checkpoint,
    "adjoint": Adjoint,
    "reversible": ReversibleGradient,
}
# methods whose gradient equals backprop through the discretisation (to round-off)
EXACT_GRADIENTS = ("direct", "checkpoint", "reversible")


def gradient_names() -> list[str]:
    return list(GRADIENTS)


def resolve_gradient(gradient) -> GradientMethod:
    """A gradient method from ``None`` (direct), a name or a configured object."""
    if gradient is None:
        return Direct()
    if isinstance(gradient, GradientMethod):
        return gradient
    if isinstance(gradient, str) and gradient.strip().lower() in GRADIENTS:
        return GRADIENTS[gradient.strip().lower()]()
    raise UnknownMethodError(
        f"unknown gradient {gradient!r}; choose one of {gradient_names()} or pass "
        f"neurode.Checkpoint(budget=...), neurode.Adjoint(...), ..."
    )
