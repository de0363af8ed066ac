"""Continuous normalising flows: Chen et al. (2018), FFJORD (Grathwohl et al., 2019), RNODE.

A CNF moves a sample along ``dz/dt = f(t, z)`` and tracks its log-density with
the instantaneous change of variables

    d/dt [z, Δ] = [f(t, z), −tr(∂f/∂z)],     Δ(t_a) = 0,

so that ``log p_{t_a}(z(t_a)) = log p_{t_b}(z(t_b)) − Δ(t_b)`` whichever way the
solve runs. :class:`CNF` integrates data ``x`` (``t = 0``) to the base sample
``z`` (``t = T``) for the likelihood, and ``z`` back to ``x`` for sampling.

The trace is exact (one vector–Jacobian product per dimension) or
Hutchinson's estimate ``εᵀ(∂f/∂z)ε`` (one VJP per evaluation, ``ε`` drawn once
per solve and held fixed, so the dynamics the solver sees are a deterministic
ODE). RNODE's regularisers (Finlay et al., "How to train your neural ODE",
2020) ride along as extra state channels: the kinetic energy ``∫‖f‖² dt`` and
the Jacobian's Frobenius norm ``∫‖∂f/∂z‖²_F dt`` (exact, or ``‖εᵀ∂f/∂z‖²``
from the same VJP).

Every gradient method works: the trace needs autograd *inside* ``f`` even
when the solver runs without a graph (checkpoint and reversible forward
passes, evaluation under ``torch.no_grad``), so the dynamics always enable
grad internally and keep the graph of the trace (``create_graph``) only when
the caller is recording one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._loop import SolveStats
from ..config import Configured, SolveConfig
from ..odeint import GradientLike, MethodLike

__all__ = [
    "CNF",
    "CNFBlock",
    "CNFDynamics",
    "ConcatSquashLinear",
    "ODENet",
    "standard_normal_log_prob",
]

_TRACES = ("auto", "exact", "hutchinson")
_NOISES = ("rademacher", "gaussian")
_ACTIVATIONS = {"tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU, "silu": nn.SiLU}
AUTO_EXACT_MAX_DIM = 4  # trace="auto" is exact up to this many dimensions


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` summed over all but the first (batch) dimension."""
    flat = z.reshape(z.shape[0], -1)
    return -0.5 * (flat**2).sum(1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)


