"""Evaluations, CPU time and accuracy vs the number of output times K (dense output).

A tanh MLP field (dim 4, hidden 32, batch 64, float64) solved over [0, 5] with
K output times (0, 5 and K−2 sorted uniform random times between them),
K ∈ {2, 10, 50, 200}, adaptive dopri5 and tsit5 at rtol 1e-3 and 1e-6
(atol = rtol·1e-2), and neurode's second-order ALF separately:

- neurode: forward without gradients; forward + backward with
  ``gradient="checkpoint"`` and ``"adjoint"`` (dopri5/tsit5) or
  ``"reversible"`` (ALF); forward with ``options=dict(exact_outputs=True)``
  (every output a step end: the behaviour before dense output);
- torchdiffeq ``odeint`` (dopri5; it has no tsit5) and, for the gradient
  timings' context, ``odeint_adjoint`` forward + backward;
- torchode (Dopri5, Tsit5; ``t_eval`` of shape (batch, K), its own dense output).

Evaluations of f are counted by a wrapper (every call, forward and backward;
a torchode call evaluates the whole batch). Times are CPU seconds
(``time.process_time``, one intra-op thread), the best of several repeats, and
only ratios within this run are reported. Accuracy: max abs error over all
outputs and samples against scipy DOP853 at rtol 1e-12, atol 1e-14.

    python benchmarks/outputs.py            # ~2-3 minutes on 2 shared cores
    python benchmarks/outputs.py --quick    # K ∈ {2, 10}, rtol 1e-3, seconds

Prints a table and writes benchmarks/results/outputs.json and docs/img/outputs.png.
Target: neurode's forward evaluations within ±10 % of torchdiffeq's at every K
and tolerance (dopri5), with max error no worse than torchdiffeq's.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import neurode

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PNG = ROOT / "docs" / "img" / "outputs.png"

T0, T1 = 0.0, 5.0
DIM, HIDDEN, BATCH = 4, 32, 64
KS = (2, 10, 50, 200)
RTOLS = (1e-3, 1e-6)
ATOL_FACTOR = 1e-2
MAX_STEPS = 200_000
TARGET_NFE = 0.10  # ±10 % of torchdiffeq's forward evaluations


class Field(nn.Module):
    """``f(t, y) = W₂ tanh(W₁ y + b₁ + t c) + b₂``; ``t`` a scalar or one time per sample."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(DIM, HIDDEN)
        self.l2 = nn.Linear(HIDDEN, DIM)
        self.c = nn.Parameter(torch.randn(HIDDEN) * 0.1)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        if t.dim() == 1:  # torchode: per-sample times
            t = t[:, None]
        return self.l2(torch.tanh(self.l1(y) + t * self.c))

    def numpy_rhs(self):
        w1, b1 = (p.detach().double().numpy() for p in (self.l1.weight, self.l1.bias))
        w2, b2 = (p.detach().double().numpy() for p in (self.l2.weight, self.l2.bias))
        c = self.c.detach().double().numpy()

        def rhs(t, y):
            y = y.reshape(BATCH, DIM)
            return (np.tanh(y @ w1.T + b1 + t * c) @ w2.T + b2).ravel()

        return rhs


class Counted(nn.Module):
    def __init__(self, func: nn.Module):
        super().__init__()
        self.func = func
        self.n = 0

    def forward(self, t, y):
        self.n += 1
        return self.func(t, y)


