"""Input checks of a solve, and where its parameters are found.

Everything here runs before ``f`` is evaluated, except :func:`graph_leaves`,
which reads the autograd graph of ``f``'s first evaluation (SPEC §5.1).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .errors import InvalidOptionError, InvalidStateError, InvalidTimesError


def check_times(t, *, allow_single: bool = False) -> list[float]:
    """``t`` as a list of float64 times: 1-D, finite, strictly monotone."""
    if isinstance(t, Tensor):
        _check_layout(t, "t")
        if t.dim() != 1:
            raise InvalidTimesError(f"t must be 1-D, got shape {tuple(t.shape)}")
        if t.is_complex():
            raise InvalidTimesError("t must be real")
        if t.dtype == torch.bool:
            raise InvalidTimesError("t must hold numbers, got a bool tensor")
        times = t.detach().to("cpu", torch.float64).tolist()
    else:
        if isinstance(t, (str, bytes)):
            raise InvalidTimesError(f"t must be a 1-D tensor or sequence of times, got {t!r}")
        try:
            times = [_time(v) for v in t]
        except TypeError:
            raise InvalidTimesError(
                f"t must be a 1-D tensor or sequence of times, got {type(t).__name__}"
            ) from None
    need = 1 if allow_single else 2
    if len(times) < need:
        raise InvalidTimesError(
            f"t needs at least {need} time{'s' if need > 1 else ''}"
            f"{' (start and end)' if need > 1 else ''}, got {len(times)}"
        )
    if not all(math.isfinite(v) for v in times):
        raise InvalidTimesError(f"t must be finite, got {times}")
    d = [b - a for a, b in zip(times[:-1], times[1:])]
    if d and not (all(x > 0 for x in d) or all(x < 0 for x in d)):
        bad = next(i for i, x in enumerate(d) if x == 0 or (x > 0) != (d[0] > 0))
        raise InvalidTimesError(
            f"t must be strictly increasing or strictly decreasing; t[{bad}]={times[bad]} "
            f"is followed by t[{bad + 1}]={times[bad + 1]}"
        )
    return times


def _time(v) -> float:
    if isinstance(v, (str, bytes)):
        raise InvalidTimesError(f"times must be numbers, got {v!r}")
    if isinstance(v, Tensor) and v.numel() != 1:
        raise InvalidTimesError(
            f"each time must be a scalar, got a tensor of shape {tuple(v.shape)}"
        )
    try:
        return float(v)
    except (TypeError, ValueError):
        raise InvalidTimesError(f"times must be numbers, got {v!r}") from None


def check_state(y0):
    """Flatten a tuple state into one tensor; returns (flat, structure or None)."""
    if isinstance(y0, Tensor):
        check_tensor(y0, "y0")
        return y0, None
    if isinstance(y0, (tuple, list)) and len(y0) > 0 and all(isinstance(v, Tensor) for v in y0):
        for i, v in enumerate(y0):
            check_tensor(v, f"y0[{i}]")
        dtypes = {v.dtype for v in y0}
        devices = {v.device for v in y0}
        if len(dtypes) > 1 or len(devices) > 1:
            raise InvalidStateError(
                f"all tensors of a tuple state must share dtype and device, got dtypes "
                f"{sorted(map(str, dtypes))} on {sorted(map(str, devices))}; cast them first"
            )
        shapes = tuple(v.shape for v in y0)
        numels = [v.numel() for v in y0]
        return torch.cat([v.reshape(-1) for v in y0]), (shapes, numels)
    raise InvalidStateError(f"y0 must be a tensor or a tuple of tensors, got {type(y0).__name__}")


def _check_layout(v: Tensor, name: str) -> None:
    if v.is_meta:
        raise InvalidStateError(f"{name} is a meta tensor (no data); create it on a real device")
    if v.layout != torch.strided:
        raise InvalidStateError(
            f"{name} has layout {v.layout}; neurode needs dense (strided) tensors: call .to_dense()"
        )


def check_tensor(v: Tensor, name: str) -> None:
    _check_layout(v, name)
    if not v.is_floating_point():
        raise InvalidStateError(
            f"{name} must have a real floating dtype (float32 or float64), got {v.dtype}"
        )
    if not bool(torch.isfinite(v).all()):
        bad = (~torch.isfinite(v.detach())).nonzero()
        where = tuple(bad[0].tolist()) if len(bad) else ()
        raise InvalidStateError(
            f"{name} contains NaN or Inf (first at index {where}); the initial state must be finite"
        )


def explicit_params(params) -> list[Tensor]:
    """The tensors passed as ``params=``, checked."""
    if params is None:
        return []
    if isinstance(params, Tensor):
        params = [params]
    try:
        params = list(params)
    except TypeError:
        raise InvalidOptionError(
            f"params must be a tensor or a sequence of tensors, got {type(params).__name__}"
        ) from None
    for q in params:
        if not isinstance(q, Tensor):
            raise InvalidOptionError(f"params must be tensors, got {type(q).__name__}")
    return params


def find_modules(func) -> tuple[nn.Module, ...]:
    """Modules ``func`` reaches directly: itself, ``self`` of a bound method, closure
    cells, a ``functools.partial``'s function and arguments, and module-level globals
    it names. Their buffers (BatchNorm statistics) are frozen during replays."""
    found: list[nn.Module] = []
    todo = [func]
    seen: set[int] = set()
    while todo:
        c = todo.pop()
        if id(c) in seen:
            continue
        seen.add(id(c))
        if isinstance(c, nn.Module):
            found.append(c)
            continue
        if isinstance(c, functools.partial):
            todo.extend([c.func, *c.args, *c.keywords.values()])
            continue
        if isinstance(c, (list, tuple)):
            todo.extend(c)
            continue
        if isinstance(c, dict):
            todo.extend(c.values())
            continue
        if hasattr(c, "__self__"):
            todo.append(c.__self__)
        if hasattr(c, "__func__"):
            c = c.__func__
        code = getattr(c, "__code__", None)
        if code is not None:  # a function: its closure cells and the globals it names
            for cell in getattr(c, "__closure__", None) or ():
                try:
                    todo.append(cell.cell_contents)
                except ValueError:  # empty cell
                    pass
            g = getattr(c, "__globals__", {})
            todo.extend(g[n] for n in code.co_names if isinstance(g.get(n), nn.Module))
        elif hasattr(c, "__dict__") and not isinstance(c, type):  # a callable object
            todo.extend(v for v in vars(c).values() if isinstance(v, nn.Module))
    unique: dict[int, nn.Module] = {}
    for m in found:
        for sub in m.modules():
            unique.setdefault(id(sub), sub)
    return tuple(m for m in unique.values() if m._buffers)


def graph_leaves(
    out: Tensor, stop: Sequence[Tensor] = (), nodes: set | None = None
) -> list[Tensor]:
    """Every tensor that requires grad and that ``out`` was computed from.

    Walks ``out``'s autograd graph (``grad_fn.next_functions``) to its
    ``AccumulateGrad`` leaves; a non-leaf tensor in ``stop`` (a ``params=``
    entry) ends the walk along its branch and is returned itself. This finds a
    parameter however ``f`` reaches it — a module, a closure, a global, a
    ``functools.partial``, a bound method, a dict — because it looks at what
    was computed, not at how the code is written.
    """
    if not isinstance(out, Tensor) or out.grad_fn is None:
        return []
    stops = {q.grad_fn: q for q in stop if q.grad_fn is not None}
    found: list[Tensor] = []
    seen: set = set()
    todo = [out.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node in stops:
            found.append(stops[node])
            continue
        var = getattr(node, "variable", None)
        if var is not None:  # AccumulateGrad: a leaf that requires grad
            found.append(var)
            continue
        if nodes is not None:
            nodes.add(node)
        todo.extend(nxt for nxt, _ in node.next_functions)
    return found


def unique_tensors(tensors: Sequence[Tensor]) -> tuple[Tensor, ...]:
    seen: set[int] = set()
    out = []
    for q in tensors:
        if q.requires_grad and id(q) not in seen:
            seen.add(id(q))
            out.append(q)
    return tuple(out)
