"""Tables and plots of benchmark results, shared by the scripts and ``neurode reproduce``."""

from __future__ import annotations

from pathlib import Path

from .memory import CONFIGS


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if r["status"] == "ok":
        mb = r["peak_mb"]
        return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.1f}"
    if r["status"] == "skipped" and "predicted_mb" in r:
        return f"skip ({r['predicted_mb'] / 1024:.1f} GB)"
    if r["status"] == "skipped" and "predicted_time" in r:
        return f"skip ({r['predicted_time']:.0f} s)"
    return r["status"]


def memory_table(sweep: dict) -> str:
    """Peak memory above baseline (MB unless marked GB), one row per configuration."""
    steps = sorted({r["steps"] for v in sweep["runs"].values() for r in v})
    head = f"{'method':<20}" + "".join(f"{n:>16}" for n in steps)
    lines = [head]
    for key, results in sweep["runs"].items():
        by = {r["steps"]: r for r in results}
        lines.append(f"{key:<20}" + "".join(f"{_cell(by.get(n)):>16}" for n in steps))
    return "\n".join(lines)


def summary_table(sweep: dict, analysis: dict, solver_names: dict[str, str]) -> str:
    """Per configuration: solver, time over direct (median over N_t, and at the largest
    N_t both were timed), growth per step, gradient error and NFE at the error N_t."""
    lines = [
        f"{'method':<20} {'solver':<18} {'time/direct':>11} {'(largest N_t)':>15} {'MB/step':>9} "
        f"{'grad rel err':>13} {'NFE@' + str(sweep['error_steps']):>8}"
    ]
    ratios = analysis["time_ratios"]
    for key, results in sweep["runs"].items():
        r = ratios.get(key)
        med = f"{r['median']:.2f}" if r else "-"
        last = f"{r['ratio']:.2f} ({r['steps']})" if r else "-"
        g = analysis["mb_per_step"].get(key)
        gs = f"{g:.3f}" if g is not None else "-"
        at_err = next((x for x in results if x["steps"] == sweep["error_steps"]), {})
        err = at_err.get("grad_rel_error")
        es = f"{err:.2e}" if err is not None else "-"
        nfe = at_err.get("nfe", "-")
        reason = ""
        if not any(x.get("status") == "ok" for x in results) and results:
            reason = f"  ({results[0].get('reason')})"
        lines.append(
            f"{key:<20} {solver_names.get(key, ''):<18} {med:>11} {last:>15} {gs:>9} {es:>13} "
            f"{nfe!s:>8}{reason}"
        )
    return "\n".join(lines)


def time_table(sweep: dict, analysis: dict) -> str:
    """Time over direct through the same discretisation at every N_t both were timed."""
    ratios = analysis["time_ratios"]
    steps = sorted({int(n) for r in ratios.values() for n in r["per_steps"]})
    lines = [f"{'method':<20} {'vs':<12}" + "".join(f"{n:>8}" for n in steps)]
    for key, r in ratios.items():
        per = {int(n): v for n, v in r["per_steps"].items()}
        cells = "".join(f"{per[n]:>8.2f}" if n in per else f"{'-':>8}" for n in steps)
        lines.append(f"{key:<20} {r['direct']:<12}" + cells)
    return "\n".join(lines)


def checks_text(checks: list[dict]) -> str:
    out = []
    for c in checks:
        mark = {True: "met", False: "MISSED", None: "n/a"}[c["met"]]
        out.append(f"[{mark:>6}] {c['target']}: {c['value']}")
    return "\n".join(out)


_STYLE = {
    "direct": ("C0", "o", "-"),
    "checkpoint": ("C1", "s", "-"),
    "checkpoint-8": ("C2", "^", "-"),
    "anode-block": ("C3", "v", ":"),
    "adjoint": ("C4", "D", "-"),
    "direct-alf": ("C5", "o", "--"),
    "reversible-alf": ("C6", "P", "-"),
    "reversible-rk4": ("C7", "X", "-"),
    "torchdiffeq": ("C8", "o", "--"),
    "torchdiffeq-adjoint": ("C9", "D", "--"),
    "mali": ("k", "P", "--"),
}


def plot_memory(sweeps: list[dict], path: Path, dpi: int = 72) -> Path:
    """Log-log peak memory vs ``N_t``, one panel per problem; skipped points as hollow
    markers at their predicted memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sweeps), figsize=(5.2 * len(sweeps), 4.2), squeeze=False)
    for ax, sweep in zip(axes[0], sweeps):
        for key, results in sweep["runs"].items():
            color, marker, ls = _STYLE.get(key, ("grey", ".", "-"))
            pts = [(r["steps"], r["peak_mb"]) for r in results if r["status"] == "ok"]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, color=color, marker=marker, ls=ls, label=key, ms=5, lw=1.3)
            pred = [(r["steps"], r["predicted_mb"]) for r in results if "predicted_mb" in r]
            if pred:
                xs, ys = zip(*pred)
                ax.plot(xs, ys, color=color, marker=marker, ls="none", mfc="none", ms=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N_t (steps)")
        ax.set_ylabel("peak memory above baseline (MB)")
        title = sweep.get("title", sweep["problem"])
        if sweep.get("base_method"):
            title += f"\n{sweep['base_method']} steps (ALF / Reversible(rk4) for reversible)"
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", ncol=2)
    fig.text(0.01, 0.01, "hollow: skipped, at the predicted memory", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def solver_names(problem) -> dict[str, str]:
    from .memory import solver_name

    return {k: solver_name(problem, c) for k, c in CONFIGS.items()}
