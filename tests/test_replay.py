"""Replays are faithful: a replayed step computes exactly what the original step computed.

Checkpointing and the reversible method evaluate ``f`` again in backward. With
BatchNorm in training mode those evaluations must not update the running
statistics a second time; with dropout they must draw the masks the original
step drew (each step runs under a random state forked from a per-solve base
seed, ``neurode._loop.StepRNG``), and the caller's global generator must not
notice the replays.
"""

from __future__ import annotations

import copy

import pytest
import torch
from gradproblems import DT, rel
from torch import nn

import neurode
from neurode._loop import Field, SolveStats, StepRNG, integrate
from neurode.gradients.base import INIT_KEY
from neurode.odeint import resolve_control, resolve_solver

T = [0.0, 0.4, 1.0]


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


class SmallNet(nn.Module):
    """``Linear → [BatchNorm1d | Dropout] → tanh → Linear`` on a batch of 8 states in R³."""

    def __init__(self, layer: nn.Module, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(3, 16), layer, nn.Tanh(), nn.Linear(16, 3)).to(DT)
        self.train()

    def forward(self, t, y):
        return self.net(y)


def _run(f, method, gradient, seed=0, **kw):
    """Forward + backward with the global generator seeded; returns outputs, gradients,
    stats and the global generator state after forward and after backward."""
    torch.manual_seed(seed)
    y0 = _randn(8, 3, seed=1).requires_grad_(True)
    G = _randn(len(T), 8, 3, seed=2)
    sol = neurode.solve(f, y0, T, method=method, gradient=gradient, **kw)
    after_forward = torch.get_rng_state()
    g = torch.autograd.grad((sol.ys * G).sum(), [y0, *f.parameters()])
    after_backward = torch.get_rng_state()
    return sol.ys.detach(), list(g), sol.stats, after_forward, after_backward


FIXED = {"options": {"steps": 3}}
ADAPTIVE = {"rtol": 1e-4, "atol": 1e-6}  # dopri5: ~10 steps
ADAPTIVE_ALF = {"rtol": 1e-2, "atol": 1e-4}  # ALF's first-order estimate: ~6 steps
# With dropout every evaluation sees a new mask, so error estimates are noisy and only
# loose tolerances keep the step size from collapsing; ALF still rejects a few attempts
# (whose keys the accepted steps then skip), which is what these cases exercise.
NOISY_ALF = {"rtol": 3e-2, "atol": 3e-2}
NOISY_DOPRI5 = {"rtol": 1e-1, "atol": 1e-1}

# ---------------------------------------------------------------------------
# BatchNorm: replays must not touch the running statistics
# ---------------------------------------------------------------------------

BN_CASES = [
    ("alf", FIXED, "checkpoint"),
    ("alf", FIXED, neurode.Checkpoint(budget=2)),
    ("alf", FIXED, "reversible"),
    ("alf", ADAPTIVE_ALF, "reversible"),
    ("rk4", FIXED, "checkpoint"),
    ("rk4", FIXED, neurode.Checkpoint(budget=2)),
    ("dopri5", ADAPTIVE, neurode.Checkpoint(budget=2)),
    ("dopri5", ADAPTIVE, "adjoint"),
]


def _ids(cases):
    names = {id(FIXED): "fixed", id(ADAPTIVE): "adaptive", id(ADAPTIVE_ALF): "adaptive"}
    names.update({id(NOISY_ALF): "adaptive", id(NOISY_DOPRI5): "adaptive"})
    out = []
    for method, kw, grad in cases:
        m = method if isinstance(method, str) else method.name
        g = grad if isinstance(grad, str) else repr(grad) if not isinstance(grad, list) else ""
        out.append("-".join(x for x in (m, names[id(kw)], g) if x))
    return out


@pytest.mark.parametrize("method, kw, gradient", BN_CASES, ids=_ids(BN_CASES))
def test_batchnorm_statistics_updated_once(method, kw, gradient):
    base = SmallNet(nn.BatchNorm1d(16))
    f_ref, f = copy.deepcopy(base), copy.deepcopy(base)
    _, g_ref, st_ref, _, _ = _run(f_ref, method, "direct", **kw)
    _, g, st, _, _ = _run(f, method, gradient, **kw)
    bn_ref, bn = f_ref.net[1], f.net[1]
    # the forward solve ran f the same number of times, each updating the statistics once
    assert st.nfe_forward == st_ref.nfe_forward
    assert int(bn.num_batches_tracked) == int(bn_ref.num_batches_tracked) == st.nfe_forward
    assert st.nfe_backward > 0  # backward did evaluate f, in training mode...
    # ...and left no trace: bitwise the statistics direct backprop leaves
    assert torch.equal(bn.running_mean, bn_ref.running_mean)
    assert torch.equal(bn.running_var, bn_ref.running_var)
    assert not torch.equal(bn.running_mean, base.net[1].running_mean)  # they did move
    if gradient != "adjoint":
        # batch statistics make f depend on the whole batch; still the same discretisation.
        # 1e-10 (checkpoint) / 1e-9 (reversible): see test_gradients.py.
        assert rel(g, g_ref) <= 1e-9


