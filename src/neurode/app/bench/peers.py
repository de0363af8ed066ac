"""Adapters for the peer libraries the benchmarks compare against.

Each adapter solves ``dy/dt = func(t, y)`` from ``t0`` to ``t1`` and returns
``y(t1)``; the benchmarks' loss and gradients are taken the same way for every
library. :func:`load_peer` returns ``(adapter, None)`` when the peer can be
imported and ``(None, reason)`` when it cannot, so a benchmark can print the
reason instead of failing. The peers are optional (``pip install neurode[bench]``;
TorchDiffEqPack with ``--no-deps``, its pins refuse current torch).

- ``torchdiffeq`` (Chen et al.): ``odeint`` (backprop through the solver) and
  ``odeint_adjoint``. Its ``"rk4"`` is the 3/8-rule variant, a different
  discretisation from neurode's classic rk4 (same cost, four evaluations).
- ``torchode`` (Lienen & Günnemann): batched, per-sample step sizes; Euler,
  Heun, Dopri5 and Tsit5 (no rk4). States are flattened to ``(batch, features)``.
- ``TorchDiffEqPack`` (Zhuang et al.): MALI, ``odesolve_adjoint_sym12`` with the
  asynchronous leapfrog (``fixedstep_sym12async`` / ``sym12async``).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

PEERS = ("torchdiffeq", "torchode", "TorchDiffEqPack")


@dataclass
class PeerInfo:
    """Whether a peer can run here: ``available``, its ``version`` or the ``reason`` it cannot."""

    name: str
    available: bool
    version: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


class PeerAdapter:
    """Base class: ``solve(func, y0, t0, t1, method=, steps=, rtol=, atol=, gradient=)``."""

    name = "peer"
    gradients: tuple[str, ...] = ("direct",)
    methods: tuple[str, ...] = ()

    def __init__(self, module):
        self.mod = module

    def check(self, method: str, gradient: str) -> None:
        """Raise ``ValueError`` with the reason if ``(method, gradient)`` cannot run."""
        reason = self.unsupported(method, gradient)
        if reason:
            raise ValueError(reason)

    def unsupported(self, method: str, gradient: str = "direct") -> str | None:
        """``None`` if ``(method, gradient)`` can run, else the reason it cannot."""
        if method not in self.methods:
            return f"{self.name} has no {method!r} solver (it has {', '.join(self.methods)})"
        if gradient not in self.gradients:
            return f"{self.name} has no {gradient!r} gradient"
        return None

    def solve(
        self,
        func: nn.Module,
        y0: Tensor,
        t0: float,
        t1: float,
        *,
        method: str,
        steps: int | None = None,
        rtol: float = 1e-7,
        atol: float = 1e-9,
        gradient: str = "direct",
    ) -> Tensor:
        raise NotImplementedError


class TorchDiffEq(PeerAdapter):
    name = "torchdiffeq"
    gradients = ("direct", "adjoint")
    methods = ("euler", "midpoint", "rk4", "dopri5", "bosh3")

    def solve(
        self, func, y0, t0, t1, *, method, steps=None, rtol=1e-7, atol=1e-9, gradient="direct"
    ):
        self.check(method, gradient)
        t = torch.tensor([t0, t1], dtype=y0.dtype, device=y0.device)
        options = None
        if steps is not None:
            # an explicit grid: torchdiffeq's step_size grid can add a sliver step by round-off
            # (built from the times it is given: the adjoint's backward solve runs t1 -> t0)
            def grid(f, y, tt):
                return torch.linspace(float(tt[0]), float(tt[-1]), steps + 1).to(tt)

            options = {"grid_constructor": grid}
        solve = self.mod.odeint_adjoint if gradient == "adjoint" else self.mod.odeint
        return solve(func, y0, t, rtol=rtol, atol=atol, method=method, options=options)[-1]


class TorchOde(PeerAdapter):
    name = "torchode"
    methods = ("euler", "heun", "dopri5", "tsit5")
    _names = {"euler": "Euler", "heun": "Heun", "dopri5": "Dopri5", "tsit5": "Tsit5"}

    def solve(
        self, func, y0, t0, t1, *, method, steps=None, rtol=1e-7, atol=1e-9, gradient="direct"
    ):
        self.check(method, gradient)
        to = self.mod
        shape = y0.shape
        batch = shape[0]

        def flat_f(t, y):
            # torchode steps every sample on its own clock: one time per sample,
            # shaped to broadcast against the state (the benchmark fields use t that way)
            if bool((t == t[0]).all()):
                tt = t[0]
            else:
                tt = t.view(batch, *([1] * (len(shape) - 1)))
            return func(tt, y.view(shape)).reshape(batch, -1)

        term = to.ODETerm(flat_f)
        step = getattr(to, self._names[method])(term=term)
        t_eval = torch.tensor([t0, t1], dtype=y0.dtype, device=y0.device).expand(batch, 2)
        if steps is not None:
            controller = to.FixedStepController()
            dt0 = torch.full((batch,), (t1 - t0) / steps, dtype=y0.dtype, device=y0.device)
        else:
            controller = to.IntegralController(atol=atol, rtol=rtol, term=term)
            dt0 = None
        solver = to.AutoDiffAdjoint(step, controller)
        problem = to.InitialValueProblem(y0=y0.reshape(batch, -1), t_eval=t_eval)
        sol = solver.solve(problem, dt0=dt0)
        return sol.ys[:, -1].reshape(shape)


class TorchDiffEqPack(PeerAdapter):
    """MALI: ALF with the reversible (``mali``) gradient, or backprop through it (``direct``)."""

    name = "TorchDiffEqPack"
    gradients = ("mali", "direct")
    methods = ("alf",)

    def solve(self, func, y0, t0, t1, *, method, steps=None, rtol=1e-3, atol=1e-3, gradient="mali"):
        self.check(method, gradient)
        options = {
            "method": "fixedstep_sym12async" if steps is not None else "sym12async",
            "h": None if steps is None else (t1 - t0) / steps,
            "t0": t0,
            "t1": t1,
            "rtol": rtol,
            "atol": atol,
            "print_neval": False,
            "neval_max": 1_000_000,
        }
        if gradient == "mali":
            return self.mod.odesolve_adjoint_sym12(func, y0, options=options)
        return self.mod.odesolve(func, y0, options=options)


_ADAPTERS = {"torchdiffeq": TorchDiffEq, "torchode": TorchOde, "TorchDiffEqPack": TorchDiffEqPack}
_SMOKE = {
    "torchdiffeq": ("rk4", "direct"),
    "torchode": ("dopri5", "direct"),
    "TorchDiffEqPack": ("alf", "mali"),
}
_cache: dict[str, tuple[PeerAdapter | None, PeerInfo]] = {}


def _smoke_test(adapter: PeerAdapter) -> None:
    """Solve and differentiate a 2-D linear ODE: catches peers that import but fail with this torch."""
    method, gradient = _SMOKE[adapter.name]
    lin = nn.Linear(2, 2)
    func = _TimeField(lin)
    y0 = torch.ones(3, 2, requires_grad=True)
    y = adapter.solve(func, y0, 0.0, 1.0, method=method, steps=4, gradient=gradient)
    y.sum().backward()
    if y0.grad is None or not torch.isfinite(y0.grad).all():
        raise RuntimeError("gradient missing or not finite")


class _TimeField(nn.Module):
    def __init__(self, lin):
        super().__init__()
        self.lin = lin

    def forward(self, t, y):
        return self.lin(y)


def load_peer(name: str) -> tuple[PeerAdapter | None, str | None]:
    """``(adapter, None)`` if peer ``name`` imports and runs a tiny solve here, else ``(None, reason)``."""
    info = peer_info(name)
    return _cache[name][0], (None if info.available else info.reason)


def peer_info(name: str) -> PeerInfo:
    """Import peer ``name`` once and smoke-test it; the result is cached."""
    if name not in _ADAPTERS:
        raise ValueError(f"unknown peer {name!r}; known: {PEERS}")
    if name in _cache:
        return _cache[name][1]
    dist = {"TorchDiffEqPack": "TorchDiffEqPack"}.get(name, name)
    try:
        module = importlib.import_module(name)
    except Exception as e:  # ImportError, or an error raised while importing
        info = PeerInfo(name, False, None, f"cannot import {name}: {type(e).__name__}: {e}")
        _cache[name] = (None, info)
        return info
    adapter = _ADAPTERS[name](module)
    try:
        with torch.random.fork_rng(), torch.enable_grad():
            _smoke_test(adapter)
    except Exception as e:
        info = PeerInfo(
            name,
            False,
            _version(dist),
            f"{name} imports but fails with torch {torch.__version__}: {type(e).__name__}: {e}",
        )
        _cache[name] = (None, info)
        return info
    info = PeerInfo(name, True, _version(dist))
    _cache[name] = (adapter, info)
    return info


def peers_status() -> dict[str, dict]:
    """``{name: {available, version, reason}}`` for every peer (for the results' JSON)."""
    return {name: peer_info(name).as_dict() for name in PEERS}
