"""The epoch loop ``neurode train cnf`` and ``neurode train latent`` share.

:func:`start_run` makes the output folder, device, seed, Adam + cosine schedule
and resumes from ``OUT/checkpoint.pt`` (``--resume``); :class:`EpochLoop`
walks the epochs with a progress bar, the ``--time-limit`` (checked before each
epoch and after each iteration) and an atomic checkpoint after every epoch.
What an iteration computes and what an epoch records stay with the trainer::

    run = start_run(args, model_fn, n_train, out_default)
    loop = EpochLoop(run, args)
    for epoch in loop.epochs():
        for it in loop.iterations():
            ...                      # one optimiser step; loop.bar.set_postfix(...)
        run.logger.log(record)       # loop.train_seconds, loop.elapsed, loop.iters
        loop.save()
    loop.report()
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from neurode.gradients.registry import gradient_names

from .common import (
    MetricsLogger,
    is_main_process,
    resolve_device,
    resume_training_state,
    save_training_state,
    set_seed,
)

#: the gradient methods every trainer offers (the registry's names)
GRADIENTS = tuple(gradient_names())


def trainer_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser of one ``neurode train <model>`` subcommand (defaults shown in ``--help``)."""
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )


def add_solver_arguments(
    p: argparse.ArgumentParser, *, gradient: str, steps: int, per: str, rtol: float, atol: float
) -> None:
    """``--gradient``, ``--method``, ``--steps`` (fixed steps per ``per``: a block, a grid
    interval), ``--rtol``, ``--atol``, with these defaults; read by :func:`solver_settings`."""
    p.add_argument("--gradient", default=gradient, choices=GRADIENTS)
    p.add_argument(
        "--method",
        default=None,
        help="solver (default: rk4 with --steps > 0, dopri5 with --steps 0, alf with "
        "--gradient reversible)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=steps,
        help=f"fixed steps per {per} (0: adaptive steps, outputs read from the dense output)",
    )
    p.add_argument("--rtol", type=float, default=rtol, help="adaptive tolerances")
    p.add_argument("--atol", type=float, default=atol)


def solver_settings(args: argparse.Namespace) -> dict:
    """The model's solve configuration from :func:`add_solver_arguments`' options:
    fixed steps when ``--steps`` > 0, otherwise adaptive; ALF for the reversible
    gradient unless ``--method`` names another solver."""
    fixed = bool(args.steps and args.steps > 0)
    method = args.method or (
        "alf" if args.gradient == "reversible" else ("rk4" if fixed else "dopri5")
    )
    options = {"steps": args.steps} if fixed else {}
    return dict(
        method=method, rtol=args.rtol, atol=args.atol, options=options, gradient=args.gradient
    )


def add_run_arguments(p: argparse.ArgumentParser, out_default: str) -> None:
    """The options every trainer takes: time limit, output, resume, seed, device, threads."""
    p.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        help="stop training after this many minutes (0: none)",
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--out", default=None, help=f"output directory (default {out_default})")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)"
    )
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")


@dataclass
class Run:
    """What :func:`start_run` set up: where it writes, the model and its optimiser."""

    out_dir: Path
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    iters_per_epoch: int
    start_epoch: int
    elapsed: float
    logger: MetricsLogger

    @property
    def checkpoint(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    @property
    def state(self) -> dict:
        """What a checkpoint saves and a resume restores besides the counters."""
        return dict(model=self.model, optimizer=self.optimizer, scheduler=self.scheduler)


def start_run(
    args: argparse.Namespace,
    build_model: Callable[[torch.device], torch.nn.Module],
    n_train: Callable[[torch.device], int],
    out_default: str,
) -> Run:
    """Output folder, device, threads and seed, then the model (``build_model(device)``,
    after ``n_train(device)`` has made the data), Adam with a cosine schedule over all
    iterations, and the resumed state (``args.resume``)."""
    out_dir = Path(args.out or out_default)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)
    n = n_train(device)
    model = build_model(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    iters_per_epoch = math.ceil(n / args.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=max(1, args.epochs * iters_per_epoch), eta_min=args.min_lr
    )
    run = Run(out_dir, device, model, opt, sched, iters_per_epoch, 1, 0.0, None)
    run.start_epoch, run.elapsed, run.logger = resume_training_state(
        run.checkpoint, out_dir / "metrics.jsonl", **run.state, device=device, resume=args.resume
    )
    return run


class EpochLoop:
    """Epochs ``run.start_epoch .. args.epochs`` within ``args.time_limit`` minutes."""

    def __init__(self, run: Run, args: argparse.Namespace):
        self.run, self.args = run, args
        self.limit = args.time_limit * 60 if args.time_limit > 0 else math.inf
        self.elapsed = run.elapsed
        self.stopped = False
        self.epoch = run.start_epoch - 1
        self.iters = 0
        self.train_seconds = 0.0
        self.bar = None

    def epochs(self) -> Iterator[int]:
        """Each epoch to train; stops at the time limit (after saving the cut-short one)."""
        for epoch in range(self.run.start_epoch, self.args.epochs + 1):
            self.epoch = epoch
            if self.elapsed >= self.limit:
                self.stopped = True
                return
            yield epoch
            if self.stopped:
                return

    def iterations(self) -> Iterator[int]:
        """The epoch's iterations under a progress bar; times the epoch into
        ``train_seconds`` and ``elapsed``, and ends it early at the time limit."""
        from tqdm import tqdm

        t0 = time.perf_counter()
        self.iters = 0
        self.bar = tqdm(
            range(self.run.iters_per_epoch),
            desc=f"epoch {self.epoch}/{self.args.epochs}",
            leave=False,
            disable=self.args.no_progress or not is_main_process(),
        )
        try:
            for it in self.bar:
                yield it
                self.iters = it + 1
                if self.elapsed + time.perf_counter() - t0 >= self.limit:
                    self.stopped = True
                    break
        finally:
            self.bar.close()
        self.train_seconds = time.perf_counter() - t0
        self.elapsed += self.train_seconds

    @property
    def last(self) -> bool:
        """Whether the epoch just trained is the last one."""
        return self.stopped or self.epoch == self.args.epochs or self.elapsed >= self.limit

    def save(self) -> None:
        """The atomic checkpoint after an epoch (everything an exact resume needs)."""
        run = self.run
        save_training_state(
            run.checkpoint,
            **run.state,
            epoch=self.epoch,
            elapsed=self.elapsed,
            logger=run.logger,
            args=self.args,
        )

    def report(self) -> bool:
        """Say that the time limit ended training; whether anything was trained at all."""
        if self.stopped:
            print(f"time limit of {self.args.time_limit:g} min reached after epoch {self.epoch}")
        if not self.run.logger.records:
            print("nothing trained (already at the last epoch?)")
            return False
        return True
