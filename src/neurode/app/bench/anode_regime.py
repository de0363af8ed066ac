"""Where does the continuous adjoint fail to train an ODE-ResNet? A sweep on digits.

ANODE (Gholami, Keutzer & Biros 2019) reports that training an ODE-ResNet
with the continuous adjoint can fail (CIFAR-10 ResNet-10: adjoint 67.9% vs
ANODE's checkpointing 88.6%) because the reverse-time state of a
ReLU-conv(-norm) block drifts and the adjoint's gradient is not the gradient
of what the forward pass computed. This script looks for that regime at
laptop scale: scikit-learn's 8×8 digits, the library's
:class:`neurode.nn.ODEResNet` (f = conv-norm-ReLU-conv-norm), and a grid over

- integration length ``T`` (the ODE block integrates ``[0, T]``; equivalently
  a time scaling of ``f``),
- fixed steps per block, solver (Euler, RK2 = explicit midpoint),
- normalisation inside ``f`` (none, group, batch),
- weight scaling ``s``: the ODE functions' conv weights are multiplied by
  ``s`` at initialisation (a no-op under batch/group norm, which are scale
  invariant, so ``s > 1`` is only swept with ``norm="none"``).

For each configuration and gradient method (direct, checkpoint, reversible =
ALF with the same number of steps, adjoint) it trains for a fixed budget of
SGD iterations with the same initialisation and batches per seed, and records
the test accuracy, the gradient error against direct backprop through the
same solver, and the reverse-time reconstruction error of the ODE blocks
(what the adjoint relies on; for the reversible rows the ALF inverse), at
initialisation and at the end of training, on a fixed batch.

The sweep runs in three phases so that it fits in ~20 minutes on 2 cores:

1. **screen** — every configuration of the grid, seed 0, at initialisation
   only: the adjoint's gradient error and the reconstruction error (cheap).
2. **probe** — 1 seed, checkpoint vs adjoint, trained: for every
   normalisation / weight scale and every ``T``, the coarsest grids (2 Euler
   steps, 2 RK2 steps), plus 8 steps at ``T = 10`` with batch norm.
3. **confirm** — all four methods × 3 seeds on the configuration with the
   largest probe gap for each normalisation (batch, group, none), the next
   largest overall, and two ``T = 1`` baselines (the digits trainer's default).

    python benchmarks/anode_regime.py            # full sweep (~20 min), results/anode_regime.json
    python benchmarks/anode_regime.py --quick    # seconds: tiny grid and budget (CI / tests)

``summary`` in the JSON holds the rows ``neurode reproduce`` reports under
``"anode_regime"``: one per (configuration, gradient) of the confirm phase.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from neurode import reconstruction_error
from neurode.gradients.base import frozen_buffers
from neurode.nn.models import ODEResNet

from ..data.digits import load_digits
from ..figures import save_figure

#: where ``benchmarks/anode_regime.py`` writes the full sweep, in a source checkout
CACHE = Path(__file__).resolve().parents[4] / "benchmarks" / "results" / "anode_regime.json"
RESULTS = CACHE.parent
DOCS_IMG = CACHE.parents[2] / "docs" / "img"
GRADIENTS = ("direct", "checkpoint", "reversible", "adjoint")
SOLVER_NAMES = {"euler": "euler", "rk2": "midpoint"}
ROW_KEYS = (
    "T", "steps", "method", "norm", "gradient", "seeds",
    "acc_mean", "acc_std", "grad_err", "recon_err",
)  # fmt: skip


@dataclass(frozen=True)
class Config:
    T: float
    steps: int
    method: str  # "euler" or "rk2"
    norm: str  # "none", "group", "batch"
    scale: float = 1.0

    @property
    def label(self) -> str:
        s = f" s{self.scale:g}" if self.scale != 1.0 else ""
        return f"T{self.T:g} {self.method}x{self.steps} {self.norm}{s}"


@dataclass
class Budget:
    widths: tuple[int, ...] = (16, 32)
    strides: tuple[int, ...] = (1, 2)
    iters: int = 150
    batch: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    clip: float | None = 1.0  # gradient-norm clipping (the same for every method)
    diag_batch: int = 128
    train_limit: int | None = None
    test_limit: int | None = None


# -- model, data -----------------------------------------------------------
def load(b: Budget):
    data = load_digits()
    if b.train_limit or b.test_limit:
        data = data.subset(b.train_limit, b.test_limit)
    return data


def build(cfg: Config, gradient: str, seed: int, b: Budget) -> ODEResNet:
    """The ODE-ResNet of ``cfg`` with ``gradient``; reversible uses ALF with the same steps."""
    torch.manual_seed(seed)
    method = "alf" if gradient == "reversible" else SOLVER_NAMES[cfg.method]
    model = ODEResNet(
        num_classes=10, in_channels=1, widths=b.widths, strides=b.strides, norm=cfg.norm,
        method=method, steps=cfg.steps, t1=cfg.T, gradient=gradient,
    )  # fmt: skip
    if cfg.scale != 1.0:
        with torch.no_grad():
            for blk in model.ode_blocks():
                for m in blk.func.modules():
                    if isinstance(m, torch.nn.Conv2d):
                        m.weight.mul_(cfg.scale)
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def gradient_error(model: ODEResNet, gradient: str, x, y) -> float:
    """‖g − g_direct‖/‖g_direct‖ of the loss's parameter gradient, same solver, batch statistics."""
    if gradient == "direct":
        return 0.0

    def grads(g: str) -> torch.Tensor:
        m = copy.deepcopy(model).train()
        m.set_solver(gradient=g)
        m.zero_grad(set_to_none=True)
        with frozen_buffers([m]):
            F.cross_entropy(m(x), y).backward()
        return torch.cat([
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
            for p in m.parameters()
        ])  # fmt: skip

    try:
        ref, g = grads("direct"), grads(gradient)
    except Exception:  # noqa: BLE001 - a non-finite solve is an infinite error
        return math.inf
    err = _rel(g, ref)
    return err if math.isfinite(err) else math.inf


