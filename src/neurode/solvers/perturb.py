"""torchdiffeq's ``perturb`` option: a step sees ``f`` from inside itself.

With ``options=dict(perturb=True)`` on a fixed grid, an evaluation of ``f`` at
either end of a step is moved one ulp (of the state's dtype) into the step:
the first stage at ``t₀`` sees ``f(nextafter(t₀, t₁))`` and a stage at ``t₁``
sees ``f(nextafter(t₁, t₀))``. For an ``f`` that jumps at grid points, each
step then integrates one smooth piece. Interior stage times are untouched.

:func:`perturbed` returns a copy of a solver whose every step-level entry
(``init``, ``step``, ``step_dense``, and a reversible solver's ``inverse`` and
``backward_step``) wraps the field that way. The copy is an instance of a
subclass of the solver's own class, so every check of the solver's kind still
holds, and the gradient methods replay steps through the same entries: a
replay evaluates ``f`` at the same perturbed times as the forward did.
"""

from __future__ import annotations

import torch

from .base import Solver, derived_copy

_SUBCLASSES: dict[type, type] = {}


class _Window:
    """``f`` seen from inside the step ``[t0, t1]`` (either direction)."""

    def __init__(self, f, t0: float, t1: float):
        self.f, self.t0, self.t1 = f, t0, t1

    def __call__(self, t: float, y):
        if t == self.t0:
            t = _nudge(t, self.t1, self.f, y)
        elif t == self.t1:
            t = _nudge(t, self.t0, self.f, y)
        return self.f(t, y)

    def __getattr__(self, name: str):  # the wrapped field's attributes (stats, dtype, ...)
        return getattr(self.f, name)


def _nudge(t: float, toward: float, f, y) -> float:
    """The neighbour of ``t`` toward ``toward`` in the dtype ``f`` hands its time in."""
    return neighbour(t, toward, getattr(f, "dtype", None) or getattr(y, "dtype", torch.float64))


def neighbour(t: float, toward: float, dtype) -> float:
    """The next number after ``t`` toward ``toward`` in ``dtype`` (as a float: exact)."""
    tt = torch.tensor(t, dtype=dtype)
    return float(torch.nextafter(tt, torch.tensor(toward, dtype=dtype)))


def perturbed(solver: Solver, direction: float) -> Solver:
    """``solver`` with its steps seeing ``f`` from inside (``direction``: the sign of
    the solve, toward which ``init``'s evaluation at ``t0`` moves)."""
    # unperturbed: the adjoint's backward solve may be asked not to perturb
    return derived_copy(
        solver, _SUBCLASSES, _subclass,
        perturb_direction=1.0 if direction >= 0 else -1.0, unperturbed=solver,
    )  # fmt: skip


def _subclass(cls: type) -> type:
    def init(self, f, t0, y0):
        return cls.init(self, _Window(f, t0, t0 + self.perturb_direction), t0, y0)

    def step(self, f, t, h, x):
        return cls.step(self, _Window(f, t, t + h), t, h, x)

    def step_dense(self, f, t, h, x, *args, **kwargs):
        return cls.step_dense(self, _Window(f, t, t + h), t, h, x, *args, **kwargs)

    body = {"init": init, "step": step, "step_dense": step_dense, "perturbed": True}
    if hasattr(cls, "inverse"):

        def inverse(self, f, t, h, x1):
            return cls.inverse(self, _Window(f, t, t + h), t, h, x1)

        def backward_step(self, f, t, h, *args, **kwargs):
            return cls.backward_step(self, _Window(f, t, t + h), t, h, *args, **kwargs)

        body.update(inverse=inverse, backward_step=backward_step)
    return type(f"Perturbed{cls.__name__}", (cls,), body)
