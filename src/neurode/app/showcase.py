"""``neurode solvers``: every solver and gradient method on small problems, in two tables.

1. Accuracy vs work: a damped oscillator with a known solution (matrix
   exponential), every solver, error against evaluations of ``f``.
2. Gradients: a tanh-MLP vector field in float32, every gradient method's
   relative error against float64 backprop through the same discretisation,
   with forward/backward evaluations.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from neurode import ALF, Adjoint, Checkpoint, Reversible, solve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer configurations")
    parser.add_argument("--json", metavar="PATH", help="also write the tables as JSON")


def _accuracy_table(quick: bool) -> list[dict]:
    dtype = torch.float64
    a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=dtype)
    y0 = torch.tensor([1.0, 0.0], dtype=dtype)
    t = torch.tensor([0.0, 10.0], dtype=dtype)
    exact = torch.linalg.matrix_exp(a * 10.0) @ y0

    def f(t, y):
        return y @ a.T

    rows = []
    fixed = {
        "euler": [1000, 4000],
        "midpoint": [100, 400],
        "rk4": [25, 100],
        "alf": [100, 400],
        "reversible(rk4)": [25, 100],
    }
    adaptive = ["heun", "bosh3", "dopri5", "tsit5", "alf"]
    for name, steps_list in fixed.items():
        method = Reversible("rk4") if name == "reversible(rk4)" else name
        for steps in steps_list[:1] if quick else steps_list:
            sol = solve(f, y0, t, method=method, options=dict(steps=steps))
            err = float((sol.ys[-1] - exact).norm() / exact.norm())
            rows.append(
                dict(method=name, grid=f"{steps} steps", nfe=sol.stats.nfe_forward, error=err)
            )
    for name in adaptive:
        for rtol in [1e-4] if quick else [1e-4, 1e-6]:
            sol = solve(f, y0, t, method=name, rtol=rtol, atol=rtol * 1e-2)
            err = float((sol.ys[-1] - exact).norm() / exact.norm())
            rows.append(
                dict(method=name, grid=f"rtol={rtol:g}", nfe=sol.stats.nfe_forward, error=err)
            )
    return rows


class _MLP(torch.nn.Module):
    def __init__(self, dim: int = 8, hidden: int = 32):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, dim)
        )

    def forward(self, t, y):
        return self.net(y)


def _gradients(func, y0, method, gradient, steps, dtype):
    func = func.to(dtype)
    y0 = y0.detach().to(dtype).requires_grad_(True)
    for p in func.parameters():
        p.grad = None
    t0 = time.perf_counter()
    sol = solve(func, y0, [0.0, 1.0], method=method, options=dict(steps=steps), gradient=gradient)
    sol.ys[-1].pow(2).sum().backward()
    elapsed = time.perf_counter() - t0
    g = torch.cat([y0.grad.flatten()] + [p.grad.flatten() for p in func.parameters()])
    return g.double(), sol.stats, elapsed


def _gradient_table(quick: bool) -> list[dict]:
    torch.manual_seed(0)
    func = _MLP()
    y0 = torch.randn(64, 8)
    configs = [
        ("euler", "direct", 10),
        ("euler", "checkpoint", 10),
        ("euler", "adjoint", 10),
        ("rk4", "direct", 20),
        ("rk4", "checkpoint", 20),
        ("rk4", Checkpoint(budget=4), 20),
        ("rk4", "adjoint", 20),
        ("rk4", Adjoint(seminorm=True), 20),
        ("alf", "reversible", 20),
        (ALF(damping=0.9), "reversible", 20),
        (Reversible("rk4"), "reversible", 20),
    ]
    if quick:
        configs = configs[:3] + configs[8:9]
    rows = []
    for method, gradient, steps in configs:
        ref, _, _ = _gradients(func, y0, method, "direct", steps, torch.float64)
        got, stats, elapsed = _gradients(func, y0, method, gradient, steps, torch.float32)
        func.float()
        rows.append(
            dict(
                method=f"{getattr(method, 'name', method)} x{steps}",
                gradient=getattr(gradient, "name", gradient) + _budget(gradient),
                rel_error=float((got - ref).norm() / ref.norm()),
                nfe_forward=stats.nfe_forward,
                nfe_backward=stats.nfe_backward,
                seconds=elapsed,
            )
        )
    return rows


def _budget(gradient) -> str:
    if isinstance(gradient, Checkpoint) and gradient.budget is not None:
        return f"(budget={gradient.budget})"
    if isinstance(gradient, Adjoint) and gradient.seminorm:
        return "(seminorm)"
    return ""


def _print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    head = "  ".join(
        f"{title:>{len(title) if i else 34}}" for i, (title, _, _) in enumerate(columns)
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = []
        for i, (title, key, fmt) in enumerate(columns):
            width = len(title) if i else 34
            cells.append(f"{format(r[key], fmt):>{width}}")
        print("  ".join(cells))


def run(args: argparse.Namespace) -> int:
    print("Accuracy vs work: damped oscillator on [0, 10], relative error of y(10)\n")
    acc = _accuracy_table(args.quick)
    for r in acc:
        r["label"] = f"{r['method']} {r['grid']}"
    _print_table(
        acc, [("solver", "label", "s"), ("  nfe", "nfe", "d"), ("  rel. error", "error", ".2e")]
    )
    print("\nGradients: tanh MLP f on [0, 1], fixed steps, float32 vs float64 direct backprop\n")
    grads = _gradient_table(args.quick)
    for r in grads:
        r["label"] = f"{r['method']} / {r['gradient']}"
    _print_table(
        grads,
        [
            ("solver / gradient", "label", "s"),
            ("  rel. error", "rel_error", ".2e"),
            ("nfe fwd", "nfe_forward", "d"),
            ("nfe bwd", "nfe_backward", "d"),
        ],
    )
    print(
        "\nExact methods (checkpoint, reversible) sit at the float32 round-off floor of direct"
        " backprop.\nThe adjoint differentiates the continuous ODE, not the discretisation that"
        " was run:\nits error is the discretisation error of the adjoint solve (large at 10 Euler"
        " steps)."
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"accuracy": acc, "gradients": grads}, fh, indent=2)
    return 0