def output_times(k: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(1000 + seed)
    inner = torch.rand(k - 2, generator=g, dtype=torch.float64) * (T1 - T0) + T0
    return torch.cat([torch.tensor([T0], dtype=torch.float64), inner.sort().values,
                      torch.tensor([T1], dtype=torch.float64)])  # fmt: skip


def reference(field: Field, y0: Tensor, t: Tensor) -> Tensor:
    from scipy.integrate import solve_ivp

    sol = solve_ivp(field.numpy_rhs(), (T0, T1), y0.double().numpy().ravel(), method="DOP853",
                    t_eval=t.numpy(), rtol=1e-12, atol=1e-14)  # fmt: skip
    assert sol.success, sol.message
    return torch.from_numpy(sol.y.T.copy()).reshape(len(t), BATCH, DIM)


# --- the solves: each returns y at every output time, shape (K, batch, dim) ---


def neurode_solve(f, y0, t, method, rtol, *, gradient=None, exact=False):
    options = {"max_steps": MAX_STEPS}
    if exact:
        options["exact_outputs"] = True
    return neurode.odeint(f, y0, t, method=method, rtol=rtol, atol=rtol * ATOL_FACTOR,
                          options=options, gradient=gradient or "direct")  # fmt: skip


def torchdiffeq_solve(f, y0, t, method, rtol, *, adjoint=False):
    import torchdiffeq

    fn = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
    kw = {"adjoint_params": tuple(f.parameters())} if adjoint else {}
    return fn(f, y0, t, method=method, rtol=rtol, atol=rtol * ATOL_FACTOR,
              options={"max_num_steps": MAX_STEPS}, **kw)  # fmt: skip


def torchode_solve(f, y0, t, method, rtol):
    import torchode as to

    term = to.ODETerm(f)
    step = {"dopri5": to.Dopri5, "tsit5": to.Tsit5}[method](term=term)
    controller = to.IntegralController(atol=rtol * ATOL_FACTOR, rtol=rtol, term=term)
    solver = to.AutoDiffAdjoint(step, controller, max_steps=MAX_STEPS)
    problem = to.InitialValueProblem(y0=y0, t_eval=t.expand(y0.shape[0], -1))
    sol = solver.solve(problem)
    return sol.ys.transpose(0, 1)  # (batch, K, dim) -> (K, batch, dim)


# --- measuring ---


def cpu_best(fn, *, repeats: int, min_time: float) -> tuple[float, int]:
    """Best CPU time of ``fn()`` over at least ``repeats`` calls (more until ``min_time``)."""
    fn()  # warm-up
    gc.collect()
    times: list[float] = []
    start = time.process_time()
    while len(times) < repeats or (time.process_time() - start < min_time and len(times) < 50):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times), len(times)


def measure(case: dict, field: Field, y0: Tensor, t: Tensor, ref: Tensor, w: Tensor,
            timing: dict) -> dict:  # fmt: skip
    f = Counted(field)
    solve, backward = case["solve"], case["backward"]
    out = {k: v for k, v in case.items() if k not in ("solve", "backward")}
    try:
        if backward:
            y0g = y0.clone().requires_grad_(True)
            f.n = 0
            y = solve(f, y0g, t)
            out["nfe_forward"] = f.n
            (y * w).sum().backward()
            out["nfe_total"] = f.n
            field.zero_grad(set_to_none=True)
            out["max_error"] = (y.detach() - ref).abs().max().item()

            def run():
                field.zero_grad(set_to_none=True)
                yy = solve(f, y0.clone().requires_grad_(True), t)
                (yy * w).sum().backward()
        else:
            f.n = 0
            with torch.no_grad():
                y = solve(f, y0, t)
            out["nfe_forward"] = out["nfe_total"] = f.n
            out["max_error"] = (y - ref).abs().max().item()

            def run():
                with torch.no_grad():
                    solve(f, y0, t)

        out["cpu_s"], out["repeats"] = cpu_best(run, **timing)
        out["available"] = True
    except Exception as e:  # a peer or configuration that cannot run: say why, go on
        out.update(available=False, reason=f"{type(e).__name__}: {e}"[:200])
    return out


def cases(method: str, rtol: float, peers: dict) -> list[dict]:
    def c(library, mode, solve, backward=False):
        return {"library": library, "mode": mode, "method": method, "rtol": rtol,
                "solve": solve, "backward": backward}  # fmt: skip

    m = method
    if m == "alf":
        return [
            c("neurode", "forward", lambda f, y, t: neurode_solve(f, y, t, m, rtol)),
            c("neurode", "reversible fwd+bwd",
              lambda f, y, t: neurode_solve(f, y, t, m, rtol, gradient="reversible"), True),
        ]  # fmt: skip
    out = [
        c("neurode", "forward", lambda f, y, t: neurode_solve(f, y, t, m, rtol)),
        c("neurode", "exact_outputs", lambda f, y, t: neurode_solve(f, y, t, m, rtol, exact=True)),
        c("neurode", "checkpoint fwd+bwd",
          lambda f, y, t: neurode_solve(f, y, t, m, rtol, gradient="checkpoint"), True),
        c("neurode", "adjoint fwd+bwd",
          lambda f, y, t: neurode_solve(f, y, t, m, rtol, gradient="adjoint"), True),
    ]  # fmt: skip
    if "torchdiffeq" in peers:
        if m == "dopri5":
            out.append(
                c("torchdiffeq", "forward", lambda f, y, t: torchdiffeq_solve(f, y, t, m, rtol))
            )
            out.append(c("torchdiffeq", "adjoint fwd+bwd",
                         lambda f, y, t: torchdiffeq_solve(f, y, t, m, rtol, adjoint=True), True))  # fmt: skip
        else:
            out.append({"library": "torchdiffeq", "mode": "forward", "method": m, "rtol": rtol,
                        "na": "torchdiffeq has no tsit5"})  # fmt: skip
    if "torchode" in peers:
        out.append(c("torchode", "forward", lambda f, y, t: torchode_solve(f, y, t, m, rtol)))
    return out


