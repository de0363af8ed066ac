"""``neurode demo``: one small ODE-ResNet on digits, trained with each gradient method.

Trains the same network (same seed, same initial weights, same batches) four
times — direct backprop, checkpointing, the reversible ALF solver (MALI) and
the continuous adjoint — for a few epochs each on scikit-learn's bundled 8×8
digits (nothing is downloaded), then prints one table:

- test accuracy after the last epoch;
- gradient error: ‖g_method − g_direct‖ / ‖g_direct‖ over all parameters, on
  a fixed batch, at the method's trained weights, in float32 (direct backprop
  through the same solver is the reference: checkpointing and ALF should sit
  at round-off, the adjoint well above it);
- evaluations of f per training batch, forward/backward;
- peak tensor memory of one training step
  (:class:`~neurode.app.train.common.TensorMemoryTracker`);
- wall time per epoch.

and writes ``demo.png`` (test accuracy and training loss per epoch, memory and
gradient error per method) and ``results.json`` to ``--out`` (default
``./demo-out``), with each method's ``metrics.jsonl`` and checkpoint in a
subfolder. ``--quick`` runs a tiny configuration in seconds (for tests).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .figures import save_figure
from .train.classify import TrainConfig, load_data, make_gradient, make_method, train
from .train.common import resolve_device

#: (label, method, gradient)
METHODS = [
    ("direct", "rk2", "direct"),
    ("checkpoint", "rk2", "checkpoint"),
    ("reversible (ALF)", "alf", "reversible"),
    ("adjoint", "rk2", "adjoint"),
]

FULL = dict(widths=(16, 32, 32, 64), steps=2, epochs=15, batch_size=64, lr=0.1, milestones=(10, 13))
QUICK = dict(
    widths=(4, 8, 8, 8),
    steps=2,
    epochs=1,
    batch_size=64,
    lr=0.05,
    milestones=(),
    train_limit=192,
    test_limit=64,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neurode demo",
        description="Train a small ODE-ResNet on digits with direct, checkpoint, reversible "
        "(ALF) and adjoint gradients; print one table and write demo.png.",
    )
    p.add_argument("--out", default="demo-out", help="output directory")
    p.add_argument(
        "--epochs", type=int, default=None, help=f"epochs per method (default {FULL['epochs']})"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"solver steps per ODE block (default {FULL['steps']})",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:<i>")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 1 is fastest for this small network on a few cores",
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny configuration, a few seconds (for tests)"
    )
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated subset of: direct, checkpoint, reversible, adjoint",
    )
    return p


def gradient_error(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, gradient, method
) -> float:
    """‖g − g_direct‖ / ‖g_direct‖ of the parameter gradient of the loss on (x, y).

    Both gradients are taken on copies of ``model`` in training mode (batch
    statistics), so they see exactly the same function.
    """

    def grads(grad_method) -> torch.Tensor:
        m = copy.deepcopy(model).train()
        m.set_solver(gradient=grad_method, method=method)
        m.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()
        return torch.cat([p.grad.reshape(-1) for p in m.parameters() if p.grad is not None])

    ref = grads("direct")
    g = grads(gradient)
    return float((g - ref).norm() / ref.norm())


def run(args: argparse.Namespace) -> int:
    conf = dict(QUICK if args.quick else FULL)
    if args.epochs is not None:
        conf["epochs"] = args.epochs
    if args.steps is not None:
        conf["steps"] = args.steps
    wanted = None
    if args.methods:
        wanted = {m.strip().lower() for m in args.methods.split(",") if m.strip()}
        known = {label.split()[0] for label, _, _ in METHODS}
        if wanted - known:
            print(
                f"neurode demo: unknown method(s) {sorted(wanted - known)}; choose from {sorted(known)}",
                file=sys.stderr,
            )
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)

    base = TrainConfig(
        model="odenet",
        data="digits",
        norm="batch",
        augment="none",
        seed=args.seed,
        device=str(device),
        threads=args.threads,
        quiet=True,
        progress=False,
        plot=False,
        **conf,
    )
    data = load_data(base)
    g = torch.Generator().manual_seed(1234)
    fixed = torch.randperm(data.train_x.shape[0], generator=g)[: min(128, data.train_x.shape[0])]
    xb = data.prepare(data.train_x[fixed], device)
    yb = data.train_y[fixed].to(device)

    print(
        f"neurode demo: ODE-ResNet widths {list(conf['widths'])}, {conf['steps']} steps per block, "
        f"{conf['epochs']} epoch(s) per method, digits {data.train_x.shape[0]} train / "
        f"{data.test_x.shape[0]} test, device {device}"
    )
    rows, curves = [], {}
    t_start = time.perf_counter()
    for label, method, gradient in METHODS:
        key = label.split()[0]
        if wanted is not None and key not in wanted:
            continue
        cfg = TrainConfig(
            **{**base.__dict__, "method": method, "gradient": gradient, "out": str(out / key)}
        )
        t0 = time.perf_counter()
        res = train(cfg, data=data)
        wall = time.perf_counter() - t0
        last = res.records[-1]
        cfg_r = cfg.resolved()
        err = gradient_error(res.model, xb, yb, make_gradient(cfg_r), make_method(method))
        row = dict(
            method=label,
            solver=f"{method} x{conf['steps']}",
            test_acc=last["test_acc"],
            grad_error=err,
            nfe_forward=last["nfe_forward"],
            nfe_backward=last["nfe_backward"],
            step_memory_mb=last["step_memory_mb"],
            epoch_time=sum(r["epoch_time"] for r in res.records) / len(res.records),
            wall_time=wall,
            diverged=res.diverged,
        )
        rows.append(row)
        curves[label] = res.records
        acc = "diverged" if row["test_acc"] is None else f"{100 * row['test_acc']:.2f}%"
        print(f"  {label:<17} test {acc:>8}  ({wall:.1f} s)", flush=True)
    total = time.perf_counter() - t_start

    print()
    print(format_table(rows))
    print(f"\ntotal {total:.0f} s")
    png = out / "demo.png"
    _plot(rows, curves, png)
    (out / "results.json").write_text(
        json.dumps(
            dict(
                config={k: list(v) if isinstance(v, tuple) else v for k, v in conf.items()},
                rows=rows,
                total_time=total,
            ),
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {png} and {out / 'results.json'}")
    return 0


def format_table(rows: list[dict]) -> str:
    head = [
        "method",
        "solver",
        "test acc",
        "grad err vs direct",
        "NFE fwd/bwd",
        "step mem MB",
        "s/epoch",
    ]
    lines = []
    for r in rows:
        acc = "diverged" if r["test_acc"] is None else f"{100 * r['test_acc']:.2f}%"
        mem = "-" if r["step_memory_mb"] is None else f"{r['step_memory_mb']:.1f}"
        lines.append(
            [
                r["method"],
                r["solver"],
                acc,
                "reference" if r["method"] == "direct" else f"{r['grad_error']:.1e}",
                f"{r['nfe_forward']:.0f}/{r['nfe_backward']:.0f}",
                mem,
                f"{r['epoch_time']:.2f}",
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(head), sep, *(fmt(line) for line in lines)])


def _plot(rows, curves, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(15, 3.4))
    for label, recs in curves.items():
        ep = [r["epoch"] for r in recs]
        ax[0].plot(ep, [100 * (r["test_acc"] or 0) for r in recs], marker="o", ms=3, label=label)
        ax[1].plot(ep, [r["train_loss"] for r in recs], marker="o", ms=3, label=label)
    ax[0].set(title="test accuracy (%)", xlabel="epoch")
    ax[1].set(title="training loss", xlabel="epoch", yscale="log")
    ax[0].legend(fontsize=8)
    names = [r["method"] for r in rows]
    ax[2].bar(names, [r["step_memory_mb"] or 0 for r in rows], color="C2")
    ax[2].set(title="peak tensor memory per step (MB)")
    others = [r for r in rows if r["method"] != "direct"]
    ax[3].bar(
        [r["method"] for r in others], [max(r["grad_error"], 1e-16) for r in others], color="C3"
    )
    ax[3].set(title="gradient error vs direct (float32)", yscale="log")
    for a in ax[2:]:
        a.tick_params(axis="x", labelrotation=30, labelsize=8)
    for a in ax:
        a.grid(alpha=0.3)
    save_figure(fig, png)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
