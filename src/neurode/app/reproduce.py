"""``neurode reproduce``: the papers' findings and the peers, measured here, in one report.

Writes ``OUT/report.md`` (tables and PNG figures) and ``OUT/report.json``:

1. reverse-time reconstruction (ANODE §3, MALI): backwards re-integration vs
   the ALF and reversible-RK inverses, at default initialisation and with the
   conv weights ×4;
2. gradient accuracy of every method in float32 against float64 direct
   backprop through the same discretisation, float32 direct as the floor;
3. peak memory vs N_t, each point in a fresh process;
4. forward+backward time as a ratio to direct, from the same run;
5. training: the digits ODE-ResNet with direct, checkpoint, reversible and
   adjoint gradients;
6. the peers (torchdiffeq, TorchDiffEqPack, torchode) where they run;
7. where the adjoint fails to train (the ``anode_regime`` sweep): read from
   ``benchmarks/results/anode_regime.json`` when that cached full sweep exists
   (or ``--anode-cache PATH``), otherwise run; ``--quick`` runs its tiny form.

``--quick`` shrinks every section (tiny problems, few steps) to finish in
under two minutes; CI runs it as a smoke test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from neurode import Adjoint, Checkpoint, Reversible, reconstruction_error, solve

from .figures import save_figure

FLOOR_FACTOR = 10.0  # exact methods must sit within this factor of the float32 floor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="reproduce-out", help="output directory")
    parser.add_argument("--quick", action="store_true", help="tiny sizes; < 2 minutes")
    parser.add_argument(
        "--render",
        action="store_true",
        help="only rewrite report.md (and its checks) from OUT/report.json, measuring nothing",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: 1 with --quick, where tiny kernels only contend, else torch's)",
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["reconstruction", "gradients", "memory", "training", "peers", "anode_regime"],
        help="sections to leave out",
    )
    parser.add_argument(
        "--anode-cache",
        default=None,
        help="JSON of a full anode_regime sweep to report instead of running it "
        "(default: benchmarks/results/anode_regime.json of the source checkout, if present)",
    )


# ---------------------------------------------------------------------------- 1
def section_reconstruction(quick: bool) -> dict:
    from .bench.problems import make_problem

    steps = [10, 40] if quick else [10, 40, 160]
    cases = [("conv", 1.0), ("conv", 4.0), ("mlp", 1.0)]
    rows = []
    for name, scale in cases:
        prob = make_problem(name, quick=quick, weight_scale=scale)
        for n in steps:
            opts = dict(steps=n)
            back = reconstruction_error(
                prob.func, prob.y0, [0.0, 1.0], method="euler", options=opts
            )
            alf = reconstruction_error(prob.func, prob.y0, [0.0, 1.0], method="alf", options=opts)
            rev = reconstruction_error(
                prob.func, prob.y0, [0.0, 1.0], method=Reversible("midpoint"), options=opts
            )
            rows.append(
                dict(
                    problem=name,
                    weight_scale=scale,
                    steps=n,
                    growth=back.growth,
                    backward_euler=back.backward_integration,
                    alf_inverse=alf.inverse,
                    reversible_midpoint_inverse=rev.inverse,
                )
            )
    return {"steps": steps, "rows": rows}


# ---------------------------------------------------------------------------- 2
_GRADIENTS = [
    ("direct", "base", "direct"),
    ("checkpoint", "base", "checkpoint"),
    ("checkpoint(budget=8)", "base", Checkpoint(budget=8)),
    ("adjoint", "base", "adjoint"),
    ("adjoint(seminorm)", "base", Adjoint(seminorm=True)),
    ("reversible (alf)", "alf", "reversible"),
    ("reversible (reversible RK)", "revrk4", "reversible"),
]


def _grad(prob, method, options, gradient, rtol, atol):
    y0 = prob.y0.detach().clone().requires_grad_(True)
    params = list(prob.func.parameters())
    for p in params:
        p.grad = None
    sol = solve(
        prob.func,
        y0,
        [0.0, 1.0],
        method=method,
        options=options,
        gradient=gradient,
        rtol=rtol,
        atol=atol,
    )
    prob.loss(sol.ys[-1]).backward()
    g = torch.cat([y0.grad.flatten()] + [p.grad.flatten() for p in params])
    return g.double(), sol.stats


def section_gradients(quick: bool) -> dict:
    from .bench.problems import make_problem

    rows = []
    for name in ("conv", "mlp"):
        p32 = make_problem(name, quick=quick)
        p64 = p32.to(torch.float64)
        steps = 10
        regimes = [("fixed", {"steps": steps}, 1e-7, 1e-9)]
        adaptive_tol = (1e-3, 1e-5) if name == "conv" else (1e-5, 1e-7)
        regimes.append(("adaptive", None, *adaptive_tol))
        for regime, options, rtol, atol in regimes:
            refs: dict[str, torch.Tensor] = {}
            for label, kind, gradient in _GRADIENTS:
                if kind == "base":
                    method = p32.base_method if regime == "fixed" else "dopri5"
                elif kind == "alf":
                    method = "alf"
                else:
                    method = Reversible("rk4" if regime == "fixed" else "dopri5")
                ref_key = f"{kind}"
                if ref_key not in refs:
                    refs[ref_key], _ = _grad(p64, method, options, "direct", rtol, atol)
                t0 = time.perf_counter()
                g, stats = _grad(p32, method, options, gradient, rtol, atol)
                elapsed = time.perf_counter() - t0
                ref = refs[ref_key]
                rows.append(
                    dict(
                        problem=name,
                        regime=regime,
                        solver=getattr(method, "name", method),
                        gradient=label,
                        rel_error=float((g - ref).norm() / ref.norm()),
                        nfe_forward=stats.nfe_forward,
                        nfe_backward=stats.nfe_backward,
                        seconds=elapsed,
                    )
                )
    # the float32 floor of each (problem, regime, solver family): float32 direct backprop
    floors = {}
    for r in rows:
        if r["gradient"] == "direct":
            floors[(r["problem"], r["regime"])] = r["rel_error"]
    for r in rows:
        if r["gradient"].startswith("reversible"):
            continue
        r["floor"] = floors[(r["problem"], r["regime"])]
    return {"rows": rows}


# ---------------------------------------------------------------------------- 3, 4, 6
QUICK_MEMORY_KEYS = (
    "direct",
    "checkpoint",
    "checkpoint-8",
    "adjoint",
    "direct-alf",
    "reversible-alf",
)


def section_memory(quick: bool, include_peers: bool) -> dict:
    from .bench.memory import CONFIGS, DEFAULT_KEYS, memory_sweep, time_ratios

    keys = [k for k in DEFAULT_KEYS if include_peers or CONFIGS[k].peer is None]
    # conv at 640 steps takes minutes per method; benchmarks/memory.py goes that far
    steps_for = {"conv": [10, 40, 160], "mlp": [10, 40, 160, 640]}
    if quick:
        steps_for = {"mlp": [4, 16]}
    problems = ("conv", "mlp")
    if quick:  # every point is a fresh process: keep the smoke test to a handful
        keys = [k for k in keys if k in QUICK_MEMORY_KEYS]
        problems = ("mlp",)
    out = {}
    for name in problems:
        sweep = memory_sweep(
            name,
            steps_for[name],
            keys,
            quick=quick,
            max_mb=12 * 1024,
            max_seconds=None if quick else 60.0,
            # as benchmarks/memory.py: repeat the cheap MLP timings, time the conv once
            timing_runs=2 if name == "mlp" else 1,
            timing_budget=2.0 if name == "mlp" and not quick else 0.0,
            log=None,
        )
        sweep["time_ratios"] = time_ratios(sweep)
        out[name] = sweep
    return out


def section_peers() -> dict:
    from .bench.peers import peers_status

    return peers_status()


# ---------------------------------------------------------------------------- 5
def section_training(quick: bool, out: Path) -> dict:
    """The demo's comparison (ANODE's): same network, same batches, four gradient methods."""
    from . import demo

    target = out / "training"
    argv = ["--out", str(target)] + (["--quick"] if quick else [])
    code = demo.main(argv)
    results = json.loads((target / "results.json").read_text())
    rows = results["rows"]
    header = [
        "gradient",
        "solver",
        "test accuracy",
        "grad. error vs direct",
        "nfe fwd/bwd",
        "s/epoch",
    ]
    table = _table(
        header,
        [
            [
                r["method"],
                r["solver"],
                "diverged" if r["test_acc"] is None else f"{100 * r['test_acc']:.2f}%",
                _fmt(r["grad_error"]),
                f"{r['nfe_forward']:.0f}/{r['nfe_backward']:.0f}",
                _fmt(r["epoch_time"], ".2f"),
            ]
            for r in rows
        ],
    )
    png = target / "demo.png"
    return {
        "exit_code": code,
        "rows": rows,
        "markdown": table,
        "png": str(png) if png.exists() else None,
    }


# ---------------------------------------------------------------------------- report
def _fmt(x, spec=".2e") -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return format(x, spec)


def _section(title: str, text: str) -> list[str]:
    """A report section's heading and its explanation, each followed by a blank line."""
    return ["", f"## {title}", "", text, ""]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _plot_reconstruction(rec: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({(r["problem"], r["weight_scale"]) for r in rec["rows"]})
    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 3.4), squeeze=False)
    for ax, (prob, scale) in zip(axes[0], cases):
        rows = [r for r in rec["rows"] if r["problem"] == prob and r["weight_scale"] == scale]
        n = [r["steps"] for r in rows]
        for key, label in [
            ("backward_euler", "backwards re-integration (adjoint)"),
            ("alf_inverse", "ALF inverse"),
            ("reversible_midpoint_inverse", "reversible RK inverse"),
        ]:
            ax.loglog(n, [max(r[key], 1e-17) for r in rows], marker="o", label=label)
        ax.set_title(f"{prob}, weights x{scale:g}")
        ax.set_xlabel("N_t")
        ax.set_ylabel("relative error of rebuilt y0")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    save_figure(fig, path)


