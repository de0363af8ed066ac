"""``neurode train cnf``: a continuous normalising flow on a 2-D toy density.

Trains :class:`neurode.nn.CNF` on one of the toy densities of
:mod:`neurode.app.data.toy`, prints the training and held-out NLL every epoch
(and, where the density is known in closed form, the true NLL of the same
held-out points and the gap), checkpoints atomically every epoch, and writes
PNGs of the learned density and of samples drawn from it.

The held-out NLL is computed with an accurate adaptive solve (``--eval-method``,
``--eval-tol``, default dopri5 at 1e-5), whatever discretisation training
uses, so that it is the log-likelihood of the continuous model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from neurode.nn.cnf import CNF

from ..data import toy
from ..figures import bare, save_figure
from . import loop
from .common import is_main_process, plot_curves

GRADIENTS = loop.GRADIENTS  # the --gradient choices


def build_parser() -> argparse.ArgumentParser:
    p = loop.trainer_parser(
        "neurode train cnf",
        "Train a continuous normalising flow (FFJORD) on a 2-D toy density.",
    )
    p.add_argument("--data", default="8gaussians", help=f"one of {list(toy.NAMES)}")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--n-train", type=int, default=25_600, help="training points (one epoch)")
    p.add_argument("--n-test", type=int, default=10_000, help="held-out points")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr", type=float, default=1e-4, help="end of the cosine schedule")
    p.add_argument("--hidden", default="64,64,64", help="hidden widths of each block's ODENet")
    p.add_argument("--blocks", type=int, default=1, help="stacked CNF blocks")
    p.add_argument("--T", type=float, default=1.0, help="integration time of each block")
    p.add_argument("--activation", default="tanh", choices=["tanh", "softplus", "elu", "silu"])
    loop.add_solver_arguments(p, gradient="direct", steps=8, per="block", rtol=1e-5, atol=1e-5)
    p.add_argument("--trace", default="auto", choices=["auto", "exact", "hutchinson"])
    p.add_argument("--noise", default="rademacher", choices=["rademacher", "gaussian"])
    p.add_argument("--kinetic", type=float, default=0.0, help="RNODE kinetic-energy weight")
    p.add_argument("--jacobian", type=float, default=0.0, help="RNODE Jacobian-Frobenius weight")
    p.add_argument("--eval-method", default="dopri5", help="solver for held-out NLL and plots")
    p.add_argument("--eval-tol", type=float, default=1e-5, help="rtol = atol of the eval solver")
    p.add_argument("--eval-batch", type=int, default=5000)
    p.add_argument(
        "--eval-every", type=int, default=5, help="held-out NLL every N epochs (and at the end)"
    )
    p.add_argument("--grid", type=int, default=120, help="density plot resolution")
    p.add_argument("--n-samples", type=int, default=20_000, help="samples drawn for the plot")
    loop.add_run_arguments(p, "runs/cnf-<data>")
    return p


def build_model(args) -> CNF:
    hidden = tuple(int(h) for h in str(args.hidden).split(",") if h.strip())
    return CNF(
        2,
        hidden=hidden,
        num_blocks=args.blocks,
        T=args.T,
        trace=args.trace,
        noise=args.noise,
        activation=args.activation,
        **loop.solver_settings(args),
        kinetic=args.kinetic,
        jacobian=args.jacobian,
    )


def eval_kw(args) -> dict:
    """Solve settings of evaluation: accurate, adaptive, no gradients needed."""
    return dict(
        method=args.eval_method,
        rtol=args.eval_tol,
        atol=args.eval_tol,
        options={},
        gradient="direct",
    )


@torch.no_grad()
def held_out_nll(model: CNF, x: torch.Tensor, args) -> float:
    total = 0.0
    for chunk in x.split(args.eval_batch):
        total += float(-model.log_prob(chunk, **eval_kw(args)).sum())
    return total / x.shape[0]


@torch.no_grad()
def plot_density(model: CNF, data: torch.Tensor, args, out_dir: Path) -> list[Path]:
    """``density.png`` (data histogram | learned density) and ``samples.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = toy.canonical(args.data)
    lim = toy.BOUNDS[name]
    dev = next(model.parameters()).device
    g = torch.linspace(-lim, lim, args.grid)
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1).to(dev)
    logp = torch.cat([model.log_prob(c, **eval_kw(args)) for c in pts.split(args.eval_batch)])
    dens = logp.exp().reshape(args.grid, args.grid).cpu()
    extent = (-lim, lim, -lim, lim)
    hist_kw = dict(bins=args.grid, range=[[-lim, lim], [-lim, lim]], cmap="magma")

    panels = 3 if toy.has_density(name) else 2
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.3))
    axes[0].hist2d(data[:, 0].numpy(), data[:, 1].numpy(), **hist_kw)
    axes[0].set_title(f"data: {name}")
    if panels == 3:
        true = toy.log_prob(name, pts.cpu().double()).exp().reshape(args.grid, args.grid)
        axes[1].imshow(true.numpy(), origin="lower", extent=extent, cmap="magma")
        axes[1].set_title("true density")
    axes[-1].imshow(dens.numpy(), origin="lower", extent=extent, cmap="magma")
    axes[-1].set_title("learned density")
    density_png = _save_panels(fig, axes, out_dir / "density.png")

    gen = torch.Generator(device=dev).manual_seed(args.seed + 7)
    samples = model.sample(args.n_samples, generator=gen, **eval_kw(args)).cpu()
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.3))
    axes[0].hist2d(data[:, 0].numpy(), data[:, 1].numpy(), **hist_kw)
    axes[0].set_title("data")
    axes[1].hist2d(samples[:, 0].numpy(), samples[:, 1].numpy(), **hist_kw)
    axes[1].set_title("samples (z → x)")
    samples_png = _save_panels(fig, axes, out_dir / "samples.png")
    return [density_png, samples_png]


