"""Datasets (digits, CIFAR archives built in the real format) and torch-only augmentation."""

import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

from neurode.app.data.augment import (
    Augment,
    normalize,
    parse_augment,
    random_crop,
    random_hflip,
)
from neurode.app.data.cifar import CifarNotFoundError, load_cifar
from neurode.app.data.digits import load_digits


def _batch(n, labels_key, num_classes, seed):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"testing batch",
        labels_key: [int(v) for v in rng.integers(0, num_classes, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img{i}.png".encode() for i in range(n)],
    }


def make_cifar(root, name="cifar10", n_per_batch=6, form="archive"):
    """A tiny CIFAR in the official layout: pickled dicts, as a tar.gz or extracted folder."""
    if name == "cifar10":
        folder, archive = "cifar-10-batches-py", "cifar-10-python.tar.gz"
        files = {f"data_batch_{i}": _batch(n_per_batch, b"labels", 10, i) for i in range(1, 6)}
        files["test_batch"] = _batch(n_per_batch, b"labels", 10, 99)
        files["batches.meta"] = {b"label_names": [b"x"] * 10}
    else:
        folder, archive = "cifar-100-python", "cifar-100-python.tar.gz"
        files = {
            "train": _batch(5 * n_per_batch, b"fine_labels", 100, 1),
            "test": _batch(n_per_batch, b"fine_labels", 100, 2),
        }
        for d in files.values():
            d[b"coarse_labels"] = [v // 5 for v in d[b"fine_labels"]]
    if form == "folder":
        (root / folder).mkdir(parents=True)
        for fname, d in files.items():
            (root / folder / fname).write_bytes(pickle.dumps(d, protocol=2))
    else:
        with tarfile.open(root / archive, "w:gz") as tar:
            for fname, d in files.items():
                raw = pickle.dumps(d, protocol=2)
                info = tarfile.TarInfo(f"{folder}/{fname}")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    return files


def test_digits_split_is_fixed_stratified_80_20():
    a, b = load_digits(), load_digits()
    assert a.train_x.shape == (1437, 1, 8, 8) and a.test_x.shape == (360, 1, 8, 8)
    assert a.train_x.dtype == torch.uint8 and int(a.train_x.max()) == 16
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.train_y, b.train_y)
    counts = torch.bincount(a.test_y, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37  # stratified: ~36 per class
    x = a.prepare(a.train_x)
    assert x.dtype == torch.float32
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-2


@pytest.mark.parametrize("form", ["archive", "folder"])
def test_cifar10_reads_the_standard_python_archive(tmp_path, form):
    files = make_cifar(tmp_path, "cifar10", form=form)
    d = load_cifar(tmp_path, "cifar10")
    assert d.train_x.shape == (30, 3, 32, 32) and d.test_x.shape == (6, 3, 32, 32)
    assert d.num_classes == 10 and d.in_channels == 3
    # the first image is the first row of data_batch_1, channel-major RGB
    row = files["data_batch_1"][b"data"][0]
    assert np.array_equal(d.train_x[0].numpy().reshape(-1), row)
    assert d.train_x[0, 1, 0, 0] == row[1024]  # green plane starts at 1024
    assert d.train_y[:6].tolist() == files["data_batch_1"][b"labels"]
    assert d.test_y.tolist() == files["test_batch"][b"labels"]


def test_cifar10_extracted_folder_can_be_passed_directly(tmp_path):
    make_cifar(tmp_path, "cifar10", form="folder")
    d = load_cifar(tmp_path / "cifar-10-batches-py", "cifar10")
    assert d.train_x.shape[0] == 30


def test_cifar100_uses_fine_labels(tmp_path):
    files = make_cifar(tmp_path, "cifar100")
    d = load_cifar(tmp_path, "cifar100")
    assert d.num_classes == 100
    assert d.train_y.tolist() == files["train"][b"fine_labels"]


def test_missing_archive_says_what_to_put_where(tmp_path):
    with pytest.raises(CifarNotFoundError) as e:
        load_cifar(tmp_path, "cifar10")
    msg = str(e.value)
    assert "cifar-10-python.tar.gz" in msg and "cifar-10-batches-py" in msg and str(tmp_path) in msg
    assert "download" in msg
    with pytest.raises(CifarNotFoundError, match="cifar-100-python.tar.gz"):
        load_cifar(tmp_path, "cifar100")
    with pytest.raises(ValueError, match="unknown CIFAR"):
        load_cifar(tmp_path, "cifar11")


def test_malformed_batches_raise_clearly(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    bad = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / f).write_bytes(pickle.dumps(bad))
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        load_cifar(tmp_path)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_unpickling_is_restricted_to_arrays(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / f).write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing to unpickle builtins.print"):
        load_cifar(tmp_path)
    assert "pwned" not in capsys.readouterr().out


def test_random_crop_is_a_shift_of_the_zero_padded_image():
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6) + 1
    torch.manual_seed(3)
    y = random_crop(x, 2)
    assert y.shape == x.shape
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for n in range(2):  # each output equals some 6x6 window of the padded image
        windows = [xp[n, :, i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(y[n], w) for w in windows)
    assert torch.equal(random_crop(x, 0), x)
    # reproducible from the global torch RNG
    torch.manual_seed(3)
    assert torch.equal(random_crop(x, 2), y)


def test_random_hflip_flips_about_half():
    x = torch.randn(400, 1, 2, 3)
    torch.manual_seed(0)
    y = random_hflip(x)
    flipped = torch.tensor([torch.equal(a, b.flip(-1)) for a, b in zip(x, y)])
    same = torch.tensor([torch.equal(a, b) for a, b in zip(x, y)])
    assert bool((flipped | same).all())
    assert 150 < int(flipped.sum()) < 250


def test_normalize_and_augment_parsing():
    x = torch.rand(5, 3, 4, 4)
    mean, std = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1.0, 2.0, 4.0])
    y = normalize(x, mean, std)
    torch.testing.assert_close(y[:, 2], (x[:, 2] - 0.3) / 4.0)
    assert parse_augment("crop,flip", 4) == Augment(4, True)
    assert parse_augment("none", 4) == Augment(0, False) and not Augment().active
    assert parse_augment("flip", 4) == Augment(0, True)
    with pytest.raises(ValueError, match="unknown augmentation"):
        parse_augment("rotate", 4)
