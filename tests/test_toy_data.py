"""The 2-D toy densities and the spirals task: shapes, reproducibility, true densities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neurode.app.data import spirals, toy


def _grid(lim: float, n: int):
    g = torch.linspace(-lim, lim, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], 1), float(g[1] - g[0]) ** 2


@pytest.mark.parametrize("name", toy.NAMES)
def test_shapes_dtype_and_reproducibility(name):
    a = toy.sample(name, 1001, seed=3)
    b = toy.sample(name, 1001, seed=3)
    c = toy.sample(name, 1001, seed=4)
    assert a.shape == (1001, 2) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.isfinite(a).all()
    # every density lives (essentially) inside the plotting square
    inside = (a.abs() <= toy.BOUNDS[name] + 0.5).all(1).float().mean()
    assert inside > 0.995
    assert toy.sample(name, 0, seed=0).shape == (0, 2)
    assert toy.sample(name, 5, seed=0, dtype=torch.float64).dtype == torch.float64


def test_sampling_leaves_global_rng_alone():
    state = np.random.get_state()
    torch_state = torch.get_rng_state()
    toy.sample("pinwheel", 100, seed=1)
    assert np.array_equal(np.random.get_state()[1], state[1])
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_names_and_aliases():
    assert toy.canonical("two_moons") == "moons"
    assert toy.canonical("8-gaussians") == "8gaussians"
    assert toy.canonical("two_spirals") == "2spirals"
    with pytest.raises(ValueError, match="choose one of"):
        toy.sample("swissroll", 10)
    assert toy.has_density("8gaussians") and toy.has_density("checkerboard")
    assert not toy.has_density("pinwheel")
    with pytest.raises(ValueError, match="closed form"):
        toy.log_prob("moons", torch.zeros(3, 2))


@pytest.mark.parametrize("name", ["8gaussians", "checkerboard"])
def test_true_density_integrates_to_one(name):
    pts, cell = _grid(5.0, 1001)
    p = toy.log_prob(name, pts).exp()
    # midpoint-rule quadrature; the checkerboard's edges cost O(cell) of accuracy
    assert float(p.sum() * cell) == pytest.approx(1.0, abs=2e-2 if name == "checkerboard" else 1e-6)


def test_eight_gaussians_matches_its_density():
    # mode frequencies: each of 8 modes gets n/8 samples; a binomial count deviates from
    # n/8 by more than 6 standard deviations with probability < 2e-9 (per mode, Gaussian tail)
    n = 80_000
    x = toy.sample("8gaussians", n, seed=0, dtype=torch.float64)
    centers = torch.from_numpy(toy._CENTERS_8G)
    counts = torch.bincount(torch.cdist(x, centers).argmin(1), minlength=8).double()
    sd = math.sqrt(n * (1 / 8) * (7 / 8))
    assert ((counts - n / 8).abs() < 6 * sd).all()
    # per-mode spread: std 0.5/1.414 in each coordinate
    resid = x - centers[torch.cdist(x, centers).argmin(1)]
    assert resid.std(0).numpy() == pytest.approx([0.5 / 1.414] * 2, rel=0.02)
    # the mean NLL of the samples is the entropy, computed independently by quadrature
    pts, cell = _grid(6.0, 1201)
    lp = toy.log_prob("8gaussians", pts)
    entropy = float(-(lp.exp() * lp).sum() * cell)
    nll = -toy.log_prob("8gaussians", x)
    # CLT: |mean − entropy| < 6 σ/√n except with probability < 2e-9
    assert abs(float(nll.mean()) - entropy) < 6 * float(nll.std()) / math.sqrt(n)


def test_checkerboard_samples_lie_on_the_support():
    x = toy.sample("checkerboard", 20_000, seed=1)
    lp = toy.log_prob("checkerboard", x)
    assert torch.isfinite(lp).all()
    assert torch.allclose(lp, torch.full_like(lp, -math.log(32)))
    # and the off-squares are empty: shift by one cell and every point leaves the support
    assert (
        torch.isinf(toy.log_prob("checkerboard", x + torch.tensor([2.0, 0.0]))).float().mean()
        > 0.74
    )


def test_circles_and_moons_geometry():
    x = toy.sample("circles", 20_000, seed=0, dtype=torch.float64)
    r = x.norm(dim=1)
    inner, outer = r[r < 2.25], r[r >= 2.25]
    assert inner.mean().item() == pytest.approx(1.5, abs=0.05)
    assert outer.mean().item() == pytest.approx(3.0, abs=0.05)
    assert len(inner) / len(r) == pytest.approx(0.5, abs=0.02)
    m = toy.sample("moons", 20_000, seed=0, dtype=torch.float64)
    # undo the affine map: each half lies on a unit half-circle (noise 0.1)
    u = (m + torch.tensor([1.0, 0.2])) / 2
    d_outer = (u.norm(dim=1) - 1).abs()
    d_inner = ((u - torch.tensor([1.0, 0.5])).norm(dim=1) - 1).abs()
    assert torch.minimum(d_outer, d_inner).mean() < 0.1


def test_pinwheel_has_five_arms_and_spirals_two():
    x = toy.sample("pinwheel", 50_000, seed=0, dtype=torch.float64)
    # points near the centre are rare; the angle histogram of the rest has five peaks
    far = x[x.norm(dim=1) > 2.0]
    hist = torch.histc(torch.atan2(far[:, 1], far[:, 0]), bins=60, min=-math.pi, max=math.pi)
    peaks = ((hist > hist.roll(1)) & (hist >= hist.roll(-1)) & (hist > hist.mean())).sum()
    assert int(peaks) == 5
    s = toy.sample("2spirals", 20_000, seed=0, dtype=torch.float64)
    assert s.mean(0).abs().max() < 0.1  # the two arms are point reflections of each other


# ---------------------------------------------------------------------- spirals task


def test_spirals_shapes_masks_and_noise():
    d = spirals.make_spirals(300, n_window=40, n_extrap=30, keep=0.3, min_obs=4, seed=1)
    assert d.t.shape == (70,) and d.x.shape == (300, 70, 2) and d.mask.shape == (300, 70)
    assert float(d.t[0]) == 0.0 and (d.t.diff() > 0).all()
    assert (d.mask[:, 40:] == 0).all()
    assert (d.mask.sum(1) >= 4).all()
    assert d.mask[:, :40].mean().item() == pytest.approx(0.3, abs=0.03)
    resid = d.x - d.clean
    assert resid.std().item() == pytest.approx(0.1, rel=0.05)
    assert 0.4 < d.clockwise.float().mean().item() < 0.6
    again = spirals.make_spirals(300, n_window=40, n_extrap=30, keep=0.3, min_obs=4, seed=1)
    assert torch.equal(d.x, again.x) and torch.equal(d.mask, again.mask)
    sub = d[:10]
    assert len(sub) == 10 and sub.n_window == 40
    x, m, t = d.window()
    assert x.shape == (300, 40, 2) and m.shape == (300, 40) and t.shape == (40,)


def test_spirals_turn_the_right_way():
    d = spirals.make_spirals(200, seed=2, dtype=torch.float64)
    centre = torch.where(d.clockwise[:, None], torch.tensor([-5.0, 0.0]), torch.tensor([5.0, 0.0]))
    rel = d.clean - centre[:, None, :]
    cross = rel[:, :-1, 0] * rel[:, 1:, 1] - rel[:, :-1, 1] * rel[:, 1:, 0]
    assert (cross[d.clockwise] < 0).all()
    assert (cross[~d.clockwise] > 0).all()


def test_spirals_validate_arguments():
    with pytest.raises(ValueError, match="exceeds"):
        spirals.make_spirals(5, n_window=300, n_extrap=300)
    with pytest.raises(ValueError, match="keep"):
        spirals.make_spirals(5, keep=0.0)
