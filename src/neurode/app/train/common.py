"""Helpers shared by every training loop: checkpoints, RNG state, metrics, plots.

Everything here is small and dependency-free beyond torch/numpy/matplotlib so
that the classifier, CNF and latent-ODE trainers use the same conventions:

- checkpoints are written atomically (temp file in the same directory, then
  ``os.replace``), so an interrupted run never leaves a truncated file;
- a checkpoint file starts with a one-line header holding the sha256 and the
  length of the ``torch.save`` payload after it, and :func:`load_checkpoint`
  checks both, so a truncated or corrupted file is an error, not silently
  wrong weights; a save can keep the file it replaces as ``<name>.prev.pt``
  to fall back to, and start-up removes temporaries left by a killed save;
- the RNG state of python, numpy, torch CPU and every CUDA device is captured
  and restored, so a resumed run draws the same random numbers as an
  uninterrupted one;
- metrics go to a JSON-lines file, one record per line.
"""

from __future__ import annotations

import contextlib
import contextvars
import glob
import hashlib
import io
import json
import os
import random
import secrets
import shutil
import sys
import tempfile
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurode.errors import CheckpointError

from ..figures import save_figure

__all__ = [
    "atomic_save",
    "load_checkpoint",
    "previous_checkpoint_path",
    "keeping_previous_checkpoints",
    "remove_checkpoint_leftovers",
    "set_seed",
    "resolve_device",
    "capture_rng_state",
    "restore_rng_state",
    "MetricsLogger",
    "peak_memory_mb",
    "reset_peak_memory",
    "plot_curves",
    "is_main_process",
    "TensorMemoryTracker",
]


#: first bytes of a checksummed checkpoint; the header line is
#: ``neurode-checkpoint <version> sha256:<hex digest> <payload bytes>\n``
_MAGIC = b"neurode-checkpoint "
_FORMAT_VERSION = 1
_HEADER_MAX = 128  # bytes; a real header is about 100

#: the default of ``atomic_save(..., keep_previous=None)``; see keeping_previous_checkpoints
_KEEP_PREVIOUS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "neurode_keep_previous_checkpoint", default=False
)

#: resolved checkpoint path -> digest of the file this process last saved there or
#: loaded from it: only that file is "the previous checkpoint" of the run going on
_LINEAGE: dict[str, str] = {}


def _key(path: Path) -> str:
    return os.path.realpath(path)


def previous_checkpoint_path(path: str | os.PathLike) -> Path:
    """Where the copy replaced by the newest save is kept: ``checkpoint.pt`` → ``checkpoint.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


@contextlib.contextmanager
def keeping_previous_checkpoints():
    """Within the block, :func:`atomic_save` keeps the file it replaces unless told otherwise.

    ``neurode train`` runs the classifier inside this block, so every epoch's
    save first keeps the last good ``checkpoint.pt`` as ``checkpoint.prev.pt``.
    """
    token = _KEEP_PREVIOUS.set(True)
    try:
        yield
    finally:
        _KEEP_PREVIOUS.reset(token)


def atomic_save(obj: Any, path: str | os.PathLike, *, keep_previous: bool | None = None) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file, with a checksum.

    The object is serialised in memory first (so an unpicklable object touches
    nothing on disk), then written after a header line holding the payload's
    sha256 and length to a temporary file in the destination directory (same
    filesystem), flushed and fsynced, and moved over ``path`` with
    ``os.replace``, which is atomic on POSIX and Windows. Read it back with
    :func:`load_checkpoint`.

    ``keep_previous=True`` first keeps the file being replaced as
    :func:`previous_checkpoint_path` (a hard link, or a copy where links are
    unsupported, moved into place with ``os.replace``), so
    :func:`load_checkpoint` can fall back to it; ``path`` exists throughout.
    The file is kept only if it passes its checksum and is the one this
    process last saved to ``path`` or loaded from it, i.e. an earlier state of
    the same run: a damaged file, or one left by another run, is replaced
    without touching the previous copy. ``None`` (the default) means
    ``False``, or ``True`` inside :func:`keeping_previous_checkpoints`.
    """
    path = Path(path)
    if keep_previous is None:
        keep_previous = _KEEP_PREVIOUS.get()
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getbuffer()
    digest = hashlib.sha256(payload).hexdigest()
    header = b"%s%d sha256:%s %d\n" % (_MAGIC, _FORMAT_VERSION, digest.encode(), len(payload))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        ours = _LINEAGE.get(_key(path))
        if keep_previous and ours is not None and _intact_identity(path) == ours:
            _keep_copy(path, previous_checkpoint_path(path))
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise
    _LINEAGE[_key(path)] = digest
    _fsync_dir(path.parent)


