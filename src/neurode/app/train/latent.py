"""``neurode train latent``: a latent ODE on irregularly sampled, noisy spirals.

Trains :class:`neurode.nn.LatentODE` by maximising the ELBO on the
observation window of :func:`neurode.app.data.spirals.make_spirals`, prints the
ELBO and the held-out interpolation/extrapolation MSE every epoch,
checkpoints atomically every epoch and writes ``reconstruction.png``
(observed points, truth, posterior-mean reconstruction and extrapolation).

MSE is measured against the noise-free curves: *interpolation* over every grid
point of the observation window (observed or not), *extrapolation* over the
``--n-extrap`` points after it, which the encoder never sees.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from neurode.nn.latent import LatentODE

from ..data.spirals import Spirals, make_spirals
from ..figures import bare, save_figure
from . import loop
from .common import is_main_process, plot_curves

GRADIENTS = loop.GRADIENTS  # the --gradient choices


def build_parser() -> argparse.ArgumentParser:
    p = loop.trainer_parser(
        "neurode train latent", "Train a latent ODE on irregularly sampled spirals."
    )
    p.add_argument("--data", default="spirals", choices=["spirals"])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--n-train", type=int, default=1000, help="training trajectories")
    p.add_argument("--n-test", type=int, default=200, help="held-out trajectories")
    p.add_argument("--n-window", type=int, default=100, help="grid points that may be observed")
    p.add_argument("--n-extrap", type=int, default=100, help="grid points to extrapolate to")
    p.add_argument("--keep", type=float, default=0.5, help="probability a window point is observed")
    p.add_argument("--noise", type=float, default=0.1, help="observation noise std")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--min-lr", type=float, default=1e-3, help="end of the cosine schedule")
    p.add_argument("--latent-dim", type=int, default=6)
    p.add_argument("--encoder", default="gru", choices=["gru", "odernn"])
    p.add_argument("--enc-hidden", type=int, default=25)
    p.add_argument("--ode-hidden", type=int, default=32)
    p.add_argument("--dec-hidden", type=int, default=20)
    p.add_argument("--obs-std", type=float, default=0.3, help="likelihood std")
    p.add_argument("--kl-warmup", type=int, default=0, help="epochs of linear KL annealing")
    loop.add_solver_arguments(
        p, gradient="direct", steps=0, per="grid interval", rtol=1e-3, atol=1e-4
    )
    loop.add_run_arguments(p, "runs/latent-spirals")
    return p


def build_model(args) -> LatentODE:
    return LatentODE(
        2,
        args.latent_dim,
        encoder=args.encoder,
        enc_hidden=args.enc_hidden,
        ode_hidden=args.ode_hidden,
        dec_hidden=args.dec_hidden,
        obs_std=args.obs_std,
        **loop.solver_settings(args),
    )


def make_data(args, device) -> tuple[Spirals, Spirals]:
    data = make_spirals(
        args.n_train + args.n_test,
        n_window=args.n_window,
        n_extrap=args.n_extrap,
        noise_std=args.noise,
        keep=args.keep,
        seed=args.seed,
    ).to(device)
    return data[: args.n_train], data[args.n_train :]


@torch.no_grad()
def evaluate(model: LatentODE, data: Spirals) -> dict:
    """Posterior-mean MSE (vs the noise-free curves) inside the window and beyond it."""
    x, mask, t = data.window()
    pred = model.predict(x, mask, t, data.t)
    w = data.n_window
    err = (pred - data.clean).pow(2).sum(-1)  # (B, T)
    out = {"interp_mse": float(err[:, :w].mean())}
    if data.t.shape[0] > w:
        out["extrap_mse"] = float(err[:, w:].mean())
    return out


@torch.no_grad()
def plot_reconstruction(model: LatentODE, data: Spirals, path: Path, n: int = 4) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # two of each direction when available
    cw = torch.nonzero(data.clockwise).flatten().tolist()
    cc = torch.nonzero(~data.clockwise).flatten().tolist()
    idx = (
        (cw[: n // 2] + cc[: n - n // 2])
        if len(cw) >= n // 2 and len(cc) >= n - n // 2
        else list(range(n))
    )
    sub = data[idx]
    x, mask, t = sub.window()
    pred = model.predict(x, mask, t, sub.t).cpu()
    w = sub.n_window
    fig, axes = plt.subplots(1, len(idx), figsize=(3.1 * len(idx), 3.1))
    for j, ax in enumerate(axes if len(idx) > 1 else [axes]):
        clean = sub.clean[j].cpu()
        obs = sub.mask[j].cpu() > 0
        ax.plot(clean[:, 0], clean[:, 1], color="0.75", lw=3, label="truth")
        ax.scatter(
            sub.x[j, obs, 0].cpu(),
            sub.x[j, obs, 1].cpu(),
            s=6,
            color="k",
            label="observed",
            zorder=3,
        )
        ax.plot(pred[j, :w, 0], pred[j, :w, 1], color="tab:blue", lw=1.5, label="reconstruction")
        ax.plot(
            pred[j, w - 1 :, 0],
            pred[j, w - 1 :, 1],
            color="tab:red",
            lw=1.5,
            ls="--",
            label="extrapolation",
        )
        ax.set_title("clockwise" if bool(sub.clockwise[j]) else "counter-clockwise", fontsize=9)
        bare(ax, adjustable="datalim")
    (axes[0] if len(idx) > 1 else axes).legend(fontsize=7, loc="best")
    return save_figure(fig, path, dpi=90, tight_bbox=True)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    data = {}

    def load(device):
        data["train"], data["test"] = make_data(args, device)
        return len(data["train"])

    run = loop.start_run(
        args, lambda device: build_model(args).to(device), load, "runs/latent-spirals"
    )
    train, test = data["train"], data["test"]
    model, opt, sched = run.model, run.optimizer, run.scheduler
    out_dir, device, logger = run.out_dir, run.device, run.logger

    s = loop.solver_settings(args)
    n_params = sum(q.numel() for q in model.parameters())
    print(
        f"latent ODE on spirals: {len(train)} train / {len(test)} test trajectories, "
        f"{args.n_window} window + {args.n_extrap} extrapolation points, keep={args.keep}, "
        f"noise={args.noise}; encoder={args.encoder}, latent dim {args.latent_dim}, "
        f"{n_params} parameters; method={s['method']} options={s['options']} "
        f"gradient={args.gradient}; device {device}"
    )
    x_all, m_all, t_win = train.window()
    training = loop.EpochLoop(run, args)
    for epoch in training.epochs():
        model.train()
        kl_w = min(1.0, epoch / args.kl_warmup) if args.kl_warmup > 0 else 1.0
        perm = torch.randperm(len(train), device=device)
        sums = {"elbo": 0.0, "log_lik": 0.0, "kl": 0.0, "mse": 0.0}
        count, nfe_f, nfe_b = 0, 0, 0
        for it in training.iterations():
            idx = perm[it * args.batch_size : (it + 1) * args.batch_size]
            elbo, parts = model.elbo(x_all[idx], m_all[idx], t_win, kl_weight=kl_w)
            opt.zero_grad(set_to_none=True)
            (-elbo).backward()
            opt.step()
            sched.step()
            st = model.last_stats
            nfe_f += st.nfe_forward
            nfe_b += st.nfe_backward
            b = len(idx)
            sums["elbo"] += float(elbo.detach()) * b
            for k in ("log_lik", "kl", "mse"):
                sums[k] += parts[k] * b
            count += b
            training.bar.set_postfix(elbo=f"{float(elbo.detach()):.1f}", refresh=False)
        train_time, elapsed = training.train_seconds, training.elapsed
        model.eval()
        ev = evaluate(model, test)
        n_it = training.iters
        rec = {
            "epoch": epoch,
            **{k: v / max(count, 1) for k, v in sums.items()},
            **{f"test_{k}": v for k, v in ev.items()},
            "kl_weight": kl_w,
            "nfe_forward_per_iter": nfe_f / n_it,
            "nfe_backward_per_iter": nfe_b / n_it,
            "train_seconds": train_time,
            "elapsed": elapsed,
        }
        logger.log(rec)
        print(
            f"epoch {epoch:3d}  ELBO {rec['elbo']:9.2f}  log-lik {rec['log_lik']:9.2f}  "
            f"KL {rec['kl']:6.2f}  obs MSE {rec['mse']:.4f}  | test interp MSE "
            f"{ev['interp_mse']:.4f}  extrap MSE {ev.get('extrap_mse', float('nan')):.4f}  "
            f"[{train_time:.0f} s, {elapsed / 60:.1f} min]",
            flush=True,
        )
        training.save()
    if not training.report():
        return 0
    last = logger.records[-1]
    summary = {
        "epochs": last["epoch"],
        "train_minutes": last["elapsed"] / 60,
        "elbo": last["elbo"],
        "test_interp_mse": last["test_interp_mse"],
        "test_extrap_mse": last.get("test_extrap_mse"),
        "args": vars(args),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if not args.no_plots and is_main_process():
        plot_curves(
            logger.records, ["elbo", "test_interp_mse", "test_extrap_mse"], out_dir / "curves.png"
        )
        png = plot_reconstruction(model, test, out_dir / "reconstruction.png")
        print(f"wrote {png}, {out_dir / 'curves.png'}")
    print(
        f"final test MSE: interpolation {last['test_interp_mse']:.4f}, extrapolation "
        f"{last.get('test_extrap_mse', float('nan')):.4f} after {last['elapsed'] / 60:.1f} min"
    )
    return 0
