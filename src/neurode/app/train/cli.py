"""``neurode train``: train a classifier (default), or ``neurode train cnf|latent ...``.

Examples::

    neurode train --model odenet --data digits --method rk2 --steps 2 \\
        --gradient checkpoint --epochs 15 --out runs/digits
    neurode train --data digits --gradient reversible --method alf --epochs 15
    neurode train --data digits --gradient checkpoint --budget 2 --recompute
    neurode train --data cifar10 --data-dir ~/data --epochs 350 --batch-size 256 \\
        --lr 0.1 --weight-decay 5e-4 --milestones 150,250 --device cuda
    neurode train ... --resume            # continue <out>/checkpoint.pt
    torchrun --nproc_per_node=2 -m neurode train --norm group ...

See docs/training.md.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from neurode.errors import CheckpointError

from .classify import CHECKPOINT, DATASETS, GRADIENTS, TrainConfig, train
from .common import is_main_process, keeping_previous_checkpoints, remove_checkpoint_leftovers

SUBCOMMANDS = {
    "cnf": ("neurode.app.train.cnf", "continuous normalising flow on 2-D toy densities"),
    "latent": ("neurode.app.train.latent", "latent ODE on irregularly sampled spirals"),
}


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="neurode train",
        description=(
            "Train an ODE-ResNet / SqueezeNext-ODE classifier. Writes metrics.jsonl, "
            "checkpoint.pt (every epoch, atomically), curves.png and config.json to --out. "
            "Other models: 'neurode train cnf --help', 'neurode train latent --help'."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--model", default=d.model, help="odenet (ODE-ResNet) or sqnxt (SqueezeNext-ODE)"
    )
    g.add_argument(
        "--widths",
        type=_ints,
        default=None,
        help="channels per stage, comma-separated (default: 16,32,32,64 for digits, "
        "16,32,64,128 for CIFAR)",
    )
    g.add_argument(
        "--strides",
        type=_ints,
        default=None,
        help="stride of each stage's downsampling block (default: 1,1,2,2 for digits, "
        "1,2,2,2 for CIFAR; one per width)",
    )
    g.add_argument("--depth", type=_positive_int, default=d.depth, help="ODE blocks per stage")
    g.add_argument(
        "--norm",
        choices=["batch", "group", "none"],
        default=d.norm,
        help="normalisation inside f and the downsampling blocks",
    )
    g.add_argument("--time", action="store_true", help="f sees t as an extra input channel")
    g.add_argument(
        "--sync-bn",
        action="store_true",
        help="with torchrun on CUDA: convert BatchNorm to SyncBatchNorm",
    )

    g = p.add_argument_group("solver and gradient")
    g.add_argument(
        "--method",
        default=d.method,
        help="euler, rk2 (midpoint), heun, rk4, dopri5, ..., alf, alf:<damping>, "
        "reversible:<rk method>",
    )
    g.add_argument(
        "--steps",
        type=int,
        default=d.steps,
        help="fixed steps per ODE block over [0, t1]; 0 = adaptive (--rtol/--atol)",
    )
    g.add_argument("--t1", type=float, default=d.t1, help="integration time of each ODE block")
    g.add_argument("--rtol", type=float, default=d.rtol)
    g.add_argument("--atol", type=float, default=d.atol)
    g.add_argument(
        "--gradient",
        choices=GRADIENTS,
        default=d.gradient,
        help="direct backprop, checkpointing, continuous adjoint, or reversible "
        "(needs --method alf or reversible:<rk>)",
    )
    g.add_argument(
        "--budget",
        type=_positive_int,
        default=None,
        help="checkpoint: keep at most this many states (binomial schedule)",
    )
    g.add_argument(
        "--recompute",
        action="store_true",
        help="ANODE's block scheme: each ODE block keeps only its input and "
        "rebuilds its checkpoints during backward",
    )
    g.add_argument("--adjoint-method", default=None, help="adjoint: solver for the backward solve")
    g.add_argument("--adjoint-rtol", type=float, default=None)
    g.add_argument("--adjoint-atol", type=float, default=None)
    g.add_argument(
        "--seminorm",
        action="store_true",
        help="adjoint: leave parameter channels out of the error norm",
    )

    g = p.add_argument_group("data")
    g.add_argument("--data", choices=DATASETS, default=d.data)
    g.add_argument(
        "--data-dir",
        default=d.data_dir,
        help="directory holding cifar-10-python.tar.gz / cifar-100-python.tar.gz "
        "or their extracted folders (nothing is downloaded)",
    )
    g.add_argument(
        "--augment",
        default=d.augment,
        help="auto (crop,flip for CIFAR, none for digits), none, crop, flip, crop,flip",
    )
    g.add_argument(
        "--crop-padding",
        type=int,
        default=None,
        help="random-crop padding in pixels (default 4 for CIFAR, 1 for digits)",
    )
    g.add_argument(
        "--train-limit",
        type=_positive_int,
        default=None,
        help="use a fixed random subset of this many training images",
    )
    g.add_argument("--test-limit", type=_positive_int, default=None)

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=_positive_int, default=d.epochs)
    g.add_argument(
        "--batch-size",
        type=_positive_int,
        default=d.batch_size,
        help="global batch size (split evenly across torchrun processes)",
    )
    g.add_argument("--eval-batch-size", type=_positive_int, default=d.eval_batch_size)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--nesterov", action="store_true")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument(
        "--milestones",
        type=_ints,
        default=(),
        help="epochs after which the LR is multiplied by --gamma, e.g. 150,250",
    )
    g.add_argument("--gamma", type=float, default=d.gamma)

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:<i>")
    g.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch CPU threads (small models on few cores are often fastest with 1)",
    )
    g.add_argument("--out", default=d.out, help="output directory")
    g.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CHECKPOINT",
        help="continue from CHECKPOINT (a file or a run directory); without a value, "
        "from <out>/checkpoint.pt if it exists",
    )
    g.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar (it is also off when stderr is not a terminal)",
    )
    g.add_argument("--quiet", action="store_true", help="print nothing")
    g.add_argument("--no-plot", dest="plot", action="store_false", help="do not write curves.png")
    g.add_argument(
        "--no-track-memory",
        dest="track_memory",
        action="store_false",
        help="skip measuring the tensor memory of the first step of each epoch",
    )
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def _dispatch(name: str, argv: list[str]) -> int:
    module_name, _ = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            print(
                f"neurode train {name}: not available in this build ({module_name} is missing)",
                file=sys.stderr,
            )
            return 2
        raise
    try:
        return int(module.main(argv) or 0)
    except CheckpointError as e:
        print(f"neurode train {name}: error: {e}", file=sys.stderr)
        return 2


def _tidy_checkpoint(cfg: TrainConfig) -> None:
    """Start-up: remove what a killed save left next to <out>/checkpoint.pt."""
    path = Path(cfg.out) / CHECKPOINT
    fresh = cfg.resume is None or (cfg.resume == "auto" and not path.is_file())
    removed = remove_checkpoint_leftovers(path, fresh=fresh)
    n = sum(p.suffix == ".tmp" for p in removed)
    if n and not cfg.quiet:
        print(f"removed {n} temporary file(s) left by an interrupted checkpoint save")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return _dispatch(argv[0], argv[1:])
    if argv and argv[0] in ("classify", "classifier"):
        argv = argv[1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args).resolved()
        if is_main_process():
            _tidy_checkpoint(cfg)
        with keeping_previous_checkpoints():  # every epoch's save keeps the last good file
            result = train(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"neurode train: error: {e}", file=sys.stderr)
        return 2
    return 0 if not result.diverged else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
