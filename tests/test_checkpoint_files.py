"""Checkpoint files under preemption and corruption: checksums, temporaries, fallback."""

import hashlib
import io
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from neurode.app.train import cli as train_cli
from neurode.app.train import common
from neurode.app.train.classify import VOLATILE_KEYS
from neurode.app.train.common import (
    atomic_save,
    keeping_previous_checkpoints,
    load_checkpoint,
    previous_checkpoint_path,
    remove_checkpoint_leftovers,
    resume_training_state,
)
from neurode.errors import CheckpointError, NeurodeError

#: a tensor whose raw bytes are easy to find inside the file (torch.save does not compress)
WEIGHT = torch.arange(4096, dtype=torch.float32) * 0.5 + 1.0


def _state(v=1):
    return {"model": {"w": WEIGHT.clone(), "b": torch.full((3,), float(v))}, "epoch": v}


def _flip_inside_weight(path):
    """Flip one bit in the middle of WEIGHT's storage bytes in ``path``."""
    data = bytearray(path.read_bytes())
    at = bytes(data).find(WEIGHT.numpy().tobytes())
    assert at > 0, "the tensor's storage was not found in the file"
    data[at + WEIGHT.numel() * 2 + 1] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- the file format ------------------------------------------------------------


def test_saved_file_carries_sha256_and_length_of_its_payload(tmp_path):
    p = tmp_path / "checkpoint.pt"
    atomic_save(_state(), p)
    raw = p.read_bytes()
    header, payload = raw.split(b"\n", 1)
    magic, version, digest, size = header.split(b" ")
    assert (magic, version) == (b"neurode-checkpoint", b"1")
    assert digest == b"sha256:" + hashlib.sha256(payload).hexdigest().encode()
    assert int(size) == len(payload)
    # the payload is an ordinary torch.save stream
    assert torch.equal(torch.load(io.BytesIO(payload), weights_only=False)["model"]["w"], WEIGHT)
    ck = load_checkpoint(p)
    assert torch.equal(ck["model"]["w"], WEIGHT) and ck["epoch"] == 1


def _empty(p):
    p.write_bytes(b"")


def _truncated(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _truncated_in_header(p):
    p.write_bytes(p.read_bytes()[:40])


def _one_byte_short(p):
    p.write_bytes(p.read_bytes()[:-1])


def _garbage(p):
    p.write_bytes(bytes(range(256)) * 40)


def _text(p):
    p.write_text("this is not a checkpoint\n")


def _appended(p):
    p.write_bytes(p.read_bytes() + b"\0" * 16)


def _header_digest_changed(p):
    raw = bytearray(p.read_bytes())
    i = raw.index(b"sha256:") + 7
    raw[i] = ord("0") if raw[i] != ord("0") else ord("1")
    p.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage,message",
    [
        (_empty, "is empty"),
        (_truncated, "is truncated"),
        (_one_byte_short, "is truncated"),
        (_truncated_in_header, "header"),
        (_garbage, "not a readable checkpoint"),
        (_text, "not a readable checkpoint"),
        (_appended, "unexpected bytes"),
        (_header_digest_changed, "sha256"),
        (_flip_inside_weight, "fails the sha256 check"),
    ],
)
def test_damaged_file_is_a_one_line_checkpoint_error(tmp_path, damage, message):
    p = tmp_path / "checkpoint.pt"
    atomic_save(_state(), p)
    damage(p)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(p)
    text = str(info.value)
    assert message in text and str(p) in text and "\n" not in text
    assert isinstance(info.value, NeurodeError) and isinstance(info.value, ValueError)


def test_bit_flip_in_a_weight_would_load_silently_without_the_checksum(tmp_path):
    """The flipped byte really is inside the tensor: torch alone loads a changed weight."""
    p = tmp_path / "checkpoint.pt"
    atomic_save(_state(), p)
    _flip_inside_weight(p)
    payload = p.read_bytes().split(b"\n", 1)[1]
    w = torch.load(io.BytesIO(payload), weights_only=False)["model"]["w"]
    assert w.shape == WEIGHT.shape and not torch.equal(w, WEIGHT)
    assert (w != WEIGHT).sum() == 1
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(p)


