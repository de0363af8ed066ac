"""Training image classifiers (ODE-ResNet, SqueezeNext-ODE) — the loop behind ``neurode train``.

One epoch: shuffle with a :class:`~torch.utils.data.distributed.DistributedSampler`
(seeded by ``seed`` and the epoch, so the order does not depend on RNG
state), augment and normalise each batch with torch ops, SGD step; then
evaluate on the test split, log one metrics record, and write an atomic
checkpoint holding everything needed to continue bit-for-bit: model,
optimizer, LR scheduler, epoch, the RNG states of every process, and the
metrics so far.

Metrics per epoch (console, ``metrics.jsonl``, ``curves.png``):

``epoch``, ``lr``, ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``
(fractions), ``nfe_forward`` / ``nfe_backward`` (evaluations of ``f`` per
training batch, summed over ODE blocks; backward includes recomputation),
``step_memory_mb`` (peak tensor memory of the epoch's first training step,
see :class:`~neurode.app.train.common.TensorMemoryTracker`; single-process only),
``peak_memory_mb`` (CUDA: max allocated in the epoch; CPU: the process's peak
RSS), ``epoch_time`` / ``eval_time`` (seconds). ``epoch_time``,
``eval_time`` and ``peak_memory_mb`` are measurements of the machine
(:data:`VOLATILE_KEYS`); every other value is reproduced exactly by a resumed run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from neurode.errors import NonFiniteStateError, UnknownMethodError
from neurode.gradients import Adjoint, Checkpoint, ReversibleGradient
from neurode.gradients.registry import gradient_names
from neurode.nn.models import MODELS, NORMS, build_model
from neurode.solvers.registry import is_reversible, resolve_solver

from .common import (
    MetricsLogger,
    TensorMemoryTracker,
    atomic_save,
    capture_rng_state,
    load_checkpoint,
    peak_memory_mb,
    plot_curves,
    reset_peak_memory,
    restore_rng_state,
    set_seed,
)
from .distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    cleanup,
    init_distributed,
    unwrap,
    wrap_model,
)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "load_data",
    "make_model",
    "make_gradient",
    "make_method",
    "evaluate",
    "DATASETS",
    "GRADIENTS",
    "VOLATILE_KEYS",
]

DATASETS = ("digits", "cifar10", "cifar100")
GRADIENTS = tuple(gradient_names())
#: metric fields that measure the machine, not the computation
VOLATILE_KEYS = frozenset({"epoch_time", "eval_time", "peak_memory_mb"})
#: config fields a resumed run must share with its checkpoint
_STRUCTURAL = (
    "model",
    "data",
    "widths",
    "strides",
    "depth",
    "norm",
    "time",
    "train_limit",
    "test_limit",
)
_DATA_DEFAULTS = {
    "digits": dict(widths=(16, 32, 32, 64), strides=(1, 1, 2, 2), crop_padding=1, augment="none"),
    "cifar10": dict(
        widths=(16, 32, 64, 128), strides=(1, 2, 2, 2), crop_padding=4, augment="crop,flip"
    ),
    "cifar100": dict(
        widths=(16, 32, 64, 128), strides=(1, 2, 2, 2), crop_padding=4, augment="crop,flip"
    ),
}
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
CURVES = "curves.png"


@dataclass
class TrainConfig:
    """Everything a classifier run depends on (the CLI's arguments)."""

    model: str = "odenet"
    data: str = "digits"
    data_dir: str = "data"
    widths: tuple[int, ...] | None = None  # None: the dataset's default
    strides: tuple[int, ...] | None = None  # None: the dataset's default
    depth: int = 1
    norm: str = "batch"
    time: bool = False
    method: str = "rk2"
    steps: int = 2  # 0: adaptive (rtol/atol)
    t1: float = 1.0
    rtol: float = 1e-3
    atol: float = 1e-4
    gradient: str = "checkpoint"
    budget: int | None = None
    recompute: bool = False
    adjoint_method: str | None = None
    adjoint_rtol: float | None = None
    adjoint_atol: float | None = None
    seminorm: bool = False
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 512
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    augment: str = "auto"
    crop_padding: int | None = None  # None: the dataset's default
    train_limit: int | None = None
    test_limit: int | None = None
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # torch CPU threads (None: torch's default)
    out: str = "runs/train"
    resume: str | None = None  # "auto": <out>/checkpoint.pt if it exists
    progress: bool = True
    quiet: bool = False
    sync_bn: bool = False
    track_memory: bool = True
    plot: bool = True

    def resolved(self) -> TrainConfig:
        """A copy with dataset-dependent defaults filled in, validated."""
        if self.data not in DATASETS:
            raise ValueError(f"unknown data {self.data!r}; choose one of {list(DATASETS)}")
        if self.model.lower() not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {sorted(MODELS)}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {list(NORMS)}")
        if self.gradient not in GRADIENTS:
            raise ValueError(f"unknown gradient {self.gradient!r}; choose one of {list(GRADIENTS)}")
        if self.budget is not None and self.gradient != "checkpoint":
            raise ValueError("--budget only applies to --gradient checkpoint")
        if self.gradient == "reversible" and not _is_reversible_method(self.method):
            raise ValueError(
                f"--gradient reversible needs a reversible solver: --method alf or "
                f"--method reversible:<rk method> (e.g. reversible:rk4), not {self.method!r}"
            )
        if self.gradient != "adjoint" and (
            self.adjoint_method or self.adjoint_rtol or self.adjoint_atol or self.seminorm
        ):
            raise ValueError("--adjoint-* and --seminorm only apply to --gradient adjoint")
        if self.threads is not None and self.threads < 1:
            raise ValueError("--threads must be >= 1")
        for name in ("epochs", "batch_size", "eval_batch_size", "depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.steps < 0:
            raise ValueError("--steps must be >= 0 (0 = adaptive stepping)")
        d = _DATA_DEFAULTS[self.data]
        widths = tuple(int(w) for w in (self.widths or d["widths"]))
        if self.strides:
            strides = tuple(int(v) for v in self.strides)
        elif len(widths) == len(d["strides"]):
            strides = d["strides"]
        else:
            strides = (1,) + (2,) * (len(widths) - 1)
        if len(strides) != len(widths):
            raise ValueError(
                f"--strides {list(strides)} and --widths {list(widths)} differ in length"
            )
        crop = d["crop_padding"] if self.crop_padding is None else int(self.crop_padding)
        augment = d["augment"] if self.augment == "auto" else self.augment
        return dataclasses.replace(
            self,
            widths=widths,
            strides=strides,
            crop_padding=crop,
            augment=augment,
            milestones=tuple(int(m) for m in self.milestones),
        )


@dataclass
class TrainResult:
    records: list[dict]
    model: nn.Module
    out_dir: Path | None
    config: TrainConfig
    diverged: bool = False
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------
# building blocks (also used by the demo and the tests)


def _is_reversible_method(method: str) -> bool:
    try:
        return is_reversible(method)
    except UnknownMethodError:
        return False


def make_method(method: str):
    """Any name the solver registry knows: ``"alf"``, ``"alf:<damping>"``,
    ``"reversible:<rk>"``, ``"rk4"``, ..."""
    return resolve_solver(method)


def make_gradient(cfg: TrainConfig):
    if cfg.gradient == "checkpoint":
        return Checkpoint(budget=cfg.budget)
    if cfg.gradient == "adjoint":
        return Adjoint(
            method=make_method(cfg.adjoint_method) if cfg.adjoint_method else None,
            rtol=cfg.adjoint_rtol,
            atol=cfg.adjoint_atol,
            seminorm=cfg.seminorm,
        )
    if cfg.gradient == "reversible":
        return ReversibleGradient()
    return "direct"


def load_data(cfg: TrainConfig):
    """The dataset named by ``cfg.data`` (optionally subsampled)."""
    if cfg.data == "digits":
        from ..data.digits import load_digits

        data = load_digits()
    else:
        from ..data.cifar import load_cifar

        data = load_cifar(cfg.data_dir, cfg.data)
    if cfg.train_limit or cfg.test_limit:
        data = data.subset(cfg.train_limit, cfg.test_limit, seed=0)
    return data


def make_model(cfg: TrainConfig, num_classes: int, in_channels: int) -> nn.Module:
    cfg = cfg.resolved()
    return build_model(
        cfg.model,
        num_classes,
        in_channels,
        widths=cfg.widths,
        strides=cfg.strides,
        depth=cfg.depth,
        norm=cfg.norm,
        time=cfg.time,
        method=make_method(cfg.method),
        steps=cfg.steps or None,
        t1=cfg.t1,
        rtol=cfg.rtol,
        atol=cfg.atol,
        gradient=make_gradient(cfg),
        recompute=cfg.recompute,
    )


def batches(indices: list[int], batch_size: int) -> list[list[int]]:
    """Consecutive batches; a trailing batch of one sample is dropped (BatchNorm
    cannot normalise a single sample at 1×1 resolution)."""
    out = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    if len(out) > 1 and len(out[-1]) < 2:
        out.pop()
    return out


@torch.no_grad()
def evaluate(model: nn.Module, data, device, batch_size: int = 512, ctx: DistContext | None = None):
    """(mean loss, accuracy) on the test split; each process takes every
    ``world_size``-th image and the sums are reduced."""
    ctx = ctx or DistContext(device=torch.device(device))
    model = unwrap(model)
    was_training = model.training
    model.eval()
    idx = torch.arange(ctx.rank, data.test_x.shape[0], ctx.world_size)
    loss_sum, correct = 0.0, 0.0
    try:
        for chunk in idx.split(batch_size):
            x = data.prepare(data.test_x[chunk], device)
            y = data.test_y[chunk].to(device)
            out = model(x)
            loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
            correct += float((out.argmax(1) == y).sum())
        failed = 0.0
    except NonFiniteStateError:
        failed = 1.0
    loss_sum, correct, failed = all_reduce_sum([loss_sum, correct, failed], ctx)
    model.train(was_training)
    n = data.test_x.shape[0]
    if failed:
        return float("nan"), None
    return loss_sum / n, correct / n


def _nfe(model: nn.Module) -> tuple[int, int]:
    m = unwrap(model)
    return (m.nfe_forward, m.nfe_backward) if hasattr(m, "nfe_forward") else (0, 0)


# ---------------------------------------------------------------------------
# the loop


def train(
    cfg: TrainConfig, *, data=None, print_fn: Callable[[str], None] | None = None
) -> TrainResult:
    """Train a classifier as configured; returns the records and the (unwrapped) model.

    Under ``torchrun`` (``WORLD_SIZE > 1``) joins the process group, wraps the
    model in DDP and splits each global batch of ``cfg.batch_size`` images
    evenly across processes; only rank 0 prints and writes files.
    """
    cfg = cfg.resolved()
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, ctx, data, print_fn or print)
    finally:
        if owns_group:
            cleanup(ctx)


def _train(cfg: TrainConfig, ctx: DistContext, data, print_fn) -> TrainResult:
    from ..data.augment import parse_augment

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    main = ctx.is_main
    say = print_fn if (main and not cfg.quiet) else (lambda *_: None)
    device = ctx.device
    if cfg.batch_size % ctx.world_size:
        raise ValueError(
            f"--batch-size {cfg.batch_size} (global) must be divisible by the number of "
            f"processes {ctx.world_size}"
        )
    local_bs = cfg.batch_size // ctx.world_size
    out_dir = Path(cfg.out)

    data = data if data is not None else load_data(cfg)
    augment = parse_augment(cfg.augment, cfg.crop_padding)

    set_seed(cfg.seed)
    model = make_model(cfg, data.num_classes, data.in_channels).to(device)
    if ctx.enabled:  # different augmentation draws per process, same initial weights
        set_seed(cfg.seed + 1_000_003 * ctx.rank)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), gamma=cfg.gamma)

    records: list[dict] = []
    start_epoch = 1
    ckpt_path = _resume_path(cfg, out_dir)
    if cfg.resume == "auto" and ckpt_path is None:
        say(f"--resume: no checkpoint in {out_dir} yet; starting from epoch 1")
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path, map_location="cpu")
        _check_compatible(ckpt.get("config", {}), cfg, say)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        records = list(ckpt["records"])
        start_epoch = int(ckpt["epoch"]) + 1
        per_rank = ckpt.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == ctx.world_size:
            restore_rng_state(per_rank[ctx.rank])
        else:
            if ctx.world_size > 1 or (per_rank is not None and len(per_rank) != 1):
                say("note: process count changed since the checkpoint; random streams differ")
            restore_rng_state(ckpt["rng"])
        say(f"resumed from {ckpt_path} at epoch {start_epoch - 1}")
        if any(r.get("diverged") for r in records):
            say("the checkpointed run diverged; not continuing")
            start_epoch = cfg.epochs + 1

    model = wrap_model(model, ctx, sync_bn=cfg.sync_bn)
    logger = MetricsLogger(out_dir / METRICS if main else None, records)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        logger.rewrite()  # the file matches the checkpoint even after a crash
        cfg_json = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "resume"}
        (out_dir / "config.json").write_text(json.dumps(cfg_json, indent=2) + "\n")

    n_params = sum(p.numel() for p in model.parameters())
    say(
        f"{cfg.model} on {data.name} ({data.train_x.shape[0]} train / {data.test_x.shape[0]} test, "
        f"{n_params:,} parameters) | {cfg.method} x{cfg.steps or 'adaptive'} | gradient "
        f"{cfg.gradient}{f' budget={cfg.budget}' if cfg.budget else ''}"
        f"{' +recompute' if cfg.recompute else ''} | device {device}"
        f"{f' x{ctx.world_size} processes' if ctx.enabled else ''} | augment {augment}"
    )
    if start_epoch > cfg.epochs and not records:
        say("nothing to do")

    sampler = DistributedSampler(
        range(data.train_x.shape[0]),
        num_replicas=ctx.world_size,
        rank=ctx.rank,
        shuffle=True,
        seed=cfg.seed,
        drop_last=False,
    )
    show_bar = cfg.progress and main and not cfg.quiet and sys.stderr.isatty()
    diverged = any(r.get("diverged") for r in records)

    for epoch in range(start_epoch, cfg.epochs + 1):
        record = _run_epoch(
            epoch, cfg, ctx, model, opt, data, augment, sampler, local_bs, device, show_bar
        )
        sched.step()
        diverged = bool(record.get("diverged"))
        logger.log(record)
        rng_all = all_gather_objects(capture_rng_state(), ctx)
        if main:
            state = {
                "format": "neurode-classifier-checkpoint/1",
                "epoch": epoch,
                "model": unwrap(model).state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": rng_all[0],
                "rng_per_rank": rng_all,
                "records": logger.records,
                "config": dataclasses.asdict(cfg),
                "world_size": ctx.world_size,
            }
            atomic_save(state, out_dir / CHECKPOINT)
            if cfg.plot:
                _plot(logger.records, out_dir / CURVES, cfg)
        barrier(ctx)
        say(_format_record(record, cfg.epochs))
        if diverged:
            say("training diverged (non-finite loss or state); stopping")
            break

    if main and records == [] and logger.records and cfg.plot:
        _plot(logger.records, out_dir / CURVES, cfg)
    if main and logger.records:
        say(f"wrote {out_dir / METRICS}, {out_dir / CHECKPOINT}, {out_dir / CURVES}")
    return TrainResult(logger.records, unwrap(model), out_dir, cfg, diverged)


