"""`neurode demo --quick`: one table, a PNG and JSON; exact methods agree with direct."""

import json

import pytest
import torch

from neurode.app.cli import main as neurode_main
from neurode.app.demo import format_table


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions run fastest on one thread (and do not fight other processes)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_demo_quick_prints_one_table_and_writes_png(tmp_path, capsys):
    out = tmp_path / "demo"
    assert neurode_main(["demo", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("method"))
    for col in ("test acc", "grad err vs direct", "NFE fwd/bwd", "step mem MB", "s/epoch"):
        assert col in header
    for name in ("direct", "checkpoint", "reversible (ALF)", "adjoint"):
        assert any(line.startswith(name) for line in text.splitlines()), name
    assert (out / "demo.png").read_bytes()[:4] == b"\x89PNG"
    res = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"direct", "checkpoint", "reversible (ALF)", "adjoint"}
    # float32: checkpointing replays the same operations, ALF inverts to round-off
    assert rows["direct"]["grad_error"] == 0.0
    assert rows["checkpoint"]["grad_error"] < 1e-5
    assert rows["reversible (ALF)"]["grad_error"] < 1e-4
    # the adjoint's gradient is that of a different (reverse-time) discretisation
    assert rows["adjoint"]["grad_error"] > 100 * rows["checkpoint"]["grad_error"]
    assert rows["adjoint"]["grad_error"] > 1e-4
    # memory: direct keeps every stage of every step; the others keep less
    assert rows["direct"]["step_memory_mb"] > rows["checkpoint"]["step_memory_mb"]
    assert rows["direct"]["nfe_backward"] == 0 and rows["checkpoint"]["nfe_backward"] > 0
    for key in ("direct", "checkpoint", "reversible", "adjoint"):
        assert (out / key / "metrics.jsonl").exists()


def test_demo_method_subset_and_bad_method(tmp_path, capsys):
    assert neurode_main(["demo", "--quick", "--methods", "direct,adjoint",
                         "--out", str(tmp_path)]) == 0  # fmt: skip
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["direct", "adjoint"]
    capsys.readouterr()
    assert neurode_main(["demo", "--quick", "--methods", "magic", "--out", str(tmp_path)]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_format_table_aligns_columns():
    row = dict(method="checkpoint", solver="rk2 x2", test_acc=0.98611, grad_error=3.5e-8,
               nfe_forward=16, nfe_backward=16, step_memory_mb=10.5, epoch_time=2.18)  # fmt: skip
    lines = format_table([row, {**row, "method": "adjoint", "test_acc": None}]).splitlines()
    assert len({len(line) for line in lines}) == 1
    assert "98.61%" in lines[2] and "3.5e-08" in lines[2] and "diverged" in lines[3]
