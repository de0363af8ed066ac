"""The exceptions neurode raises.

Every error the library raises on purpose derives from :class:`NeurodeError`,
so ``except neurode.NeurodeError`` catches exactly the problems neurode
diagnosed. Each message says what happened and what to try.
"""

from __future__ import annotations


class NeurodeError(Exception):
    """Base class of every error raised by neurode."""


class InvalidTimesError(NeurodeError, ValueError):
    """``t`` is not 1-D, has fewer than two points, is not finite or not strictly monotone."""


class InvalidStateError(NeurodeError, ValueError):
    """``y0`` has an unsupported type, dtype, shape or device."""


class FunctionOutputError(NeurodeError, ValueError):
    """``f(t, y)`` returned something of the wrong type, shape, dtype or device."""


class InvalidOptionError(NeurodeError, ValueError):
    """An unknown option name, an option of the wrong kind, or a bad tolerance."""


class UnknownMethodError(NeurodeError, ValueError):
    """The requested solver or gradient method does not exist."""


class UnsupportedCombinationError(NeurodeError, ValueError):
    """A solver and a gradient method that cannot work together."""


class NonFiniteStateError(NeurodeError, FloatingPointError):
    """The state became NaN or Inf; the message names the time."""


class StepSizeUnderflowError(NeurodeError, RuntimeError):
    """The adaptive step size fell below what floating point can resolve."""


class MaxStepsExceededError(NeurodeError, RuntimeError):
    """The solver needed more steps than ``max_steps`` allows."""


class NewtonConvergenceError(NeurodeError, RuntimeError):
    """Newton's method did not solve the stage equations of a fixed implicit step; names t and h."""


class RepeatedBackwardError(NeurodeError, RuntimeError):
    """A second backward pass through a solve whose gradient method freed its record."""


class CheckpointError(NeurodeError, ValueError):
    """A checkpoint file that is empty, truncated, fails its checksum or cannot be read."""


class ReconstructionDriftError(NeurodeError, FloatingPointError):
    """A reversible backward rebuilt ``y0`` too far from the ``y0`` it was given."""


class ReconstructionDriftWarning(UserWarning):
    """The reversible backward's rebuilt ``y0`` drifted beyond √ε of the dtype."""


class EventError(NeurodeError, RuntimeError):
    """``odeint_event`` found no sign change of ``event_fn``, or one it cannot differentiate."""
