"""ODE-ResNet / SqueezeNext-ODE: shapes, options, gradients through every method."""

import copy

import pytest
import torch
import torch.nn.functional as F

from neurode.nn import ConvODEFunc, ODEBlock, ODEResNet, SqueezeNextODE, build_model
from neurode.nn.models import SqueezeNextODEFunc, make_norm

TINY = dict(widths=(4, 8, 8, 8), steps=2, method="rk2")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions run fastest on one thread (and do not fight other processes)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _grads(model, x, y):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name,cls", [("odenet", ODEResNet), ("sqnxt", SqueezeNextODE)])
@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_forward_shapes_and_blocks(name, cls, norm):
    torch.manual_seed(0)
    m = build_model(name, num_classes=7, in_channels=3, norm=norm, depth=2, **TINY)
    assert isinstance(m, cls)
    out = m(torch.randn(3, 3, 16, 16))
    assert out.shape == (3, 7)
    assert len(m.ode_blocks()) == 4 * 2  # four stages, depth 2
    # rk2 (2 evaluations a step) x 2 steps x 8 blocks
    assert m.nfe_forward == 2 * 2 * 8
    has_bn = any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())
    has_gn = any(isinstance(mod, torch.nn.GroupNorm) for mod in m.modules())
    assert has_bn == (norm == "batch") and has_gn == (norm == "group")


def test_stages_downsample_and_widths():
    m = ODEResNet(num_classes=10, in_channels=1, widths=(4, 6, 8, 10))
    shapes = []
    h = m.stem(torch.randn(2, 1, 8, 8))
    for stage in m.stages:
        h = stage(h)
        shapes.append(tuple(h.shape[1:]))
    assert shapes == [(4, 8, 8), (6, 4, 4), (8, 2, 2), (10, 1, 1)]
    assert m.head.in_features == 10


def test_conv_func_is_conv_norm_relu_conv_norm():
    f = ConvODEFunc(8, norm="group")
    kinds = [type(c).__name__ for c in f.children()]
    assert kinds == ["_TimeConv", "GroupNorm", "_TimeConv", "GroupNorm", "ReLU"]
    y = torch.randn(2, 8, 5, 5)
    assert f(torch.tensor(0.0), y).shape == y.shape


@pytest.mark.parametrize("func_cls", [ConvODEFunc, SqueezeNextODEFunc])
def test_time_input_is_an_extra_channel(func_cls):
    torch.manual_seed(0)
    f = func_cls(8, norm="none", time=True)
    convs = [m for m in f.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.in_channels in (9, 5, 3) for c in convs)  # C (or reduced C) + 1
    assert convs[0].in_channels == 9
    y = torch.randn(2, 8, 4, 4)
    a, b = f(torch.tensor(0.0), y), f(torch.tensor(0.7), y)
    assert not torch.allclose(a, b), "a time-dependent f must depend on t"
    g = func_cls(8, norm="none", time=False)
    assert torch.equal(g(torch.tensor(0.0), y), g(torch.tensor(0.7), y))


def test_unknown_model_and_norm_raise():
    with pytest.raises(ValueError, match="unknown model 'resnet9'.*odenet"):
        build_model("resnet9", 10, 3)
    with pytest.raises(ValueError, match="unknown norm"):
        make_norm("layer", 8)
    with pytest.raises(ValueError, match="widths"):
        ODEResNet(widths=())


@pytest.mark.parametrize("name", ["odenet", "sqnxt"])
@pytest.mark.parametrize(
    "gradient,method,recompute",
    [("checkpoint", "rk2", False), ("checkpoint", "rk2", True), ("reversible", "alf", False)],
)
def test_exact_methods_match_direct_in_float64(name, gradient, method, recompute):
    torch.manual_seed(0)
    m = build_model(name, 10, 1, norm="batch", time=True, **{**TINY, "method": method}).double()
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (6,))
    m.set_solver(gradient="direct")
    ref = _grads(copy.deepcopy(m), x, y)
    m.set_solver(gradient=gradient, recompute=recompute)
    got = _grads(copy.deepcopy(m), x, y)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_adjoint_gradient_is_approximate_and_converges_with_steps():
    torch.manual_seed(0)
    m = build_model("odenet", 10, 1, norm="none", **TINY).double()
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (6,))
    errs = []
    for steps in (1, 4):
        m.set_solver(steps=steps, gradient="direct")
        ref = torch.cat([g.flatten() for g in _grads(copy.deepcopy(m), x, y)])
        m.set_solver(gradient="adjoint")
        adj = torch.cat([g.flatten() for g in _grads(copy.deepcopy(m), x, y)])
        errs.append(float((adj - ref).norm() / ref.norm()))
    assert errs[0] > 1e-8  # not exact for the discretisation...
    assert errs[1] < errs[0] / 4  # ...but consistent: better with more steps


def test_set_solver_and_nfe_accounting():
    m = build_model("odenet", 10, 1, **TINY)
    m.set_solver(method="euler", steps=3, gradient="checkpoint")
    assert all(b.method == "euler" and b.options["steps"] == 3 for b in m.ode_blocks())
    m.reset_nfe()
    out = m(torch.randn(4, 1, 8, 8))
    assert m.nfe_forward == 3 * 4 and m.nfe_backward == 0
    out.sum().backward()
    assert m.nfe_backward == 3 * 4  # checkpoint replays each step once
    m.reset_nfe()
    assert m.nfe_forward == 0
    assert isinstance(m.ode_blocks()[0], ODEBlock)


def test_batchnorm_statistics_updated_once_per_forward_with_recompute():
    torch.manual_seed(0)
    m = build_model("odenet", 10, 1, **{**TINY, "steps": 1, "method": "euler"}, recompute=True)
    bn = m.ode_blocks()[0].func.norm1
    m(torch.randn(4, 1, 8, 8)).sum().backward()
    assert int(bn.num_batches_tracked) == 1  # the backward rebuild leaves BN alone
