"""ANODE's finding on digits: train an ODE-ResNet with the adjoint vs checkpointing.

Gholami, Keutzer & Biros (ANODE, 2019) trained ODE-ResNets whose f is a
ReLU-conv block with few fixed steps and found the continuous adjoint trains
worse than exact backprop through the solver (their CIFAR-10 table:
ResNet-10 67.9% with the adjoint vs 88.6% with ANODE's checkpointing). The
adjoint differentiates the ODE and then discretises the backward solve; with
few steps of a ReLU-conv field the reverse-time state drifts away from the
forward one, and the gradient is that of a different computation.

Here the same experiment runs at the scale of a laptop: scikit-learn's 8×8
digits, the ODE-ResNet of ``neurode train`` (f = conv-BN-ReLU-conv-BN, four
stages, one ODE block each), a few Euler or RK2 steps per block, the same
seeds, schedule and batches for both gradients. For every run it records the
final test accuracy and training loss, and, on a fixed batch at the trained
weights, the relative error of the adjoint's parameter gradient against
direct backprop through the same solver (checkpointing's is round-off).

    python benchmarks/anode_digits.py            # 2 solvers x 2 gradients x 3 seeds, ~5-8 min
    python benchmarks/anode_digits.py --quick    # tiny, seconds (smoke test)

Prints a table and writes benchmarks/results/anode_digits.json and .png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from neurode.app.demo import gradient_error
from neurode.app.train.classify import TrainConfig, load_data, make_gradient, make_method, train

RESULTS = Path(__file__).resolve().parent / "results"


def parse_solvers(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        name, _, steps = item.strip().partition(":")
        out.append((name, int(steps or 2)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--solvers", default="euler:2,rk2:2", help="method:steps, comma-separated")
    ap.add_argument("--gradients", default="adjoint,checkpoint")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--milestones", default="6,9")
    ap.add_argument("--widths", default="16,32,32,64")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON path (default results/anode_digits.json)"
    )
    args = ap.parse_args(argv)

    solvers = parse_solvers(args.solvers)
    grads = [g.strip() for g in args.gradients.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    widths = tuple(int(w) for w in args.widths.split(","))
    extra = {}
    epochs, milestones = args.epochs, tuple(int(m) for m in args.milestones.split(",") if m)
    if args.quick:
        solvers, seeds, epochs, milestones = solvers[:1], seeds[:1], 1, ()
        widths = (4, 8, 8, 8)
        extra = dict(train_limit=128, test_limit=64)
    out = args.out or RESULTS / ("anode_digits-quick.json" if args.quick else "anode_digits.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)

    base = TrainConfig(
        model="odenet", data="digits", norm="batch", widths=widths, epochs=epochs,
        lr=args.lr, milestones=milestones, batch_size=64, augment="none", quiet=True,
        progress=False, plot=False, threads=args.threads, device="cpu", **extra,
    )  # fmt: skip
    data = load_data(base)
    g = torch.Generator().manual_seed(1234)
    fixed = torch.randperm(data.train_x.shape[0], generator=g)[:128]
    xb, yb = data.prepare(data.train_x[fixed]), data.train_y[fixed]

    runs = []
    tmp = tempfile.TemporaryDirectory(prefix="anode_digits_")  # per-run checkpoints, not kept
    t_all = time.perf_counter()
    print(f"ANODE on digits: widths {list(widths)}, {epochs} epochs, seeds {seeds}")
    for method, steps in solvers:
        for gradient in grads:
            for seed in seeds:
                cfg = TrainConfig(**{
                    **base.__dict__, "method": method, "steps": steps, "gradient": gradient,
                    "seed": seed, "out": str(Path(tmp.name) / f"{method}{steps}-{gradient}-{seed}"),
                })  # fmt: skip
                t0 = time.perf_counter()
                res = train(cfg, data=data)
                last = res.records[-1]
                # gradient error against direct backprop, at this run's trained weights
                err = gradient_error(
                    res.model, xb, yb, make_gradient(cfg.resolved()), make_method(method)
                )
                run = dict(
                    method=method, steps=steps, gradient=gradient, seed=seed,
                    test_acc=last["test_acc"], train_loss=last["train_loss"],
                    diverged=res.diverged, grad_error=err,
                    curve=[r["test_acc"] for r in res.records],
                    seconds=time.perf_counter() - t0,
                )  # fmt: skip
                runs.append(run)
                acc = "diverged" if run["test_acc"] is None else f"{100 * run['test_acc']:.2f}%"
                print(f"  {method} x{steps}  {gradient:<10}  seed {seed}  test {acc}  "
                      f"loss {run['train_loss']:.4f}  grad err {err:.1e}  ({run['seconds']:.0f} s)",
                      flush=True)  # fmt: skip
    total = time.perf_counter() - t_all
    tmp.cleanup()

    rows = summarise(runs)
    print()
    print(table(rows))
    print(f"\ntotal {total:.0f} s")
    out.write_text(json.dumps(dict(
        config=dict(widths=list(widths), epochs=epochs, milestones=list(milestones), lr=args.lr,
                    batch_size=64, seeds=seeds, solvers=solvers, model="odenet", norm="batch"),
        runs=runs, summary=rows, total_seconds=total,
    ), indent=2) + "\n")  # fmt: skip
    png = out.with_suffix(".png")
    plot(runs, rows, png)
    print(f"wrote {out} and {png}")
    return 0


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    keys = sorted({(r["method"], r["steps"], r["gradient"]) for r in runs},
                  key=lambda k: ([r["method"] for r in runs].index(k[0]), k[2]))  # fmt: skip
    for method, steps, gradient in keys:
        rs = [
            r for r in runs if (r["method"], r["steps"], r["gradient"]) == (method, steps, gradient)
        ]
        accs = [100 * (r["test_acc"] or 0.0) for r in rs]
        rows.append(dict(
            method=method, steps=steps, gradient=gradient, n=len(rs),
            acc_mean=statistics.fmean(accs), acc_std=statistics.pstdev(accs) if len(accs) > 1 else 0.0,
            acc_min=min(accs), acc_max=max(accs),
            loss_mean=statistics.fmean(r["train_loss"] for r in rs),
            grad_error_mean=statistics.fmean(r["grad_error"] for r in rs),
            diverged=sum(bool(r["diverged"]) for r in rs),
        ))  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    head = f"{'solver':<9} {'gradient':<11} {'seeds':>5} {'test acc % (mean ± sd)':>23} {'min–max':>13} {'train loss':>10} {'grad err':>9} {'diverged':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['method'] + ' x' + str(r['steps']):<9} {r['gradient']:<11} {r['n']:>5} "
            f"{r['acc_mean']:>15.2f} ± {r['acc_std']:<5.2f} {r['acc_min']:>6.2f}–{r['acc_max']:<6.2f} "
            f"{r['loss_mean']:>10.4f} {r['grad_error_mean']:>9.1e} {r['diverged']:>8}"
        )
    return "\n".join(lines)


def plot(runs, rows, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    colors = {}
    for r in runs:
        key = f"{r['method']} x{r['steps']} {r['gradient']}"
        c = colors.setdefault(key, f"C{len(colors)}")
        ax[0].plot(range(1, len(r["curve"]) + 1), [100 * (a or 0) for a in r["curve"]], color=c,
                   alpha=0.7, label=key if r["seed"] == runs[0]["seed"] else None)  # fmt: skip
    ax[0].set(xlabel="epoch", ylabel="test accuracy (%)", title="digits, ODE-ResNet (each seed)")
    ax[0].legend(fontsize=8)
    labels = [f"{r['method']} x{r['steps']}\n{r['gradient']}" for r in rows]
    ax[1].bar(labels, [r["acc_mean"] for r in rows], yerr=[r["acc_std"] for r in rows],
              color=[colors[f"{r['method']} x{r['steps']} {r['gradient']}"] for r in rows])  # fmt: skip
    lo = min(r["acc_min"] for r in rows)
    ax[1].set(ylim=(max(0, lo - 5), 100), title="final test accuracy (mean ± sd)")
    ax[1].tick_params(axis="x", labelsize=8)
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
