"""Latent ODEs for irregularly sampled time series (Chen et al., 2018; Rubanova et al., 2019).

Generative model: ``z₀ ~ N(0, I)``, ``z(t) = ODESolve(f, z₀, t)``,
``x(tᵢ) ~ N(g(z(tᵢ)), σ² I)``. Inference: an encoder reads the observations
backwards in time — a GRU that also sees the time gap between observations,
or an ODE-RNN whose hidden state follows an ODE between observations — and
outputs a Gaussian posterior ``q(z₀ | x) = N(μ, diag σ_q²)``. Training
maximises the ELBO ``E_q[log p(x | z₀)] − KL(q ‖ N(0, I))`` with one
reparameterised sample.

Observations live on a time grid ``t`` shared by the batch, ``(T,)``; a mask
``(B, T)`` says which points each trajectory observed, so every trajectory
can have its own irregular times. The decoder solves once over the grid
(i.e. at the union of the batch's observation times) and the likelihood only
counts observed points.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..config import Configured, SolveConfig
from ..odeint import GradientLike, MethodLike

__all__ = ["GRUEncoder", "LatentODE", "ODERNNEncoder", "ODEFunc"]

_LOG_2PI = math.log(2 * math.pi)


class ODEFunc(nn.Module):
    """A time-invariant MLP vector field ``f(t, z) = W₃ act(W₂ act(W₁ z))``."""

    def __init__(self, dim: int, hidden: int = 20, layers: int = 2, activation=nn.ELU):
        super().__init__()
        mods: list[nn.Module] = []
        width = dim
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), activation()]
            width = hidden
        mods.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*mods)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return self.net(z)


def _check_inputs(x: Tensor, mask: Tensor, t: Tensor) -> Tensor:
    if x.dim() != 3:
        raise ValueError(f"x must have shape (B, T, D), got {tuple(x.shape)}")
    if mask.dim() == 3:  # per-feature mask: a point counts as observed if any feature is
        mask = (mask > 0).any(-1).to(x.dtype)
    if mask.shape != x.shape[:2]:
        raise ValueError(
            f"mask must have shape (B, T) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}"
        )
    if t.dim() != 1 or t.shape[0] != x.shape[1]:
        raise ValueError(f"t must have shape (T,) = ({x.shape[1]},), got {tuple(t.shape)}")
    mask = mask.to(x.dtype)
    if not bool(((mask == 0) | (mask == 1)).all()):
        # the encoders read a point or skip it; a fractional weight has no meaning here
        raise ValueError("mask must hold 0 (unobserved) or 1 (observed) at every point")
    return mask


class _GRUFinalStates(torch.autograd.Function):
    """The state of a GRU after each sequence's own last step, starting from zero.

    ``inp`` is ``(S, B, I)`` (time first, sequences padded at the end), ``last``
    ``(B,)`` the index of each sequence's last step; the weights are a
    ``GRUCell``'s. The forward keeps every step's gates; the backward is the
    hand-written backpropagation through time (one matrix product a step and
    a few element-wise ops), which on a CPU takes about half the time of
    autograd through ``torch.gru``'s per-step graph. First-order only.
    """

    @staticmethod
    def forward(ctx, inp, last, w_ih, w_hh, b_ih, b_hh):
        s_len, b, _ = inp.shape
        h = w_hh.shape[1]
        gi = torch.nn.functional.linear(inp, w_ih, b_ih)  # every step's input gates at once
        hs = inp.new_empty(s_len + 1, b, h)  # hs[s]: the state before step s
        hs[0].zero_()
        gh = inp.new_empty(s_len, b, 3 * h)  # W_hh h + b_hh
        rz = inp.new_empty(s_len, b, 2 * h)  # reset and update gates
        n = inp.new_empty(s_len, b, h)  # candidate state
        w_t = w_hh.t()
        gi_rz, gi_n = gi[..., : 2 * h].unbind(0), gi[..., 2 * h :].unbind(0)
        gh_rz, gh_n = gh[..., : 2 * h].unbind(0), gh[..., 2 * h :].unbind(0)
        r, z = rz[..., :h].unbind(0), rz[..., h:].unbind(0)
        hs_, gh_, rz_, n_ = hs.unbind(0), gh.unbind(0), rz.unbind(0), n.unbind(0)
        for s in range(s_len):
            torch.addmm(b_hh, hs_[s], w_t, out=gh_[s])
            torch.add(gi_rz[s], gh_rz[s], out=rz_[s]).sigmoid_()
            torch.addcmul(gi_n[s], r[s], gh_n[s], out=n_[s]).tanh_()
            torch.addcmul(n_[s], z[s], hs_[s] - n_[s], out=hs_[s + 1])  # (1 - z) n + z h
        ctx.save_for_backward(inp, last, w_ih, w_hh, hs, gh, rz, n)
        return hs[last + 1, torch.arange(b, device=inp.device)]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h):
        inp, last, w_ih, w_hh, hs, gh, rz, n = ctx.saved_tensors
        s_len, b, h = n.shape
        r, z = rz[..., :h], rz[..., h:]
        h_prev = hs[:-1]
        # the local derivatives of every step at once: dh → da_n, dh → da_z, da_n → da_r
        dn_coef = (1 - z) * (1 - n * n)
        dz_coef = (h_prev - n) * z * (1 - z)
        dr_coef = gh[..., 2 * h :] * r * (1 - r)
        g = grad_h.new_zeros(s_len, b, h)  # the incoming gradient, at each sequence's last step
        g[last, torch.arange(b, device=g.device)] = grad_h
        dgh = grad_h.new_empty(s_len, b, 3 * h)  # d(W_hh h + b_hh): [da_r, da_z, da_n * r]
        dgi_n = grad_h.new_empty(s_len, b, h)  # d(W_in x + b_in) = da_n
        dgh_, dgi_n_ = dgh.unbind(0), dgi_n.unbind(0)
        da_r, da_z, dgh_n = (dgh[..., i * h : (i + 1) * h].unbind(0) for i in range(3))
        dn_c, dz_c, dr_c = dn_coef.unbind(0), dz_coef.unbind(0), dr_coef.unbind(0)
        r_, z_, g_ = r.unbind(0), z.unbind(0), g.unbind(0)
        dh = grad_h.new_zeros(b, h)
        for s in range(s_len - 1, -1, -1):
            dh = dh + g_[s]
            da_n = torch.mul(dh, dn_c[s], out=dgi_n_[s])
            torch.mul(da_n, dr_c[s], out=da_r[s])
            torch.mul(dh, dz_c[s], out=da_z[s])
            torch.mul(da_n, r_[s], out=dgh_n[s])
            dh = torch.addmm(dh * z_[s], dgh_[s], w_hh)
        dgh = dgh.reshape(-1, 3 * h)
        d_rz, d_n = dgh[:, : 2 * h], dgi_n.reshape(-1, h)
        x = inp.reshape(-1, inp.shape[-1])
        d_inp = None
        if ctx.needs_input_grad[0]:
            d_inp = (d_rz @ w_ih[: 2 * h] + d_n @ w_ih[2 * h :]).view_as(inp)
        # the weight gradients as products over all steps, written x.t() @ d rather than
        # d.t() @ x: on a CPU the latter takes 2-3x longer when x has few columns
        d_w_ih = torch.cat([x.t() @ d_rz, x.t() @ d_n], 1).t()
        d_b_ih = torch.cat([d_rz.sum(0), d_n.sum(0)])
        d_w_hh = (h_prev.reshape(-1, h).t() @ dgh).t()
        return d_inp, None, d_w_ih, d_w_hh, d_b_ih, dgh.sum(0)


class GRUEncoder(nn.Module):
    """A GRU run backwards over the observations; outputs ``(μ, log σ_q²)`` of ``z₀``.

    At each observed point (latest first) the GRU reads ``[x(tᵢ), Δᵢ]`` where
    ``Δᵢ`` is the time to the observation it read before (the next one in
    time); unobserved grid points leave the hidden state untouched.
    """

    def __init__(self, obs_dim: int, latent_dim: int, hidden: int = 25):
        super().__init__()
        self.cell = nn.GRUCell(obs_dim + 1, hidden)
        self.out = nn.Linear(hidden, 2 * latent_dim)
        self.hidden = hidden

    def forward(self, x: Tensor, mask: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        mask = _check_inputs(x, mask, t)
        b, n, d = x.shape
        t = t.to(x.dtype)
        observed = mask > 0
        lengths = observed.sum(1)
        steps = max(int(lengths.max()), 1)
        # each trajectory's observed grid indices, latest first (unobserved ones after
        # them), cut at the longest sequence of observations
        grid = torch.arange(n, device=x.device).expand(b, n)
        idx = torch.where(observed, grid, -1).sort(dim=1, descending=True, stable=True).values
        idx = idx[:, :steps].clamp(min=0)
        ts = t[idx]
        gaps = torch.cat([t[-1].expand(b, 1), ts[:, :-1]], 1) - ts
        inp = torch.cat(
            [x.gather(1, idx.unsqueeze(-1).expand(b, steps, d)), gaps.unsqueeze(-1)], -1
        )
        # One pass over the sequences of observations with this cell's weights: the
        # same recurrence as calling ``self.cell`` once per observation, without a
        # Python step per grid point. Each trajectory's state is the one after its
        # own last observation; one without observations keeps the zero state.
        c = self.cell
        last = (lengths - 1).clamp(min=0)
        inp = inp.transpose(0, 1).contiguous()  # time first
        h = _GRUFinalStates.apply(inp, last, c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh)
        h = torch.where((lengths > 0).unsqueeze(1), h, torch.zeros_like(h))
        mu, logvar = self.out(h).chunk(2, dim=1)
        return mu, logvar


class ODERNNEncoder(Configured, nn.Module):
    """ODE-RNN (Rubanova et al., 2019) run backwards in time.

    Between grid points the hidden state follows ``dh/dt = f_h(h)`` (solved
    with this module's ``method``/``rtol``/``atol``/``options``/``gradient``,
    one solve per grid interval); at observed points a GRU cell updates it.
    The state starts at zero at the last grid time and ends at ``t[0]``.
    """

    def __init__(
        self,
        obs_dim: int,
        latent_dim: int,
        hidden: int = 25,
        ode_hidden: int = 32,
        *,
        method: MethodLike = "rk4",
        rtol: float = 1e-5,
        atol: float = 1e-6,
        options: dict | None = None,
        gradient: GradientLike = "direct",
    ):
        super().__init__()
        self.cell = nn.GRUCell(obs_dim, hidden)
        self.func = ODEFunc(hidden, ode_hidden, layers=1, activation=nn.Tanh)
        self.out = nn.Linear(hidden, 2 * latent_dim)
        self.hidden = hidden
        self.solve_config = SolveConfig(method, rtol, atol, options, gradient)

    def forward(self, x: Tensor, mask: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        mask = _check_inputs(x, mask, t)
        b, n, _ = x.shape
        h = x.new_zeros(b, self.hidden)
        times = t.detach().to(torch.float64).tolist()
        for i in range(n - 1, -1, -1):
            if i < n - 1:
                h = self.solve_config.solve(self.func, h, [times[i + 1], times[i]]).ys[-1]
            m = mask[:, i : i + 1]
            h = m * self.cell(x[:, i], h) + (1 - m) * h
        mu, logvar = self.out(h).chunk(2, dim=1)
        return mu, logvar


class LatentODE(Configured, nn.Module):
    """Latent ODE: encoder → ``q(z₀)`` → ODE decoder at the observation times → ELBO.

    Args:
        obs_dim: dimension of each observation.
        latent_dim: dimension of ``z``.
        encoder: ``"gru"`` (:class:`GRUEncoder`), ``"odernn"``
            (:class:`ODERNNEncoder`, solved with the same settings as the
            decoder) or a module ``(x, mask, t) → (μ, log σ²)``.
        enc_hidden: hidden size of the encoder's GRU.
        ode_hidden: hidden width of the latent vector field.
        dec_hidden: hidden width of the decoder ``g`` (0: linear decoder).
        obs_std: ``σ`` of the Gaussian likelihood.
        method, rtol, atol, options, gradient: how the latent ODE is solved
            (see :func:`neurode.odeint`); ``"reversible"`` needs ``method="alf"``
            or :class:`~neurode.Reversible`.
    """

    def __init__(
        self,
        obs_dim: int = 2,
        latent_dim: int = 4,
        *,
        encoder="gru",
        enc_hidden: int = 25,
        ode_hidden: int = 20,
        dec_hidden: int = 20,
        obs_std: float = 0.3,
        method: MethodLike = "rk4",
        rtol: float = 1e-5,
        atol: float = 1e-6,
        options: dict | None = None,
        gradient: GradientLike = "checkpoint",
    ):
        super().__init__()
        if encoder == "gru":
            encoder = GRUEncoder(obs_dim, latent_dim, enc_hidden)
        elif encoder == "odernn":
            encoder = ODERNNEncoder(
                obs_dim,
                latent_dim,
                enc_hidden,
                method=method,
                rtol=rtol,
                atol=atol,
                options=options,
                gradient=gradient,
            )
        elif isinstance(encoder, str):
            raise ValueError(f"encoder must be 'gru', 'odernn' or a module, got {encoder!r}")
        self.encoder = encoder
        self.func = ODEFunc(latent_dim, ode_hidden)
        if dec_hidden > 0:
            self.decoder = nn.Sequential(
                nn.Linear(latent_dim, dec_hidden), nn.ReLU(), nn.Linear(dec_hidden, obs_dim)
            )
        else:
            self.decoder = nn.Linear(latent_dim, obs_dim)
        self.latent_dim = latent_dim
        self.obs_std = float(obs_std)
        self.solve_config = SolveConfig(method, rtol, atol, options, gradient)
        self.last_stats = None

    def encode(self, x: Tensor, mask: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters ``(μ, log σ_q²)`` of ``z₀`` at ``t[0]``, each ``(B, L)``."""
        return self.encoder(x, mask, t)

    def decode(self, z0: Tensor, t, **solve_kw) -> Tensor:
        """Decoded means at times ``t`` (``t[0]`` is the time of ``z₀``): ``(B, T, D)``."""
        sol = self.solve_config.solve(self.func, z0, t, **solve_kw)
        self.last_stats = sol.stats
        return self.decoder(sol.ys).transpose(0, 1)

    def elbo(
        self,
        x: Tensor,
        mask: Tensor,
        t: Tensor,
        kl_weight: float = 1.0,
        noise: Tensor | None = None,
        **solve_kw,
    ) -> tuple[Tensor, dict]:
        """Mean ELBO per trajectory (nats) and its parts.

        ``noise`` is the standard-normal draw of the reparameterisation
        ``z₀ = μ + σ_q·noise`` (drawn here when ``None``); ``kl_weight`` scales
        the KL term (KL annealing). ``solve_kw`` overrides the decoder's solve
        settings for this call.

        Returns ``(elbo, parts)``; maximise ``elbo`` (minimise ``-elbo``).
        ``parts``: ``log_lik``, ``kl`` (floats, means per trajectory) and
        ``mse`` (mean squared error over observed points).
        """
        mask = _check_inputs(x, mask, t)
        mu, logvar = self.encode(x, mask, t)
        if noise is None:
            noise = torch.randn_like(mu)
        z0 = mu + noise * (0.5 * logvar).exp()
        x_hat = self.decode(z0, t, **solve_kw)
        var = self.obs_std**2
        sq = (x - x_hat).pow(2)
        log_px = -0.5 * (sq / var + math.log(var) + _LOG_2PI)  # (B, T, D)
        log_lik = (log_px.sum(-1) * mask).sum(1)  # (B,)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        elbo = (log_lik - kl_weight * kl).mean()
        n_obs = (mask.sum() * x.shape[-1]).clamp_min(1)
        parts = {
            "log_lik": float(log_lik.detach().mean()),
            "kl": float(kl.detach().mean()),
            "mse": float((sq.sum(-1) * mask).sum().detach() / n_obs),
        }
        return elbo, parts

    @torch.no_grad()
    def predict(self, x: Tensor, mask: Tensor, t_obs: Tensor, t_eval, **solve_kw) -> Tensor:
        """Posterior-mean prediction: encode on ``t_obs``, decode ``z₀ = μ`` at ``t_eval``
        (``t_eval[0]`` must equal ``t_obs[0]``). Returns ``(B, len(t_eval), D)``."""
        mu, _ = self.encode(x, mask, t_obs)
        return self.decode(mu, t_eval, **solve_kw)
