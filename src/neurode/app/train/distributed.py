"""Multi-process training with DistributedDataParallel.

``torchrun --nproc_per_node=N -m neurode train ...`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them and joins the process group — ``gloo``
on CPU, ``nccl`` on CUDA (each process takes ``cuda:LOCAL_RANK``). Without
those variables (or with ``WORLD_SIZE=1``) everything here is a no-op, so
the training loop has one code path.

DDP averages gradients over processes. With a per-process mean loss over
equal-sized shards of one global batch, the averaged gradient equals the
gradient of the mean loss over the global batch — exactly so when the model
has no cross-sample coupling. BatchNorm couples samples through its batch
statistics, which DDP computes per process; use ``--norm group``/``none``
(or, on CUDA, ``--sync-bn``, which converts BatchNorm to SyncBatchNorm) when per-process
and single-process runs must agree.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .common import resolve_device

__all__ = [
    "DistContext",
    "init_distributed",
    "wrap_model",
    "unwrap",
    "all_reduce_sum",
    "all_gather_objects",
    "barrier",
    "cleanup",
]


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistContext:
    """Join the process group if launched by ``torchrun`` (``WORLD_SIZE > 1``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=resolve_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    base = resolve_device(device)
    if base.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank, world, local_rank, dev, backend)


def wrap_model(model: nn.Module, ctx: DistContext, sync_bn: bool = False) -> nn.Module:
    """DistributedDataParallel around ``model`` when running multi-process."""
    if not ctx.enabled:
        return model
    if sync_bn:
        if ctx.device.type != "cuda":
            raise ValueError(
                "--sync-bn needs CUDA (torch's SyncBatchNorm runs on GPUs only); on CPU use "
                "--norm group or --norm none for batch-independent normalisation"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Sum a few numbers over processes (float64)."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def all_gather_objects(obj, ctx: DistContext) -> list:
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def cleanup(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