@torch.no_grad()
def reconstruction(model: ODEResNet, gradient: str, x) -> float:
    """Largest reverse-time reconstruction error over the ODE blocks, on ``x``.

    Backward integration (what the adjoint does) for Euler/RK2 models; the
    algebraic inverse (what ``gradient="reversible"`` does) for ALF models.
    """
    inputs: list[torch.Tensor] = []
    hooks = [
        b.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for b in model.ode_blocks()
    ]
    was = model.training
    model.train()
    try:
        with frozen_buffers([model]):
            model(x)
            errs = []
            for blk, xin in zip(model.ode_blocks(), inputs):
                r = reconstruction_error(
                    blk.func, xin, [blk.t0, blk.t1], method=blk.method, options=blk.options
                )
                e = r.inverse if gradient == "reversible" else r.backward_integration
                errs.append(e if e is not None and math.isfinite(e) else math.inf)
    except Exception:  # noqa: BLE001
        errs = [math.inf]
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return max(errs)


@torch.no_grad()
def accuracy(model: ODEResNet, data) -> float:
    """Test accuracy (%), the whole test split as one batch with batch statistics.

    One BatchNorm inside ``f`` sees a different distribution at every stage of
    every step; its running averages match none of them once ``T`` is large
    (T = 10: 10% in eval mode at 0.01 training loss), so BatchNorm models are
    evaluated with the test batch's own statistics (buffers left untouched).
    Group norm and no norm are unaffected by the mode.
    """
    model.train()
    x = data.prepare(data.test_x)
    try:
        with frozen_buffers([model]):
            logits = torch.nan_to_num(model(x), nan=0.0, posinf=0.0, neginf=0.0)
    except Exception:  # noqa: BLE001
        return 100.0 / data.num_classes
    return 100.0 * float((logits.argmax(1) == data.test_y).float().mean())


def diag_batch(data, b: Budget):
    g = torch.Generator().manual_seed(1234)
    idx = torch.randperm(data.train_x.shape[0], generator=g)[: b.diag_batch]
    return data.prepare(data.train_x[idx]), data.train_y[idx]