def peer_versions() -> dict:
    from importlib.metadata import version

    found = {}
    for name in ("torchdiffeq", "torchode"):
        try:
            __import__(name)
            found[name] = version(name)
        except Exception as e:
            print(f"{name} not available ({type(e).__name__}: {e}); its rows are left out")
    return found


# --- checks, table, plot ---


def find(results, **key):
    for r in results:
        if all(r.get(k) == v for k, v in key.items()) and r.get("available"):
            return r
    return None


def checks(results: list[dict], ks, rtols) -> list[dict]:
    out = []
    for method in ("dopri5", "tsit5"):
        for rtol in rtols:
            for k in ks:
                nr = find(results, library="neurode", mode="forward", method=method, rtol=rtol, K=k)
                td = find(results, library="torchdiffeq", mode="forward", method="dopri5",
                          rtol=rtol, K=k)  # fmt: skip
                if nr is None or td is None:
                    continue
                ratio = nr["nfe_forward"] / td["nfe_forward"]
                label = f"{method} rtol {rtol:g} K={k}"
                vs = "torchdiffeq dopri5" if method == "tsit5" else "torchdiffeq"
                out.append({
                    "target": f"{label}: forward NFE within ±10% of {vs}",
                    "value": f"{nr['nfe_forward']} vs {td['nfe_forward']} ({ratio:.2f}x)",
                    "met": abs(ratio - 1) <= TARGET_NFE,
                    "binding": method == "dopri5",
                })  # fmt: skip
                out.append({
                    "target": f"{label}: max error no worse than {vs}",
                    "value": f"{nr['max_error']:.2e} vs {td['max_error']:.2e}",
                    "met": nr["max_error"] <= td["max_error"],
                    "binding": method == "dopri5",
                })  # fmt: skip
    return out


def table(results: list[dict]) -> str:
    head = (f"{'method':<7} {'rtol':>5} {'K':>4} {'library':<12} {'mode':<19} "
            f"{'NFE fwd':>8} {'NFE tot':>8} {'max err':>9} {'CPU ms':>8} {'CPU/td':>7}")  # fmt: skip
    lines = [head]
    for r in results:
        base = (f"{r['method']:<7} {r['rtol']:>5.0e} {r['K']:>4} {r['library']:<12} "
                f"{r['mode']:<19}")  # fmt: skip
        if "na" in r:
            lines.append(f"{base} n/a: {r['na']}")
            continue
        if not r.get("available"):
            lines.append(f"{base} failed: {r['reason']}")
            continue
        td = find(results, library="torchdiffeq", mode="forward", method="dopri5",
                  rtol=r["rtol"], K=r["K"])  # fmt: skip
        rel = f"{r['cpu_s'] / td['cpu_s']:>7.2f}" if td else f"{'-':>7}"
        lines.append(f"{base} {r['nfe_forward']:>8} {r['nfe_total']:>8} {r['max_error']:>9.1e} "
                     f"{r['cpu_s'] * 1e3:>8.2f} {rel}")  # fmt: skip
    return "\n".join(lines)