def test_batchnorm2d_in_a_conv_field():
    """The same with BatchNorm2d on an image state, Checkpoint(budget=2) on ALF."""

    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.c1 = nn.Conv2d(4, 4, 3, padding=1).to(DT)
            self.bn = nn.BatchNorm2d(4).to(DT)
            self.c2 = nn.Conv2d(4, 4, 3, padding=1).to(DT)

        def forward(self, t, y):
            return self.c2(torch.tanh(self.bn(self.c1(y))))

    base = Conv().train()
    y0 = _randn(2, 4, 6, 6, seed=3)
    G = _randn(2, 2, 4, 6, 6, seed=4)
    out = []
    for gradient in ("direct", neurode.Checkpoint(budget=2), "reversible"):
        f = copy.deepcopy(base)
        y = y0.clone().requires_grad_(True)
        ys = neurode.odeint(f, y, [0.0, 1.0], method="alf", options={"steps": 6}, gradient=gradient)
        g = torch.autograd.grad((ys * G).sum(), [y, *f.parameters()])
        out.append(
            (g, f.bn.running_mean.clone(), f.bn.running_var.clone(), f.bn.num_batches_tracked)
        )
    for g, mean, var, n in out[1:]:
        assert rel(g, out[0][0]) <= 1e-9
        assert torch.equal(mean, out[0][1]) and torch.equal(var, out[0][2])
        assert int(n) == int(out[0][3]) == 7  # v0 = f(y0) plus one evaluation per step


# ---------------------------------------------------------------------------
# Dropout: replays must draw the masks the original step drew
# ---------------------------------------------------------------------------


def _direct_with_step_rng(f, method, kw, seed=0):
    """The honest reference: float64 backprop through the same discretisation, every
    evaluation of f drawing from the random stream the non-direct forward uses
    (one base seed from the global generator per solve, the init under INIT_KEY,
    step attempt k under key k). That it *is* the same stream is checked by the
    callers: its outputs equal the method's outputs bitwise."""
    torch.manual_seed(seed)
    y0 = _randn(8, 3, seed=1).requires_grad_(True)
    G = _randn(len(T), 8, 3, seed=2)
    solver = resolve_solver(method)
    stats = SolveStats()
    field = Field(f, y0, stats)
    control = resolve_control(
        solver, kw.get("rtol", 1e-7), kw.get("atol", 1e-9), kw.get("options", {})
    )
    rng = StepRNG(y0.device)
    with rng(INIT_KEY):
        x0 = solver.init(field, T[0], y0)
    outs, _, _ = integrate(solver, field, x0, T, control, stats, rng=rng)
    ys = torch.stack(outs)
    g = torch.autograd.grad((ys * G).sum(), [y0, *f.parameters()])
    return ys.detach(), list(g), torch.get_rng_state()


DROPOUT_CASES = [
    ("alf", FIXED, ["checkpoint", neurode.Checkpoint(budget=2), "reversible"]),
    ("alf", NOISY_ALF, ["checkpoint", neurode.Checkpoint(budget=2), "reversible"]),
    ("dopri5", FIXED, ["checkpoint", neurode.Checkpoint(budget=2)]),  # FSAL: init evaluates f
    ("dopri5", NOISY_DOPRI5, ["checkpoint", neurode.Checkpoint(budget=2)]),
    ("rk4", FIXED, ["checkpoint", neurode.Checkpoint(budget=2)]),
    (neurode.Reversible("rk4"), FIXED, ["checkpoint", neurode.Checkpoint(budget=2)]),
]


