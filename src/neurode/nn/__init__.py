"""Neural-network modules built on ODE solves."""

from .odeblock import ODEBlock

__all__ = ["ODEBlock"]
