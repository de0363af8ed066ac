"""Smoke tests of the benchmarks: their quick modes run and write the JSON they promise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neurode.app.bench import memory as bmem
from neurode.app.bench import peers
from neurode.app.bench.problems import make_problem

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.slow
def test_overhead_quick(tmp_path):
    out = tmp_path / "overhead.json"
    _run("overhead.py", "--out", str(out))
    data = json.loads(out.read_text())
    assert data["benchmark"] == "overhead" and data["quick"] is True
    assert set(data["peers"]) == set(peers.PEERS)
    libs = {(r["problem"], r["library"]) for r in data["results"]}
    assert {("conv", "neurode"), ("mlp", "neurode")} <= libs
    for r in data["results"]:
        if r["available"]:
            assert r["nfe"] > 0 and r["overhead"] > 0
            assert r["solve"]["best"] > 0 and r["eval"]["best"] > 0
        else:
            assert r["reason"]
    assert all({"target", "value", "met"} <= set(c) for c in data["checks"])


@pytest.mark.slow
def test_memory_quick(tmp_path):
    out = tmp_path / "memory.json"
    _run("memory.py", "--out", str(out))
    data = json.loads(out.read_text())
    assert data["benchmark"] == "memory" and data["quick"] is True
    (sweep,) = data["sweeps"]
    assert sweep["problem"] == "mlp"
    assert set(sweep["runs"]) == {"direct", "checkpoint", "reversible-alf"}
    for results in sweep["runs"].values():
        assert [r["steps"] for r in results] == sorted(r["steps"] for r in results)
        for r in results:
            assert r["status"] == "ok", r
            assert r["peak_mb"] >= 0 and r["nfe"] > 0 and r["time"] > 0
    # the gradient matches float64 backprop through the same steps to float32 round-off
    for results in sweep["runs"].values():
        assert results[0]["grad_rel_error"] < 1e-5
    analysis = data["analysis"]["mlp"]
    assert "checks" in analysis and "time_ratios" in analysis
    assert out.with_suffix(".png").stat().st_size > 1000


def test_problems_are_seeded_and_sized():
    a, b = make_problem("conv", quick=True), make_problem("conv", quick=True)
    assert torch.equal(a.y0, b.y0)
    for p, q in zip(a.func.parameters(), b.func.parameters()):
        assert torch.equal(p, q)
    full = make_problem("mlp")
    assert tuple(full.y0.shape) == (512, 64) and full.state_bytes == 512 * 64 * 4
    assert make_problem("mlp", quick=True).to(torch.float64).y0.dtype == torch.float64


def test_missing_peer_gives_a_reason(monkeypatch):
    monkeypatch.setattr(peers, "_cache", {})

    def fail(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(peers.importlib, "import_module", fail)
    adapter, reason = peers.load_peer("torchdiffeq")
    assert adapter is None and "cannot import torchdiffeq" in reason
    assert peers.peers_status()["torchode"]["available"] is False


def test_sweep_skips_by_predicted_memory():
    assert bmem._predict([(10, 100.0)], 40) == pytest.approx(400.0)
    assert bmem._predict([(10, 100.0), (40, 160.0)], 160) == pytest.approx(400.0)
    runs = {
        "direct": [
            {"steps": n, "status": "ok", "peak_mb": 10.0 * n, "time": 1.0} for n in (10, 40)
        ],
        "checkpoint": [
            {"steps": n, "status": "ok", "peak_mb": 1.0 * n + 5, "time": 1.3} for n in (10, 40)
        ],
    }
    sweep = {"runs": runs, "error_steps": 10}
    a = bmem.analyse(sweep, state_bytes=2**20)
    assert a["direct_mb_per_step"] == pytest.approx(10.0)
    assert a["time_ratios"]["checkpoint"]["ratio"] == pytest.approx(1.3)
    met = {c["target"]: c["met"] for c in a["checks"]}
    assert met["checkpoint peak <= N_t*S + 2L at every N_t"] is True
    assert met["checkpoint time <= 1.4x direct (median over N_t)"] is True


@pytest.mark.slow
def test_outputs_quick(tmp_path):
    out = tmp_path / "outputs.json"
    _run("outputs.py", "--out", str(out), "--plot", str(tmp_path / "outputs.png"))
    data = json.loads(out.read_text())
    assert data["benchmark"] == "outputs" and data["quick"] is True
    assert (tmp_path / "outputs.png").stat().st_size > 0
    ours = [r for r in data["results"] if r["library"] == "neurode" and r["available"]]
    assert ours, "neurode has no rows"
    for r in ours:
        # forward+backward rows count both directions, so they are never below forward
        assert 0 < r["nfe_forward"] <= r["nfe_total"]
        assert r["max_error"] < 1.0  # rtol 1e-3 on an O(1) solution
    assert all({"target", "value", "met"} <= set(c) for c in data["checks"])


@pytest.mark.slow
def test_reversible_rk_quick(tmp_path):
    out = tmp_path / "reversible_rk.json"
    _run("reversible_rk.py", "--out", str(out))
    data = json.loads(out.read_text())
    assert data["benchmark"] == "reversible_rk" and data["quick"] is True
    assert set(data["problems"]) == {"mlp", "conv"}
    for problem in data["problems"].values():
        assert {"fused-revrk4", "direct-revrk4"} <= set(problem["configs"])


@pytest.mark.slow
def test_stiff_quick(tmp_path):
    out = tmp_path / "stiff.json"
    _run("stiff.py", "--out", str(out))
    data = json.loads(out.read_text())
    assert data["benchmark"] == "stiff" and data["quick"] is True
    rows = data["forward"]
    assert rows and all(r["problem"] == "robertson" for r in rows)
    assert {"scipy", "neurode"} <= {r["library"] for r in rows}


@pytest.mark.slow
def test_stagewise_quick(tmp_path):
    out = tmp_path / "stagewise.json"
    _run("stagewise.py", "--out", str(out))
    data = json.loads(out.read_text())
    assert data["benchmark"] == "stagewise" and data["quick"] is True
    for row in data["methods"].values():
        assert row["grad_rel_diff_f64"] < 1e-12  # the same gradient as the plain replay
        for key in ("plain", "per_stage"):
            assert "error" not in row[key], row[key]
            assert row[key]["total_mb"] >= 0 and row[key]["cpu_s"] > 0


@pytest.mark.slow
def test_schedules_quick(tmp_path):
    out = tmp_path / "schedules.json"
    _run("schedules.py", "--out", str(out))
    data = json.loads(out.read_text())
    assert data["benchmark"] == "schedules" and data["quick"] is True
    for row in data["rows"]:
        w = row["worst_ratio"]
        assert w["fixed"] == 1.0 and w["online_small"] == 1.0 and w["online"] <= 1.5


@pytest.mark.slow
def test_compiled_quick(tmp_path):
    out = tmp_path / "compiled.json"
    _run("compiled.py", "--out", str(out))
    data = json.loads(out.read_text())
    assert data["benchmark"] == "compiled" and data["quick"] is True
    for row in data["rows"]:
        assert set(row["speedup"]) == {"eager", "compiled f", "compiled step"}
        assert all(v > 0 for v in row["ms_per_step"].values())