def _run_epoch(epoch, cfg, ctx, model, opt, data, augment, sampler, local_bs, device, show_bar):
    from tqdm import tqdm

    sampler.set_epoch(epoch)
    idx_batches = batches(list(iter(sampler)), local_bs)
    model.train()
    unwrap(model).reset_nfe() if hasattr(unwrap(model), "reset_nfe") else None
    reset_peak_memory(device)
    lr = opt.param_groups[0]["lr"]
    loss_sum = correct = seen = nonfinite = 0.0
    step_mem = None
    t0 = time.perf_counter()
    bar = tqdm(
        idx_batches,
        desc=f"epoch {epoch}/{cfg.epochs}",
        disable=not show_bar,
        leave=False,
        dynamic_ncols=True,
    )
    n_batches = 0
    for i, idx in enumerate(bar):
        x = data.prepare(data.train_x[idx], device, augment if augment.active else None)
        y = data.train_y[idx].to(device)
        track = cfg.track_memory and i == 0 and not ctx.enabled
        tracker = TensorMemoryTracker() if track else None
        try:
            if tracker is not None:
                with tracker:
                    loss, out = _step(model, opt, x, y)
                step_mem = tracker.peak_mb
            else:
                loss, out = _step(model, opt, x, y)
        except NonFiniteStateError:
            nonfinite += 1
            break
        lv = float(loss)
        if not math.isfinite(lv):
            nonfinite += 1
        n = len(idx)
        loss_sum += lv * n
        correct += float((out.argmax(1) == y).sum())
        seen += n
        n_batches += 1
        if show_bar:
            bar.set_postfix(loss=f"{lv:.3f}")
    bar.close()
    nfe_f, nfe_b = _nfe(model)
    loss_sum, correct, seen, nonfinite = all_reduce_sum([loss_sum, correct, seen, nonfinite], ctx)
    epoch_time = time.perf_counter() - t0
    t1 = time.perf_counter()
    test_loss, test_acc = evaluate(model, data, device, cfg.eval_batch_size, ctx)
    eval_time = time.perf_counter() - t1
    record = {
        "epoch": epoch,
        "lr": lr,
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "test_loss": test_loss,
        "test_acc": test_acc,
        "nfe_forward": nfe_f / max(n_batches, 1),
        "nfe_backward": nfe_b / max(n_batches, 1),
        "step_memory_mb": step_mem,
        "peak_memory_mb": peak_memory_mb(device),
        "epoch_time": epoch_time,
        "eval_time": eval_time,
    }
    if nonfinite or not math.isfinite(record["train_loss"]) or test_acc is None:
        record["diverged"] = True
    return record