# -- one run ---------------------------------------------------------------
def train_one(cfg: Config, gradient: str, seed: int, b: Budget, data, diag) -> dict:
    """Train for ``b.iters`` SGD steps; diagnostics at init and at the end."""
    t0 = time.perf_counter()
    model = build(cfg, gradient, seed, b)
    xd, yd = diag
    grad0, rec0 = gradient_error(model, gradient, xd, yd), reconstruction(model, gradient, xd)
    opt = torch.optim.SGD(
        model.parameters(), lr=b.lr, momentum=b.momentum, weight_decay=b.weight_decay
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(0.7 * b.iters), int(0.9 * b.iters)])
    gen = torch.Generator().manual_seed(10_000 + seed)
    n = data.train_x.shape[0]
    order = torch.randperm(n, generator=gen)
    pos, diverged, losses = 0, False, []
    model.train()
    for _ in range(b.iters):
        if pos + b.batch > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + b.batch]
        pos += b.batch
        x, y = data.prepare(data.train_x[idx]), data.train_y[idx]
        opt.zero_grad(set_to_none=True)
        try:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
        except Exception:  # noqa: BLE001 - NonFiniteStateError and friends
            diverged = True
            break
        if not math.isfinite(float(loss.detach())):
            diverged = True
            break
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), b.clip or math.inf)
        if not math.isfinite(float(gn)):
            diverged = True
            break
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    acc = accuracy(model, data)
    grad1 = gradient_error(model, gradient, xd, yd) if not diverged else math.inf
    rec1 = reconstruction(model, gradient, xd) if not diverged else math.inf
    return dict(
        config=asdict(cfg), gradient=gradient, seed=seed, acc=acc, diverged=diverged,
        train_loss=statistics.fmean(losses[-10:]) if losses else math.inf,
        grad_err_init=grad0, grad_err=grad1, recon_err_init=rec0, recon_err=rec1,
        seconds=time.perf_counter() - t0,
    )  # fmt: skip


def init_screen(cfg: Config, b: Budget, diag, seed: int = 0) -> dict:
    t0 = time.perf_counter()
    model = build(cfg, "adjoint", seed, b)
    xd, yd = diag
    return dict(
        config=asdict(cfg),
        grad_err_init=gradient_error(model, "adjoint", xd, yd),
        recon_err_init=reconstruction(model, "adjoint", xd),
        seconds=time.perf_counter() - t0,
    )


# -- the sweep ---------------------------------------------------------------
@dataclass
class Plan:
    """The grid and the budget of each phase."""

    Ts: tuple[float, ...] = (1.0, 3.0, 10.0)
    steps: tuple[int, ...] = (2, 4, 8)
    methods: tuple[str, ...] = ("euler", "rk2")
    groups: tuple[tuple[str, float], ...] = (
        ("batch", 1.0), ("group", 1.0), ("none", 1.0), ("none", 2.0), ("none", 4.0),
    )  # fmt: skip
    probe_pairs: tuple[tuple[str, int], ...] = (("euler", 2), ("rk2", 2))
    # does refining the grid rescue the adjoint at the longest T?
    probe_extra: tuple[Config, ...] = (
        Config(10.0, 8, "euler", "batch"),
        Config(10.0, 8, "rk2", "batch"),
    )
    confirm_top: int = 4
    baselines: tuple[Config, ...] = (
        Config(1.0, 2, "rk2", "batch"),
        Config(1.0, 2, "euler", "batch"),
    )
    seeds: tuple[int, ...] = (0, 1, 2)
    budget: Budget = None  # type: ignore[assignment]

    def grid(self) -> list[Config]:
        return [
            Config(T, n, m, norm, s)
            for (norm, s), T, m, n in itertools.product(
                self.groups, self.Ts, self.methods, self.steps
            )
        ]

    def probe_set(self) -> list[Config]:
        return [
            Config(T, n, m, norm, s)
            for (norm, s), T, (m, n) in itertools.product(self.groups, self.Ts, self.probe_pairs)
        ] + [c for c in self.probe_extra]


FULL = Plan(budget=Budget())
QUICK = Plan(
    Ts=(1.0, 10.0), steps=(2,), methods=("euler",), groups=(("batch", 1.0), ("none", 1.0)),
    probe_pairs=(("euler", 2),), probe_extra=(), confirm_top=1, baselines=(), seeds=(0,),
    budget=Budget(widths=(4, 8), iters=8, batch=32, diag_batch=32, train_limit=128, test_limit=64),
)  # fmt: skip


