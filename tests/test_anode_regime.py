"""The anode_regime sweep (where the adjoint fails to train) and its section in `neurode reproduce`.

The quick sweep runs in a few seconds; the full sweep's cached JSON, if the
checkout has one, is checked for the same row format.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from neurode.app import reproduce
from neurode.app.bench import anode_regime as ar
from neurode.nn.models import NORMS

REQUIRED = {
    "T": float, "steps": int, "method": str, "norm": str, "gradient": str, "seeds": int,
    "acc_mean": float, "acc_std": float, "grad_err": (float, type(None)),
    "recon_err": (float, type(None)),
}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny kernels on a shared 2-core machine: more threads only contend (34 s vs 3 s)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def quick(one_thread):
    return ar._clean(ar.sweep(ar.QUICK, log=lambda m: None))


def check_rows(rows):
    assert rows and isinstance(rows, list)
    for r in rows:
        assert set(REQUIRED) <= set(r), r
        for k, t in REQUIRED.items():
            assert isinstance(r[k], t), (k, r[k])
        assert 0.0 <= r["acc_mean"] <= 100.0 and r["acc_std"] >= 0.0
        assert r["seeds"] >= 1 and r["steps"] >= 1 and r["T"] > 0
        assert r["method"] in ("euler", "rk2", "alf") and r["norm"] in NORMS
        assert r["gradient"] in ar.GRADIENTS
        assert (r["method"] == "alf") == (r["gradient"] == "reversible")
        for k in ("grad_err", "recon_err"):
            assert r[k] is None or (math.isfinite(r[k]) and r[k] >= 0)
    json.dumps(rows, allow_nan=False)  # strict JSON: non-finite values are null


def test_quick_sweep_rows_are_well_formed(quick):
    rows = ar.report_rows(quick["summary"])
    check_rows(rows)
    assert {r["gradient"] for r in rows} == set(ar.GRADIENTS)
    # accuracy is in percent, not a fraction: the quick model beats a fraction's scale
    assert max(r["acc_mean"] for r in rows) > 1.0
    by = {r["gradient"]: r for r in rows}
    assert by["direct"]["grad_err"] == 0.0
    assert by["checkpoint"]["grad_err"] < 1e-5  # same operations as direct
    assert by["adjoint"]["grad_err"] > 1e-3  # optimise-then-discretise on 2 Euler steps
    assert quick["verdicts"] and {"gap", "target", "separated_std"} <= set(quick["verdicts"][0])


def test_checkpoint_and_direct_train_identically(quick):
    runs = {r["gradient"]: r for r in quick["runs"]}
    assert runs["checkpoint"]["acc"] == runs["direct"]["acc"]


def test_reproduce_section_quick_runs_and_plots(tmp_path):
    rows, meta = reproduce.section_anode_regime(True, tmp_path)
    check_rows(rows)
    assert meta["source"].startswith("run now")
    assert (tmp_path / "anode_regime.png").stat().st_size > 1000
    md = "\n".join(reproduce._anode_regime_markdown(rows, meta))
    assert "## 7. Where the adjoint fails" in md and "(anode_regime.png)" in md


def test_reproduce_section_reads_a_cache_without_running(tmp_path, quick, monkeypatch):
    cache = tmp_path / "cached.json"
    cache.write_text(json.dumps(quick))
    monkeypatch.setattr(ar, "sweep", lambda *a, **k: pytest.fail("the cache should be read"))
    rows, meta = reproduce.section_anode_regime(False, tmp_path, str(cache))
    assert meta["source"] == f"cached: {cache}"
    assert rows == ar.report_rows(quick["summary"])


def test_reproduce_report_json_has_the_rows(tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    reproduce.add_arguments(parser)
    skip = ["reconstruction", "gradients", "memory", "training", "peers"]
    args = parser.parse_args(["--quick", "--out", str(tmp_path), "--skip", *skip])
    assert reproduce.run(args) == 0
    data = json.loads((tmp_path / "report.json").read_text())
    check_rows(data["anode_regime"])
    assert "## 7. Where the adjoint fails" in (tmp_path / "report.md").read_text()
    # --render redraws from report.json alone
    (tmp_path / "anode_regime.png").unlink()
    assert reproduce.run(parser.parse_args(["--out", str(tmp_path), "--render"])) == 0
    assert (tmp_path / "anode_regime.png").exists()


def test_the_full_sweeps_cache_is_well_formed():
    if not ar.CACHE.exists():
        pytest.skip("no cached full sweep in this checkout")
    res = json.loads(ar.CACHE.read_text())
    rows = ar.report_rows(res["summary"])
    check_rows(rows)
    assert min(r["seeds"] for r in rows) >= 3
    assert len(res["screen"]) == len(ar.FULL.grid())
