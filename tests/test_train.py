"""The training command: helpers, outputs, bitwise-exact resume, every gradient option."""

import json
import os
import pickle
import random
import sys
import types

import numpy as np
import pytest
import torch

from neurode.app.train import classify
from neurode.app.train import cli as train_cli
from neurode.app.train.classify import VOLATILE_KEYS, TrainConfig
from neurode.app.train.common import (
    MetricsLogger,
    TensorMemoryTracker,
    atomic_save,
    capture_rng_state,
    is_main_process,
    load_checkpoint,
    peak_memory_mb,
    plot_curves,
    resolve_device,
    restore_rng_state,
    set_seed,
)

TINY = [
    "--data", "digits", "--widths", "4,8,8,8", "--train-limit", "96", "--test-limit", "48",
    "--batch-size", "32", "--steps", "1", "--no-progress", "--device", "cpu", "--threads", "1",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions run fastest on one thread (and do not fight other processes)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- common helpers ---------------------------------------------------------


def test_atomic_save_replaces_and_leaves_nothing_behind(tmp_path):
    p = tmp_path / "sub" / "ckpt.pt"
    atomic_save({"v": 1}, p)
    atomic_save({"v": 2}, p)
    assert load_checkpoint(p)["v"] == 2
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        atomic_save({"v": lambda: 3}, p)  # unpicklable: the old file must survive
    assert load_checkpoint(p)["v"] == 2
    assert os.listdir(p.parent) == ["ckpt.pt"]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")


def test_rng_state_roundtrip_through_a_checkpoint(tmp_path):
    set_seed(5)
    atomic_save({"rng": capture_rng_state()}, tmp_path / "r.pt")
    first = (random.random(), float(np.random.rand()), torch.rand(3))
    set_seed(123)  # move every generator elsewhere
    restore_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    again = (random.random(), float(np.random.rand()), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_metrics_logger_appends_json_lines(tmp_path):
    log = MetricsLogger(tmp_path / "m.jsonl")
    log.log({"epoch": 1, "loss": torch.tensor(0.5), "acc": np.float32(0.25)})
    log.log({"epoch": 2, "loss": 0.25})
    assert MetricsLogger.read(tmp_path / "m.jsonl") == log.records
    assert log.records[0] == {"epoch": 1, "loss": 0.5, "acc": 0.25}
    log.records.pop()
    log.rewrite()
    assert len(MetricsLogger.read(tmp_path / "m.jsonl")) == 1


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_memory_measures(monkeypatch):
    assert peak_memory_mb("cpu") > 10  # the interpreter alone
    keep = torch.zeros(1)
    with TensorMemoryTracker() as tr:
        a = torch.empty(2**20, dtype=torch.float32)  # 4 MiB
        b = a.view(-1, 4)  # a view: no new storage
        del a, b
        c = torch.ones(2**19, dtype=torch.float32) + keep  # 2 MiB (+ 2 MiB temporary)
    assert 4.0 <= tr.peak_mb < 4.5
    assert 2.0 <= tr.current_bytes / 2**20 < 4.5
    del c
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()


def test_plot_curves_writes_png(tmp_path):
    recs = [{"epoch": i, "loss": 1 / i, "acc": None if i == 2 else 0.1 * i} for i in (1, 2, 3)]
    out = plot_curves(recs, ["loss", "acc"], tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the command --------------------------------------------------------------


def _run(args, capsys=None):
    rc = train_cli.main(args)
    return rc, (capsys.readouterr() if capsys else None)


def test_train_writes_metrics_checkpoint_and_curves(tmp_path, capsys):
    out = tmp_path / "run"
    rc, cap = _run([*TINY, "--epochs", "2", "--out", str(out), "--gradient", "checkpoint"], capsys)
    assert rc == 0
    assert "epoch   1/2" in cap.out and "epoch   2/2" in cap.out and "test" in cap.out
    recs = MetricsLogger.read(out / "metrics.jsonl")
    assert [r["epoch"] for r in recs] == [1, 2]
    for key in (
        "train_loss",
        "test_acc",
        "nfe_forward",
        "nfe_backward",
        "peak_memory_mb",
        "step_memory_mb",
        "epoch_time",
        "lr",
    ):
        assert key in recs[0], key
    assert recs[0]["nfe_forward"] == 4 * 2  # 4 blocks x rk2 (2 evals) x 1 step
    assert recs[0]["nfe_backward"] == 4 * 2  # checkpoint replays every step once
    assert 0 <= recs[-1]["test_acc"] <= 1 and recs[-1]["step_memory_mb"] > 0
    ck = load_checkpoint(out / "checkpoint.pt")
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "records"} <= set(ck)
    assert {"python", "numpy", "torch"} <= set(ck["rng"])
    assert ck["epoch"] == 2 and ck["records"] == recs
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["widths"] == [4, 8, 8, 8] and cfg["gradient"] == "checkpoint"
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def _strip(records):
    return [{k: v for k, v in r.items() if k not in VOLATILE_KEYS} for r in records]


def test_resume_reproduces_uninterrupted_run_bitwise(tmp_path, monkeypatch):
    common = [*TINY, "--augment", "crop,flip", "--milestones", "1", "--lr", "0.05",
              "--seed", "3"]  # fmt: skip
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert _run([*common, "--epochs", "2", "--out", str(a)])[0] == 0
    assert _run([*common, "--epochs", "1", "--out", str(b)])[0] == 0
    assert _run([*common, "--epochs", "2", "--out", str(b), "--resume"])[0] == 0
    ka, kb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert ka["model"].keys() == kb["model"].keys()
    for k in ka["model"]:
        assert torch.equal(ka["model"][k], kb["model"][k]), k
    for sa, sb in zip(ka["optimizer"]["state"].values(), kb["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert ka["scheduler"] == kb["scheduler"]
    ra, rb = MetricsLogger.read(a / "metrics.jsonl"), MetricsLogger.read(b / "metrics.jsonl")
    assert len(ra) == len(rb) == 2
    assert _strip(ra) == _strip(rb)  # every value identical except wall time / process memory
    assert ra[1]["lr"] == pytest.approx(0.005)  # the scheduler state came back

    # the test is sensitive: a resume that forgets the RNG state ends elsewhere
    assert _run([*common, "--epochs", "1", "--out", str(c)])[0] == 0
    monkeypatch.setattr(classify, "restore_rng_state", lambda state: set_seed(999))
    assert _run([*common, "--epochs", "2", "--out", str(c), "--resume"])[0] == 0
    kc = load_checkpoint(c / "checkpoint.pt")
    assert not all(torch.equal(ka["model"][k], kc["model"][k]) for k in ka["model"])


def test_resume_refuses_a_different_model(tmp_path, capsys):
    out = tmp_path / "r"
    assert _run([*TINY, "--epochs", "1", "--out", str(out)])[0] == 0
    rc, cap = _run([*TINY, "--widths", "4,8,8,16", "--epochs", "2", "--out", str(out),
                    "--resume"], capsys)  # fmt: skip
    assert rc == 2 and "widths" in cap.err
    rc, cap = _run([*TINY, "--epochs", "2", "--resume", str(tmp_path / "missing.pt")], capsys)
    assert rc == 2 and "no checkpoint" in cap.err


@pytest.mark.parametrize(
    "extra,check",
    [
        (["--gradient", "direct"], lambda r: r["nfe_backward"] == 0),
        (["--gradient", "checkpoint", "--budget", "1", "--steps", "3"],
         lambda r: r["nfe_backward"] > r["nfe_forward"]),  # budget 1: recomputation
        (["--gradient", "checkpoint", "--recompute"],
         lambda r: r["nfe_backward"] == 2 * r["nfe_forward"]),  # rebuild + replay
        (["--gradient", "adjoint", "--seminorm", "--adjoint-method", "rk4"],
         lambda r: r["nfe_backward"] == 4 * 4),  # rk4, one step, four blocks
        (["--gradient", "reversible", "--method", "alf"], lambda r: r["nfe_backward"] > 0),
        (["--gradient", "reversible", "--method", "reversible:rk4"],
         lambda r: r["nfe_backward"] > 0),
        (["--model", "sqnxt", "--time", "--norm", "group"], lambda r: r["nfe_forward"] == 8),
    ],
)  # fmt: skip
def test_gradient_options_train(tmp_path, extra, check):
    out = tmp_path / "v"
    rc = train_cli.main([*TINY, "--epochs", "1", "--out", str(out), "--quiet", *extra])
    assert rc == 0
    (rec,) = MetricsLogger.read(out / "metrics.jsonl")
    assert np.isfinite(rec["train_loss"]) and check(rec), rec


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--model", "vgg"], "unknown model 'vgg'"),
        (["--gradient", "adjoint", "--budget", "2"], "--budget only applies"),
        (["--gradient", "reversible", "--method", "rk4"], "needs a reversible solver"),
        (["--data", "cifar10", "--data-dir", "nowhere"], "cifar-10-python.tar.gz"),
        (["--augment", "rotate"], "unknown augmentation"),
    ],
)
def test_bad_arguments_give_clear_errors(tmp_path, capsys, args, msg):
    rc, cap = _run([*TINY, "--epochs", "1", "--out", str(tmp_path / "x"), *args], capsys)
    assert rc == 2 and msg in cap.err


def test_cifar10_end_to_end_from_a_tiny_archive(tmp_path):
    from test_data import make_cifar

    make_cifar(tmp_path, "cifar10", n_per_batch=8)
    out = tmp_path / "run"
    rc = train_cli.main([
        "--data", "cifar10", "--data-dir", str(tmp_path), "--widths", "4,4,4,4",
        "--batch-size", "20", "--epochs", "1", "--steps", "1", "--out", str(out), "--quiet",
        "--device", "cpu",
    ])  # fmt: skip
    assert rc == 0
    (rec,) = MetricsLogger.read(out / "metrics.jsonl")
    assert rec["test_acc"] is not None and np.isfinite(rec["train_loss"])
    assert json.loads((out / "config.json").read_text())["augment"] == "crop,flip"


def test_divergence_is_recorded_and_stops(tmp_path):
    out = tmp_path / "d"
    rc = train_cli.main([*TINY, "--norm", "none", "--lr", "1e12", "--momentum", "0",
                         "--epochs", "3", "--out", str(out), "--quiet"])  # fmt: skip
    recs = MetricsLogger.read(out / "metrics.jsonl")
    assert rc == 1 and recs[-1].get("diverged") is True and len(recs) < 3


def test_subcommands_dispatch_lazily(monkeypatch, capsys):
    seen = {}
    fake = types.ModuleType("neurode.app.train.fakecnf")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "neurode.app.train.fakecnf", fake)
    monkeypatch.setitem(train_cli.SUBCOMMANDS, "cnf", ("neurode.app.train.fakecnf", "cnf"))
    assert train_cli.main(["cnf", "--epochs", "3"]) == 0
    assert seen["argv"] == ["--epochs", "3"]
    monkeypatch.setitem(train_cli.SUBCOMMANDS, "latent", ("neurode.app.train.not_there", "x"))
    assert train_cli.main(["latent"]) == 2
    assert "not available" in capsys.readouterr().err


def test_top_level_command_reaches_train(tmp_path):
    from neurode.app.cli import main as neurode_main

    out = tmp_path / "top"
    assert neurode_main(["train", *TINY, "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    assert (out / "metrics.jsonl").exists()


def test_config_defaults_depend_on_data():
    d = TrainConfig(data="digits").resolved()
    c = TrainConfig(data="cifar10").resolved()
    assert d.augment == "none" and c.augment == "crop,flip" and c.crop_padding == 4
    assert d.widths == (16, 32, 32, 64)
