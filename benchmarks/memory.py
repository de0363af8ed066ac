"""Peak memory and time of forward + backward vs the number of steps N_t.

Every configuration runs in a fresh process; its peak RSS (ru_maxrss) minus a
baseline taken after imports and problem setup is the memory the solve needed.
Gradient methods: direct, checkpoint, Checkpoint(budget=8), the ANODE block
(ODEBlock(recompute=True)), adjoint, reversible (ALF and Reversible("rk4")),
torchdiffeq's odeint/odeint_adjoint and TorchDiffEqPack's MALI when installed.
Problems: the ReLU-conv field (Euler steps) and the tanh MLP (rk4 steps).

    python benchmarks/memory.py            # full size, ~25 minutes on 2 cores
    python benchmarks/memory.py --quick    # tiny MLP, a few configurations, ~30 s

Prints tables and writes benchmarks/results/memory.json and memory.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from neurode.app.bench.memory import CONFIGS, DEFAULT_KEYS, analyse, memory_sweep
from neurode.app.bench.peers import peers_status
from neurode.app.bench.problems import PROBLEMS, make_problem
from neurode.app.bench.report import (
    checks_text,
    memory_table,
    plot_memory,
    solver_names,
    summary_table,
    time_table,
)
from neurode.app.bench.timing import environment

RESULTS = Path(__file__).resolve().parent / "results"
QUICK_KEYS = ("direct", "checkpoint", "reversible-alf")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny MLP, three methods, N_t 4 and 8")
    ap.add_argument("--problems", nargs="+", choices=PROBLEMS, default=None)
    ap.add_argument("--keys", nargs="+", choices=sorted(CONFIGS), default=None)
    ap.add_argument("--steps", nargs="+", type=int, default=None, help="N_t values")
    ap.add_argument(
        "--reversible-steps",
        nargs="+",
        type=int,
        default=None,
        help="extra N_t for the reversible gradients (and direct ALF, their time reference)",
    )
    ap.add_argument(
        "--max-gb", type=float, default=12.0, help="skip configurations predicted above this"
    )
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="skip configurations predicted to take longer",
    )
    ap.add_argument("--timeout", type=float, default=None, help="per-process timeout (s)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument(
        "--timing-runs",
        type=int,
        default=None,
        help="timed runs after the memory run (default: 2 for the MLP, 1 for the conv field)",
    )
    ap.add_argument(
        "--timing-cap",
        type=float,
        default=20.0,
        help="no timing runs for configurations whose memory run took longer (s)",
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON path (default results/memory.json)"
    )
    ap.add_argument("--plot", type=Path, default=None, help="PNG path (default next to the JSON)")
    ap.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="measure nothing: merge these results files, re-analyse, print, write --out and the PNG",
    )
    args = ap.parse_args(argv)
    if args.from_json:
        return _from_json(args)

    q = args.quick
    problems = args.problems or (["mlp"] if q else list(PROBLEMS))
    keys = tuple(args.keys or (QUICK_KEYS if q else DEFAULT_KEYS))
    steps = args.steps or ([4, 8] if q else [10, 40, 160, 640])
    rev_steps = (
        args.reversible_steps if args.reversible_steps is not None else ([16] if q else [1000])
    )
    extra = {k: rev_steps for k in ("reversible-alf", "reversible-rk4", "direct-alf")}
    timeout = args.timeout or (120.0 if q else 900.0)
    max_seconds = args.max_seconds if args.max_seconds is not None else (None if q else 100.0)

    start = time.perf_counter()
    sweeps, analyses = [], {}
    for name in problems:
        problem = make_problem(name, quick=q)
        print(
            f"{name}: {problem.description}; {problem.base_method} steps for the base methods",
            flush=True,
        )
        sweep = memory_sweep(
            name,
            steps,
            keys,
            extra_steps=extra,
            quick=q,
            max_mb=args.max_gb * 1024,
            max_seconds=max_seconds,
            timeout=timeout,
            threads=args.threads,
            timing_runs=args.timing_runs or (2 if name == "mlp" else 1),
            timing_budget=2.0 if name == "mlp" and not q else 0.0,
            timing_cap=args.timing_cap,
        )
        sweep["title"] = problem.description
        sweep["base_method"] = problem.base_method
        sweep["state_bytes"] = problem.state_bytes
        sweeps.append(sweep)
        analyses[name] = analyse(sweep, problem.state_bytes)

    _print(sweeps, analyses, q)
    out = args.out or RESULTS / ("memory-quick.json" if q else "memory.json")
    payload = {
        "benchmark": "memory",
        "definition": DEFINITION,
        "quick": q,
        "environment": environment() | {"threads": args.threads},
        "peers": peers_status(),
        "configs": {k: CONFIGS[k].__dict__ for k in keys},
        "sweeps": sweeps,
        "analysis": analyses,
        "seconds": time.perf_counter() - start,
    }
    _write(payload, out, args.plot)
    return 0


def _print(sweeps: list[dict], analyses: dict, quick: bool) -> None:
    for sweep in sweeps:
        name = sweep["problem"]
        problem = make_problem(name, quick=quick)
        print(f"\n== {name}: {sweep['title']} ==")
        print("peak memory above baseline, MB (skip: predicted memory or time over the limit)")
        print(memory_table(sweep))
        print(
            f"\ntime of forward+backward over direct through the same discretisation; "
            f"gradient error vs float64 direct at N_t={sweep['error_steps']}"
        )
        print(summary_table(sweep, analyses[name], solver_names(problem)))
        print("\ntime over direct through the same discretisation, per N_t")
        print(time_table(sweep, analyses[name]))
        print()
        print(checks_text(analyses[name]["checks"]))
    if quick:
        print("\n(quick mode: the sizes are too small for the checks to mean anything)")


def _write(payload: dict, out: Path, png: Path | None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1) + "\n")
    png = png or out.with_suffix(".png")
    plot_memory(payload["sweeps"], png)
    print(f"\nwrote {out} and {png} ({payload.get('seconds', 0):.0f} s of measuring)")


def _from_json(args) -> int:
    payloads = [json.loads(p.read_text()) for p in args.from_json]
    merged = dict(payloads[0])
    merged["sweeps"] = [s for p in payloads for s in p["sweeps"]]
    merged["configs"] = {k: v for p in payloads for k, v in p["configs"].items()}
    merged["seconds"] = sum(p.get("seconds", 0) for p in payloads)
    merged["analysis"] = {s["problem"]: analyse(s, s["state_bytes"]) for s in merged["sweeps"]}
    _print(merged["sweeps"], merged["analysis"], merged["quick"])
    _write(merged, args.out or args.from_json[0], args.plot)
    return 0


DEFINITION = (
    "peak ru_maxrss of a fresh process after forward+backward, minus its ru_maxrss "
    "after imports, problem setup and a one-sample warm-up (MB), with glibc mapping "
    "every block >= 64 KiB on its own (exact accounting); time: best of the timing "
    "runs that follow, with freed memory kept in the heap; gradient error: relative "
    "2-norm error of (dL/dy0, dL/dtheta) vs float64 direct backprop through the same "
    "discretisation"
)


if __name__ == "__main__":
    sys.exit(main())
