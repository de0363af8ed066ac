"""Adjoint vs checkpoint vs reversible gradients on the latent-ODE spirals task.

For each gradient method the same latent ODE (same seed, same data, same
minibatches) is trained for a fixed number of iterations, and the script
reports:

- ``grad err``: relative error of the float32 gradient against float64
  direct backprop through the *same* discretisation (the gradient the method
  is supposed to compute), at initialisation and with the trained weights;
- seconds per iteration, forward/backward evaluations of ``f`` per iteration;
- the final training ELBO and the held-out interpolation / extrapolation MSE
  (posterior mean, against the noise-free curves).

Solvers: adjoint and checkpoint use rk4 and reversible uses ALF (it needs an
invertible step), each one step per grid interval; add ``--reversible-rk4``
for the reversible rk4 wrapper (two rk4 steps per step) as a fourth row.

Usage::

    python benchmarks/latent_gradients.py --iters 300
    python benchmarks/latent_gradients.py --iters 20 --n-train 100   # smoke

Prints a table and writes JSON (default ``benchmarks/results/latent_gradients.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import neurode
from neurode.app.data.spirals import make_spirals
from neurode.nn.latent import LatentODE


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--n-window", type=int, default=100)
    p.add_argument("--n-extrap", type=int, default=50)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--latent-dim", type=int, default=6)
    p.add_argument("--ode-hidden", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--reversible-rk4", action="store_true", help="also run Reversible('rk4')")
    p.add_argument(
        "--out", default=str(Path(__file__).resolve().parent / "results" / "latent_gradients.json")
    )
    return p.parse_args(argv)


def configs(args):
    rows = [
        ("adjoint", "rk4", "rk4"),
        ("checkpoint", "rk4", "rk4"),
        ("reversible", "alf", "alf"),
    ]
    if args.reversible_rk4:
        rows.append(("reversible", neurode.Reversible("rk4"), "reversible(rk4)"))
    return rows


def make_model(args, gradient, method, dtype):
    torch.manual_seed(args.seed)
    return LatentODE(
        2,
        args.latent_dim,
        ode_hidden=args.ode_hidden,
        method=method,
        options=dict(steps=1),
        gradient=gradient,
    ).to(dtype)


def flat_grad(model, data, noise, dtype):
    x, m, t = data.window()
    elbo, _ = model.elbo(x.to(dtype), m.to(dtype), t.to(dtype), noise=noise.to(dtype))
    grads = torch.autograd.grad(-elbo, list(model.parameters()))
    return torch.cat([g.reshape(-1).double() for g in grads])


def gradient_error(args, gradient, method, data, state=None) -> float:
    """Float32 gradient of ``gradient`` vs float64 direct backprop, same solver and grid,
    at initialisation or at the weights ``state``."""
    batch = data[: args.batch_size]
    noise = torch.randn(len(batch), args.latent_dim, generator=torch.Generator().manual_seed(1))
    ref_model = make_model(args, "direct", method, torch.float64)
    model = make_model(args, gradient, method, torch.float32)
    if state is not None:
        ref_model.load_state_dict({k: v.double() for k, v in state.items()})
        model.load_state_dict(state)
    ref = flat_grad(ref_model, batch.to(dtype=torch.float64), noise, torch.float64)
    got = flat_grad(model, batch, noise, torch.float32)
    return float((got - ref).norm() / ref.norm())


@torch.no_grad()
def test_mse(model, data):
    x, m, t = data.window()
    pred = model.predict(x, m, t, data.t)
    err = (pred - data.clean).pow(2).sum(-1)
    w = data.n_window
    return float(err[:, :w].mean()), float(err[:, w:].mean()) if err.shape[1] > w else float("nan")


def train(args, gradient, method, train_set, test_set) -> dict:
    model = make_model(args, gradient, method, torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.iters, eta_min=args.lr / 10)
    gen = torch.Generator().manual_seed(args.seed + 1)
    x_all, m_all, t = train_set.window()
    nfe_f = nfe_b = 0
    elbos = []
    t0 = time.perf_counter()
    for _ in range(args.iters):
        idx = torch.randint(0, len(train_set), (args.batch_size,), generator=gen)
        noise = torch.randn(args.batch_size, args.latent_dim, generator=gen)
        elbo, _ = model.elbo(x_all[idx], m_all[idx], t, noise=noise)
        opt.zero_grad(set_to_none=True)
        (-elbo).backward()
        opt.step()
        sched.step()
        nfe_f += model.last_stats.nfe_forward
        nfe_b += model.last_stats.nfe_backward
        elbos.append(float(elbo.detach()))
    seconds = time.perf_counter() - t0
    interp, extrap = test_mse(model, test_set)
    tail = elbos[-max(1, args.iters // 10) :]
    return {
        "sec_per_iter": seconds / args.iters,
        "nfe_forward_per_iter": nfe_f / args.iters,
        "nfe_backward_per_iter": nfe_b / args.iters,
        "final_elbo": sum(tail) / len(tail),
        "test_interp_mse": interp,
        "test_extrap_mse": extrap,
        "elbo_curve": elbos,
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    data = make_spirals(
        args.n_train + args.n_test, n_window=args.n_window, n_extrap=args.n_extrap, seed=args.seed
    )
    train_set, test_set = data[: args.n_train], data[args.n_train :]
    rows = []
    for gradient, method, label in configs(args):
        print(f"{gradient:>10} / {label}: gradient check ...", flush=True)
        err = gradient_error(args, gradient, method, train_set)
        print(f"{gradient:>10} / {label}: training {args.iters} iterations ...", flush=True)
        res = train(args, gradient, method, train_set, test_set)
        err_trained = gradient_error(args, gradient, method, train_set, res.pop("state"))
        rows.append(
            {
                "gradient": gradient,
                "method": label,
                "grad_rel_err": err,
                "grad_rel_err_trained": err_trained,
                **res,
            }
        )

    header = (
        f"{'gradient':>10} {'solver':>15} {'grad err':>9} {'(trained)':>9} {'s/iter':>7} {'NFE fwd':>8} "
        f"{'NFE bwd':>8} {'ELBO':>9} {'interp MSE':>11} {'extrap MSE':>11}"
    )
    print()
    print(f"latent ODE on spirals: {args.iters} iterations, batch {args.batch_size}, "
          f"{args.n_window}-point window, {args.n_extrap}-point extrapolation")  # fmt: skip
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['gradient']:>10} {r['method']:>15} {r['grad_rel_err']:>9.1e} "
            f"{r['grad_rel_err_trained']:>9.1e} "
            f"{r['sec_per_iter']:>7.3f} {r['nfe_forward_per_iter']:>8.0f} "
            f"{r['nfe_backward_per_iter']:>8.0f} {r['final_elbo']:>9.1f} "
            f"{r['test_interp_mse']:>11.4f} {r['test_extrap_mse']:>11.4f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "args": vars(args),
        "torch": torch.__version__,
        "neurode": neurode.__version__,
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
