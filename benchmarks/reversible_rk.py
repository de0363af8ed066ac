"""The fused reversible-RK backward (SPEC §5.5): evaluations, time and memory.

``Reversible("rk4")`` with ``gradient="reversible"`` against

- direct backprop through the same ``Reversible("rk4")`` discretisation (the
  same steps and floating-point operations; the gradient's 1.0);
- the previous backward, inverting each step (two base steps, no graph) and
  replaying it (two base steps with their graph) — run here as
  ``ReversibleSolver.backward_step``, so before and after are timed in one run;
- ``Checkpoint(budget=c)`` on plain rk4 with the same steps (the same order and
  step size, half the forward evaluations): recursive checkpointing, what
  McCallum & Foster compare their reversible method with, at the budget whose
  memory matches the reversible gradient's.

Problems: the tanh MLP of the memory benchmark (dim 64, hidden 64, batch 512)
and a small ReLU-conv field (16 channels, 16×16, batch 8), N_t fixed steps over
[0, 1]. Times: CPU time (``time.process_time``) of forward + backward, one
thread, every configuration once per round, rounds interleaved, median; the
ratios come from one run. Memory: each configuration in a fresh process, peak
RSS (VmHWM) after forward + backward minus a baseline taken after a warm-up
solve, with glibc mapping every block ≥ 64 KiB on its own (the convention of
benchmarks/memory.py), so RSS follows the tensors alive.

    python benchmarks/reversible_rk.py            # ~2 minutes on one core
    python benchmarks/reversible_rk.py --quick    # smoke test, seconds

Writes benchmarks/results/reversible_rk.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import neurode
from neurode.app.bench.memory import peak_rss_mb, run_worker_script
from neurode.app.bench.problems import ConvField, Counted, TanhMLPField
from neurode.solvers.base import ReversibleSolver

RESULTS = Path(__file__).resolve().parent / "results"
TAG = "REVERSIBLE_RK_RESULT "
BUDGETS = (1, 2, 3, 4, 8)
LONG_BUDGETS = (2, 3, 4, 8)  # the longer solve, where recursive checkpointing recomputes more
QUICK_BUDGETS = (1, 8)  # --quick: two budgets, so the smoke test starts few processes


class Unfused(neurode.Reversible):
    """``Reversible`` with the previous backward: invert, then replay with the graph."""

    backward_step = ReversibleSolver.backward_step


def make(name: str, quick: bool, dtype=torch.float32):
    g = torch.manual_seed(0)
    del g
    if name == "mlp":
        batch, dim, hidden = (16, 8, 8) if quick else (512, 64, 64)
        func: nn.Module = TanhMLPField(dim, hidden)
        y0 = torch.randn(batch, dim)
        desc = f"tanh MLP, dim {dim}, hidden {hidden}, batch {batch}"
    else:
        batch, ch, size = (2, 4, 8) if quick else (8, 16, 16)
        func = ConvField(ch)
        y0 = torch.randn(batch, ch, size, size)
        desc = f"ReLU-conv f, {ch} channels, {size}x{size}, batch {batch}"
    w = torch.randn_like(y0)
    return func.to(dtype), y0.to(dtype), w.to(dtype), desc


def configs():
    """key -> (method, gradient) for a fixed-step solve."""
    out = {
        "direct-revrk4": (neurode.Reversible("rk4"), "direct"),
        "fused-revrk4": (neurode.Reversible("rk4"), "reversible"),
        "unfused-revrk4": (Unfused("rk4"), "reversible"),
        "direct-rk4": ("rk4", "direct"),
    }
    for c in sorted(set(BUDGETS) | set(LONG_BUDGETS)):
        out[f"checkpoint-{c}-rk4"] = ("rk4", neurode.Checkpoint(budget=c))
    return out


def solve_fn(func, key, steps):
    method, gradient = configs()[key]

    def run(y0):
        sol = neurode.solve(
            func, y0, [0.0, 1.0], method=method, options={"steps": steps}, gradient=gradient
        )
        return sol

    return run


def fwd_bwd(func, y0, w, key, steps):
    params = list(func.parameters())
    y = y0.clone().requires_grad_(True)
    sol = solve_fn(func, key, steps)(y)
    grads = torch.autograd.grad((sol.ys[-1] * w).sum(), [y, *params])
    return grads, sol.stats


def worker(spec: dict) -> dict:
    """Peak memory of one configuration (run in a fresh process)."""
    torch.set_num_threads(1)
    func, y0, w, _ = make(spec["problem"], spec["quick"])
    counted = Counted(func)
    # warm-up on one sample, two steps: autograd, kernels, lazy imports
    fwd_bwd(counted, y0[:1], w[:1], spec["key"], 2)
    base = peak_rss_mb()
    counted.n = 0
    _, stats = fwd_bwd(counted, y0, w, spec["key"], spec["steps"])
    peak = peak_rss_mb() - base
    return {**spec, "peak_mb": peak, "nfe": counted.n}


def measure_memory(problem, key, steps, quick) -> dict:
    spec = dict(problem=problem, key=key, steps=steps, quick=quick)
    return run_worker_script(__file__, spec, TAG, timeout=300)


def time_configs(func, y0, w, keys, steps, rounds) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in keys}
    for k in keys:  # warm-up
        fwd_bwd(func, y0, w, k, steps)
    for _ in range(rounds):
        for k in keys:
            t0 = time.process_time()
            fwd_bwd(func, y0, w, k, steps)
            times[k].append(time.process_time() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--long-steps", type=int, default=100)
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON (default results/reversible_rk[-quick].json)"
    )
    args = ap.parse_args(argv)
    if args.worker:
        print(TAG + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    torch.set_num_threads(1)
    q = args.quick
    steps = 4 if q else args.steps
    rounds = args.rounds or (2 if q else 9)
    start = time.perf_counter()
    budgets, long_budgets = (QUICK_BUDGETS, QUICK_BUDGETS[-1:]) if q else (BUDGETS, LONG_BUDGETS)
    keys = ["direct-revrk4", "fused-revrk4", "unfused-revrk4", "direct-rk4"] + [
        f"checkpoint-{c}-rk4" for c in budgets
    ]
    long_keys = ["fused-revrk4"] + [f"checkpoint-{c}-rk4" for c in long_budgets]
    long_steps = 8 if q else args.long_steps
    long_rounds = 1 if q else 3
    result = {
        "benchmark": "reversible_rk",
        "quick": q,
        "steps": steps,
        "rounds": rounds,
        "long_steps": long_steps,
        "long_rounds": long_rounds,
        "environment": {
            "neurode": neurode.__version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "threads": torch.get_num_threads(),
        },
        "problems": {},
    }
    for name in ("mlp", "conv"):
        func, y0, w, desc = make(name, q)
        print(f"{name}: {desc}, {steps} steps", flush=True)
        row: dict = {"description": desc, "configs": {}}
        # evaluations
        for k in keys:
            counted = Counted(func)
            params = list(func.parameters())
            y = y0.clone().requires_grad_(True)
            sol = solve_fn(counted, k, steps)(y)
            n_fwd = counted.n
            torch.autograd.grad((sol.ys[-1] * w).sum(), [y, *params])
            row["configs"][k] = {
                "nfe_forward": n_fwd,
                "nfe_backward": counted.n - n_fwd,
                "recomputed_steps": sol.stats.recomputed_steps,
            }
        # gradient agreement with direct through the same discretisation, float64
        f64, y64, w64, _ = make(name, q, torch.float64)
        g_ref, _ = fwd_bwd(f64, y64, w64, "direct-revrk4", steps)
        for k in ("fused-revrk4", "unfused-revrk4"):
            g, _ = fwd_bwd(f64, y64, w64, k, steps)
            num = sum(float((a - b).pow(2).sum()) for a, b in zip(g, g_ref)) ** 0.5
            den = sum(float(b.pow(2).sum()) for b in g_ref) ** 0.5
            row["configs"][k]["grad_rel_err_f64"] = num / den
        # CPU time, interleaved rounds
        times = time_configs(func, y0, w, keys, steps, rounds)
        ref = times["direct-revrk4"]
        for k in keys:
            row["configs"][k]["cpu_s"] = times[k]
            row["configs"][k]["cpu_over_direct_revrk4"] = times[k] / ref
            row["configs"][k]["cpu_over_fused"] = times[k] / times["fused-revrk4"]
        # memory, fresh process each
        for k in keys:
            m = measure_memory(name, k, steps, q)
            row["configs"][k]["peak_mb"] = m.get("peak_mb")
            if "error" in m:
                row["configs"][k]["memory_error"] = m["error"]
        fused_mb = row["configs"]["fused-revrk4"]["peak_mb"]
        # the largest budget whose memory does not exceed the fused reversible gradient's
        # (else the smallest budget), and its time over the fused gradient's
        fits = [c for c in budgets if row["configs"][f"checkpoint-{c}-rk4"]["peak_mb"] <= fused_mb]
        c_eq = max(fits) if fits else min(budgets)
        row["equal_memory_budget"] = c_eq
        row["equal_memory_budget_fits"] = bool(fits)
        row["checkpoint_at_equal_memory_over_fused"] = row["configs"][f"checkpoint-{c_eq}-rk4"][
            "cpu_over_fused"
        ]
        print(_table(row), flush=True)
        # a longer solve: fused reversible vs Checkpoint(budget=c) on plain rk4
        long: dict = {"steps": long_steps, "configs": {}}
        times = time_configs(func, y0, w, long_keys, long_steps, long_rounds)
        for k in long_keys:
            m = measure_memory(name, k, long_steps, q)
            long["configs"][k] = {
                "nfe": m.get("nfe"),
                "peak_mb": m.get("peak_mb"),
                "cpu_s": times[k],
                "cpu_over_fused": times[k] / times["fused-revrk4"],
            }
        row["long"] = long
        for k, c in long["configs"].items():
            print(
                f"  N_t={long_steps} {k}: evals {c['nfe']}, CPU {c['cpu_s']:.3f} s "
                f"({c['cpu_over_fused']:.2f}x fused), peak {c['peak_mb']:.1f} MB",
                flush=True,
            )
        result["problems"][name] = row
    result["elapsed_s"] = time.perf_counter() - start
    out = args.out or RESULTS / ("reversible_rk-quick.json" if q else "reversible_rk.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} ({result['elapsed_s']:.0f} s)")
    return 0


def _table(row) -> str:
    lines = [
        "| configuration | forward evals | backward evals | CPU s | / direct Reversible(rk4)"
        " | / fused | peak MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, c in row["configs"].items():
        pk = c.get("peak_mb")
        lines.append(
            f"| {k} | {c['nfe_forward']} | {c['nfe_backward']} | {c['cpu_s']:.4f} | "
            f"{c['cpu_over_direct_revrk4']:.2f} | {c['cpu_over_fused']:.2f} | "
            f"{'-' if pk is None else f'{pk:.1f}'} |"
        )
    lines.append(
        f"equal memory: Checkpoint(budget={row['equal_memory_budget']}) "
        f"(fits: {row['equal_memory_budget_fits']}), time / fused = "
        f"{row['checkpoint_at_equal_memory_over_fused']:.2f}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