def test_old_checkpoint_without_checksum_loads_with_a_warning(tmp_path, capsys):
    p = tmp_path / "checkpoint.pt"
    torch.save(_state(), p)  # what neurode wrote before checksums
    ck = load_checkpoint(p)
    assert torch.equal(ck["model"]["w"], WEIGHT) and ck["epoch"] == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no checksum" in err and str(p) in err
    # unverified means unverified: a flipped weight in an old file goes unnoticed
    _flip_inside_weight(p)
    assert not torch.equal(load_checkpoint(p)["model"]["w"], WEIGHT)
    # but a broken old file is still an error, not a traceback from torch
    _truncated(p)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(p)


# -- the previous checkpoint ------------------------------------------------------


def _epochs(p):
    return load_checkpoint(p, fallback=False)["epoch"]


def test_keep_previous_rotates_and_a_bad_newest_falls_back(tmp_path, capsys):
    p = tmp_path / "checkpoint.pt"
    prev = previous_checkpoint_path(p)
    assert prev == tmp_path / "checkpoint.prev.pt"
    atomic_save(_state(1), p, keep_previous=True)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]  # nothing to keep yet
    for v in (2, 3):
        atomic_save(_state(v), p, keep_previous=True)
    assert set(os.listdir(tmp_path)) == {"checkpoint.pt", "checkpoint.prev.pt"}
    assert (_epochs(p), _epochs(prev)) == (3, 2)
    assert capsys.readouterr().err == ""

    _flip_inside_weight(p)
    ck = load_checkpoint(p)
    assert ck["epoch"] == 2 and torch.equal(ck["model"]["w"], WEIGHT)
    assert torch.equal(ck["model"]["b"], torch.full((3,), 2.0))
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "sha256" in err and "falling back" in err and str(prev) in err
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(p, fallback=False)


def test_newest_and_previous_both_bad_is_one_error_naming_both(tmp_path):
    p = tmp_path / "checkpoint.pt"
    for v in (1, 2):
        atomic_save(_state(v), p, keep_previous=True)
    _flip_inside_weight(p)
    _truncated(previous_checkpoint_path(p))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(p)
    text = str(info.value)
    assert "sha256" in text and "truncated" in text and "checkpoint.prev.pt" in text
    assert "\n" not in text


def test_without_a_previous_checkpoint_the_error_says_so(tmp_path):
    p = tmp_path / "checkpoint.pt"
    atomic_save(_state(), p)
    _empty(p)
    with pytest.raises(CheckpointError, match="no previous checkpoint"):
        load_checkpoint(p)


def test_a_damaged_newest_is_not_kept_over_the_good_previous(tmp_path):
    p = tmp_path / "checkpoint.pt"
    for v in (1, 2):
        atomic_save(_state(v), p, keep_previous=True)
    _garbage(p)
    atomic_save(_state(3), p, keep_previous=True)
    assert (_epochs(p), _epochs(previous_checkpoint_path(p))) == (3, 1)


def test_keep_previous_defaults_off_and_on_inside_the_context(tmp_path):
    p = tmp_path / "checkpoint.pt"
    atomic_save(_state(1), p)
    atomic_save(_state(2), p)
    assert not previous_checkpoint_path(p).exists()
    with keeping_previous_checkpoints():
        atomic_save(_state(3), p)
        assert _epochs(previous_checkpoint_path(p)) == 2
        atomic_save(_state(4), p, keep_previous=False)  # an explicit choice wins
        assert _epochs(previous_checkpoint_path(p)) == 2
    atomic_save(_state(5), p)
    assert _epochs(previous_checkpoint_path(p)) == 2


