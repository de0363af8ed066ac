"""Continuous normalising flows: exact densities, Hutchinson's estimator, gradients, sampling.

References are independent of the code under test: the closed-form density of
a linear flow, quadrature, ``torch.autograd.functional.jacobian``, and float64
direct backprop through the solver.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from neurode.nn.cnf import CNF, CNFBlock, CNFDynamics, ODENet, standard_normal_log_prob

D64 = torch.float64


class Linear(nn.Module):
    """``f(t, z) = A z``: the flow map is ``expm(A t)``, its log-det ``tr(A)·t``."""

    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, t, z):
        return z @ self.A.T


A3 = torch.tensor([[-0.4, 0.9, 0.1], [-0.6, 0.3, -0.2], [0.2, 0.5, -0.1]], dtype=D64)


def linear_flow(A, T=0.8, trace="exact", **kw):
    kw.setdefault("rtol", 1e-10)
    kw.setdefault("atol", 1e-10)
    return CNF(A.shape[0], T=T, trace=trace, nets=[Linear(A)], **kw).to(D64)


def gaussian_log_prob(x, cov):
    return torch.distributions.MultivariateNormal(
        torch.zeros(cov.shape[0], dtype=D64), cov
    ).log_prob(x)


# ----------------------------------------------------------------- exact densities


@pytest.mark.parametrize("gradient", ["direct", "checkpoint", "adjoint"])
def test_linear_flow_log_density_is_exact(gradient):
    # x = expm(−A T) z with z ~ N(0, I)  ⇒  x ~ N(0, M Mᵀ), M = expm(−A T)
    T = 0.8
    flow = linear_flow(A3, T, gradient=gradient)
    x = torch.randn(64, 3, dtype=D64, generator=torch.Generator().manual_seed(0))
    z, delta, _, _ = flow(x)
    # the log-det channel: Δ(T) = −tr(A)·T for every sample
    assert torch.allclose(delta, torch.full_like(delta, -float(torch.trace(A3)) * T), atol=1e-9)
    M = torch.linalg.matrix_exp(-A3 * T)
    expected = gaussian_log_prob(x, M @ M.T)
    assert torch.allclose(flow.log_prob(x), expected, atol=1e-8)
    assert torch.allclose(z, x @ torch.linalg.matrix_exp(A3 * T).T, atol=1e-9)


def test_linear_flow_through_stacked_blocks_and_reversible_solver():
    # two blocks of A then B: log p(x) = log N(e^{BT} e^{AT} x) + (tr A + tr B) T
    B = torch.tensor([[0.2, -0.3, 0.0], [0.4, -0.5, 0.1], [0.0, 0.3, 0.25]], dtype=D64)
    T = 0.5
    for kw in (
        dict(method="dopri5", rtol=1e-10, atol=1e-10),
        dict(method="alf", options=dict(steps=400), gradient="reversible"),
    ):
        flow = CNF(3, T=T, nets=[Linear(A3), Linear(B)], **kw).to(D64)
        x = torch.randn(16, 3, dtype=D64, generator=torch.Generator().manual_seed(1))
        E = torch.linalg.matrix_exp(B * T) @ torch.linalg.matrix_exp(A3 * T)
        expected = standard_normal_log_prob(x @ E.T) + float(torch.trace(A3) + torch.trace(B)) * T
        tol = 1e-8 if kw["method"] == "dopri5" else 1e-5  # ALF: second order, h = 1/800
        assert torch.allclose(flow.log_prob(x), expected, atol=tol)


def test_density_of_a_nonlinear_flow_integrates_to_one():
    torch.manual_seed(0)
    flow = CNF(2, hidden=(16, 16), T=1.0).to(D64)
    with torch.no_grad():  # make the map clearly non-trivial
        for p in flow.parameters():
            p.mul_(3.0)
    g = torch.linspace(-7, 7, 141, dtype=D64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    with torch.no_grad():
        p = flow.log_prob(pts, rtol=1e-7, atol=1e-7).exp()
    mass = float(p.sum() * (g[1] - g[0]) ** 2)
    assert mass == pytest.approx(1.0, abs=2e-3)
    # and it is not simply the base density
    base = standard_normal_log_prob(pts).exp()
    assert float((p - base).abs().max()) > 1e-2


def test_log_prob_works_without_an_outer_graph():
    flow = CNF(2, hidden=(8,), method="rk4", options=dict(steps=4))
    x = torch.randn(10, 2)
    with torch.no_grad():
        a = flow.log_prob(x)
    b = flow.log_prob(x)
    assert not a.requires_grad and b.requires_grad
    assert torch.allclose(a, b.detach(), atol=1e-6)


# ----------------------------------------------------------------- Hutchinson


def test_hutchinson_is_exact_for_diagonal_jacobian_with_rademacher_noise():
    # εᵀ A ε = Σ A_ii ε_i² = tr A when A is diagonal and ε_i = ±1
    A = torch.diag(torch.tensor([-0.5, 0.3, 0.7], dtype=D64))
    flow = linear_flow(A, 1.0, trace="hutchinson", noise="rademacher")
    _, delta, _, _ = flow(torch.randn(32, 3, dtype=D64))
    assert torch.allclose(delta, torch.full_like(delta, -0.5), atol=1e-9)


@pytest.mark.parametrize("gradient", ["direct", "checkpoint", "adjoint"])
def test_one_fixed_eps_per_solve(gradient):
    # for a linear f the estimate is constant in time, so Δ(T) = −T εᵀAε with the solve's ε
    flow = linear_flow(A3, 0.6, trace="hutchinson", noise="gaussian", gradient=gradient)
    x = torch.randn(50, 3, dtype=D64)
    _, delta, _, _ = flow(x)
    eps = flow.blocks[0].dynamics.eps
    assert eps is not None and eps.shape == x.shape
    expected = -0.6 * torch.einsum("bi,ij,bj->b", eps, A3, eps)
    assert torch.allclose(delta, expected, atol=1e-9)


def test_one_vjp_per_evaluation():
    flow = CNF(5, hidden=(8,), trace="hutchinson", method="rk4", options=dict(steps=3))
    dyn = flow.blocks[0].dynamics
    from neurode import solve

    dyn.resample(torch.zeros(4, 5))
    before = dyn.vjp_count
    sol = solve(
        dyn, (torch.randn(4, 5), torch.zeros(4)), [0.0, 1.0], method="rk4", options=dict(steps=3)
    )
    assert dyn.vjp_count - before == sol.stats.nfe_forward == 12
    exact = CNF(5, hidden=(8,), trace="exact").blocks[0].dynamics
    exact(torch.tensor(0.0), (torch.randn(4, 5), torch.zeros(4)))
    assert exact.vjp_count == 5


class NonlinearField(nn.Module):
    """``f(t, z) = W₂ tanh(W₁ z + t c) + K z``: a dense, non-symmetric Jacobian, tr ≈ 4."""

    def __init__(self, d):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.W1 = nn.Parameter(torch.randn(16, d, generator=g, dtype=D64))
        self.W2 = nn.Parameter(torch.randn(d, 16, generator=g, dtype=D64) / 10)
        self.c = nn.Parameter(torch.randn(16, generator=g, dtype=D64))
        diag = torch.linspace(0.5, 1.5, d, dtype=D64)
        K = 0.3 * torch.randn(d, d, generator=g, dtype=D64) + torch.diag(diag)
        self.K = nn.Parameter(K)

    def forward(self, t, z):
        return torch.tanh(z @ self.W1.T + t * self.c) @ self.W2.T + z @ self.K.T


def _bounded_deviation_rademacher(J, n, log_fail):
    # ε ∈ {±1}ᵈ: εᵀJε − tr J = Σ_{i≠j} J_ij ε_i ε_j lies in [−M, M], M = Σ_{i≠j}|J_ij|.
    # Hoeffding: P(|mean − tr J| ≥ s) ≤ 2 exp(−n s² / (2 M²)).
    M = float(J.abs().sum() - J.diagonal().abs().sum())
    return M * math.sqrt(2 * (math.log(2) + log_fail) / n)


def _bounded_deviation_gaussian(J, n, log_fail):
    # ε ~ N(0, I): εᵀJε − tr J = Σ λ_k (χ²_k − 1), λ the eigenvalues of (J + Jᵀ)/2. The mean of
    # n draws is such a sum with weights λ/n repeated n times. Laurent & Massart (2000), Lemma 1,
    # for non-negative weights a: each tail beyond 2‖a‖₂√x + 2‖a‖_∞ x has probability ≤ e^{−x};
    # applied to the positive and the negative eigenvalues, both tails: failure ≤ 4 e^{−x}.
    lam = torch.linalg.eigvalsh((J + J.T) / 2)
    x = math.log(4) + log_fail
    s = 0.0
    for part in (lam.clamp_min(0), (-lam).clamp_min(0)):
        s += 2 * float(part.norm()) / math.sqrt(n) * math.sqrt(x) + 2 * float(part.max()) / n * x
    return s


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased(noise):
    """The mean of n independent estimates lies within a concentration bound of the exact trace.

    The bound is chosen so that an unbiased estimator fails this test with probability
    below 1e-9 (Hoeffding for Rademacher, Laurent–Massart for Gaussian noise); a bias of
    a few percent of tr J would be detected.
    """
    torch.manual_seed(0)
    d, n = 4, 200_000
    net = NonlinearField(d)
    z0 = torch.randn(1, d, dtype=D64)
    t = torch.tensor(0.3, dtype=D64)
    J = torch.autograd.functional.jacobian(lambda z: net(t, z), z0).reshape(d, d)
    tr = float(torch.trace(J))
    dyn = CNFDynamics(net, trace="hutchinson", noise=noise)
    z = z0.expand(n, d).contiguous()
    dyn.resample(z, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        dz, neg_tr = dyn(t, (z, torch.zeros(n, dtype=D64)))
    assert torch.allclose(dz, net(t, z0).expand(n, d))
    log_fail = math.log(1e9)
    bound = (
        _bounded_deviation_rademacher if noise == "rademacher" else _bounded_deviation_gaussian
    )(J, n, log_fail)
    assert bound < 0.05 * abs(tr)  # the test has power: it would see a 5% bias
    estimate = float(-neg_tr.mean())
    assert abs(estimate - tr) < bound
    # the individual estimates do vary: they are not the exact trace in disguise
    assert float(neg_tr.std()) > 0.1 * abs(tr)


def test_hutchinson_needs_eps():
    dyn = CNFDynamics(ODENet(6, (8,)), trace="hutchinson")
    with pytest.raises(RuntimeError, match="resample"):
        dyn(torch.tensor(0.0), (torch.zeros(2, 6), torch.zeros(2)))


# ----------------------------------------------------------------- RNODE regularisers


def test_regularisers_of_a_linear_flow():
    T = 0.7
    flow = linear_flow(A3, T, kinetic=1.0, jacobian=1.0)
    x = torch.randn(8, 3, dtype=D64, generator=torch.Generator().manual_seed(2))
    _, _, ek, ej = flow(x)
    # ∫‖∂f/∂z‖²_F dt = ‖A‖²_F T
    assert torch.allclose(ej, torch.full_like(ej, float((A3**2).sum()) * T), atol=1e-9)
    # ∫‖A z(t)‖² dt with z(t) = expm(A t) x, by Simpson's rule on a fine grid
    ts = torch.linspace(0, T, 2001, dtype=D64)
    zt = torch.einsum("kij,bj->kbi", torch.linalg.matrix_exp(A3 * ts[:, None, None]), x)
    speed = ((zt @ A3.T) ** 2).sum(-1)  # (K, B)
    h = float(ts[1] - ts[0])
    simpson = h / 3 * (speed[0] + speed[-1] + 4 * speed[1:-1:2].sum(0) + 2 * speed[2:-1:2].sum(0))
    assert torch.allclose(ek, simpson, rtol=1e-8)
    # Hutchinson's Frobenius estimate ‖εᵀA‖² T, with the solve's ε
    hflow = linear_flow(A3, T, trace="hutchinson", kinetic=1.0, jacobian=1.0)
    _, _, _, ej_h = hflow(x)
    eps = hflow.blocks[0].dynamics.eps
    assert torch.allclose(ej_h, ((eps @ A3) ** 2).sum(1) * T, atol=1e-9)
    loss, parts = flow.loss(x)
    assert parts["kinetic"] == pytest.approx(float(ek.detach().mean()))
    assert float(loss.detach()) == pytest.approx(
        parts["nll"] + parts["kinetic"] + parts["jacobian"]
    )


# ----------------------------------------------------------------- gradients


def _cnf_grads(trace, gradient, method, options, rtol=1e-9, atol=1e-9, reuse=False):
    torch.manual_seed(0)
    flow = CNF(
        2,
        hidden=(8, 8),
        trace=trace,
        noise="gaussian",
        method=method,
        options=options,
        rtol=rtol,
        atol=atol,
        gradient=gradient,
        kinetic=0.1,
        jacobian=0.1,
    ).to(D64)
    x = torch.randn(12, 2, dtype=D64, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(5)  # the same ε for every gradient method
    loss, _ = flow.loss(x)
    if reuse:  # another solve in between redraws ε; the pending backward must not see it
        flow.loss(x * 0.5)
    grads = torch.autograd.grad(loss, list(flow.parameters()))
    return float(loss.detach()), torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
@pytest.mark.parametrize(
    "gradient,method,options,tol",
    [
        ("checkpoint", "rk4", dict(steps=5), 1e-12),
        ("checkpoint", "alf", dict(steps=5), 1e-12),
        ("reversible", "alf", dict(steps=5), 1e-10),
        ("adjoint", "dopri5", {}, 1e-5),
    ],
)
def test_gradients_agree_with_direct_backprop(trace, gradient, method, options, tol):
    l0, g0 = _cnf_grads(trace, "direct", method, options)
    l1, g1 = _cnf_grads(trace, gradient, method, options, reuse=gradient != "adjoint")
    assert l1 == pytest.approx(l0, rel=1e-12)
    assert float((g1 - g0).norm() / g0.norm()) < tol


def test_gradients_agree_with_finite_differences():
    torch.manual_seed(0)
    flow = CNF(2, hidden=(6,), method="rk4", options=dict(steps=4), gradient="checkpoint").to(D64)
    x = torch.randn(6, 2, dtype=D64)
    p = flow.blocks[0].dynamics.net.layers[0].layer.weight
    (g,) = torch.autograd.grad(-flow.log_prob(x).mean(), p)
    eps = 1e-6
    fd = torch.zeros_like(p)
    with torch.no_grad():
        for idx in [(0, 0), (3, 1), (5, 0)]:
            p[idx] += eps
            up = -flow.log_prob(x).mean()
            p[idx] -= 2 * eps
            down = -flow.log_prob(x).mean()
            p[idx] += eps
            fd[idx] = (up - down) / (2 * eps)
            assert float(g[idx]) == pytest.approx(float(fd[idx]), rel=1e-6, abs=1e-9)


def test_float32_training_step_for_every_gradient_method():
    x = torch.randn(32, 2)
    for gradient, method in [
        ("direct", "rk4"),
        ("checkpoint", "rk4"),
        ("adjoint", "rk4"),
        ("reversible", "alf"),
    ]:
        torch.manual_seed(0)
        flow = CNF(2, hidden=(16, 16), method=method, options=dict(steps=4), gradient=gradient)
        opt = torch.optim.Adam(flow.parameters(), 1e-2)
        losses = []
        for _ in range(15):
            loss, _ = flow.loss(x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        assert losses[-1] < losses[0] - 0.1, (gradient, losses)


# ----------------------------------------------------------------- sampling


@pytest.mark.parametrize("blocks", [1, 2])
def test_sampling_inverts_the_density_map(blocks):
    torch.manual_seed(1)
    flow = CNF(2, hidden=(16, 16), num_blocks=blocks, rtol=1e-10, atol=1e-10).to(D64)
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(2.0)
        x, logp_sample = flow.sample(
            200, generator=torch.Generator().manual_seed(0), with_log_prob=True
        )
        # forward map sends the samples back to the base points they came from
        z_back, _, _, _ = flow(x)
        z = torch.randn(200, 2, dtype=D64, generator=torch.Generator().manual_seed(0))
        x_again, _ = flow.inverse(z)
        logp_forward = flow.log_prob(x)
    assert torch.allclose(x, x_again)
    assert torch.allclose(z_back, z, atol=1e-7)
    assert float((x - z).abs().max()) > 0.1  # the map is not the identity
    # the density of a sample, from the sampling solve, equals the density map at that point
    assert torch.allclose(logp_sample, logp_forward, atol=1e-7)


def test_block_runs_both_ways():
    block = CNFBlock(CNFDynamics(ODENet(2, (8,))), T=0.5, rtol=1e-10, atol=1e-10).to(D64)
    x = torch.randn(5, 2, dtype=D64)
    with torch.no_grad():
        z, d, _, _ = block(x)
        x2, d2, _, _ = block(z, reverse=True)
    assert torch.allclose(x2, x, atol=1e-8)
    assert torch.allclose(d2, -d, atol=1e-8)


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="trace"):
        CNFDynamics(ODENet(2), trace="approx")
    with pytest.raises(ValueError, match="noise"):
        CNFDynamics(ODENet(2), noise="uniform")
    with pytest.raises(ValueError, match="activation"):
        ODENet(2, activation="relu")
    import neurode

    flow = CNF(2, hidden=(4,), method="rk4", options=dict(steps=2), gradient="reversible")
    with pytest.raises(neurode.UnsupportedCombinationError):
        flow.loss(torch.randn(3, 2))


# ----------------------------------------------------------------- the command


def test_train_cnf_command_writes_pictures_and_resumes(tmp_path):
    from neurode.app.train import cnf as train_cnf

    out = tmp_path / "run"
    argv = [
        "--data", "8gaussians", "--epochs", "1", "--n-train", "256", "--n-test", "128",
        "--batch-size", "128", "--hidden", "8,8", "--steps", "2", "--grid", "16",
        "--n-samples", "200", "--eval-tol", "1e-3", "--out", str(out), "--no-progress",
        "--gradient", "checkpoint",
    ]  # fmt: skip
    assert train_cnf.main(argv) == 0
    for name in ("density.png", "samples.png", "curves.png", "checkpoint.pt", "metrics.jsonl"):
        assert (out / name).exists(), name
    import json

    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 1 and "true_nll" in recs[0] and math.isfinite(recs[0]["test_nll"])
    argv[argv.index("--epochs") + 1] = "2"
    assert train_cnf.main([*argv, "--resume", "--no-plots"]) == 0
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2]


def test_neurode_train_cnf_is_dispatched(capsys):
    from neurode.app.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "cnf", "--help"])
    assert exc.value.code == 0
    assert "continuous normalising flow" in capsys.readouterr().out