def _keep_copy(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` a copy of ``src`` (hard link, else a byte copy)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:  # no hard links on this filesystem
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: str | os.PathLike) -> None:
    """Remove a temporary file a failed write left (if it is there at all)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - filesystems that refuse it
        pass
    finally:
        os.close(fd)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _warn(message: str) -> None:
    """One line on stderr, from the main process only."""
    if is_main_process():
        print(f"neurode: warning: {message}", file=sys.stderr, flush=True)


def _checked_payload(path: Path, data: bytes) -> memoryview | None:
    """The payload of a checksummed file after verifying it; ``None`` for a file without a header.

    Raises :class:`CheckpointError` for an empty file or a bad header, length or digest.
    """
    if not data:
        raise CheckpointError(f"checkpoint {path} is empty")
    if not data.startswith(_MAGIC):
        return None
    end = data.find(b"\n", 0, _HEADER_MAX)
    fields = data[len(_MAGIC) : max(end, 0)].split(b" ")
    if end < 0 or len(fields) != 3 or not fields[1].startswith(b"sha256:"):
        raise CheckpointError(f"checkpoint {path} has a damaged or truncated header")
    try:
        version, size = int(fields[0]), int(fields[2])
    except ValueError:
        raise CheckpointError(f"checkpoint {path} has a damaged header") from None
    if version != _FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {version}, which this neurode cannot read"
        )
    payload = memoryview(data)[end + 1 :]
    if len(payload) < size:
        raise CheckpointError(
            f"checkpoint {path} is truncated ({len(payload)} of {size} payload bytes)"
        )
    if len(payload) > size:
        raise CheckpointError(
            f"checkpoint {path} has {len(payload) - size} unexpected bytes after its payload"
        )
    if hashlib.sha256(payload).hexdigest().encode() != fields[1][len(b"sha256:") :]:
        raise CheckpointError(f"checkpoint {path} is corrupt: its payload fails the sha256 check")
    return payload


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({_one_line(e)})") from None


def _torch_load(data, map_location: Any) -> Any:
    # weights_only=False: checkpoints hold RNG states (numpy arrays, python tuples)
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)


def _intact_identity(path: Path) -> str | None:
    """The digest identifying ``path`` if it is intact (passes its checksum, or loads), else None."""
    try:
        data = _read_bytes(path)
        payload = _checked_payload(path, data)
        if payload is None:
            _torch_load(data, "cpu")
    except Exception:
        return None
    return _identity(data, payload)


def _identity(data: bytes, payload: memoryview | None) -> str:
    if payload is not None:  # the verified digest from the header
        return data[: data.index(b"\n")].split(b" ")[2][len(b"sha256:") :].decode()
    return "file:" + hashlib.sha256(data).hexdigest()


def _read_checkpoint(path: Path, map_location: Any) -> tuple[dict, str]:
    """Load one file, verifying its checksum; any defect raises :class:`CheckpointError`.

    Returns the object and the digest identifying the file.
    """
    data = _read_bytes(path)
    payload = _checked_payload(path, data)
    if payload is not None:
        try:
            return _torch_load(payload, map_location), _identity(data, payload)
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {path} passes its checksum but cannot be loaded ({_one_line(e)})"
            ) from None
    # no header: a plain torch.save file from a neurode older than checksums, or not a
    # checkpoint at all. Load it if torch can, unverified.
    try:
        ck = _torch_load(data, map_location)
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {path} is not a readable checkpoint ({_one_line(e)})"
        ) from None
    _warn(
        f"checkpoint {path} has no checksum (written by an older neurode); "
        "loaded without verification"
    )
    return ck, _identity(data, None)


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", *, fallback: bool = True
) -> dict:
    """Load a checkpoint written by :func:`atomic_save`, verifying its checksum.

    Raises ``FileNotFoundError`` with the path if it does not exist, and
    :class:`~neurode.errors.CheckpointError` (a ``ValueError``) with a one-line
    message if the file is empty, truncated, fails its sha256 check or cannot
    be unpickled. With ``fallback`` (the default), a bad file whose previous
    copy (:func:`previous_checkpoint_path`, kept by ``atomic_save(...,
    keep_previous=True)``) is good loads that copy instead and says so in one
    line on stderr. A file without the checksum header (written by an older
    neurode with plain ``torch.save``) is loaded unverified, with a one-line
    warning on stderr. Loading ``path`` itself marks it as the state a later
    ``atomic_save(..., keep_previous=True)`` over it may keep.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ck, identity = _read_checkpoint(path, map_location)
    except CheckpointError as e:
        prev = previous_checkpoint_path(path)
        if not fallback:
            raise
        if not prev.is_file():
            raise CheckpointError(
                f"{e}, and there is no previous checkpoint {prev} to fall back to; "
                "delete it to start afresh"
            ) from None
        try:
            ck, _ = _read_checkpoint(prev, map_location)
        except CheckpointError as e2:
            raise CheckpointError(
                f"{e}, and the previous one is bad too: {e2}; delete both to start afresh"
            ) from None
        _warn(f"{e}; falling back to the previous checkpoint {prev}")
        return ck
    _LINEAGE[_key(path)] = identity  # resuming from it: saves over it may keep it
    return ck


def remove_checkpoint_leftovers(path: str | os.PathLike, *, fresh: bool = False) -> list[Path]:
    """Start-up housekeeping for the checkpoint at ``path``; returns the files removed.

    A save killed mid-way leaves its temporary file (``.checkpoint.pt.*.tmp``,
    or ``.checkpoint.prev.pt.*.tmp`` while keeping the previous copy) next to
    ``path``; nothing else would ever remove it. ``fresh=True`` (a run that
    will not resume from ``path``) also removes the previous copy an earlier
    run kept, and the run's first save will not keep the earlier run's file,
    so a later fallback cannot land in that other run. ``path`` itself is
    never touched. Call it before training, never while another
    process may be saving to ``path``.
    """
    path = Path(path)
    prev = previous_checkpoint_path(path)
    leftovers = [
        p
        for name in (path.name, prev.name)
        for p in path.parent.glob(f".{glob.escape(name)}.*.tmp")
        if p.is_file() or p.is_symlink()
    ]
    if fresh:
        _LINEAGE.pop(_key(path), None)  # the file there belongs to an earlier run
        if prev.is_file():
            leftovers.append(prev)
    removed = []
    for p in leftovers:
        try:
            p.unlink()
        except FileNotFoundError:
            continue
        removed.append(p)
    return removed


def set_seed(seed: int) -> None:
    """Seed python's ``random``, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` → CUDA if available else CPU; ``"cpu"``; ``"cuda"``/``"cuda:i"``.

    Raises ``ValueError`` for an unknown name and ``RuntimeError`` when CUDA is
    asked for but not available.
    """
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s)"
            )
        return dev
    raise ValueError(f"unknown device {name!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:<i>'")


def capture_rng_state() -> dict:
    """The state of every random generator a training loop touches."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA state is restored if present and usable)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        cuda = [torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # different machine: restore what matches
            for i, s in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.detach().cpu().tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return x


class MetricsLogger:
    """Append one JSON object per line to ``path``; keeps them in ``.records``.

    ``path=None`` keeps records in memory only (e.g. on non-zero ranks).
    Existing lines are *not* read back: a resumed run rewrites the file from
    the records stored in its checkpoint (see :meth:`rewrite`).
    """

    def __init__(self, path: str | os.PathLike | None, records: Iterable[dict] | None = None):
        self.path = Path(path) if path is not None else None
        self.records: list[dict] = [dict(r) for r in (records or [])]
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: dict) -> None:
        record = _jsonable(dict(record))
        self.records.append(record)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def rewrite(self) -> None:
        """Write ``.records`` to the file from scratch (atomically)."""
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for r in self.records:
                f.write(json.dumps(_jsonable(r)) + "\n")
        os.replace(tmp, self.path)

    @staticmethod
    def read(path: str | os.PathLike) -> list[dict]:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]