@pytest.mark.parametrize("method, kw, gradients", DROPOUT_CASES, ids=_ids(DROPOUT_CASES))
def test_dropout_replays_draw_the_same_masks(method, kw, gradients):
    f = SmallNet(nn.Dropout(p=0.3))
    ys_ref, g_ref, rng_ref = _direct_with_step_rng(f, method, kw)
    results = []
    for gradient in gradients:
        ys, g, st, after_fwd, after_bwd = _run(f, method, gradient, **kw)
        assert torch.equal(ys, ys_ref)  # the reference drew the same masks
        if kw is NOISY_ALF:
            assert st.rejected_steps > 0  # rejected attempts' keys are skipped on replay
        # 1e-10: checkpoint replays the same ops; reversible adds reconstruction round-off
        assert rel(g, g_ref) <= (1e-9 if gradient == "reversible" else 1e-10), gradient
        # backward replays left the caller's generator alone...
        assert torch.equal(after_fwd, after_bwd), gradient
        # ...and the forward consumed it exactly as the reference did
        assert torch.equal(after_bwd, rng_ref), gradient
        results.append(g)
    for g in results[1:]:  # the methods agree with each other, too
        assert rel(g, results[0]) <= 1e-9


def test_dropout_masks_matter():
    """Guard against a vacuous test: with dropout the gradient really depends on the masks
    (a different seed gives a different gradient), and the no-grad solve of a preserving
    method draws the same masks as its differentiable forward (what ODEBlock's recompute
    relies on)."""
    f = SmallNet(nn.Dropout(p=0.3))
    ys0, g0, *_ = _run(f, "alf", "checkpoint", seed=0, **FIXED)
    ys1, g1, *_ = _run(f, "alf", "checkpoint", seed=1, **FIXED)
    assert not torch.equal(ys0, ys1) and rel(g1, g0) > 1e-3
    torch.manual_seed(0)
    with torch.no_grad():
        ys_ng = neurode.odeint(
            f, _randn(8, 3, seed=1), T, method="alf", gradient="checkpoint", **FIXED
        )
    assert torch.equal(ys_ng, ys0)
    torch.manual_seed(0)
    with torch.no_grad():
        ys_ng = neurode.odeint(
            f, _randn(8, 3, seed=1), T, method="dopri5", gradient="checkpoint", **FIXED
        )
    ys_d, *_ = _run(f, "dopri5", "checkpoint", seed=0, **FIXED)
    assert torch.equal(ys_ng, ys_d)


@pytest.mark.parametrize(
    "gradient",
    [
        neurode.Checkpoint(preserve_rng=False),
        neurode.Checkpoint(budget=2, preserve_rng=False),
        neurode.ReversibleGradient(preserve_rng=False),
    ],
    ids=["checkpoint", "budget2", "reversible"],
)
def test_without_preserve_rng_replays_draw_new_masks(gradient):
    """With preserve_rng=False the forward draws straight from the global generator, i.e.
    exactly as plain direct backprop does (same outputs, bitwise), but every replay draws
    fresh masks: the gradient is then wrong, and backward advances the global generator.
    This is what the default (preserve_rng=True) prevents."""
    f = SmallNet(nn.Dropout(p=0.3))
    ys_d, g_d, _, _, _ = _run(f, "alf", "direct", **FIXED)
    ys, g, _, after_fwd, after_bwd = _run(f, "alf", gradient, **FIXED)
    assert torch.equal(ys, ys_d)
    assert rel(g, g_d) > 1e-3
    assert not torch.equal(after_fwd, after_bwd)


def test_global_rng_after_the_solve_is_the_same_for_every_preserving_method():
    """With a deterministic f: checkpoint, a budget, reversible and the no-grad solve all
    advance the global generator by the same amount (one base-seed draw), before and
    after backward."""
    f = SmallNet(nn.Identity())
    states = []
    for gradient in ("checkpoint", neurode.Checkpoint(budget=2), "reversible"):
        _, _, _, after_fwd, after_bwd = _run(f, "alf", gradient, **FIXED)
        assert torch.equal(after_fwd, after_bwd)
        states.append(after_bwd)
    torch.manual_seed(0)
    with torch.no_grad():
        neurode.odeint(f, _randn(8, 3, seed=1), T, method="alf", gradient="checkpoint", **FIXED)
    states.append(torch.get_rng_state())
    for s in states[1:]:
        assert torch.equal(s, states[0])
    # StepRNG's contract: exactly one draw (the base seed) per solve
    torch.manual_seed(0)
    torch.randint(0, 2**31 - 1, (1,))
    assert torch.equal(torch.get_rng_state(), states[0])


def test_reversible_rk_with_dropout():
    # Each half step runs under its own seed, so the inverse (which evaluates the halves in
    # the opposite order) draws the forward's masks.
    f = SmallNet(nn.Dropout(p=0.3))
    method = neurode.Reversible("rk4")
    ys_ref, g_ref, _ = _direct_with_step_rng(f, method, FIXED)
    ys, g, *_ = _run(f, method, "reversible", **FIXED)
    assert torch.equal(ys, ys_ref)
    assert rel(g, g_ref) <= 1e-9
