"""Reusable measuring code behind ``benchmarks/`` (and ``neurode reproduce``).

- :mod:`~neurode.app.bench.problems`: the benchmark problems (ReLU-conv field,
  tanh MLP), seeded, full size or ``quick``.
- :mod:`~neurode.app.bench.timing`: best-of-repeats timing, thread pinning.
- :mod:`~neurode.app.bench.peers`: adapters for torchdiffeq, torchode and
  TorchDiffEqPack (MALI); ``load_peer(name)`` gives ``(None, reason)`` when a
  peer cannot run here.
- :mod:`~neurode.app.bench.overhead`: the solver's own overhead,
  ``T_solve / (NFE × T_f)``.
- :mod:`~neurode.app.bench.memory`: peak memory and time of forward + backward,
  one configuration per fresh process, swept over ``N_t``, and the checks of
  the memory model.
- :mod:`~neurode.app.bench.report`: tables and the memory plot.
"""

from .memory import CONFIGS, DEFAULT_KEYS, analyse, measure, memory_sweep
from .overhead import SolverCase, measure_overhead
from .peers import PEERS, load_peer, peers_status
from .problems import PROBLEMS, BenchProblem, make_problem

__all__ = [
    "CONFIGS",
    "DEFAULT_KEYS",
    "PEERS",
    "PROBLEMS",
    "BenchProblem",
    "SolverCase",
    "analyse",
    "load_peer",
    "make_problem",
    "measure",
    "measure_overhead",
    "memory_sweep",
    "peers_status",
]
