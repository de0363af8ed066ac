"""A compiled step against the eager one, on the CNF-sized MLP.

    python benchmarks/compiled.py           # dims 2 and 8 (~1 min with compilation)
    python benchmarks/compiled.py --quick   # dim 2, few rounds

Field: ``l3(tanh(l2(tanh(l1(y))))) · cos(t)``, hidden 64, batch 512, float32, rk4,
20 fixed steps over [0, 1], one thread. Configurations: the eager solver
(``method="rk4"``), the eager solver with ``torch.compile(f)``, and the compiled
step ``RungeKutta("rk4", compile=True)``; without gradients and forward +
backward (direct). CPU time per step, best of interleaved rounds (after two
warm-up runs each, compilation included there). Writes
``benchmarks/results/compiled[-quick].json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import neurode
from neurode.solvers.rk import RungeKutta

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = 20


class MLP(torch.nn.Module):
    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.l1 = torch.nn.Linear(dim, hidden)
        self.l2 = torch.nn.Linear(hidden, hidden)
        self.l3 = torch.nn.Linear(hidden, dim)

    def forward(self, t, y):
        return self.l3(torch.tanh(self.l2(torch.tanh(self.l1(y))))) * torch.cos(t)


def run(f, method, y0, grad: bool):
    t = torch.tensor([0.0, 1.0])
    y = y0.clone().requires_grad_(grad)
    if not grad:
        with torch.no_grad():
            neurode.odeint(f, y, t, method=method, options=dict(steps=STEPS))
        return
    ys = neurode.odeint(f, y, t, method=method, options=dict(steps=STEPS))
    torch.autograd.grad(ys[-1].sum(), [y, *f.parameters()])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    dims, rounds = ((2,), 3) if args.quick else ((2, 8), args.rounds)
    rows = []
    for dim in dims:
        torch.manual_seed(0)
        f = MLP(dim)
        y0 = torch.randn(512, dim)
        configs = {
            "eager": (f, "rk4"),
            "compiled f": (torch.compile(f), "rk4"),
            "compiled step": (f, RungeKutta("rk4", compile=True)),
        }
        for grad in (False, True):
            times: dict[str, list[float]] = {k: [] for k in configs}
            for fn, m in configs.values():
                run(fn, m, y0, grad)
                run(fn, m, y0, grad)
            for _ in range(rounds):
                for k, (fn, m) in configs.items():
                    t0 = time.process_time()
                    run(fn, m, y0, grad)
                    times[k].append(time.process_time() - t0)
            best = {k: min(v) / STEPS for k, v in times.items()}
            row = {"dim": dim, "mode": "forward+backward" if grad else "no grad",
                   "ms_per_step": {k: v * 1e3 for k, v in best.items()},
                   "speedup": {k: best["eager"] / v for k, v in best.items()}}  # fmt: skip
            rows.append(row)
            print(f"dim {dim} {row['mode']:16s} " + "  ".join(
                f"{k} {row['ms_per_step'][k]:.3f} ms ({row['speedup'][k]:.2f}x)" for k in configs
            ), flush=True)  # fmt: skip
    out = args.out or RESULTS / ("compiled-quick.json" if args.quick else "compiled.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "compiled", "quick": args.quick, "torch": torch.__version__,
               "neurode": neurode.__version__, "steps": STEPS, "rounds": rounds, "rows": rows}  # fmt: skip
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
