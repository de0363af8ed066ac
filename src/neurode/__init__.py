"""neurode: neural ODEs in PyTorch with exact, memory-bounded gradients."""

from ._loop import SolveStats
from .config import SolveConfig
from .diagnostics import Reconstruction, reconstruction_error
from .errors import (
    EventError,
    FunctionOutputError,
    InvalidOptionError,
    InvalidStateError,
    InvalidTimesError,
    MaxStepsExceededError,
    NeurodeError,
    NewtonConvergenceError,
    NonFiniteStateError,
    ReconstructionDriftError,
    ReconstructionDriftWarning,
    RepeatedBackwardError,
    StepSizeUnderflowError,
    UnknownMethodError,
    UnsupportedCombinationError,
)
from .events import odeint_event
from .gradients import Adjoint, Checkpoint, Direct, GradientMethod, ReversibleGradient
from .odeint import (
    METHODS,
    GradientLike,
    MethodLike,
    Solution,
    TimesLike,
    odeint,
    odeint_adjoint,
    solve,
)
from .solvers import ALF, ButcherTableau, ImplicitRK, Reversible, RungeKutta, Solver

__version__ = "0.1.0"

__all__ = [
    "ALF",
    "Adjoint",
    "ButcherTableau",
    "Checkpoint",
    "Direct",
    "FunctionOutputError",
    "GradientLike",
    "GradientMethod",
    "InvalidOptionError",
    "InvalidStateError",
    "InvalidTimesError",
    "METHODS",
    "MethodLike",
    "ImplicitRK",
    "MaxStepsExceededError",
    "NewtonConvergenceError",
    "NeurodeError",
    "NonFiniteStateError",
    "Reversible",
    "ReversibleGradient",
    "RungeKutta",
    "Solution",
    "SolveConfig",
    "SolveStats",
    "TimesLike",
    "Solver",
    "StepSizeUnderflowError",
    "UnknownMethodError",
    "UnsupportedCombinationError",
    "Reconstruction",
    "RepeatedBackwardError",
    "odeint",
    "odeint_adjoint",
    "odeint_event",
    "EventError",
    "ReconstructionDriftError",
    "ReconstructionDriftWarning",
    "reconstruction_error",
    "solve",
]
