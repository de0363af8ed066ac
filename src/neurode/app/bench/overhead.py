"""The solver's own overhead: wall time of a solve over the time its evaluations of ``f`` take.

``overhead = T_solve / (NFE × T_f)`` where ``T_solve`` is the wall time of a
forward solve without gradients, ``NFE`` the number of evaluations of ``f`` it
made (counted by a wrapper in a separate, untimed run) and ``T_f`` the time of
one evaluation of ``f`` on the initial state. ``1.0`` means the solver costs
nothing beyond ``f``; everything above is the library's own work: combining
stages, step-size control, bookkeeping and Python.

Repeats of every library are interleaved, and each ratio uses the best repeat
(the one least disturbed by other processes), with ``T_f`` measured between
the solves of every round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .peers import load_peer
from .problems import BenchProblem, Counted
from .timing import eval_time


@dataclass(frozen=True)
class SolverCase:
    """A solver setting: ``method`` with ``steps`` fixed steps, or adaptive with ``rtol``/``atol``."""

    name: str
    method: str
    steps: int | None = None
    rtol: float = 1e-7
    atol: float = 1e-9

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


LIBRARIES = ("neurode", "torchdiffeq", "torchode")


def default_cases(problem: BenchProblem) -> list[SolverCase]:
    """rk4 on a fixed grid and adaptive dopri5, sized so one solve takes a fraction of a second."""
    if problem.name == "conv":
        steps = 2 if problem.size == "quick" else 8
        return [
            SolverCase(f"rk4, {steps} steps", "rk4", steps=steps),
            SolverCase("dopri5, rtol 1e-5", "dopri5", rtol=1e-5, atol=1e-7),
        ]
    steps = 10 if problem.size == "quick" else 100
    return [
        SolverCase(f"rk4, {steps} steps", "rk4", steps=steps),
        SolverCase("dopri5, rtol 1e-7", "dopri5", rtol=1e-7, atol=1e-9),
    ]


def solve_fn(
    library: str, case: SolverCase, func, y0: Tensor, t0: float, t1: float
) -> tuple[Callable[[], Tensor] | None, str | None]:
    """A no-argument forward solve of ``case`` with ``library``, or ``(None, reason)``."""
    if library == "neurode":
        import neurode

        options = {"steps": case.steps} if case.steps is not None else None
        return (
            lambda: neurode.odeint(
                func,
                y0,
                [t0, t1],
                method=case.method,
                rtol=case.rtol,
                atol=case.atol,
                options=options,
            )[-1]
        ), None
    adapter, reason = load_peer(library)
    if adapter is None:
        return None, reason
    why = adapter.unsupported(case.method)
    if why:
        return None, why
    return (
        lambda: adapter.solve(
            func, y0, t0, t1, method=case.method, steps=case.steps, rtol=case.rtol, atol=case.atol
        )
    ), None


def measure_overhead(
    problem: BenchProblem,
    cases: list[SolverCase] | None = None,
    libraries=LIBRARIES,
    *,
    rounds: int = 5,
    eval_repeats: int = 10,
) -> list[dict]:
    """Overhead of every library on every case for ``problem``; one dict per (case, library).

    Each dict has ``library``, ``case``, ``nfe``, ``solve`` and ``eval`` timings
    (seconds, best and median), ``overhead`` (best solve / (nfe × best eval)) and
    ``available``/``reason`` for libraries that cannot run the case.
    """
    cases = default_cases(problem) if cases is None else cases
    func, y0 = problem.func, problem.y0
    results: list[dict] = []
    fns: dict[tuple[int, str], Callable[[], Tensor]] = {}
    with torch.no_grad():
        for ci, case in enumerate(cases):
            for lib in libraries:
                entry = {"problem": problem.name, "case": case.as_dict(), "library": lib}
                fn, reason = solve_fn(lib, case, func, y0, problem.t0, problem.t1)
                if fn is None:
                    results.append({**entry, "available": False, "reason": reason})
                    continue
                counted = Counted(func)
                count_fn, _ = solve_fn(lib, case, counted, y0, problem.t0, problem.t1)
                count_fn()
                entry.update(available=True, nfe=counted.n)
                fn()  # warm up
                fns[(ci, lib)] = fn
                results.append(entry)
        times: dict[tuple[int, str], list[float]] = {k: [] for k in fns}
        evals: list[float] = []
        import time

        for _ in range(rounds):
            evals.extend(eval_time(func, y0, problem.t0, repeats=eval_repeats, min_time=0.0).times)
            for k, fn in fns.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
    t_eval = min(evals)
    t_eval_median = sorted(evals)[len(evals) // 2]
    for r in results:
        if not r.get("available"):
            continue
        ci = next(i for i, c in enumerate(cases) if c.as_dict() == r["case"])
        ts = sorted(times[(ci, r["library"])])
        r["solve"] = {"best": ts[0], "median": ts[len(ts) // 2], "repeats": len(ts)}
        r["eval"] = {"best": t_eval, "median": t_eval_median, "repeats": len(evals)}
        r["overhead"] = ts[0] / (r["nfe"] * t_eval)
        r["overhead_median"] = ts[len(ts) // 2] / (r["nfe"] * t_eval_median)
    return results
