"""Gradient methods: what the forward solve keeps and how backward replays it."""

from .adjoint import Adjoint
from .base import GradientMethod
from .checkpoint import Checkpoint
from .direct import Direct
from .reversible import ReversibleGradient

__all__ = ["Adjoint", "Checkpoint", "Direct", "GradientMethod", "ReversibleGradient"]
