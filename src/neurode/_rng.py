"""Seeded, forked random state: what makes replayed evaluations draw what the originals drew."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def cuda_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


@contextlib.contextmanager
def seeded(seed: int, devices: list[int]) -> Iterator[None]:
    """Run the block with the CPU generator (and those of ``devices``) seeded with
    ``seed``; the caller's generators are restored afterwards."""
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        for d in devices:
            torch.cuda.default_generators[d].manual_seed(seed)
        yield


def draw_seeds(n: int) -> list[int]:
    """``n`` seeds drawn from the current CPU generator (advances it by one draw)."""
    return torch.randint(0, 2**62, (n,), dtype=torch.int64).tolist()