class ConcatSquashLinear(nn.Module):
    """FFJORD's time-dependent layer: ``(W x + b) · σ(g t + c) + h t``."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.layer = nn.Linear(dim_in, dim_out)
        self.hyper_gate = nn.Linear(1, dim_out)
        self.hyper_bias = nn.Linear(1, dim_out, bias=False)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        tt = t.reshape(1, 1).to(x.dtype)
        return self.layer(x) * torch.sigmoid(self.hyper_gate(tt)) + self.hyper_bias(tt)


class ODENet(nn.Module):
    """A time-dependent MLP ``f(t, z)`` of concat-squash layers, for ``z`` of shape ``(B, D)``.

    Args:
        dim: ``D``.
        hidden: widths of the hidden layers (FFJORD's toys use ``(64, 64, 64)``).
        activation: ``"tanh"`` (default), ``"softplus"``, ``"elu"`` or ``"silu"``;
            it must be smooth, because the trace's gradient differentiates it twice.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 64, 64), activation: str = "tanh"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            )
        widths = [dim, *hidden, dim]
        self.layers = nn.ModuleList(
            ConcatSquashLinear(a, b) for a, b in zip(widths[:-1], widths[1:])
        )
        self.act = _ACTIVATIONS[activation]()

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h


class CNFDynamics(nn.Module):
    """``d/dt [z, Δ (, E_k, E_J)] = [f, −tr ∂f/∂z (, ‖f‖², ‖∂f/∂z‖²_F)]`` for ``odeint``.

    The state is a tuple ``(z, Δ)`` with ``z`` of shape ``(B, ...)`` and ``Δ`` of
    shape ``(B,)``; a four-part state ``(z, Δ, E_k, E_J)`` (the last two of
    shape ``(B,)`` too) also integrates the RNODE regularisers.

    Args:
        net: ``f(t, z)``, an ``nn.Module`` acting on each sample independently
            (no batch-coupling layers: the trace is taken per sample).
        trace: ``"exact"`` (``D`` VJPs per evaluation), ``"hutchinson"``
            (one VJP per evaluation, unbiased) or ``"auto"`` (exact up to
            ``D = 4``).
        noise: Hutchinson's ``ε``: ``"rademacher"`` (±1, lower variance) or
            ``"gaussian"``.

    Hutchinson's ``ε`` is drawn by :meth:`resample` before each solve and kept
    on the module (``self.eps``). :class:`CNFBlock` hands that ``ε`` to the
    solve through :meth:`evaluate`, so every evaluation of the solve — and
    every replay of it in a later backward pass — sees the same ``ε`` even if
    the module has been used (and ``ε`` redrawn) in between.
    """

    def __init__(self, net: nn.Module, trace: str = "auto", noise: str = "rademacher"):
        super().__init__()
        if trace not in _TRACES:
            raise ValueError(f"trace must be one of {_TRACES}, got {trace!r}")
        if noise not in _NOISES:
            raise ValueError(f"noise must be one of {_NOISES}, got {noise!r}")
        self.net = net
        self.trace = trace
        self.noise = noise
        self.eps: Tensor | None = None
        self.vjp_count = 0  # VJPs taken for the trace since construction (tests, diagnostics)

    def uses_exact_trace(self, z: Tensor) -> bool:
        d = z[0].numel()
        return self.trace == "exact" or (self.trace == "auto" and d <= AUTO_EXACT_MAX_DIM)

    def resample(self, z: Tensor, generator: torch.Generator | None = None) -> None:
        """Draw a fresh ``ε`` shaped like ``z`` (no-op for the exact trace)."""
        if self.uses_exact_trace(z):
            self.eps = None
            return
        if self.noise == "gaussian":
            eps = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        else:
            bits = torch.randint(0, 2, z.shape, generator=generator, device=z.device)
            eps = bits.to(z.dtype) * 2 - 1
        self.eps = eps

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return self.evaluate(t, state, self.eps)

    def evaluate(
        self, t: Tensor, state: tuple[Tensor, ...], eps: Tensor | None
    ) -> tuple[Tensor, ...]:
        """The right-hand side with an explicit Hutchinson ``ε`` (ignored for the exact trace)."""
        if len(state) not in (2, 4):
            raise ValueError(f"the CNF state is (z, Δ) or (z, Δ, E_k, E_J), got {len(state)} parts")
        regularize = len(state) == 4
        z = state[0]
        record = torch.is_grad_enabled()  # is an outer graph being recorded?
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            dz = self.net(t, z)
            if dz.shape != z.shape:
                raise ValueError(
                    f"net(t, z) returned shape {tuple(dz.shape)}, z has {tuple(z.shape)}"
                )
            if self.uses_exact_trace(z):
                tr, frob = self._exact(dz, z, record, regularize)
            else:
                tr, frob = self._hutchinson(dz, z, record, regularize, eps)
        outs = [dz, -tr]
        if regularize:
            outs += [dz.reshape(dz.shape[0], -1).pow(2).sum(1), frob]
        if not record:
            outs = [o.detach() for o in outs]
        return tuple(outs)

    def _exact(
        self, dz: Tensor, z: Tensor, record: bool, regularize: bool
    ) -> tuple[Tensor, Tensor]:
        b = z.shape[0]
        flat_dz = dz.reshape(b, -1)
        d = flat_dz.shape[1]
        tr = z.new_zeros(b)
        frob = z.new_zeros(b)
        for i in range(d):
            (row,) = torch.autograd.grad(
                flat_dz[:, i].sum(),
                z,
                create_graph=record,
                retain_graph=record or i < d - 1,
                allow_unused=True,
            )
            self.vjp_count += 1
            if row is None:
                continue
            row = row.reshape(b, -1)
            tr = tr + row[:, i]
            if regularize:
                frob = frob + row.pow(2).sum(1)
        return tr, frob

    def _hutchinson(
        self, dz: Tensor, z: Tensor, record: bool, regularize: bool, eps: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        if eps is None or eps.shape != z.shape:
            raise RuntimeError(
                "Hutchinson's trace needs ε drawn before the solve: call dynamics.resample(z0) "
                "(CNFBlock does this for you)"
            )
        eps = eps.to(dtype=z.dtype, device=z.device)
        (eps_j,) = torch.autograd.grad(dz, z, eps, create_graph=record, allow_unused=True)
        self.vjp_count += 1
        b = z.shape[0]
        if eps_j is None:
            zero = z.new_zeros(b)
            return zero, zero
        tr = (eps_j * eps).reshape(b, -1).sum(1)
        frob = eps_j.pow(2).reshape(b, -1).sum(1) if regularize else z.new_zeros(b)
        return tr, frob


class CNFBlock(Configured, nn.Module):
    """One CNF solve from ``t = 0`` to ``t = T`` (or back).

    Args:
        dynamics: a :class:`CNFDynamics`.
        T: integration time (fixed).
        method, rtol, atol, options, gradient: passed to :func:`neurode.odeint`.
            ``gradient="reversible"`` needs ``method="alf"`` or a
            :class:`~neurode.Reversible` solver.

    ``last_stats`` holds the :class:`~neurode.SolveStats` of the latest solve
    (its backward counters fill in after ``backward()``).
    """

    def __init__(
        self,
        dynamics: CNFDynamics,
        T: float = 1.0,
        *,
        method: MethodLike = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        options: dict | None = None,
        gradient: GradientLike = "direct",
    ):
        super().__init__()
        self.dynamics = dynamics
        self.T = float(T)
        self.solve_config = SolveConfig(method, rtol, atol, options, gradient)
        self.last_stats: SolveStats | None = None

    def forward(
        self, z: Tensor, reverse: bool = False, regularize: bool = False, **solve_kw
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Integrate ``z`` over the block; returns ``(z_out, Δ, E_k, E_J)``.

        ``Δ`` is the change of the log-density channel over the solve:
        ``log p_in(z) = log p_out(z_out) − Δ``. ``E_k``/``E_J`` are zeros
        unless ``regularize``. ``solve_kw`` overrides ``method``, ``rtol``,
        ``atol``, ``options`` or ``gradient`` for this call.
        """
        dynamics = self.dynamics
        dynamics.resample(z)
        eps = dynamics.eps  # this solve's ε, held by the closure for any later replay

        def func(t: Tensor, s: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            return dynamics.evaluate(t, s, eps)

        zero = z.new_zeros(z.shape[0])
        state = (z, zero, zero, zero) if regularize else (z, zero)
        t = [self.T, 0.0] if reverse else [0.0, self.T]
        # the closure captures ``dynamics``, so the solver finds its parameters
        sol = self.solve_config.solve(func, state, t, **solve_kw)
        self.last_stats = sol.stats
        out = sol.ys
        z1, delta = out[0][-1], out[1][-1]
        if regularize:
            return z1, delta, out[2][-1], out[3][-1]
        return z1, delta, zero, zero


class CNF(nn.Module):
    """A continuous normalising flow of one or more stacked :class:`CNFBlock` s.

    Data ``x`` flows from ``t = 0`` to the base sample ``z`` at ``t = T``
    through every block in turn; the base density is ``N(0, I)``.

    Args:
        dim: data dimension ``D`` (vectors of shape ``(B, D)``).
        hidden: hidden widths of each block's :class:`ODENet`.
        num_blocks: how many blocks are stacked.
        T: integration time of each block.
        trace: ``"auto"`` (exact for ``D ≤ 4``), ``"exact"`` or ``"hutchinson"``.
        noise: Hutchinson's ``ε``, ``"rademacher"`` or ``"gaussian"``.
        activation: of the :class:`ODENet` (smooth).
        method, rtol, atol, options, gradient: how each block is solved
            (see :func:`neurode.odeint`); any gradient method works.
        kinetic, jacobian: RNODE weights ``λ_K``, ``λ_J``. When either is
            positive, :meth:`forward` integrates the regularisers and
            :meth:`loss` adds ``λ_K E_k + λ_J E_J``.
        nets: optional ready-made ``f(t, z)`` modules, one per block
            (overrides ``hidden``/``activation``/``num_blocks``).

    Example::

        flow = CNF(2, hidden=(32, 32), method="rk4", options=dict(steps=8),
                   gradient="checkpoint")
        loss = -flow.log_prob(x).mean()
        x_new = flow.sample(1000)
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64, 64),
        num_blocks: int = 1,
        T: float = 1.0,
        *,
        trace: str = "auto",
        noise: str = "rademacher",
        activation: str = "tanh",
        method: MethodLike = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        options: dict | None = None,
        gradient: GradientLike = "direct",
        kinetic: float = 0.0,
        jacobian: float = 0.0,
        nets: Sequence[nn.Module] | None = None,
    ):
        super().__init__()
        self.dim = int(dim)
        if nets is None:
            nets = [ODENet(dim, hidden, activation) for _ in range(num_blocks)]
        self.blocks = nn.ModuleList(
            CNFBlock(
                CNFDynamics(net, trace=trace, noise=noise),
                T,
                method=method,
                rtol=rtol,
                atol=atol,
                options=options,
                gradient=gradient,
            )
            for net in nets
        )
        self.kinetic = float(kinetic)
        self.jacobian = float(jacobian)

    @property
    def regularized(self) -> bool:
        return self.kinetic > 0 or self.jacobian > 0

    def configure(self, **solve_kw) -> None:
        """Set ``method``/``rtol``/``atol``/``options``/``gradient`` of every block."""
        for block in self.blocks:
            for k, v in solve_kw.items():
                if k not in ("method", "rtol", "atol", "options", "gradient"):
                    raise ValueError(f"unknown solve setting {k!r}")
                setattr(block, k, dict(v) if k == "options" else v)

    def forward(
        self, x: Tensor, regularize: bool | None = None, **solve_kw
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Map data to the base: returns ``(z, Δ, E_k, E_J)`` summed over blocks,
        with ``log p(x) = log N(z) − Δ``."""
        reg = self.regularized if regularize is None else regularize
        delta = x.new_zeros(x.shape[0])
        ek = x.new_zeros(x.shape[0])
        ej = x.new_zeros(x.shape[0])
        z = x
        for block in self.blocks:
            z, d, k, j = block(z, regularize=reg, **solve_kw)
            delta, ek, ej = delta + d, ek + k, ej + j
        return z, delta, ek, ej

    def log_prob(self, x: Tensor, **solve_kw) -> Tensor:
        """``log p(x)`` per sample, shape ``(B,)``."""
        z, delta, _, _ = self(x, regularize=False, **solve_kw)
        return standard_normal_log_prob(z) - delta

    def loss(self, x: Tensor, **solve_kw) -> tuple[Tensor, dict]:
        """Mean NLL plus the RNODE penalties; returns ``(loss, parts)`` with
        ``parts = {"nll", "kinetic", "jacobian"}`` as floats."""
        z, delta, ek, ej = self(x, **solve_kw)
        nll = -(standard_normal_log_prob(z) - delta).mean()
        loss = nll
        if self.regularized:
            loss = loss + self.kinetic * ek.mean() + self.jacobian * ej.mean()
        parts = {
            "nll": float(nll.detach()),
            "kinetic": float(ek.detach().mean()),
            "jacobian": float(ej.detach().mean()),
        }
        return loss, parts

    def inverse(self, z: Tensor, **solve_kw) -> tuple[Tensor, Tensor]:
        """Map base samples to data: returns ``(x, Δ)`` with ``log p(x) = log N(z) + Δ``."""
        delta = z.new_zeros(z.shape[0])
        x = z
        for block in reversed(self.blocks):
            x, d, _, _ = block(x, reverse=True, **solve_kw)
            delta = delta + d
        return x, delta

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        with_log_prob: bool = False,
        **solve_kw,
    ):
        """Draw ``n`` samples by integrating base samples from ``t = T`` back to ``0``.

        With ``with_log_prob=True`` also returns their log-density (from the
        same solve). Runs without a graph unless grad mode is on.
        """
        p = next(self.parameters())
        z = torch.randn(n, self.dim, generator=generator, dtype=p.dtype, device=p.device)
        x, delta = self.inverse(z, **solve_kw)
        if with_log_prob:
            return x, standard_normal_log_prob(z) + delta
        return x
