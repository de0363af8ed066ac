"""Neural-network modules built on ODE solves."""

from .cnf import CNF, CNFBlock, CNFDynamics, ConcatSquashLinear, ODENet
from .latent import GRUEncoder, LatentODE, ODERNNEncoder
from .models import (
    ConvODEFunc,
    ODEResNet,
    SqueezeNextODE,
    SqueezeNextODEFunc,
    build_model,
)
from .odeblock import ODEBlock

__all__ = [
    "ODEBlock",
    "ConvODEFunc",
    "ODEResNet",
    "SqueezeNextODE",
    "SqueezeNextODEFunc",
    "build_model",
    "CNF",
    "CNFBlock",
    "CNFDynamics",
    "ConcatSquashLinear",
    "ODENet",
    "GRUEncoder",
    "LatentODE",
    "ODERNNEncoder",
]
