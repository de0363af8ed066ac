"""Stage-wise checkpointing: backward memory and time of ``Checkpoint(per_stage=True)``
against the plain step replay, on a conv field with a wide hidden layer.

    python benchmarks/stagewise.py           # the table in docs/benchmarks.md (~1 min)
    python benchmarks/stagewise.py --quick   # tiny problem, seconds (smoke test)

The field is ``conv(16→W) → ReLU → conv(W→16)`` (W = 512; ``L``, the activations
of one evaluation with its graph, is W/16 = 32 times a state ``S``). Each
configuration's memory is measured in a fresh process: the peak RSS (VmHWM)
after the forward solve, and after forward + backward, both above a baseline
taken after a warm-up; *backward above forward* is their difference, the memory
the backward pass needs on top of what the forward did. glibc maps blocks of
64 KiB or more on their own, so freed tensors leave RSS at once. CPU time of
forward + backward: one thread, configurations interleaved, median of rounds.
The gradient of the stage-wise replay is compared with the plain replay's
(float64, same problem). Writes ``benchmarks/results/stagewise[-quick].json``.
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

RESULTS = Path(__file__).resolve().parent / "results"
TAG = "STAGEWISE_RESULT "
METHODS = ("rk4", "dopri5")
KEYS = ("plain", "per_stage")


class WideConv(nn.Module):
    def __init__(self, channels: int, width: int):
        super().__init__()
        self.c1 = nn.Conv2d(channels, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, channels, 3, padding=1)
        with torch.no_grad():
            self.c2.weight.mul_(0.1)

    def forward(self, t, y):
        return self.c2(torch.relu(self.c1(y)))


def make(quick: bool, dtype=torch.float32):
    torch.manual_seed(0)
    ch, width, size, batch = (4, 32, 8, 2) if quick else (16, 512, 16, 8)
    f = WideConv(ch, width).to(dtype)
    y0 = torch.randn(batch, ch, size, size, dtype=dtype)
    w = torch.randn_like(y0)
    return f, y0, w, f"conv {ch}->{width}->{ch}, {size}x{size}, batch {batch}"


def run(f, y0, w, method, key, steps, backward=True):
    gradient = neurode.Checkpoint(per_stage=key == "per_stage")
    y = y0.clone().requires_grad_(True)
    ys = neurode.odeint(f, y, [0.0, 1.0], method=method, options=dict(steps=steps),
                        gradient=gradient)  # fmt: skip
    loss = (ys[-1] * w).sum()
    if not backward:
        return None
    return torch.autograd.grad(loss, [y, *f.parameters()])


def worker(spec: dict) -> dict:
    torch.set_num_threads(1)
    f, y0, w, _ = make(spec["quick"])
    run(f, y0[:1], w[:1], spec["method"], spec["key"], 1)  # warm-up: kernels, autograd
    base = peak_rss_mb()
    y = y0.clone().requires_grad_(True)
    gradient = neurode.Checkpoint(per_stage=spec["key"] == "per_stage")
    ys = neurode.odeint(f, y, [0.0, 1.0], method=spec["method"],
                        options=dict(steps=spec["steps"]), gradient=gradient)  # fmt: skip
    fwd = peak_rss_mb() - base
    torch.autograd.grad((ys[-1] * w).sum(), [y, *f.parameters()])
    total = peak_rss_mb() - base
    return {**spec, "forward_mb": fwd, "total_mb": total, "backward_above_forward_mb": total - fwd}


def measure(method: str, key: str, steps: int, quick: bool) -> dict:
    spec = dict(method=method, key=key, steps=steps, quick=quick)
    return run_worker_script(__file__, spec, TAG)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.worker:
        print(TAG + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    torch.set_num_threads(1)
    q = args.quick
    steps, rounds = (2, 1) if q else (args.steps, args.rounds)
    start = time.perf_counter()
    f, y0, w, desc = make(q)
    f64, y64, w64, _ = make(q, torch.float64)
    result = {"benchmark": "stagewise", "quick": q, "problem": desc, "steps": steps,
              "rounds": rounds, "torch": torch.__version__, "neurode": neurode.__version__,
              "methods": {}}  # fmt: skip
    print(f"{desc}, {steps} fixed steps over [0, 1], Checkpoint() vs Checkpoint(per_stage=True)")
    for method in METHODS:
        row: dict = {}
        g = {k: run(f64, y64, w64, method, k, steps) for k in KEYS}
        num = sum(float((a - b).pow(2).sum()) for a, b in zip(g["per_stage"], g["plain"])) ** 0.5
        den = sum(float(b.pow(2).sum()) for b in g["plain"]) ** 0.5
        row["grad_rel_diff_f64"] = num / den
        times: dict[str, list[float]] = {k: [] for k in KEYS}
        for k in KEYS:
            run(f, y0, w, method, k, steps)  # warm-up
        for _ in range(rounds):
            for k in KEYS:
                t0 = time.process_time()
                run(f, y0, w, method, k, steps)
                times[k].append(time.process_time() - t0)
        for k in KEYS:
            row[k] = {"cpu_s": statistics.median(times[k]), **measure(method, k, steps, q)}
        plain, stage = row["plain"], row["per_stage"]
        row["memory_ratio"] = (
            stage["backward_above_forward_mb"] / plain["backward_above_forward_mb"]
        )
        row["time_ratio"] = stage["cpu_s"] / plain["cpu_s"]
        result["methods"][method] = row
        print(f"{method:7s} backward above forward: plain {plain['backward_above_forward_mb']:7.1f} MB,"
              f" per_stage {stage['backward_above_forward_mb']:7.1f} MB ({row['memory_ratio']:.2f}x);"
              f" fwd+bwd CPU {row['time_ratio']:.2f}x; gradient difference "
              f"{row['grad_rel_diff_f64']:.1e}", flush=True)  # fmt: skip
    result["elapsed_s"] = time.perf_counter() - start
    out = args.out or RESULTS / ("stagewise-quick.json" if q else "stagewise.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} ({result['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
