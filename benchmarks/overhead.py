"""The solver's own overhead: odeint wall time / (NFE × time of one evaluation of f).

Forward solves without gradients, for the tanh MLP (dim 64, batch 512) and the
ReLU-conv field (32 channels, 32×32, batch 32), with fixed-step rk4 and
adaptive dopri5; torchdiffeq and torchode side by side when installed.

    python benchmarks/overhead.py            # full size, ~1-2 minutes
    python benchmarks/overhead.py --quick    # tiny problems, seconds

Prints a table and writes benchmarks/results/overhead.json (--out to change).
Targets: ≤ 1.05 on the conv problem; below torchdiffeq's on the MLP.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from neurode.app.bench.overhead import LIBRARIES, measure_overhead
from neurode.app.bench.peers import peers_status
from neurode.app.bench.problems import PROBLEMS, make_problem
from neurode.app.bench.timing import environment, set_threads

RESULTS = Path(__file__).resolve().parent / "results"
CONV_TARGET = 1.05


def checks(results: list[dict]) -> list[dict]:
    """The targets: conv overhead ≤ 1.05; MLP overhead below torchdiffeq's."""
    out = []
    ok = {(r["problem"], r["case"]["name"], r["library"]): r for r in results if r.get("available")}
    for (prob, case, lib), r in ok.items():
        if lib != "neurode":
            continue
        if prob == "conv":
            out.append(
                {
                    "target": f"conv, {case}: overhead <= {CONV_TARGET}",
                    "value": round(r["overhead"], 3),
                    "met": r["overhead"] <= CONV_TARGET,
                }
            )
        if prob == "mlp":
            peer = ok.get((prob, case, "torchdiffeq"))
            if peer is None:
                out.append(
                    {
                        "target": f"mlp, {case}: below torchdiffeq",
                        "met": None,
                        "value": "torchdiffeq not available",
                    }
                )
                continue
            out.append(
                {
                    "target": f"mlp, {case}: overhead below torchdiffeq's",
                    "value": f"{r['overhead']:.3f} vs {peer['overhead']:.3f}",
                    "met": r["overhead"] < peer["overhead"],
                }
            )
    return out


def table(results: list[dict]) -> str:
    lines = [
        f"{'problem':<6} {'solver':<20} {'library':<12} {'NFE':>5} {'overhead':>9} {'(median)':>9}"
    ]
    for r in results:
        head = f"{r['problem']:<6} {r['case']['name']:<20} {r['library']:<12}"
        if not r.get("available"):
            lines.append(f"{head} {'-':>5} {'n/a':>9}  {r['reason']}")
            continue
        lines.append(f"{head} {r['nfe']:>5} {r['overhead']:>9.3f} {r['overhead_median']:>9.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny problems and few repeats (seconds)")
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    ap.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    ap.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON path (default results/overhead.json)"
    )
    args = ap.parse_args(argv)
    set_threads(args.threads)
    rounds = args.rounds or (2 if args.quick else 7)
    results = []
    for name in args.problems:
        problem = make_problem(name, quick=args.quick)
        print(f"{name}: {problem.description}", flush=True)
        results.extend(measure_overhead(problem, libraries=args.libraries, rounds=rounds))
    print()
    print(table(results))
    found = checks(results)
    print()
    for c in found:
        mark = {True: "met", False: "MISSED", None: "n/a"}[c["met"]]
        print(f"[{mark:>6}] {c['target']}: {c['value']}")
    out = args.out or RESULTS / ("overhead-quick.json" if args.quick else "overhead.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "overhead",
        "definition": "best forward-solve wall time / (NFE x best time of one evaluation of f), no grad",
        "quick": args.quick,
        "rounds": rounds,
        "environment": environment(),
        "peers": peers_status(),
        "problems": {n: make_problem(n, quick=args.quick).description for n in args.problems},
        "results": results,
        "checks": found,
    }
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
