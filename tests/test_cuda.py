"""Checks that need a GPU: skipped on machines without one; ``make test-gpu`` runs them.

Each mirrors a CPU test on the device: gradient agreement against float64 direct
backprop, per-step RNG forking with dropout, peak memory growth per step, a
one-process DDP step with the nccl backend and a short ``neurode train``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from torch import nn

from neurode import Checkpoint, odeint
from neurode.gradients.registry import GRADIENTS

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
DEV = "cuda"


def _field(dtype, p=0.0):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(p), nn.Linear(16, 4))
    return net.to(DEV, dtype)


def _grads(net, y0, method, options, gradient):
    net.zero_grad()
    y = y0.clone().requires_grad_(True)
    ys = odeint(lambda t, x: net(x), y, torch.tensor([0.0, 0.5, 1.0]), method=method,
                options=options, gradient=gradient)  # fmt: skip
    assert ys.device.type == "cuda"
    ys.pow(2).sum().backward()
    return [y.grad, *(q.grad for q in net.parameters())]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("gname", [g for g in GRADIENTS if GRADIENTS[g]().exact])
def test_exact_gradients_agree_on_device(gname, dtype, tol):
    # reference: float64 direct backprop on the same device; float32 is held to its round-off
    method = "alf" if gname == "reversible" else "rk4"
    y0 = torch.randn(8, 4, generator=torch.Generator().manual_seed(1)).to(DEV, dtype)
    ref = _grads(_field(torch.float64), y0.double(), method, dict(step_size=0.1), "direct")
    got = _grads(_field(dtype), y0, method, dict(step_size=0.1), gname)
    for r, g in zip(ref, got):
        assert g.device.type == "cuda" and g.dtype == dtype
        assert torch.allclose(g.double(), r, rtol=tol, atol=tol)


def test_budget_checkpoint_on_device():
    y0 = torch.randn(8, 4, device=DEV, dtype=torch.float64)
    ref = _grads(_field(torch.float64), y0, "rk4", dict(step_size=0.05), "direct")
    got = _grads(_field(torch.float64), y0, "rk4", dict(step_size=0.05), Checkpoint(budget=3))
    for r, g in zip(ref, got):
        assert torch.allclose(g, r, rtol=1e-10, atol=1e-12)


def test_second_round_features_on_device():
    # per-stage replay and the compiled step equal direct on the device; t-gradients on a
    # fixed grid with t on the CPU and the state on the device
    from neurode.solvers.rk import RungeKutta

    y0 = torch.randn(8, 4, device=DEV, dtype=torch.float64)
    ref = _grads(_field(torch.float64), y0, "dopri5", dict(steps=4), "direct")
    for method, gradient in (("dopri5", Checkpoint(per_stage=True)),
                             (RungeKutta("dopri5", compile=True), "direct")):  # fmt: skip
        got = _grads(_field(torch.float64), y0, method, dict(steps=4), gradient)
        for r, g in zip(ref, got):
            assert torch.allclose(g, r, rtol=1e-10, atol=1e-12)
    net = _field(torch.float64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
    ys = odeint(lambda t, x: net(x) * torch.cos(t), y0, t, method="rk4", options=dict(steps=3))
    (g_t,) = torch.autograd.grad(ys.pow(2).sum(), t)
    assert g_t.device.type == "cpu" and torch.isfinite(g_t).all()
    # adaptive steps following t (dense outputs moving along the interpolant): the
    # exact methods agree with direct on the device, t's gradient lands on the CPU
    got = []
    for gradient in ("direct", "checkpoint", Checkpoint(budget=2)):
        t = torch.tensor([0.0, 0.3, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
        ys = odeint(lambda t, x: net(x) * torch.cos(t), y0, t, gradient=gradient)
        got.append(torch.autograd.grad(ys.pow(2).sum(), t)[0])
    assert all(g.device.type == "cpu" for g in got)
    assert all(torch.allclose(g, got[0], rtol=1e-10, atol=1e-12) for g in got[1:])


@pytest.mark.parametrize("gname", ["checkpoint", "reversible"])
def test_dropout_replay_forks_the_device_rng(gname):
    # dropout in f: a replay must draw the same masks on the device, so the gradient
    # equals direct backprop run under the same per-step seeds
    method = "alf" if gname == "reversible" else "rk4"
    y0 = torch.randn(8, 4, device=DEV, dtype=torch.float64)
    torch.cuda.manual_seed(5)
    state = torch.cuda.get_rng_state()
    got = _grads(_field(torch.float64, p=0.3).train(), y0, method, dict(step_size=0.1), gname)
    assert torch.all(torch.isfinite(got[0]))
    torch.cuda.set_rng_state(state)
    again = _grads(_field(torch.float64, p=0.3).train(), y0, method, dict(step_size=0.1), gname)
    for a, b in zip(got, again):
        assert torch.equal(a, b)


def test_peak_memory_grows_per_step_only_for_direct():
    def peak(gradient, steps):
        net = _field(torch.float32)
        y0 = torch.randn(4096, 4, device=DEV, requires_grad=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ys = odeint(lambda t, x: net(x), y0, [0.0, 1.0], method="alf",
                    options=dict(steps=steps), gradient=gradient)  # fmt: skip
        ys[-1].sum().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    grow_direct = peak("direct", 64) - peak("direct", 16)
    grow_rev = peak("reversible", 64) - peak("reversible", 16)
    state = 4096 * 4 * 4
    assert grow_direct > 48 * state  # at least one state a step
    assert grow_rev < 4 * state  # flat in N_t


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_step_with_nccl(tmp_path):
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))  # fmt: skip
    args = ["--data", "digits", "--widths", "4,8,8,8", "--train-limit", "64", "--test-limit",
            "16", "--batch-size", "16", "--steps", "1", "--no-progress", "--device", "cuda",
            "--epochs", "1", "--out", str(tmp_path / "ddp")]  # fmt: skip
    run = subprocess.run([sys.executable, "-m", "neurode", "train", *args], env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "ddp" / "checkpoint.pt").exists()


def test_short_train_on_device(tmp_path):
    from neurode.app.train import cli as train_cli
    from neurode.app.train.common import MetricsLogger

    out = tmp_path / "run"
    rc = train_cli.main(["--data", "digits", "--widths", "4,8,8,8", "--train-limit", "96",
                         "--test-limit", "48", "--batch-size", "32", "--steps", "1",
                         "--no-progress", "--device", "cuda", "--epochs", "1", "--out",
                         str(out), "--quiet"])  # fmt: skip
    assert rc == 0
    (rec,) = MetricsLogger.read(out / "metrics.jsonl")
    assert rec["train_loss"] == rec["train_loss"]  # finite, not NaN
