"""Latent ODE: decoder vs scipy, ELBO vs torch.distributions, encoders vs explicit loops,
gradients of every method vs float64 direct backprop, and the training command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from neurode import odeint
from neurode.app.data.spirals import make_spirals
from neurode.nn.latent import GRUEncoder, LatentODE, ODERNNEncoder

D64 = torch.float64


def small_data(n=6, window=12, extrap=4, seed=0):
    return make_spirals(
        n, n_total=60, n_window=window, n_extrap=extrap, keep=0.5, min_obs=3, seed=seed, dtype=D64
    )


def small_model(**kw):
    torch.manual_seed(0)
    kw.setdefault("ode_hidden", 10)
    kw.setdefault("enc_hidden", 8)
    kw.setdefault("dec_hidden", 8)
    return LatentODE(2, 3, **kw).to(D64)


def test_decoder_matches_scipy():
    from scipy.integrate import solve_ivp

    model = small_model()
    z0 = torch.randn(3, 3, dtype=D64)
    t = torch.linspace(0, 2.0, 9, dtype=D64)
    with torch.no_grad():
        got = model.decode(z0, t, method="dopri5", rtol=1e-11, atol=1e-11, options={})

        def rhs(_, z):
            return model.func(None, torch.from_numpy(z).view(3, 3)).reshape(-1).numpy()

        sol = solve_ivp(
            rhs,
            (0, 2.0),
            z0.reshape(-1).numpy(),
            method="DOP853",
            t_eval=t.numpy(),
            rtol=1e-12,
            atol=1e-12,
        )
        zs = torch.from_numpy(sol.y.T.copy()).view(9, 3, 3)
        expected = model.decoder(zs).transpose(0, 1)
    assert got.shape == (3, 9, 2)
    assert torch.allclose(got, expected, atol=1e-8)


def test_elbo_matches_an_independent_computation():
    model = small_model(obs_std=0.4)
    d = small_data()
    x, m, t = d.window()
    noise = torch.randn(len(d), 3, dtype=D64)
    elbo, parts = model.elbo(x, m, t, noise=noise, kl_weight=0.7)
    with torch.no_grad():
        mu, logvar = model.encode(x, m, t)
        std = (0.5 * logvar).exp()
        x_hat = model.decode(mu + std * noise, t)
        lik = torch.distributions.Normal(x_hat, 0.4).log_prob(x).sum(-1)
        log_lik = (lik * m).sum(1)
        kl = torch.distributions.kl_divergence(
            torch.distributions.Normal(mu, std), torch.distributions.Normal(0.0, 1.0)
        ).sum(1)
    assert float(elbo.detach()) == pytest.approx(float((log_lik - 0.7 * kl).mean()), rel=1e-12)
    assert parts["log_lik"] == pytest.approx(float(log_lik.mean()), rel=1e-12)
    assert parts["kl"] == pytest.approx(float(kl.mean()), rel=1e-12)
    mse = float((((x - x_hat) ** 2).sum(-1) * m).sum() / (m.sum() * 2))
    assert parts["mse"] == pytest.approx(mse, rel=1e-12)


def test_gru_encoder_reads_only_the_observations_with_their_gaps():
    torch.manual_seed(1)
    enc = GRUEncoder(2, 3, hidden=7).to(D64)
    d = small_data(n=5)
    x, m, t = d.window()
    mu, logvar = enc(x, m, t)
    # unobserved values are ignored
    x2 = torch.where(m[..., None] > 0, x, torch.randn_like(x) * 100)
    mu2, logvar2 = enc(x2, m, t)
    assert torch.equal(mu, mu2) and torch.equal(logvar, logvar2)
    # an explicit loop over each trajectory's own observation times, latest first
    with torch.no_grad():
        for b in range(len(d)):
            h = torch.zeros(1, 7, dtype=D64)
            t_prev = t[-1]
            for i in reversed(torch.nonzero(m[b]).flatten().tolist()):
                inp = torch.cat([x[b, i], (t_prev - t[i]).reshape(1)]).unsqueeze(0)
                h = enc.cell(inp, h)
                t_prev = t[i]
            ref_mu, ref_lv = enc.out(h).chunk(2, dim=1)
            assert torch.allclose(mu[b], ref_mu[0], atol=1e-12)
            assert torch.allclose(logvar[b], ref_lv[0], atol=1e-12)


def test_gru_encoder_gradients_equal_autograd_through_the_cell_loop():
    # the encoder's hand-written backward against autograd through one GRUCell call per
    # observation: every weight, the observations and the times (one trajectory sees nothing)
    torch.manual_seed(3)
    enc = GRUEncoder(2, 3, hidden=5).to(D64)
    d = small_data(n=5)
    x, m, t = d.window()
    m = m.clone()
    m[2] = 0
    x = x.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    w_mu, w_lv = torch.randn(5, 3, dtype=D64), torch.randn(5, 3, dtype=D64)
    inputs = [x, t, *enc.parameters()]

    def loss(mu, logvar):
        return (mu * w_mu).sum() + (logvar * w_lv).sum()

    got = torch.autograd.grad(loss(*enc(x, m, t)), inputs, allow_unused=True)
    hs = []
    for b in range(len(d)):
        h = torch.zeros(1, 5, dtype=D64)
        t_prev = t[-1]
        for i in reversed(torch.nonzero(m[b]).flatten().tolist()):
            h = enc.cell(torch.cat([x[b, i], (t_prev - t[i]).reshape(1)]).unsqueeze(0), h)
            t_prev = t[i]
        hs.append(h)
    ref_mu, ref_lv = enc.out(torch.cat(hs)).chunk(2, dim=1)
    want = torch.autograd.grad(loss(ref_mu, ref_lv), inputs, allow_unused=True)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-12, rtol=1e-12)
    assert float(got[0][2].abs().max()) == 0.0  # no observations, no gradient


def test_ode_rnn_encoder_flows_across_gaps_between_observations():
    torch.manual_seed(2)
    enc = ODERNNEncoder(2, 3, hidden=6, ode_hidden=8, method="dopri5", rtol=1e-10, atol=1e-10).to(
        D64
    )
    d = small_data(n=4)
    x, m, t = d.window()
    with torch.no_grad():
        mu, _ = enc(x, m, t)
        x2 = torch.where(m[..., None] > 0, x, torch.randn_like(x) * 100)
        assert torch.equal(enc(x2, m, t)[0], mu)
        # reference: one solve across each whole gap, GRU update at each observation
        for b in range(len(d)):
            h = torch.zeros(1, 6, dtype=D64)
            t_prev = float(t[-1])
            for i in reversed(torch.nonzero(m[b]).flatten().tolist()):
                if float(t[i]) != t_prev:
                    h = odeint(enc.func, h, [t_prev, float(t[i])], rtol=1e-11, atol=1e-11)[-1]
                h = enc.cell(x[b, i].unsqueeze(0), h)
                t_prev = float(t[i])
            if t_prev != float(t[0]):
                h = odeint(enc.func, h, [t_prev, float(t[0])], rtol=1e-11, atol=1e-11)[-1]
            ref_mu = enc.out(h).chunk(2, dim=1)[0]
            assert torch.allclose(mu[b], ref_mu[0], atol=1e-8)


def _latent_grads(encoder, gradient, method, options, rtol=1e-10, atol=1e-10):
    model = small_model(
        encoder=encoder, method=method, options=options, rtol=rtol, atol=atol, gradient=gradient
    )
    d = small_data(n=5, window=10)
    x, m, t = d.window()
    noise = torch.randn(5, 3, dtype=D64, generator=torch.Generator().manual_seed(4))
    elbo, _ = model.elbo(x, m, t, noise=noise)
    grads = torch.autograd.grad(-elbo, list(model.parameters()))
    return float(elbo.detach()), torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("encoder", ["gru", "odernn"])
@pytest.mark.parametrize(
    "gradient,method,options,tol",
    [
        ("checkpoint", "rk4", dict(steps=2), 1e-12),
        ("reversible", "alf", dict(steps=2), 1e-10),
        ("adjoint", "dopri5", {}, 1e-6),
    ],
)
def test_gradients_agree_with_direct_backprop(encoder, gradient, method, options, tol):
    e0, g0 = _latent_grads(encoder, "direct", method, options)
    e1, g1 = _latent_grads(encoder, gradient, method, options)
    assert e1 == pytest.approx(e0, rel=1e-12)
    assert float((g1 - g0).norm() / g0.norm()) < tol


def test_predict_extrapolates_beyond_the_window():
    model = small_model()
    d = small_data(n=3, window=10, extrap=5)
    x, m, t = d.window()
    pred = model.predict(x, m, t, d.t)
    assert pred.shape == (3, 15, 2) and not pred.requires_grad
    mu, _ = model.encode(x, m, t)
    assert torch.allclose(pred[:, :10], model.decode(mu, t).detach())


def test_invalid_inputs_raise():
    model = small_model()
    d = small_data()
    x, m, t = d.window()
    with pytest.raises(ValueError, match="mask"):
        model.elbo(x, m[:, :-1], t)
    with pytest.raises(ValueError, match=r"\(B, T, D\)"):
        model.elbo(x[0], m, t)
    with pytest.raises(ValueError, match="encoder"):
        LatentODE(encoder="lstm")


def test_training_improves_the_elbo_for_every_gradient_method():
    d = make_spirals(32, n_total=100, n_window=20, n_extrap=0, seed=3)
    x, m, t = d.window()
    for gradient, method in [("checkpoint", "rk4"), ("adjoint", "rk4"), ("reversible", "alf")]:
        torch.manual_seed(0)
        model = LatentODE(2, 4, method=method, options=dict(steps=1), gradient=gradient)
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        first = None
        for _ in range(15):
            elbo, _ = model.elbo(x, m, t, noise=torch.zeros(32, 4))
            opt.zero_grad()
            (-elbo).backward()
            opt.step()
            first = float(elbo.detach()) if first is None else first
        assert float(elbo.detach()) > first + 0.3 * abs(first), gradient


def test_train_latent_command_writes_pictures_and_resumes(tmp_path):
    from neurode.app.train import latent as train_latent

    out = tmp_path / "run"
    argv = [
        "--epochs", "1", "--n-train", "40", "--n-test", "8", "--n-window", "15",
        "--n-extrap", "5", "--batch-size", "20", "--out", str(out), "--no-progress",
        "--gradient", "reversible",
    ]  # fmt: skip
    assert train_latent.main(argv) == 0
    for name in (
        "reconstruction.png",
        "curves.png",
        "checkpoint.pt",
        "metrics.jsonl",
        "summary.json",
    ):
        assert (out / name).exists(), name
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(rec["test_extrap_mse"]) and rec["nfe_backward_per_iter"] > 0
    argv[argv.index("--epochs") + 1] = "2"
    assert train_latent.main([*argv, "--resume", "--no-plots"]) == 0
    epochs = [
        json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert np.isfinite(summary["test_interp_mse"])


def test_train_latent_defaults_to_adaptive_dopri5_and_direct_backprop(tmp_path):
    from neurode.app.train import latent as train_latent

    args = train_latent.build_parser().parse_args([])
    assert (args.gradient, args.steps, args.rtol, args.atol) == ("direct", 0, 1e-3, 1e-4)
    out = tmp_path / "run"
    argv = [
        "--epochs", "1", "--n-train", "20", "--n-test", "4", "--n-window", "15",
        "--n-extrap", "5", "--batch-size", "10", "--out", str(out), "--no-progress", "--no-plots",
    ]  # fmt: skip
    assert train_latent.main(argv) == 0
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    # direct backprop: the field is evaluated in the forward solve only
    assert rec["nfe_forward_per_iter"] > 0 and rec["nfe_backward_per_iter"] == 0


def test_neurode_train_latent_is_dispatched(capsys):
    from neurode.app.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "latent", "--help"])
    assert exc.value.code == 0
    assert "latent ODE" in capsys.readouterr().out


def test_encoders_refuse_a_fractional_mask():
    # the encoders read an observation or skip it: a weight of 0.5 must not be read as 1
    x = torch.zeros(2, 3, 2, dtype=D64)
    mask = torch.tensor([[1.0, 0.5, 0.0], [1.0, 1.0, 1.0]], dtype=D64)
    t = torch.linspace(0, 1, 3, dtype=D64)
    with pytest.raises(ValueError, match="0 .unobserved. or 1"):
        GRUEncoder(2, 3, hidden=4).to(D64)(x, mask, t)
