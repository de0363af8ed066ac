"""torchdiffeq's step callbacks on ``func``: called in the forward solve (and the
adjoint's backward solve with the ``_adjoint`` names), never in replays."""

from __future__ import annotations

import pytest
import torch

import neurode

DT = torch.float64


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.9, dtype=DT))
        self.log = {k: [] for k in ("step", "accept", "reject", "step_adj", "accept_adj")}

    def forward(self, t, y):
        return -self.a * y + torch.sin(3 * t)

    def callback_step(self, t0, y0, dt):
        self.log["step"].append((float(t0), float(dt)))

    def callback_accept_step(self, t0, y0, dt):
        self.log["accept"].append((float(t0), float(dt)))

    def callback_reject_step(self, t0, y0, dt):
        self.log["reject"].append((float(t0), float(dt)))

    def callback_step_adjoint(self, t0, y0, dt):
        self.log["step_adj"].append(float(t0))

    def callback_accept_step_adjoint(self, t0, y0, dt):
        self.log["accept_adj"].append(float(t0))


@pytest.mark.parametrize(
    "gradient", ["direct", "checkpoint", neurode.Checkpoint(budget=2), "adjoint"], ids=str
)
def test_callbacks_follow_the_forward_steps(gradient):
    f = Field()
    y0 = torch.ones(3, dtype=DT, requires_grad=True)
    sol = neurode.solve(f, y0, [0.0, 2.0, 4.0], rtol=1e-8, atol=1e-10, gradient=gradient)
    sol.ys.sum().backward()
    st = sol.stats
    assert len(f.log["accept"]) == st.accepted_steps
    assert len(f.log["reject"]) == st.rejected_steps
    assert len(f.log["step"]) == st.accepted_steps + st.rejected_steps
    # accepted steps tile [0, 4]
    t_end = max(t + h for t, h in f.log["accept"])
    assert abs(t_end - 4.0) < 1e-12
    if gradient == "adjoint":
        assert len(f.log["accept_adj"]) == st.backward_steps > 0
        assert len(f.log["step_adj"]) >= st.backward_steps
    else:
        assert f.log["step_adj"] == []


def test_fixed_grid_calls_only_callback_step_as_torchdiffeq():
    f = Field()
    with pytest.warns(UserWarning, match="callback_accept_step and callback_reject_step"):
        neurode.odeint(f, torch.ones(2, dtype=DT), [0.0, 1.0], method="rk4", options=dict(steps=7))
    assert len(f.log["step"]) == 7 and f.log["accept"] == [] and f.log["reject"] == []


def test_a_callback_that_is_never_called_warns():
    # a fixed grid rejects nothing, and scipy takes its steps out of reach: say so
    f = Field()
    with pytest.warns(UserWarning, match="callback_reject_step is never called"):
        neurode.odeint(f, torch.ones(2, dtype=DT), [0.0, 1.0], method="rk4", options=dict(steps=3))
    f = Field()
    with torch.no_grad(), pytest.warns(UserWarning, match="scipy_solver never calls"):
        ys = neurode.odeint(f, torch.ones(2, dtype=DT), [0.0, 1.0], method="scipy_solver")
    assert ys.shape == (2, 2) and f.log["step"] == f.log["accept"] == []
