"""Stiff problems: neurode's implicit Runge–Kutta solvers against scipy and torchdiffeq.

1. Forward, adaptive, against scipy's Radau and BDF: Robertson's chemical kinetics on
   [0, 1e4] and van der Pol with μ = 1000 on [0, 3000], rtol = 1e-6. Evaluations of
   f, Jacobians, LU factorizations, Newton iterations, wall time (ratio to scipy's
   Radau) and the relative error against a scipy Radau solve at rtol = 1e-12.
   dopri5 is run on Robertson with a step budget to show it does not get there.
2. Forward + backward, fixed grid, against torchdiffeq's implicit solvers (when
   installed): a stiff tanh field with parameters, every one of the nine
   torchdiffeq names. Evaluations, time, and the gradient's error against the
   exact gradient of the same discretisation (neurode with Newton converged to
   round-off). torchdiffeq's ``gl4`` has a wrong second node (c₂ = c₁ = ½ − √3/6),
   which shows on this non-autonomous field as a larger ``y`` error.

    python benchmarks/stiff.py            # ~1-2 minutes
    python benchmarks/stiff.py --quick    # seconds: Robertson only, fewer methods
    python benchmarks/stiff.py --torchdiffeq-src ~/src/torchdiffeq

torchdiffeq's implicit solvers are on its GitHub master (merged in PR #265) but
not in the 0.2.5 release on PyPI; ``--torchdiffeq-src`` imports torchdiffeq from
a checkout instead of the installed package. Without implicit solvers the
torchdiffeq rows say so.

Prints tables and writes benchmarks/results/stiff.json (--out to change).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import neurode
from neurode.solvers.implicit import FIXED_GRID, ImplicitRK

RESULTS = Path(__file__).resolve().parent / "results"
F64 = torch.float64


# --- problems -------------------------------------------------------------------------
def robertson(t, y):
    y1, y2, y3 = y[0], y[1], y[2]
    return torch.stack(
        [-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2, 3e7 * y2**2]
    )


def robertson_np(t, y):
    y1, y2, y3 = y
    return [-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2, 3e7 * y2**2]


MU = 1000.0


def vdp(t, y):
    return torch.stack([y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]])


def vdp_np(t, y):
    return [y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]]


STIFF = {
    "robertson": dict(
        f=robertson, f_np=robertson_np, y0=[1.0, 0.0, 0.0], span=(0.0, 1e4), atol=1e-12
    ),
    "vanderpol_mu1000": dict(f=vdp, f_np=vdp_np, y0=[2.0, 0.0], span=(0.0, 3000.0), atol=1e-8),
}
RTOL = 1e-6


def forward_vs_scipy(quick: bool) -> list[dict]:
    from scipy.integrate import solve_ivp

    rows = []
    for pname, p in STIFF.items():
        if quick and pname != "robertson":
            continue
        ref = solve_ivp(p["f_np"], p["span"], p["y0"], method="Radau", rtol=1e-12, atol=1e-16)
        yref = ref.y[:, -1]

        def err(y, yref=yref):
            return float(np.max(np.abs(np.asarray(y) / yref - 1)))

        base = {}
        for meth in ("Radau", "BDF"):
            t0 = time.perf_counter()
            s = solve_ivp(p["f_np"], p["span"], p["y0"], method=meth, rtol=RTOL, atol=p["atol"])
            dt = time.perf_counter() - t0
            base[meth] = dt
            rows.append(
                dict(
                    problem=pname,
                    library="scipy",
                    method=meth,
                    nfe=int(s.nfev),
                    jacobians=int(s.njev),
                    factorizations=int(s.nlu),
                    newton_iterations=None,
                    steps=int(s.t.size - 1),
                    time_s=dt,
                    rel_error=err(s.y[:, -1]),
                )
            )
        methods = ["kvaerno4", "kvaerno5"] if (quick or pname != "robertson") else None
        for m in methods or ["kvaerno3", "kvaerno4", "kvaerno5"]:
            solver = ImplicitRK(m)
            y0 = torch.tensor(p["y0"], dtype=F64)
            t = torch.tensor(p["span"], dtype=F64)
            t0 = time.perf_counter()
            sol = neurode.solve(p["f"], y0, t, method=solver, rtol=RTOL, atol=p["atol"])
            dt = time.perf_counter() - t0
            st = solver.stats
            rows.append(
                dict(
                    problem=pname,
                    library="neurode",
                    method=m,
                    nfe=sol.stats.nfe_forward,
                    jacobians=st.jacobians,
                    factorizations=st.factorizations,
                    newton_iterations=st.newton_iterations,
                    steps=sol.stats.accepted_steps,
                    rejected=sol.stats.rejected_steps,
                    newton_failures=st.newton_failures,
                    time_s=dt,
                    time_vs_scipy_radau=dt / base["Radau"],
                    rel_error=err(sol.ys[-1].numpy()),
                )
            )
        if pname == "robertson":
            budget = 20_000
            y0 = torch.tensor(p["y0"], dtype=F64)
            t = torch.tensor(p["span"], dtype=F64)
            t0 = time.perf_counter()
            try:
                sol = neurode.solve(
                    p["f"], y0, t, method="dopri5", rtol=RTOL, atol=p["atol"],
                    options=dict(max_steps=budget),
                )  # fmt: skip
                outcome, nfe = "finished", sol.stats.nfe_forward
            except neurode.MaxStepsExceededError as e:
                outcome, nfe = f"failed: {str(e).split(';')[0]}", None
            rows.append(
                dict(
                    problem=pname,
                    library="neurode",
                    method="dopri5",
                    nfe=nfe,
                    steps_budget=budget,
                    outcome=outcome,
                    time_s=time.perf_counter() - t0,
                )
            )
    return rows


# --- fixed grid, forward + backward --------------------------------------------------
DIM, LAM, STEPS, SPAN = 8, 200.0, 20, 1.0


def _stiff_field():
    g = torch.Generator().manual_seed(0)
    W = (torch.randn(DIM, DIM, generator=g, dtype=F64) / math.sqrt(DIM)).requires_grad_(True)
    b = torch.randn(DIM, generator=g, dtype=F64).requires_grad_(True)
    y0 = torch.randn(DIM, generator=g, dtype=F64).requires_grad_(True)
    count = [0]

    def f(t, y):  # h·λ = 5 on the grid: explicit methods are unstable here
        count[0] += 1
        return 3 * torch.tanh(y @ W.T + b + torch.sin(5 * t)) - LAM * y

    return f, (y0, W, b), count


def _run_fixed(run) -> dict:
    f, (y0, W, b), count = _stiff_field()
    t = torch.linspace(0, SPAN, 3, dtype=F64)
    t0 = time.perf_counter()
    ys = run(f, y0, t)
    t1 = time.perf_counter()
    nfe_f = count[0]
    loss = (ys[1:] ** 2).sum()
    g = torch.autograd.grad(loss, (y0, W, b))
    t2 = time.perf_counter()
    return dict(
        ys=ys.detach(),
        grads=g,
        nfe_forward=nfe_f,
        nfe_backward=count[0] - nfe_f,
        forward_s=t1 - t0,
        total_s=t2 - t0,
    )


def _best(run, repeats):
    out = None
    for _ in range(repeats):
        r = _run_fixed(run)
        if out is None or r["total_s"] < out["total_s"]:
            out = r
    return out


def _torchdiffeq():
    try:
        import torchdiffeq
    except ImportError:
        return None, "not installed"
    from torchdiffeq._impl.odeint import SOLVERS

    if "radauIIA5" not in SOLVERS:
        return None, (
            f"torchdiffeq {torchdiffeq.__version__} at {Path(torchdiffeq.__file__).parent} "
            f"has no implicit solvers (PyPI's 0.2.5 predates them; use --torchdiffeq-src)"
        )
    return torchdiffeq, str(Path(torchdiffeq.__file__).parent)


def fixed_vs_torchdiffeq(quick: bool) -> list[dict]:
    torchdiffeq, where = _torchdiffeq()
    if torchdiffeq is None:
        print(f"torchdiffeq: {where}")
    rows = []
    h = SPAN / 2 / STEPS
    methods = ["implicit_euler", "trbdf2", "radauiia5"] if quick else list(FIXED_GRID)
    tdnames = {"radauiia3": "radauIIA3", "radauiia5": "radauIIA5"}
    for m in methods:
        exact = _run_fixed(
            lambda f, y0, t, m=m: neurode.odeint(
                f, y0, t, method=ImplicitRK(m, newton_tol=1e-14), options=dict(step_size=h)
            )
        )

        def gerr(r, exact=exact):
            a = torch.cat([x.reshape(-1) for x in r["grads"]])
            e = torch.cat([x.reshape(-1) for x in exact["grads"]])
            return float((a - e).norm() / e.norm())

        for grad in ("direct", "checkpoint"):
            solver = ImplicitRK(m)
            r = _best(
                lambda f, y0, t, grad=grad, solver=solver: neurode.odeint(
                    f, y0, t, method=solver, options=dict(step_size=h), gradient=grad
                ),
                3,
            )
            rows.append(
                dict(
                    method=m,
                    library="neurode",
                    gradient=grad,
                    nfe_forward=r["nfe_forward"],
                    nfe_backward=r["nfe_backward"],
                    forward_s=r["forward_s"],
                    total_s=r["total_s"],
                    grad_rel_error=gerr(r),
                    y_rel_error=float((r["ys"] - exact["ys"]).norm() / exact["ys"].norm()),
                )
            )
        if torchdiffeq is not None:
            name = tdnames.get(m, m)
            try:
                r = _best(
                    lambda f, y0, t, name=name: torchdiffeq.odeint(
                        f, y0, t, method=name, options=dict(step_size=h)
                    ),
                    3,
                )
                row = dict(
                    method=m,
                    library="torchdiffeq",
                    gradient="backprop through Broyden",
                    nfe_forward=r["nfe_forward"],
                    nfe_backward=r["nfe_backward"],
                    forward_s=r["forward_s"],
                    total_s=r["total_s"],
                    grad_rel_error=gerr(r),
                    y_rel_error=float((r["ys"] - exact["ys"]).norm() / exact["ys"].norm()),
                )
            except Exception as e:  # report, do not hide
                row = dict(method=m, library="torchdiffeq", error=f"{type(e).__name__}: {e}")
            rows.append(row)
    return rows


def _fmt(v, spec):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return format(v, spec)


def print_tables(fwd: list[dict], fixed: list[dict]) -> None:
    print(f"\nStiff problems, forward, rtol={RTOL}")
    hdr = (
        f"{'problem':18} {'library':8} {'method':9} {'nfe':>7} {'jac':>5} {'LU':>5} "
        f"{'newton':>7} {'steps':>6} {'time s':>7} {'/Radau':>7} {'rel err':>9}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in fwd:
        if "outcome" in r:
            print(f"{r['problem']:18} {r['library']:8} {r['method']:9} {_fmt(r['nfe'], 'd'):>7} "
                  f"  {r['outcome']} ({r['time_s']:.1f} s)")  # fmt: skip
            continue
        print(
            f"{r['problem']:18} {r['library']:8} {r['method']:9} {r['nfe']:7d} "
            f"{r['jacobians']:5d} {r['factorizations']:5d} {_fmt(r['newton_iterations'], 'd'):>7} "
            f"{r['steps']:6d} {r['time_s']:7.2f} {_fmt(r.get('time_vs_scipy_radau'), '.2f'):>7} "
            f"{r['rel_error']:9.1e}"
        )
    if not fixed:
        return
    print(f"\nFixed grid h={SPAN / 2 / STEPS:g}, forward + backward, stiff tanh field (dim {DIM})")
    hdr = (
        f"{'method':17} {'library':11} {'gradient':11} {'nfe fwd':>8} {'nfe bwd':>8} "
        f"{'fwd s':>7} {'total s':>8} {'grad err':>9} {'y err':>9}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in fixed:
        if "error" in r:
            print(f"{r['method']:17} {r['library']:11} {r['error']}")
            continue
        gname = r["gradient"] if r["library"] == "neurode" else "unrolled"
        print(
            f"{r['method']:17} {r['library']:11} {gname:11} {r['nfe_forward']:8d} "
            f"{r['nfe_backward']:8d} {r['forward_s']:7.3f} {r['total_s']:8.3f} "
            f"{r['grad_rel_error']:9.1e} {r['y_rel_error']:9.1e}"
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "stiff.json")
    ap.add_argument("--torchdiffeq-src", type=Path, default=None, help="a torchdiffeq checkout")
    args = ap.parse_args(argv)
    if args.torchdiffeq_src is not None:
        sys.path.insert(0, str(args.torchdiffeq_src.expanduser().resolve()))
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    fwd = forward_vs_scipy(args.quick)
    fixed = fixed_vs_torchdiffeq(args.quick)
    print_tables(fwd, fixed)
    td_mod, td_where = _torchdiffeq()
    td = None if td_mod is None else f"{td_mod.__version__} ({td_where})"
    import scipy

    out = dict(
        benchmark="stiff",
        quick=args.quick,
        environment=dict(
            python=platform.python_version(),
            torch=torch.__version__,
            scipy=scipy.__version__,
            torchdiffeq=td if td is not None else td_where,
            threads=1,
        ),
        rtol=RTOL,
        forward=fwd,
        fixed_grid=fixed,
        wall_s=time.perf_counter() - t0,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.out} ({out['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