def plot(results: list[dict], path: Path, rtols) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [
        ("neurode", "forward", "dopri5", "neurode dopri5", "C0", "-o"),
        ("neurode", "forward", "tsit5", "neurode tsit5", "C0", "--s"),
        ("neurode", "exact_outputs", "dopri5", "neurode dopri5, exact_outputs", "C3", "-o"),
        ("neurode", "exact_outputs", "tsit5", "neurode tsit5, exact_outputs", "C3", "--s"),
        ("neurode", "forward", "alf", "neurode ALF (2nd order)", "C4", ":^"),
        ("torchdiffeq", "forward", "dopri5", "torchdiffeq dopri5 (on neurode's)", "C1", ":x"),
        ("torchode", "forward", "dopri5", "torchode dopri5", "C2", "-o"),
        ("torchode", "forward", "tsit5", "torchode tsit5", "C2", "--s"),
    ]
    fig, axes = plt.subplots(1, len(rtols), figsize=(6 * len(rtols), 4.5), squeeze=False)
    for ax, rtol in zip(axes[0], rtols):
        for lib, mode, method, label, color, style in series:
            pts = [(r["K"], r["nfe_forward"]) for r in results
                   if r.get("available") and r["library"] == lib and r["mode"] == mode
                   and r["method"] == method and r["rtol"] == rtol]  # fmt: skip
            if pts:
                ax.plot(*zip(*sorted(pts)), style, color=color, label=label, ms=4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("output times K")
        ax.set_ylabel("forward evaluations of f")
        ax.set_title(f"rtol {rtol:g}, atol {rtol * ATOL_FACTOR:g}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"tanh MLP (dim {DIM}, hidden {HIDDEN}, batch {BATCH}) over [0, 5]")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: list[dict], ks, rtols) -> list[dict]:
    """Sort ``results`` in place, print the table and the targets; return the checks."""
    results.sort(key=lambda r: (["dopri5", "tsit5", "alf"].index(r["method"]), -r["rtol"], r["K"]))
    print()
    print(table(results))
    found = checks(results, ks, rtols)
    print()
    for c in found:
        mark = {True: "met", False: "MISSED"}[c["met"]]
        note = "" if c["binding"] else " (tsit5 vs dopri5: context, not the target)"
        print(f"[{mark:>6}] {c['target']}: {c['value']}{note}")
    return found


def from_json(path: Path, png: Path | None) -> int:
    """Measure nothing: re-sort, print and re-plot an earlier results file."""
    payload = json.loads(path.read_text())
    results = payload["results"]
    ks = sorted({r["K"] for r in results})
    rtols = sorted({r["rtol"] for r in results}, reverse=True)
    payload["checks"] = report(results, ks, rtols)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    png = png or (path.with_suffix(".png") if payload["quick"] else PNG)
    plot(results, png, rtols)
    print(f"\nrewrote {path} and {png} (no measuring)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="K ∈ {2, 10}, rtol 1e-3 only")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default results/outputs.json)")
    ap.add_argument("--plot", type=Path, default=None, help="PNG (default docs/img/outputs.png)")
    ap.add_argument("--from-json", type=Path, default=None, metavar="JSON",
                    help="measure nothing: re-print and re-plot this results file")  # fmt: skip
    args = ap.parse_args(argv)
    if args.from_json:
        return from_json(args.from_json, args.plot)
    torch.set_num_threads(args.threads)
    ks = (2, 10) if args.quick else KS
    rtols = (1e-3,) if args.quick else RTOLS
    timing = {"repeats": 2, "min_time": 0.0} if args.quick else {"repeats": 3, "min_time": 0.15}
    peers = peer_versions()

    torch.manual_seed(0)
    field = Field().double()
    y0 = torch.randn(BATCH, DIM, dtype=torch.float64)
    start = time.perf_counter()
    results = []
    for k in ks:
        t = output_times(k, seed=k)
        ref = reference(field, y0, t)
        w = torch.randn(k, BATCH, DIM, dtype=torch.float64)
        for method in ("dopri5", "tsit5", "alf"):
            for rtol in rtols:
                for case in cases(method, rtol, peers):
                    if "na" in case:
                        results.append(case | {"K": k, "available": False})
                        continue
                    r = measure(case | {"K": k}, field, y0, t, ref, w, timing)
                    results.append(r)
                    if r.get("available"):
                        print(f"K={k:<4} {method:<6} rtol {rtol:g} {r['library']:<12} "
                              f"{r['mode']:<19} nfe {r['nfe_forward']:>6}/{r['nfe_total']:<6} "
                              f"err {r['max_error']:.1e} cpu {r['cpu_s'] * 1e3:.2f} ms",
                              flush=True)  # fmt: skip
                    else:
                        print(f"K={k} {method} rtol {rtol:g} {r['library']} {r['mode']}: "
                              f"{r['reason']}", flush=True)  # fmt: skip
    seconds = time.perf_counter() - start
    found = report(results, ks, rtols)
    out = args.out or RESULTS / ("outputs-quick.json" if args.quick else "outputs.json")
    png = args.plot or (out.with_suffix(".png") if args.quick else PNG)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "outputs",
        "definition": (
            "evaluations of f (counting wrapper, forward and forward+backward), best CPU "
            "time (time.process_time) of the solve (and backward), and max abs error at "
            "the outputs vs scipy DOP853 rtol 1e-12 atol 1e-14; atol = rtol * 1e-2"
        ),
        "problem": f"tanh MLP dim {DIM}, hidden {HIDDEN}, batch {BATCH}, float64, t in "
        f"[{T0}, {T1}], outputs: t0, t1 and K-2 sorted uniform random times",
        "quick": args.quick,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "neurode": neurode.__version__,
        },
        "peers": peers,
        "results": results,
        "checks": found,
        "seconds": seconds,
    }
    out.write_text(json.dumps(payload, indent=1) + "\n")
    plot(results, png, rtols)
    print(f"\nwrote {out} and {png} ({seconds:.0f} s of measuring)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
