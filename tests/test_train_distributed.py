"""Multi-process training on CPU (gloo): DDP gradients equal single-process ones.

Two processes are started with the environment torchrun sets (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1, a free MASTER_PORT), so the
library's own ``init_distributed`` is what joins them.

Why the norm matters: DDP averages the per-process gradients of the
per-process mean loss, which equals the gradient of the mean loss over the
global batch only if samples do not interact. BatchNorm (training mode)
normalises with per-process batch statistics, so the two halves of a batch
see different statistics than the whole batch does; GroupNorm and no norm
are per-sample, and then the equality is exact up to summation order. The
test asserts both: agreement for ``group``/``none``, a visible difference for
``batch``.
"""

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from neurode.app.train.classify import TrainConfig, load_data, make_model
from neurode.app.train.common import MetricsLogger, load_checkpoint

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed not available"
)

CFG = dict(widths=(4, 8, 8, 8), steps=1, train_limit=64, test_limit=16)
GLOBAL_BATCH = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, world: int, port: int) -> dict:
    env = dict(os.environ)
    env.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo",
        OMP_NUM_THREADS="1",
    )  # fmt: skip
    return env


WORKER = textwrap.dedent(
    """
    import sys, torch
    import torch.nn.functional as F
    from neurode.app.train.classify import TrainConfig, load_data, make_model
    from neurode.app.train.distributed import init_distributed, wrap_model, cleanup

    out, gradient, method = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    assert ctx.world_size == 2 and ctx.backend == "gloo"
    results = {}
    for norm in ("group", "none", "batch"):
        cfg = TrainConfig(norm=norm, gradient=gradient, method=method, **CFG).resolved()
        data = load_data(cfg)
        x = data.prepare(data.train_x[:GLOBAL_BATCH]); y = data.train_y[:GLOBAL_BATCH]
        torch.manual_seed(0)
        model = make_model(cfg, 10, 1)
        ddp = wrap_model(model, ctx)
        half = GLOBAL_BATCH // 2
        sl = slice(ctx.rank * half, (ctx.rank + 1) * half)
        F.cross_entropy(ddp(x[sl]), y[sl]).backward()
        results[norm] = [p.grad.clone() for p in model.parameters()]
    torch.save(results, f"{out}.{ctx.rank}")
    cleanup(ctx)
    """
)


def _single_process_grads(norm, gradient, method):
    cfg = TrainConfig(norm=norm, gradient=gradient, method=method, **CFG).resolved()
    data = load_data(cfg)
    x = data.prepare(data.train_x[:GLOBAL_BATCH])
    y = data.train_y[:GLOBAL_BATCH]
    torch.manual_seed(0)
    model = make_model(cfg, 10, 1)
    F.cross_entropy(model(x), y).backward()
    return [p.grad for p in model.parameters()]


def _rel(a, b):
    a = torch.cat([g.flatten() for g in a])
    b = torch.cat([g.flatten() for g in b])
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("gradient,method", [("checkpoint", "rk2")])
def test_ddp_gradients_equal_single_process_on_the_same_global_batch(tmp_path, gradient, method):
    script = tmp_path / "worker.py"
    script.write_text(f"CFG = {CFG!r}\nGLOBAL_BATCH = {GLOBAL_BATCH}\n" + WORKER)
    port = _free_port()
    out = tmp_path / "grads"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(out), gradient, method],
            env=_env(r, 2, port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for r in range(2)
    ]  # fmt: skip
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    r0, r1 = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    for norm in ("group", "none", "batch"):  # DDP leaves identical gradients on every rank
        for a, b in zip(r0[norm], r1[norm]):
            assert torch.equal(a, b)
    for norm in ("group", "none"):
        ref = _single_process_grads(norm, gradient, method)
        assert _rel(r0[norm], ref) < 1e-5, norm
        for a, b in zip(r0[norm], ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # per-process batch statistics: BatchNorm's gradients differ from the global-batch ones
    assert _rel(r0["batch"], _single_process_grads("batch", gradient, method)) > 1e-3


@pytest.mark.slow
def test_torchrun_two_processes_matches_single_process_training(tmp_path):
    """`torchrun --nproc_per_node=2 -m neurode train` = single-process training (group norm)."""
    port = _free_port()
    args = [
        "train", "--data", "digits", "--widths", "4,8,8,8", "--norm", "group", "--steps", "1",
        "--train-limit", "64", "--test-limit", "32", "--batch-size", "16",
        "--augment", "none", "--no-progress", "--device", "cpu", "--milestones", "1",
        "--lr", "0.02", "--threads", "1",
    ]  # fmt: skip
    # (a gentle lr: at lr 0.1 this 4-channel net amplifies round-off between steps)
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"

    def torchrun(*extra):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
            "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "neurode",
            *args, "--out", str(ddp_out), *extra,
        ]  # fmt: skip
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

    run = torchrun("--epochs", "2")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("epoch   2/2") == 1  # rank 0 alone prints
    assert "x2 processes" in run.stdout
    assert sorted(os.listdir(ddp_out)) == [
        "checkpoint.prev.pt", "checkpoint.pt", "config.json", "curves.png", "metrics.jsonl",
    ]  # fmt: skip
    single = subprocess.run(
        [sys.executable, "-m", "neurode", *args, "--epochs", "2", "--out", str(single_out)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr
    kd, ks = (
        load_checkpoint(ddp_out / "checkpoint.pt"),
        load_checkpoint(single_out / "checkpoint.pt"),
    )
    assert len(kd["rng_per_rank"]) == 2
    for k in ks["model"]:
        torch.testing.assert_close(kd["model"][k], ks["model"][k], rtol=1e-4, atol=1e-6)
    rd = MetricsLogger.read(ddp_out / "metrics.jsonl")
    rs = MetricsLogger.read(single_out / "metrics.jsonl")
    for a, b in zip(rd, rs):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=1 / 32 + 1e-9)
        assert a["nfe_forward"] == b["nfe_forward"]

    # resume under torchrun continues from the rank-0 checkpoint
    run2 = torchrun("--epochs", "3", "--resume")
    assert run2.returncode == 0, run2.stdout + run2.stderr
    assert "resumed from" in run2.stdout
    assert [r["epoch"] for r in MetricsLogger.read(ddp_out / "metrics.jsonl")] == [1, 2, 3]


def test_sync_bn_on_cpu_is_refused_clearly():
    from neurode.app.train.distributed import DistContext, wrap_model

    model = make_model(TrainConfig(**CFG), 10, 1)
    ctx = DistContext(rank=0, world_size=2, device=torch.device("cpu"), backend="gloo")
    if torch.cuda.is_available():
        pytest.skip("the refusal is for CPU-only runs")
    with pytest.raises(ValueError, match="--sync-bn needs CUDA.*--norm group"):
        wrap_model(model, ctx, sync_bn=True)
    assert wrap_model(model, DistContext(), sync_bn=True) is model  # single process: no-op