def report_rows(summary: list[dict]) -> list[dict]:
    """The rows ``neurode reproduce`` puts under ``"anode_regime"`` in report.json.

    ``T, steps, method, norm, gradient, seeds, acc_mean, acc_std, grad_err,
    recon_err`` (accuracy in percent; errors at the end of training, ``None``
    if non-finite), plus ``scale`` (the weight scaling, part of the
    configuration) and the errors at initialisation.
    """
    keep = (*ROW_KEYS, "scale", "grad_err_init", "recon_err_init")
    return [_clean({k: r[k] for k in keep}) for r in summary]


def _finite(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _clean(obj):
    """JSON-safe: non-finite floats become null."""
    if isinstance(obj, float):
        return _finite(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _mean(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return math.inf if any(not math.isfinite(v) for v in vals) else statistics.fmean(vals)


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (configuration, gradient): accuracy mean ± sample std over seeds, errors."""
    rows, keys = [], []
    for r in runs:
        k = (tuple(sorted(r["config"].items())), r["gradient"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        rs = [r for r in runs if (tuple(sorted(r["config"].items())), r["gradient"]) == k]
        c = rs[0]["config"]
        accs = [r["acc"] for r in rs]
        rows.append(dict(
            T=float(c["T"]), steps=int(c["steps"]),
            method="alf" if k[1] == "reversible" else c["method"],
            norm=c["norm"], gradient=k[1], seeds=len(rs),
            acc_mean=statistics.fmean(accs),
            acc_std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
            grad_err=_mean([r["grad_err"] for r in rs]),
            recon_err=_mean([r["recon_err"] for r in rs]),
            scale=float(c["scale"]), config=Config(**c).label,
            acc_min=min(accs), acc_max=max(accs),
            grad_err_init=_mean([r["grad_err_init"] for r in rs]),
            recon_err_init=_mean([r["recon_err_init"] for r in rs]),
            diverged=sum(bool(r["diverged"]) for r in rs),
        ))  # fmt: skip
    return rows


def verdicts(rows: list[dict]) -> list[dict]:
    """Per configuration: checkpoint − adjoint gap, spreads, agreement of the exact methods."""
    out = []
    for label in dict.fromkeys(r["config"] for r in rows):
        by = {r["gradient"]: r for r in rows if r["config"] == label}
        if "checkpoint" not in by or "adjoint" not in by:
            continue
        ck, ad = by["checkpoint"], by["adjoint"]
        exact = [by[g] for g in ("direct", "checkpoint", "reversible") if g in by]
        spread = max(r["acc_mean"] for r in exact) - min(r["acc_mean"] for r in exact)
        sep_std = ck["acc_mean"] - ck["acc_std"] > ad["acc_mean"] + ad["acc_std"]
        sep_range = ck["acc_min"] > ad["acc_max"]
        # "agree": the exact methods' means lie within 2 points or within their seed spread
        tol = max(2.0, max(r["acc_std"] for r in exact) * 2)
        agree = spread <= tol
        out.append(dict(
            config=label, gap=ck["acc_mean"] - ad["acc_mean"], seeds=min(ck["seeds"], ad["seeds"]),
            separated_std=sep_std, separated_range=sep_range, exact_spread=spread,
            exact_agree=agree,
            target=bool(ck["acc_mean"] - ad["acc_mean"] >= 10 and sep_std and agree
                        and min(ck["seeds"], ad["seeds"]) >= 3 and len(exact) == 3),
            adjoint_recon_init=ad["recon_err_init"], adjoint_recon_end=ad["recon_err"],
            adjoint_grad_init=ad["grad_err_init"], adjoint_grad_end=ad["grad_err"],
        ))  # fmt: skip
    return out


def _fmt(v, spec=".2g"):
    return "  inf" if v is None or not math.isfinite(v) else format(v, spec)


def table(rows: list[dict]) -> str:
    head = (f"{'configuration':<24} {'gradient':<10} {'seeds':>5} {'test acc % mean ± sd':>21} "
            f"{'min–max':>13} {'grad err init→end':>18} {'recon err init→end':>19}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['config']:<24} {r['gradient']:<10} {r['seeds']:>5} "
            f"{r['acc_mean']:>13.2f} ± {r['acc_std']:<5.2f} {r['acc_min']:>6.1f}–{r['acc_max']:<6.1f} "
            f"{_fmt(r['grad_err_init']):>8} → {_fmt(r['grad_err']):<8} "
            f"{_fmt(r['recon_err_init']):>8} → {_fmt(r['recon_err']):<8}"
        )
    return "\n".join(lines)


def sweep(plan: Plan, log=print) -> dict:
    b = plan.budget
    data = load(b)
    diag = diag_batch(data, b)
    t_all = time.perf_counter()

    log(f"phase 1: screen {len(plan.grid())} configurations at initialisation (seed 0)")
    screen = [init_screen(c, b, diag) for c in plan.grid()]
    t1 = time.perf_counter() - t_all

    probe_cfgs = plan.probe_set()
    log(
        f"phase 2: probe {len(probe_cfgs)} configurations, checkpoint vs adjoint, seed {plan.seeds[0]}"
    )
    probe = []
    for c in probe_cfgs:
        for g in ("checkpoint", "adjoint"):
            r = train_one(c, g, plan.seeds[0], b, data, diag)
            probe.append(r)
        ck, ad = probe[-2]["acc"], probe[-1]["acc"]
        log(
            f"  {c.label:<24} checkpoint {ck:6.2f}  adjoint {ad:6.2f}  gap {ck - ad:+6.2f}  "
            f"adjoint grad err {_fmt(probe[-1]['grad_err_init'])} recon {_fmt(probe[-1]['recon_err_init'])}  "
            f"({probe[-2]['seconds'] + probe[-1]['seconds']:.0f} s)"
        )
    t2 = time.perf_counter() - t_all - t1

    # rank by gap; a failure only counts if checkpoint itself trained (>= 90%)
    gaps = []
    for i in range(0, len(probe), 2):
        ck, ad = probe[i], probe[i + 1]
        gaps.append(
            (ck["acc"] - ad["acc"] if ck["acc"] >= 90.0 else -math.inf, Config(**ck["config"]))
        )
    ranked = [c for gap, c in sorted(gaps, key=lambda t: -t[0])]
    # the largest gap of each normalisation first (ANODE used batch norm), then the next largest
    chosen = list(dict.fromkeys(
        [next(c for c in ranked if c.norm == n) for n in dict.fromkeys(c.norm for c in ranked)]
    ))[: plan.confirm_top]  # fmt: skip
    chosen += [c for c in ranked if c not in chosen][: max(0, plan.confirm_top - len(chosen))]
    chosen += [c for c in plan.baselines if c not in chosen]
    log(
        f"phase 3: confirm {len(chosen)} configurations x {len(GRADIENTS)} gradients x seeds {list(plan.seeds)}"
    )
    confirm = []
    for c in chosen:
        for g in GRADIENTS:
            for s in plan.seeds:
                confirm.append(train_one(c, g, s, b, data, diag))
        rs = confirm[-len(GRADIENTS) * len(plan.seeds) :]
        accs = {g: statistics.fmean(r["acc"] for r in rs if r["gradient"] == g) for g in GRADIENTS}
        log(
            f"  {c.label:<24} "
            + "  ".join(f"{g} {a:6.2f}" for g, a in accs.items())
            + f"  ({sum(r['seconds'] for r in rs):.0f} s)"
        )
    t3 = time.perf_counter() - t_all - t1 - t2

    rows = summarise(confirm)
    return dict(
        config=dict(budget=asdict(b), Ts=list(plan.Ts), steps=list(plan.steps),
                    methods=list(plan.methods), groups=[list(g) for g in plan.groups],
                    seeds=list(plan.seeds), model="ODEResNet", data="digits (8x8, 1437/360)"),
        screen=screen, probe=probe, runs=confirm, summary=rows, verdicts=verdicts(rows),
        seconds=dict(screen=t1, probe=t2, confirm=t3, total=time.perf_counter() - t_all),
    )  # fmt: skip


def plot(result: dict, png: Path) -> None:
    """Accuracy gap (checkpoint − adjoint) against the adjoint's reconstruction error at init."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    pr = result["probe"]
    colors = {"batch": "C0", "group": "C1", "none": "C2"}
    for i in range(0, len(pr), 2):
        ck, ad = pr[i], pr[i + 1]
        rec = ad["recon_err_init"]
        rec = 1e6 if rec is None or not math.isfinite(rec) else max(rec, 1e-8)
        c = ck["config"]
        ax[0].scatter(rec, ck["acc"] - ad["acc"], color=colors[c["norm"]], alpha=0.45,
                      marker="o" if c["scale"] == 1 else "^", s=22)  # fmt: skip
    for v in result["verdicts"]:
        rec = v["adjoint_recon_init"]
        rec = 1e6 if rec is None or not math.isfinite(rec) else max(rec, 1e-8)
        rows = {r["gradient"]: r for r in result["summary"] if r["config"] == v["config"]}
        err = math.hypot(rows["checkpoint"]["acc_std"], rows["adjoint"]["acc_std"])
        norm = rows["adjoint"]["norm"]
        ax[0].errorbar(
            rec, v["gap"], yerr=err, fmt="s", color=colors[norm], ms=7, mec="k", capsize=3
        )
        ax[0].annotate(
            v["config"], (rec, v["gap"]), fontsize=7, xytext=(4, 3), textcoords="offset points"
        )
    ax[0].set_xscale("log")
    ax[0].axhline(10, color="k", ls=":", lw=1)
    ax[0].set(xlabel="adjoint's reverse-time reconstruction error at init (max over blocks)",
              ylabel="test acc: checkpoint − adjoint (points)",
              title="gap vs reconstruction error (dots: 1 seed; squares: 3 seeds ± sd)")  # fmt: skip
    for n, c in colors.items():
        ax[0].scatter([], [], color=c, label=n)
    ax[0].legend(fontsize=8, title="norm (▲: scaled weights)", title_fontsize=8)
    rows = result["summary"]
    labels = list(dict.fromkeys(r["config"] for r in rows))
    width = 0.2
    for j, g in enumerate(GRADIENTS):
        rs = [
            next((r for r in rows if r["config"] == lab and r["gradient"] == g), None)
            for lab in labels
        ]
        ax[1].bar([i + (j - 1.5) * width for i in range(len(labels))],
                  [r["acc_mean"] if r else 0 for r in rs], width,
                  yerr=[r["acc_std"] if r else 0 for r in rs], label=g, capsize=2)  # fmt: skip
    ax[1].set_xticks(range(len(labels)), labels, rotation=25, ha="right", fontsize=7)
    ax[1].set(ylabel="test accuracy (%)", title="confirmed configurations (mean ± sd over seeds)")
    ax[1].legend(fontsize=8, loc="upper center", ncol=4, bbox_to_anchor=(0.5, 1.0))
    ax[1].set_ylim(0, 112)
    for a in ax:
        a.grid(alpha=0.3)
    save_figure(fig, png)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny grid and budget (seconds)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path")
    ap.add_argument("--png", type=Path, default=None, help="figure path")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--replot", action="store_true", help="redraw the figure from --out, run nothing"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else FULL
    out = args.out or RESULTS / ("anode_regime-quick.json" if args.quick else "anode_regime.json")
    png = args.png or (out.with_suffix(".png") if args.quick else DOCS_IMG / "anode_regime.png")
    if args.replot:
        plot(json.loads(out.read_text()), png)
        print(f"wrote {png}")
        return 0
    res = sweep(plan, log=lambda m: print(m, flush=True))
    print()
    print(table(res["summary"]))
    print()
    for v in res["verdicts"]:
        print(
            f"{v['config']:<24} gap {v['gap']:+6.2f}  sd-separated {v['separated_std']}  "
            f"range-separated {v['separated_range']}  exact spread {v['exact_spread']:.2f}  "
            f"target {'MET' if v['target'] else 'no'}"
        )
    print(f"\ntotal {res['seconds']['total']:.0f} s")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_clean(res), indent=1) + "\n")
    plot(_clean(res), png)
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
