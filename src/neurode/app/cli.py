"""The ``neurode`` command.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; this file only dispatches, importing a module when its
subcommand is used so that ``neurode --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "neurode.app.demo",
        "train a small ODE-ResNet on digits with each gradient method and compare them",
    ),
    "train": (
        "neurode.app.train.cli",
        "train a model: classifier (default), 'train cnf', 'train latent'",
    ),
    "solvers": (
        "neurode.app.showcase",
        "solve a test problem with every solver and gradient method: error vs evaluations",
    ),
    "reproduce": (
        "neurode.app.reproduce",
        "measure the papers' findings and the peers side by side, write a report",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neurode",
        description="Neural ODEs with exact, memory-bounded gradients.",
    )
    from neurode import __version__

    parser.add_argument("--version", action="version", version=f"neurode {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("neurode"):
            print(f"neurode {name}: not available in this build ({e})", file=sys.stderr)
            return 2
        raise
    if hasattr(module, "main"):
        return int(module.main(rest) or 0)
    sub = argparse.ArgumentParser(prog=f"neurode {name}", description=help_text)
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