def _save_panels(fig, axes, path: Path) -> Path:
    """Square panels without ticks, written to ``path`` and closed."""

    for ax in axes:
        bare(ax)
    return save_figure(fig, path, dpi=90, tight_bbox=True)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        name = toy.canonical(args.data)
    except ValueError as e:
        print(f"neurode train cnf: {e}")
        return 2
    data = {}

    def make_data(device):
        # fixed, reproducible train and held-out sets from distinct seeds
        data["train"] = toy.sample(name, args.n_train, seed=args.seed * 2 + 1).to(device)
        data["test"] = toy.sample(name, args.n_test, seed=args.seed * 2 + 2).to(device)
        return args.n_train

    run = loop.start_run(
        args, lambda device: build_model(args).to(device), make_data, f"runs/cnf-{name}"
    )
    x_train, x_test = data["train"], data["test"]
    model, opt, sched = run.model, run.optimizer, run.scheduler
    out_dir, device, logger = run.out_dir, run.device, run.logger
    iters_per_epoch = run.iters_per_epoch
    true_nll = float(-toy.log_prob(name, x_test.cpu()).mean()) if toy.has_density(name) else None

    n_params = sum(q.numel() for q in model.parameters())
    block = model.blocks[0]
    print(
        f"CNF on {name}: {args.blocks} block(s) of {args.hidden} ({n_params} parameters), "
        f"trace={'exact' if block.dynamics.uses_exact_trace(x_train[:1]) else 'hutchinson'}, "
        f"method={block.method} options={block.options} gradient={args.gradient}, "
        f"{iters_per_epoch} iterations/epoch, device {device}"
    )
    if true_nll is not None:
        print(
            f"true NLL of the {args.n_test} held-out points (closed-form density): {true_nll:.4f}"
        )

    training = loop.EpochLoop(run, args)
    for epoch in training.epochs():
        model.train()
        perm = torch.randperm(args.n_train, device=device)
        total, count, nfe_f, nfe_b = 0.0, 0, 0, 0
        for it in training.iterations():
            xb = x_train[perm[it * args.batch_size : (it + 1) * args.batch_size]]
            loss, parts = model.loss(xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for blk in model.blocks:
                nfe_f += blk.last_stats.nfe_forward
                nfe_b += blk.last_stats.nfe_backward
            total += parts["nll"] * xb.shape[0]
            count += xb.shape[0]
            training.bar.set_postfix(nll=f"{parts['nll']:.3f}", refresh=False)
        train_time, elapsed = training.train_seconds, training.elapsed
        rec = {
            "epoch": epoch,
            "train_nll": total / max(count, 1),
            "lr": opt.param_groups[0]["lr"],
            "nfe_forward_per_iter": nfe_f / training.iters,
            "nfe_backward_per_iter": nfe_b / training.iters,
            "train_seconds": train_time,
            "elapsed": elapsed,
        }
        if args.kinetic > 0 or args.jacobian > 0:
            rec["kinetic"], rec["jacobian"] = parts["kinetic"], parts["jacobian"]
        msg = (
            f"epoch {epoch:3d}  train NLL {rec['train_nll']:.4f}  NFE/iter "
            f"{rec['nfe_forward_per_iter']:.0f}+{rec['nfe_backward_per_iter']:.0f}"
        )
        if training.last or (args.eval_every > 0 and epoch % args.eval_every == 0):
            model.eval()
            t1 = time.perf_counter()
            test_nll = held_out_nll(model, x_test, args)
            rec["eval_seconds"] = time.perf_counter() - t1
            rec["test_nll"] = test_nll
            msg += f"  held-out NLL {test_nll:.4f}"
            if true_nll is not None:
                rec["true_nll"] = true_nll
                rec["gap"] = test_nll - true_nll
                msg += f" (true {true_nll:.4f}, gap {test_nll - true_nll:+.4f})"
            msg += f"  [{train_time:.0f} s train, {rec['eval_seconds']:.0f} s eval"
        else:
            msg += f"  [{train_time:.0f} s train"
        logger.log(rec)
        print(f"{msg}, {elapsed / 60:.1f} min trained]", flush=True)
        training.save()
    if not training.report():
        return 0
    last = logger.records[-1]
    if "test_nll" not in last:  # resumed after the last epoch's evaluation was skipped
        last["test_nll"] = held_out_nll(model, x_test, args)
        if true_nll is not None:
            last["true_nll"], last["gap"] = true_nll, last["test_nll"] - true_nll
    summary = {
        "data": name,
        "epochs": last["epoch"],
        "train_minutes": last["elapsed"] / 60,
        "test_nll": last["test_nll"],
        "true_nll": true_nll,
        "gap": last.get("gap"),
        "args": vars(args),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if not args.no_plots and is_main_process():
        plot_curves(logger.records, ["train_nll", "test_nll"], out_dir / "curves.png")
        pngs = plot_density(model, x_train[:50_000].cpu(), args, out_dir)
        print("wrote " + ", ".join(str(p) for p in [*pngs, out_dir / "curves.png"]))
    print(
        f"final held-out NLL {last['test_nll']:.4f}"
        + (f" vs true {true_nll:.4f} (gap {last['gap']:+.4f})" if true_nll is not None else "")
        + f" after {last['elapsed'] / 60:.1f} min of training"
    )
    return 0