def peak_memory_mb(device: str | torch.device | None = None) -> float:
    """Peak memory in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` (since the last
    :func:`reset_peak_memory`). CPU: the process's peak resident set size
    (``ru_maxrss``; monotone over the process's life, so it includes the
    interpreter and libraries — compare differences, not absolute values).
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return float("nan")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def reset_peak_memory(device: str | torch.device | None = None) -> None:
    """Reset the CUDA peak counter (no-op on CPU, where the peak RSS cannot be reset)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def plot_curves(
    records: Sequence[dict],
    keys: Sequence[str],
    out_png: str | os.PathLike,
    *,
    x: str = "epoch",
    title: str | None = None,
) -> Path:
    """One subplot per key in ``keys``, value against ``x`` (default ``epoch``).

    Records missing a key are skipped for that subplot. Uses the Agg backend,
    so it works without a display. Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    keys = list(keys)
    n = max(1, len(keys))
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.0), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r.get(x, i), r[key]) for i, r in enumerate(records) if r.get(key) is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", ms=3)
        ax.set_xlabel(x)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_png)


def is_main_process() -> bool:
    """True unless running under torch.distributed with a non-zero rank."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


class TensorMemoryTracker:
    """Peak bytes of tensor storage allocated inside a ``with`` block, on any device.

    ``ru_maxrss`` only grows over a process's life and includes the
    interpreter, so on CPU it cannot compare two gradient methods run one
    after the other. This tracker intercepts every ATen operation (a
    ``TorchDispatchMode``), counts each new storage once (views share it) and
    subtracts it when the storage is freed, so ``peak_mb`` is the high-water
    mark of tensors created in the block: activations, solver states,
    checkpoints, gradients. Tensors that existed before (parameters, the
    input batch) are not counted. Deterministic for a deterministic
    computation; slows the tracked block down (Python per operation), so
    track one step, not an epoch.
    """

    def __init__(self):
        self.peak_bytes = 0
        self.current_bytes = 0

    def __enter__(self) -> TensorMemoryTracker:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self
        live: dict[int, int] = {}

        def track(t: torch.Tensor) -> None:
            try:
                st = t.untyped_storage()
            except (RuntimeError, NotImplementedError):  # e.g. sparse / meta
                return
            key = st.data_ptr()
            if key == 0 or key in live:
                return
            n = st.nbytes()
            live[key] = n
            tracker.current_bytes += n
            tracker.peak_bytes = max(tracker.peak_bytes, tracker.current_bytes)

            def freed(key=key, n=n):
                if live.pop(key, None) is not None:
                    tracker.current_bytes -= n

            weakref.finalize(st, freed)

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor):
                        track(t)
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20