def _plot_memory(mem: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .bench.memory import CONFIGS

    colors = plt.get_cmap("tab20").colors
    fig, axes = plt.subplots(1, len(mem), figsize=(5.5 * len(mem), 4), squeeze=False)
    for ax, (name, sweep) in zip(axes[0], mem.items()):
        for i, (key, results) in enumerate(sweep["runs"].items()):
            peer = CONFIGS[key].peer if key in CONFIGS else None
            # RSS is counted in pages: clamp to 0.1 MB so log axes show tiny (quick) runs too
            pts = [
                (r["steps"], max(r["peak_mb"], 0.1))
                for r in results
                if r.get("status") == "ok" and r.get("peak_mb") is not None
            ]
            if pts:  # peers dashed, so 11 lines stay distinguishable
                ax.loglog(
                    *zip(*pts),
                    marker="o",
                    color=colors[(2 * i) % 20 if i < 10 else 2 * (i - 10) + 1],
                    linestyle="--" if peer else "-",
                    label=key if not peer else f"{key} ({peer})",
                )
        ax.set_title(name)
        ax.set_xlabel("N_t")
        ax.set_ylabel("peak memory above baseline (MB)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


# ---------------------------------------------------------------------------- 7
def section_anode_regime(quick: bool, out: Path, cache: str | None = None) -> tuple[list, dict]:
    """Rows for report.json["anode_regime"] and the rest (verdicts, probe, source).

    A full sweep takes ~10 minutes, so without ``--quick`` the cached JSON that
    ``benchmarks/anode_regime.py`` writes is reported when it exists; only
    without one is the sweep run. ``--quick`` always runs the tiny sweep.
    """
    from .bench import anode_regime as ar

    path = Path(cache) if cache else ar.CACHE
    if not quick and path.exists():
        res, source = json.loads(path.read_text()), f"cached: {path}"
    else:
        res = ar._clean(ar.sweep(ar.QUICK if quick else ar.FULL, log=lambda m: print("  " + m)))
        source = "run now" + (" (--quick)" if quick else "")
    png = out / "anode_regime.png"
    ar.plot(res, png)
    meta = dict(
        source=source,
        verdicts=res["verdicts"],
        summary=res["summary"],
        probe=res["probe"],
        seconds=res.get("seconds"),
        budget=res.get("config", {}).get("budget"),
        png=str(png),
    )
    return ar.report_rows(res["summary"]), meta


def _anode_regime_markdown(rows: list, meta: dict) -> list[str]:
    md = _section(
        "7. Where the adjoint fails to train (digits ODE-ResNet sweep)",
        f"Source: {meta['source']}. Test accuracy after a fixed budget, mean ± sd over seeds; "
        "gradient error vs direct (same solver) and reverse-time reconstruction error "
        "(backward integration; ALF inverse for reversible), at initialisation → end.",
    )
    md.append(
        _table(
            ["T", "steps", "solver", "norm", "scale", "gradient", "seeds", "test acc %",
             "grad err", "recon err"],
            [
                [f"{r['T']:g}", str(r["steps"]), r["method"], r["norm"], f"{r['scale']:g}",
                 r["gradient"], str(r["seeds"]), f"{r['acc_mean']:.2f} ± {r['acc_std']:.2f}",
                 f"{_fmt(r['grad_err_init'], '.2g')} → {_fmt(r['grad_err'], '.2g')}",
                 f"{_fmt(r['recon_err_init'], '.2g')} → {_fmt(r['recon_err'], '.2g')}"]
                for r in rows
            ],
        )
    )  # fmt: skip
    md.append("")
    for v in meta.get("verdicts", []):
        md.append(
            f"- {v['config']}: checkpoint − adjoint = {v['gap']:+.1f} points over {v['seeds']} "
            f"seed(s); spreads {'separate' if v['separated_std'] else 'overlap'}; exact methods "
            f"within {v['exact_spread']:.1f} points; target (≥ 10 points, 3+ seeds, separated, "
            f"exact methods agree) {'met' if v['target'] else 'not met'}"
        )
    md.append("\n![anode regime](anode_regime.png)")
    return md


def write_report(results: dict, out: Path) -> Path:
    md = ["# neurode: the findings, measured on this machine", ""]
    md.append(
        f"Generated by `neurode reproduce{' --quick' if results['quick'] else ''}` "
        f"(torch {torch.__version__}, {os.cpu_count()} CPU cores). "
        "Times are ratios from the same run; memory is peak RSS above a baseline, "
        "one fresh process per point."
    )
    if results["quick"]:
        md.append("\n**Quick mode**: tiny problems and few steps — a smoke test, not the findings.")
    rec = results.get("reconstruction")
    if rec:
        md += _section(
            "1. Reverse-time reconstruction",
            "Relative error of y0 rebuilt from y(1): by integrating backwards with Euler "
            "(what the continuous adjoint does), by inverting ALF, and by inverting reversible "
            "RK (midpoint base), each on the grid the forward used.",
        )
        md.append(
            _table(
                ["problem", "weights", "N_t", "growth ‖y(1)‖/‖y0‖", "backwards Euler",
                 "ALF inverse", "reversible RK inverse"],
                [
                    [r["problem"], f"x{r['weight_scale']:g}", str(r["steps"]),
                     _fmt(r["growth"], ".3g"), _fmt(r["backward_euler"]),
                     _fmt(r["alf_inverse"]), _fmt(r["reversible_midpoint_inverse"])]
                    for r in rec["rows"]
                ],
            )
        )  # fmt: skip
        md += ["", "![reconstruction](reconstruction.png)"]
    grads = results.get("gradients")
    if grads:
        md += _section(
            "2. Gradient accuracy",
            "Relative error of float32 gradients (dL/dy0 and dL/dθ together) against float64 "
            "direct backprop through the same discretisation (for adaptive runs, float64 at the "
            "same tolerances, so grid differences show up in the floor). `floor` is float32 "
            "direct backprop's own error.",
        )
        md.append(
            _table(
                ["problem", "steps", "solver", "gradient", "rel. error", "floor", "nfe fwd",
                 "nfe bwd"],
                [
                    [r["problem"], r["regime"], str(r["solver"]), r["gradient"],
                     _fmt(r["rel_error"]), _fmt(r.get("floor")), str(r["nfe_forward"]),
                     str(r["nfe_backward"])]
                    for r in grads["rows"]
                ],
            )
        )  # fmt: skip
    mem = results.get("memory")
    if mem:
        md += ["", "## 3. Peak memory vs N_t", ""]
        for name, sweep in mem.items():
            steps = sweep["steps"]
            md += [
                f"**{name}** (MB above baseline; `skip` = predicted over the limit or unavailable)",
                "",
            ]
            rows = []
            for key, results_ in sweep["runs"].items():
                by = {r["steps"]: r for r in results_}
                cells = []
                for n in steps:
                    r = by.get(n)
                    if r and r.get("status") == "ok" and r.get("peak_mb") is not None:
                        cells.append(_fmt(r["peak_mb"], ".0f" if r["peak_mb"] >= 100 else ".1f"))
                    else:
                        cells.append("skip")
                rows.append([key, *cells])
            md.append(_table(["method", *[f"N_t={n}" for n in steps]], rows))
            md.append("")
        md.append("![memory](memory.png)")
        md += [
            "",
            "## 4. Time (forward + backward, ratio to direct backprop of the same solver)",
            "",
        ]
        for name, sweep in mem.items():
            ratios = sweep.get("time_ratios", {})
            md.append(f"**{name}**")
            md.append("")
            md.append(
                _table(
                    ["method", "N_t", "time / direct"],
                    [[k, str(v["steps"]), _fmt(v["ratio"], ".2f")] for k, v in ratios.items()],
                )
            )
            md.append("")
    train = results.get("training")
    if train:
        md += ["", "## 5. Training: digits ODE-ResNet", ""]
        md.append(train.get("markdown", ""))
        if train.get("png"):
            md.append(f"\n![training](training/{Path(train['png']).name})")
    peers = results.get("peers")
    if peers:
        md += ["", "## 6. Peers", ""]
        md.append(
            _table(
                ["peer", "available", "version / reason"],
                [
                    [
                        name,
                        "yes" if info.get("available") else "no",
                        str(info.get("version") or info.get("reason")),
                    ]
                    for name, info in peers.items()
                ],
            )
        )
    if results.get("anode_regime") is not None and results.get("anode_regime_meta"):
        md += _anode_regime_markdown(results["anode_regime"], results["anode_regime_meta"])
    checks = results.get("checks")
    if checks:
        md += ["", "## Checks", ""]
        md += [f"- {'PASS' if c['ok'] else 'FAIL'}: {c['what']}" for c in checks]
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def _checks(results: dict) -> list[dict]:
    checks = []
    grads = results.get("gradients")
    if grads:
        for r in grads["rows"]:
            exact = r["gradient"].startswith("checkpoint") or r["gradient"].startswith("reversible")
            if not exact or r["regime"] != "fixed":
                continue
            floor = max(
                (
                    x["rel_error"]
                    for x in grads["rows"]
                    if x["problem"] == r["problem"]
                    and x["regime"] == "fixed"
                    and x["gradient"] == "direct"
                ),
                default=float("nan"),
            )
            floor = max(floor, 1e-7)  # float32 round-off cannot be beaten
            checks.append(
                dict(
                    what=f"{r['problem']} {r['gradient']}: error {r['rel_error']:.2e} within {FLOOR_FACTOR:g}x the float32 floor {floor:.2e}",
                    ok=r["rel_error"] <= FLOOR_FACTOR * floor,
                )
            )
    return checks


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.render:
        results = json.loads((out / "report.json").read_text())
        results["checks"] = _checks(results)
        if results.get("reconstruction"):
            _plot_reconstruction(results["reconstruction"], out / "reconstruction.png")
        if results.get("memory"):
            _plot_memory(results["memory"], out / "memory.png")
        if results.get("anode_regime_meta"):
            from .bench import anode_regime as _ar

            _ar.plot(results["anode_regime_meta"], out / "anode_regime.png")
        print(f"wrote {write_report(results, out)}")
        return 0 if all(c["ok"] for c in results["checks"]) else 1
    out.mkdir(parents=True, exist_ok=True)
    threads = args.threads if args.threads is not None else (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    results: dict = {"quick": args.quick, "torch": torch.__version__, "timings": {}}
    torch.manual_seed(0)

    def timed(name, fn):
        t0 = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        value = fn()
        results["timings"][name] = time.perf_counter() - t0
        print(f"[{name}] done in {results['timings'][name]:.1f} s", flush=True)
        return value

    if "reconstruction" not in args.skip:
        results["reconstruction"] = timed(
            "reconstruction", lambda: section_reconstruction(args.quick)
        )
        _plot_reconstruction(results["reconstruction"], out / "reconstruction.png")
    if "gradients" not in args.skip:
        results["gradients"] = timed("gradients", lambda: section_gradients(args.quick))
    if "memory" not in args.skip:
        results["memory"] = timed(
            "memory", lambda: section_memory(args.quick, "peers" not in args.skip)
        )
        _plot_memory(results["memory"], out / "memory.png")
    if "training" not in args.skip:
        results["training"] = timed("training", lambda: section_training(args.quick, out))
    if "peers" not in args.skip:
        results["peers"] = section_peers()
    if "anode_regime" not in args.skip:
        results["anode_regime"], results["anode_regime_meta"] = timed(
            "anode_regime",
            lambda: section_anode_regime(args.quick, out, getattr(args, "anode_cache", None)),
        )
    results["checks"] = _checks(results)
    (out / "report.json").write_text(json.dumps(results, indent=2, default=str))
    path = write_report(results, out)
    print(f"wrote {path}")
    failed = [c for c in results["checks"] if not c["ok"]]
    for c in failed:
        print("FAIL:", c["what"])
    return 1 if failed else 0