def _step(model, opt, x, y):
    out = model(x)
    loss = F.cross_entropy(out, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), out.detach()


def _resume_path(cfg: TrainConfig, out_dir: Path) -> Path | None:
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        p = out_dir / CHECKPOINT
        return p if p.is_file() else None
    p = Path(cfg.resume)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {p}")
    return p


def _check_compatible(saved: dict, cfg: TrainConfig, say) -> None:
    now = dataclasses.asdict(cfg)
    bad = []
    for k in _STRUCTURAL:
        a, b = saved.get(k), now.get(k)
        if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
            a, b = list(a or []), list(b or [])
        if a != b:
            bad.append(f"{k}: checkpoint {a!r}, now {b!r}")
    if bad:
        raise ValueError(
            "--resume: the checkpoint was trained with a different setup: " + "; ".join(bad)
        )
    changed = [
        k
        for k in now
        if k not in _STRUCTURAL
        and k not in ("resume", "epochs", "out", "progress", "quiet", "device", "plot", "threads")
        and k in saved
        and (list(saved[k]) if isinstance(saved[k], (list, tuple)) else saved[k])
        != (list(now[k]) if isinstance(now[k], (list, tuple)) else now[k])
    ]
    if changed:
        say(
            f"note: resuming with changed setting(s) {changed}; the run will differ from an uninterrupted one"
        )


def _format_record(r: dict, epochs: int) -> str:
    acc = "diverged" if r["test_acc"] is None else f"{100 * r['test_acc']:.2f}%"
    mem = f"{r['step_memory_mb']:.1f} MB/step" if r.get("step_memory_mb") is not None else ""
    return (
        f"epoch {r['epoch']:>3}/{epochs}  lr {r['lr']:.3g}  loss {r['train_loss']:.4f}  "
        f"train {100 * r['train_acc']:.2f}%  test {acc}  "
        f"nfe {r['nfe_forward']:.0f}/{r['nfe_backward']:.0f}  "
        f"{mem}  peak {r['peak_memory_mb']:.0f} MB  {r['epoch_time']:.1f}s"
    )


def _plot(records, path, cfg):
    plot_curves(
        records,
        ["train_loss", "test_acc", "nfe_backward", "epoch_time"],
        path,
        title=f"{cfg.model} on {cfg.data}, {cfg.method} x{cfg.steps}, {cfg.gradient}",
    )