def save_training_state(
    path, *, model, optimizer, scheduler, epoch: int, elapsed: float, logger, args
) -> None:
    """Everything an exact resume needs, written atomically after an epoch."""
    atomic_save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": capture_rng_state(),
            "epoch": epoch,
            "elapsed": elapsed,
            "records": logger.records,
            "args": vars(args),
        },
        path,
        keep_previous=True,
    )


def resume_training_state(
    path, metrics_path, *, model, optimizer, scheduler, device, resume: bool
) -> tuple[int, float, MetricsLogger]:
    """Restore a :func:`save_training_state` checkpoint if ``resume`` and it exists.

    Returns ``(first epoch to run, seconds trained so far, metrics logger)``; a
    fresh run starts a new metrics file. First removes what an interrupted save
    left behind (:func:`remove_checkpoint_leftovers`).
    """
    path, metrics_path = Path(path), Path(metrics_path)
    resuming = resume and path.exists()
    if is_main_process():
        removed = remove_checkpoint_leftovers(path, fresh=not resuming)
        tmps = [p for p in removed if p.suffix == ".tmp"]
        if tmps:
            print(f"removed {len(tmps)} temporary file(s) left by an interrupted checkpoint save")
    if resuming:
        ck = load_checkpoint(path, map_location=device)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        restore_rng_state(ck["rng"])
        logger = MetricsLogger(metrics_path, ck["records"])
        logger.rewrite()
        print(f"resumed from {path} at epoch {ck['epoch']} ({ck['elapsed']:.0f} s trained)")
        return ck["epoch"] + 1, ck["elapsed"], logger
    if metrics_path.exists():
        metrics_path.unlink()
    return 1, 0.0, MetricsLogger(metrics_path)