def test_previous_is_a_copy_where_hard_links_are_unsupported(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    p = tmp_path / "checkpoint.pt"
    for v in (1, 2):
        atomic_save(_state(v), p, keep_previous=True)
    assert (_epochs(p), _epochs(previous_checkpoint_path(p))) == (2, 1)
    assert set(os.listdir(tmp_path)) == {"checkpoint.pt", "checkpoint.prev.pt"}


def test_only_an_earlier_state_of_the_same_run_is_kept(tmp_path):
    """A file this process neither saved nor loaded (another run's) is replaced, not kept."""
    p = tmp_path / "checkpoint.pt"
    atomic_save(_state(1), tmp_path / "elsewhere" / "checkpoint.pt")
    shutil.copy(tmp_path / "elsewhere" / "checkpoint.pt", p)
    atomic_save(_state(2), p, keep_previous=True)
    assert not previous_checkpoint_path(p).exists()
    atomic_save(_state(3), p, keep_previous=True)  # epoch 2 was saved here by this run
    assert _epochs(previous_checkpoint_path(p)) == 2
    # a fresh start forgets the run there before; a resume (a load) adopts it
    assert remove_checkpoint_leftovers(p, fresh=True) == [previous_checkpoint_path(p)]
    atomic_save(_state(1), p, keep_previous=True)
    assert not previous_checkpoint_path(p).exists()
    assert load_checkpoint(p)["epoch"] == 1
    atomic_save(_state(2), p, keep_previous=True)
    assert _epochs(previous_checkpoint_path(p)) == 1


def test_an_old_unchecksummed_checkpoint_resumed_from_is_kept(tmp_path, capsys):
    p = tmp_path / "checkpoint.pt"
    torch.save(_state(1), p)
    assert load_checkpoint(p)["epoch"] == 1  # the resume
    capsys.readouterr()
    atomic_save(_state(2), p, keep_previous=True)
    assert capsys.readouterr().err == ""  # checking that the old file loads is silent
    _flip_inside_weight(p)
    assert load_checkpoint(p)["epoch"] == 1
    err = capsys.readouterr().err
    assert "no checksum" in err and "falling back" in err


# -- a kill during a save -----------------------------------------------------------

#: run in a child process: resume from epoch 1, save epoch 2 over it, and die
#: (os._exit: no cleanup handlers, no finally blocks, like SIGKILL) at one point of it
KILLED_SAVE = textwrap.dedent(
    """
    import os, sys, torch
    from neurode.app.train.common import atomic_save, load_checkpoint

    path, stage = sys.argv[1], sys.argv[2]
    load_checkpoint(path)  # a resumed run: the file there is its previous state
    real_replace = os.replace

    def die():
        os._exit(137)

    if stage == "writing":  # half the file written, not yet synced
        def fsync(fd):
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            die()
        os.fsync = fsync
    else:
        def replace(src, dst):
            if os.path.basename(dst) == stage:
                die()
            real_replace(src, dst)
        os.replace = replace

    state = {"model": {"w": torch.arange(4096.0)}, "epoch": 2}
    atomic_save(state, path, keep_previous=True)
    sys.exit("the save was not interrupted")
    """
)


def _kill_during_save(path, stage):
    r = subprocess.run(
        [sys.executable, "-c", KILLED_SAVE, str(path), stage], capture_output=True, text=True
    )
    assert r.returncode == 137, r.stderr


def _temporaries(directory):
    return sorted(f for f in os.listdir(directory) if f.endswith(".tmp"))


@pytest.mark.parametrize(
    "stage,left",
    [
        ("writing", [".checkpoint.pt."]),  # in the middle of writing the new file
        # while keeping the previous copy: the new file and the link to the old one
        ("checkpoint.prev.pt", [".checkpoint.prev.pt.", ".checkpoint.pt."]),
        ("checkpoint.pt", [".checkpoint.pt."]),  # just before the new file replaces the old
    ],
)
def test_kill_mid_save_leaves_temporaries_that_start_up_removes(tmp_path, stage, left):
    p = tmp_path / "checkpoint.pt"
    atomic_save(_state(1), p, keep_previous=True)
    _kill_during_save(p, stage)
    tmps = _temporaries(tmp_path)
    assert [t[: len(prefix)] for t, prefix in zip(tmps, left)] == left and len(tmps) == len(left)
    assert _epochs(p) == 1  # the checkpoint is the old one, intact, at every stage
    (tmp_path / "notes.tmp").write_text("not ours")
    (tmp_path / ".metrics.jsonl.tmp").write_text("not the checkpoint's")

    assert sorted(remove_checkpoint_leftovers(p)) == [tmp_path / t for t in tmps]
    assert _temporaries(tmp_path) == [".metrics.jsonl.tmp", "notes.tmp"]
    assert _epochs(p) == 1
    if stage == "checkpoint.pt":
        assert _epochs(previous_checkpoint_path(p)) == 1
    assert remove_checkpoint_leftovers(p) == []


def test_fresh_start_also_drops_the_previous_copy_of_an_earlier_run(tmp_path):
    p = tmp_path / "checkpoint.pt"
    for v in (1, 2):
        atomic_save(_state(v), p, keep_previous=True)
    assert remove_checkpoint_leftovers(p) == []  # resuming: both kept
    assert remove_checkpoint_leftovers(p, fresh=True) == [previous_checkpoint_path(p)]
    assert _epochs(p) == 2  # the checkpoint itself is never removed


def test_trainer_start_up_removes_temporaries_before_resuming(tmp_path, capsys):
    """The CNF and latent trainers start with resume_training_state."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    args = type("Args", (), {})()
    p, metrics = tmp_path / "checkpoint.pt", tmp_path / "metrics.jsonl"
    kw = dict(model=model, optimizer=opt, scheduler=sched, device="cpu")
    _, _, logger = resume_training_state(p, metrics, **kw, resume=False)
    for epoch in (1, 2):
        logger.log({"epoch": epoch})
        common.save_training_state(
            p, **{k: kw[k] for k in ("model", "optimizer", "scheduler")},
            epoch=epoch, elapsed=1.0, logger=logger, args=args,
        )  # fmt: skip
    assert _epochs(previous_checkpoint_path(p)) == 1  # the trainers keep the previous file
    _kill_during_save(p, "writing")
    assert len(_temporaries(tmp_path)) == 1
    capsys.readouterr()

    start, _, logger = resume_training_state(p, metrics, **kw, resume=True)
    assert start == 3 and [r["epoch"] for r in logger.records] == [1, 2]
    assert _temporaries(tmp_path) == []
    assert "removed 1 temporary file" in capsys.readouterr().out


# -- the command ---------------------------------------------------------------------

TINY = [
    "--data", "digits", "--widths", "4,8,8,8", "--train-limit", "64", "--test-limit", "32",
    "--batch-size", "32", "--steps", "1", "--no-progress", "--device", "cpu", "--threads", "1",
    "--augment", "crop,flip", "--seed", "7", "--no-plot", "--no-track-memory",
]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Classifier runs of 1, 2 and 3 epochs, trained once for the tests below to copy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("runs")
    for epochs in (1, 2, 3):
        out = base / str(epochs)
        assert train_cli.main([*TINY, "--epochs", str(epochs), "--out", str(out), "--quiet"]) == 0
    torch.set_num_threads(n)
    return base


def _copy_run(runs, epochs, tmp_path):
    return shutil.copytree(runs / str(epochs), tmp_path / "run")


def _same_weights(a, b):
    ka, kb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert ka["epoch"] == kb["epoch"]
    return ka["model"].keys() == kb["model"].keys() and all(
        torch.equal(ka["model"][k], kb["model"][k]) for k in ka["model"]
    )


def _flip_inside_a_model_weight(path):
    """Flip one bit in the middle of the storage of the model's largest tensor."""
    model = load_checkpoint(path)["model"]
    name = max(model, key=lambda k: model[k].numel())
    raw = model[name].numpy().tobytes()
    data = bytearray(path.read_bytes())
    at = bytes(data).find(raw)
    assert at > 0 and bytes(data).count(raw) == 1, name
    data[at + len(raw) // 2 + 1] ^= 0x10
    path.write_bytes(bytes(data))
    # without the checksum torch would load the changed weight without complaint
    flipped = torch.load(io.BytesIO(bytes(data).split(b"\n", 1)[1]), weights_only=False)
    assert not torch.equal(flipped["model"][name], model[name])


def test_the_classifier_keeps_the_previous_checkpoint(runs):
    assert set(os.listdir(runs / "1")) == {"checkpoint.pt", "metrics.jsonl", "config.json"}
    assert "checkpoint.prev.pt" in os.listdir(runs / "3")
    assert _epochs(runs / "3" / "checkpoint.pt") == 3
    assert _epochs(runs / "3" / "checkpoint.prev.pt") == 2
    assert _temporaries(runs / "3") == []


def test_classifier_start_up_removes_a_killed_saves_temporary(runs, tmp_path, capsys):
    out = _copy_run(runs, 1, tmp_path)
    _kill_during_save(out / "checkpoint.pt", "writing")
    assert len(_temporaries(out)) == 1
    # --epochs 1 --resume: nothing left to train, so no save; start-up alone cleans up
    rc = train_cli.main([*TINY, "--epochs", "1", "--out", str(out), "--resume"])
    assert rc == 0 and _temporaries(out) == []
    assert "removed 1 temporary file(s) left by an interrupted checkpoint save" in (
        capsys.readouterr().out
    )
    assert _epochs(out / "checkpoint.pt") == 1


@pytest.mark.parametrize(
    "damage,message",
    [
        (_empty, "is empty"),
        (_truncated, "is truncated"),
        (_garbage, "not a readable checkpoint"),
        (_flip_inside_a_model_weight, "fails the sha256 check"),
    ],
)
def test_bad_checkpoint_without_a_previous_one_exits_2_with_one_line(
    runs, tmp_path, capsys, damage, message
):
    out = _copy_run(runs, 1, tmp_path)
    ck = out / "checkpoint.pt"
    damage(ck)
    before = ck.read_bytes()
    rc = train_cli.main([*TINY, "--epochs", "2", "--out", str(out), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("neurode train: error: "), err
    assert message in err and "no previous checkpoint" in err and "Traceback" not in err
    assert ck.read_bytes() == before  # a bad file is reported, not overwritten


def _metrics(out):
    recs = common.MetricsLogger.read(out / "metrics.jsonl")
    return [{k: v for k, v in r.items() if k not in VOLATILE_KEYS} for r in recs]


def test_bad_newest_falls_back_to_the_previous_and_the_run_stays_bit_exact(runs, tmp_path, capsys):
    out = _copy_run(runs, 2, tmp_path)
    _flip_inside_a_model_weight(out / "checkpoint.pt")
    rc = train_cli.main([*TINY, "--epochs", "3", "--out", str(out), "--resume"])
    cap = capsys.readouterr()
    assert rc == 0
    assert cap.err.count("\n") == 1, cap.err
    assert "sha256" in cap.err and "falling back to the previous checkpoint" in cap.err
    assert "checkpoint.prev.pt" in cap.err
    assert "at epoch 1" in cap.out  # the previous file held epoch 1: epochs 2 and 3 rerun
    # the same weights, bit for bit, and the same metrics as three epochs straight
    assert _same_weights(out, runs / "3")
    assert _metrics(out) == _metrics(runs / "3")
    # and the damaged file was not kept as the previous one
    assert _epochs(out / "checkpoint.prev.pt") == 2


def test_old_checkpoint_without_checksum_resumes_with_a_warning(runs, tmp_path, capsys):
    out = _copy_run(runs, 1, tmp_path)
    torch.save(load_checkpoint(out / "checkpoint.pt"), out / "checkpoint.pt")  # old format
    rc = train_cli.main([*TINY, "--epochs", "3", "--out", str(out), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0 and err.count("\n") == 1 and "no checksum" in err, err
    assert _same_weights(out, runs / "3")
    assert _metrics(out) == _metrics(runs / "3")
    assert (out / "checkpoint.pt").read_bytes().startswith(b"neurode-checkpoint 1 ")


def test_neurode_command_exits_2_on_a_garbage_checkpoint(runs, tmp_path):
    """The installed entry point, in a real process: status 2 and one line, no traceback."""
    out = _copy_run(runs, 1, tmp_path)
    _garbage(out / "checkpoint.pt")
    r = subprocess.run(
        [sys.executable, "-m", "neurode", "train", *TINY, "--epochs", "2", "--out", str(out),
         "--resume"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("neurode train: error: checkpoint ")
    assert "Traceback" not in r.stderr + r.stdout


def test_top_level_main_exits_2_on_a_truncated_checkpoint(runs, tmp_path, capsys):
    from neurode.app.cli import main as neurode_main

    out = _copy_run(runs, 1, tmp_path)
    _truncated(out / "checkpoint.pt")
    rc = neurode_main(["train", *TINY, "--epochs", "2", "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "is truncated" in err


def test_cnf_subcommand_exits_2_on_an_empty_checkpoint(tmp_path, capsys):
    out = tmp_path / "cnf"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"")
    rc = train_cli.main([
        "cnf", "--epochs", "1", "--n-train", "64", "--n-test", "32", "--batch-size", "64",
        "--hidden", "4", "--steps", "1", "--out", str(out), "--no-progress", "--no-plots",
        "--device", "cpu", "--resume",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("neurode train cnf: error: ") and "is empty" in err


def test_a_fresh_run_does_not_keep_an_earlier_runs_checkpoint(runs, tmp_path):
    out = _copy_run(runs, 3, tmp_path)
    assert train_cli.main([*TINY, "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    assert not (out / "checkpoint.prev.pt").exists() and _epochs(out / "checkpoint.pt") == 1
    rc = train_cli.main([*TINY, "--epochs", "2", "--out", str(out), "--quiet", "--resume"])
    assert rc == 0 and _epochs(out / "checkpoint.prev.pt") == 1
    assert _same_weights(out, runs / "2")
