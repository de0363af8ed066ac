"""CIFAR-10 / CIFAR-100 from the standard python archive in a local directory.

Nothing is downloaded. Put either the archive or its extracted folder in a
directory and pass that directory:

============  =========================  ===========================================
dataset       archive                    extracted folder
============  =========================  ===========================================
CIFAR-10      ``cifar-10-python.tar.gz``  ``cifar-10-batches-py/`` (``data_batch_1..5``,
                                         ``test_batch``)
CIFAR-100     ``cifar-100-python.tar.gz`` ``cifar-100-python/`` (``train``, ``test``)
============  =========================  ===========================================

(from https://www.cs.toronto.edu/~kriz/cifar.html). Each batch file is a
pickled dict with ``b'data'`` (``uint8``, ``N×3072``, channel-major RGB) and
``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` (CIFAR-100). The archive is
read in place (no extraction). Unpickling is restricted to the builtin and
numpy types these files contain.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from .augment import ImageData, channel_stats

__all__ = ["load_cifar", "CIFAR", "CifarNotFoundError"]

CIFAR = {
    "cifar10": dict(
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        test=["test_batch"],
        label_key=b"labels",
        num_classes=10,
        pretty="CIFAR-10",
    ),
    "cifar100": dict(
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        train=["train"],
        test=["test"],
        label_key=b"fine_labels",
        num_classes=100,
        pretty="CIFAR-100",
    ),
}


class CifarNotFoundError(FileNotFoundError):
    """The CIFAR archive is not where it was looked for."""


class _SafeUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to unpickle {module}.{name}: a CIFAR batch holds only arrays and lists"
        )


def _unpickle(data: bytes, what: str) -> dict:
    try:
        d = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:
        raise ValueError(f"{what}: not a CIFAR python batch ({e})") from e
    if not isinstance(d, dict):
        raise ValueError(f"{what}: expected a pickled dict, got {type(d).__name__}")
    return d


def _decode(d: dict, label_key: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    if b"data" not in d or label_key not in d:
        raise ValueError(
            f"{what}: expected keys b'data' and {label_key!r}, found {sorted(map(repr, d))}"
        )
    x = np.asarray(d[b"data"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise ValueError(
            f"{what}: b'data' must be uint8 of shape (N, 3072), got {x.dtype} {x.shape}"
        )
    y = np.asarray(d[label_key], dtype=np.int64)
    if y.shape != (x.shape[0],):
        raise ValueError(f"{what}: {x.shape[0]} images but {y.shape} labels")
    return x.reshape(-1, 3, 32, 32), y


def _not_found(name: str, root: Path) -> CifarNotFoundError:
    spec = CIFAR[name]
    return CifarNotFoundError(
        f"{spec['pretty']} not found in {root}: put {spec['archive']} (the python version from "
        f"https://www.cs.toronto.edu/~kriz/cifar.html) or its extracted folder {spec['folder']}/ "
        f"in that directory (or pass --data-dir DIR). neurode does not download datasets."
    )


def _read_batches(name: str, root: Path) -> tuple[dict[str, bytes], str]:
    """Raw bytes of every batch file, from the folder if present else the archive."""
    spec = CIFAR[name]
    files = spec["train"] + spec["test"]
    for folder in (root / spec["folder"], root):
        if all((folder / f).is_file() for f in files):
            return {f: (folder / f).read_bytes() for f in files}, str(folder)
    archive = root / spec["archive"]
    if not archive.is_file() and root.is_file() and root.name.endswith((".tar.gz", ".tgz")):
        archive = root
    if archive.is_file():
        out: dict[str, bytes] = {}
        try:
            with tarfile.open(archive, "r:*") as tar:
                for m in tar.getmembers():
                    base = os.path.basename(m.name)
                    if m.isfile() and base in files:
                        f = tar.extractfile(m)
                        if f is not None:
                            out[base] = f.read()
        except tarfile.TarError as e:
            raise ValueError(f"{archive}: not a readable tar.gz archive ({e})") from e
        missing = [f for f in files if f not in out]
        if missing:
            raise ValueError(f"{archive}: missing batch file(s) {missing}")
        return out, str(archive)
    raise _not_found(name, root)


def load_cifar(root: str | os.PathLike, name: str = "cifar10") -> ImageData:
    """CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``) from ``root``.

    ``root`` is a directory holding the archive or the extracted folder (or the
    extracted folder itself). Raises :class:`CifarNotFoundError` saying what to
    put where if neither is found, ``ValueError`` for a malformed file.
    """
    key = name.lower().replace("-", "")
    if key not in CIFAR:
        raise ValueError(f"unknown CIFAR dataset {name!r}; choose one of {sorted(CIFAR)}")
    spec = CIFAR[key]
    root = Path(root).expanduser()
    raw, source = _read_batches(key, root)

    def split(names):
        xs, ys = zip(
            *(_decode(_unpickle(raw[f], f"{source}:{f}"), spec["label_key"], f) for f in names)
        )
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    train_x, train_y = split(spec["train"])
    test_x, test_y = split(spec["test"])
    for y, what in ((train_y, "train"), (test_y, "test")):
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= spec["num_classes"]):
            raise ValueError(
                f"{source}: {what} labels must lie in [0, {spec['num_classes']}), "
                f"got [{int(y.min())}, {int(y.max())}]"
            )
    mean, std = channel_stats(train_x, 255.0)
    return ImageData(
        name=key,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=spec["num_classes"],
        scale=255.0,
        mean=mean,
        std=std,
    )
