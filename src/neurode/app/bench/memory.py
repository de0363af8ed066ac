"""Peak memory and time of forward + backward, one configuration per fresh process.

A *configuration* is a gradient method (or a peer's) on a benchmark problem
with ``N_t`` fixed steps. :func:`measure` runs one configuration in a fresh
Python process (``python -m neurode.app.bench.memory SPEC_JSON``), so that nothing
a previous configuration allocated, cached or fragmented can hide in its
numbers. The process:

1. imports torch and neurode, builds the problem (seeded) and the solve, and
   runs the same solve on a single sample with two steps (to initialise
   autograd, the kernels and lazily imported modules at negligible memory);
2. takes a baseline ``resource.getrusage(RUSAGE_SELF).ru_maxrss``;
3. runs forward + backward of the loss ``Σ w ⊙ y(t1)`` once;
4. reports the peak ``ru_maxrss`` minus the baseline (the memory the solve
   needed on top of the problem), the number of evaluations of ``f`` and —
   when given a float64 reference — the gradient's relative error;
5. switches the allocator to keeping freed memory and times a few more runs
   (unless the memory run was already long).

The process runs with glibc told to map every block of 64 KiB or more on its
own (:data:`EXACT_TUNABLES`), so freed tensors leave RSS at once and the
peak is the peak of the tensors alive, not of a fragmented heap. The timing
runs switch that off (``mallopt``): with it, every temporary tensor costs
page faults, which on a virtual machine would dominate small problems' times.

:func:`memory_sweep` runs a list of configurations over a list of ``N_t``,
skipping those whose memory (or time), extrapolated linearly from the
smaller ``N_t`` of the same configuration, would exceed a limit.
"""

from __future__ import annotations

import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .peers import load_peer
from .problems import BenchProblem, Counted, make_problem

RESULT_TAG = "NEURODE_BENCH_RESULT "


@dataclass(frozen=True)
class Config:
    """One way of computing the gradient.

    Attributes:
        key: short name used in tables and JSON.
        label: what it is, for people.
        solver: ``"base"`` (the problem's fixed-step solver), ``"alf"`` or ``"reversible-rk4"``.
        gradient: neurode gradient (``direct``, ``checkpoint``, ``checkpoint-8``,
            ``anode-block``, ``adjoint``, ``reversible``) or the peer's
            (``direct``, ``adjoint``, ``mali``).
        peer: ``None`` for neurode, else the peer library's name.
        direct: the key of the configuration whose time is this one's 1.0
            (backprop through the same discretisation).
        reference: the key whose float64 direct gradient this one is compared with.
    """

    key: str
    label: str
    solver: str
    gradient: str
    peer: str | None = None
    direct: str = "direct"
    reference: str = "direct"


def _cfg(key, label, solver, gradient, peer=None, direct="direct", reference="direct"):
    return Config(key, label, solver, gradient, peer, direct, reference)


CONFIGS: dict[str, Config] = {
    c.key: c
    for c in [
        _cfg("direct", "neurode direct backprop", "base", "direct"),
        _cfg("checkpoint", "neurode checkpoint (every step)", "base", "checkpoint"),
        _cfg("checkpoint-8", "neurode Checkpoint(budget=8)", "base", "checkpoint-8"),
        _cfg("anode-block", "neurode ODEBlock(recompute=True)", "base", "anode-block"),
        _cfg("adjoint", "neurode adjoint", "base", "adjoint"),
        _cfg(
            "direct-alf",
            "neurode direct backprop, ALF",
            "alf",
            "direct",
            direct="direct-alf",
            reference="direct-alf",
        ),
        _cfg(
            "reversible-alf",
            "neurode reversible, ALF (MALI)",
            "alf",
            "reversible",
            direct="direct-alf",
            reference="direct-alf",
        ),
        _cfg(
            "reversible-rk4",
            'neurode reversible, Reversible("rk4")',
            "reversible-rk4",
            "reversible",
            reference="direct-revrk4",
        ),
        _cfg(
            "direct-revrk4",
            'neurode direct backprop, Reversible("rk4")',
            "reversible-rk4",
            "direct",
            direct="direct-revrk4",
            reference="direct-revrk4",
        ),
        _cfg(
            "torchdiffeq",
            "torchdiffeq odeint (backprop)",
            "base",
            "direct",
            peer="torchdiffeq",
            reference="torchdiffeq",
        ),
        _cfg(
            "torchdiffeq-adjoint",
            "torchdiffeq odeint_adjoint",
            "base",
            "adjoint",
            peer="torchdiffeq",
            reference="torchdiffeq",
        ),
        _cfg(
            "mali",
            "TorchDiffEqPack MALI (odesolve_adjoint_sym12)",
            "alf",
            "mali",
            peer="TorchDiffEqPack",
            direct="direct-alf",
            reference="direct-alf",
        ),
    ]
}

# The default sweep: neurode's methods, then the peers side by side.
DEFAULT_KEYS = (
    "direct",
    "checkpoint",
    "checkpoint-8",
    "anode-block",
    "adjoint",
    "direct-alf",
    "reversible-alf",
    "reversible-rk4",
    "torchdiffeq",
    "torchdiffeq-adjoint",
    "mali",
)


class Unavailable(Exception):
    """A configuration that cannot run here (a peer missing or failing); the message says why."""


def solver_name(problem: BenchProblem, config: Config) -> str:
    return {"base": problem.base_method, "alf": "alf", "reversible-rk4": 'Reversible("rk4")'}[
        config.solver
    ]


def build_solve(
    config: Config, problem: BenchProblem, func, steps: int
) -> Callable[[Tensor], Tensor]:
    """``y0 ↦ y(t1)`` for ``config`` on ``problem`` with ``steps`` fixed steps, differentiable."""
    import neurode
    from neurode.nn import ODEBlock

    t0, t1 = problem.t0, problem.t1
    if config.peer is not None:
        adapter, reason = load_peer(config.peer)
        if adapter is None:
            raise Unavailable(reason)
        method = "alf" if config.solver == "alf" else problem.base_method
        why = adapter.unsupported(method, config.gradient)
        if why:
            raise Unavailable(why)
        return lambda y0: adapter.solve(
            func, y0, t0, t1, method=method, steps=steps, gradient=config.gradient
        )
    method = {
        "base": problem.base_method,
        "alf": "alf",
        "reversible-rk4": neurode.Reversible("rk4"),
    }[config.solver]
    if config.gradient == "anode-block":
        block = ODEBlock(
            func, t0, t1, method=method, steps=steps, gradient="checkpoint", recompute=True
        )
        return block
    gradient = {"checkpoint-8": neurode.Checkpoint(budget=8)}.get(config.gradient, config.gradient)
    return lambda y0: neurode.odeint(
        func, y0, [t0, t1], method=method, options={"steps": steps}, gradient=gradient
    )[-1]


def _maxrss_mb() -> float:
    """Peak resident memory of this process, in MB.

    On Linux, ``getrusage``'s ``ru_maxrss`` survives ``exec``: a worker started
    by a parent holding 2 GB reports a 2 GB peak from its first instruction,
    hiding everything below it. ``VmHWM`` (the same high-water mark, kept per
    address space) starts afresh at ``exec``, so it is read where it exists.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# The worker's allocator for the memory run: every block of 64 KiB or more gets its own
# mapping, returned to the OS when freed, so RSS follows the tensors alive rather than the
# heap's fragmentation (which, for 128 KiB tensors, doubles the apparent growth per step);
# transparent huge pages keep the page faults of those mappings cheap.
EXACT_TUNABLES = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=65536"


def _heap_mode() -> bool:
    """Switch glibc to keeping freed memory in its heap (for the timing runs)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20) and libc.mallopt(_M_TRIM_THRESHOLD, 2**30)
        return bool(ok)
    except Exception:
        return False


def run_worker(spec: dict) -> dict:
    """Measure one configuration in *this* process (call it in a fresh one)."""
    from .timing import set_threads

    set_threads(spec.get("threads"))
    problem = make_problem(
        spec["problem"], quick=spec.get("quick", False), seed=spec.get("seed", 0)
    )
    if spec.get("dtype") == "float64":
        problem = problem.to(torch.float64)
    config = CONFIGS[spec["key"]]
    steps = int(spec["steps"])
    counted = Counted(problem.func)
    solve = build_solve(config, problem, counted, steps)
    params = [p for p in problem.func.parameters() if p.requires_grad]
    y0 = problem.y0.clone().requires_grad_(True)

    def once() -> list[Tensor]:
        y = solve(y0)
        return list(torch.autograd.grad(problem.loss(y), [y0, *params]))

    # Warm up: the same solve on one sample with two steps initialises autograd, the
    # kernels and everything imported lazily on first use (torch.autograd.grad with
    # grad_outputs imports sympy the first time: ~35 MB), at negligible memory.
    small = problem.y0[:1].clone().requires_grad_(True)
    warm = build_solve(config, problem, counted, 2)
    y_small = warm(small)
    torch.autograd.grad(y_small, [small, *params], torch.ones_like(y_small), allow_unused=True)
    del small, warm, y_small
    gc.collect()
    base = _maxrss_mb()
    counted.n = 0
    t_start = time.perf_counter()
    grads = once()
    elapsed = time.perf_counter() - t_start
    peak = _maxrss_mb() - base
    nfe = counted.n
    result = {
        "key": config.key,
        "problem": problem.name,
        "steps": steps,
        "status": "ok",
        "peak_mb": peak,
        "baseline_mb": base,
        "time_memory_run": elapsed,
        "nfe": nfe,
        "state_bytes": problem.state_bytes,
        "allocator": os.environ.get("GLIBC_TUNABLES", "default"),
    }
    if spec.get("save_grads"):
        torch.save([g.detach().to(torch.float64) for g in grads], spec["save_grads"])
    if spec.get("reference"):
        ref = torch.load(spec["reference"])
        result.update(_rel_errors(grads, ref))
    del grads
    # Timing runs, with freed memory kept in the heap: page faults from returning memory to
    # the OS (costly on virtual machines) would otherwise dominate small problems' times.
    times = []
    if int(spec.get("timing_runs", 1)) > 0 and elapsed <= float(spec.get("timing_cap", math.inf)):
        result["timing_heap"] = _heap_mode()
        gc.collect()
        budget = float(spec.get("timing_budget", 0.0))
        while len(times) < int(spec.get("timing_runs", 1)) or (
            sum(times) < budget and len(times) < 20
        ):
            t_start = time.perf_counter()
            once()
            times.append(time.perf_counter() - t_start)
    result["time"] = min(times) if times else None
    result["timing_runs"] = len(times)
    return result


def _rel_errors(grads: list[Tensor], ref: list[Tensor]) -> dict:
    g = [x.detach().to(torch.float64).reshape(-1) for x in grads]
    r = [x.reshape(-1) for x in ref]

    def rel(a, b):
        a, b = torch.cat(a), torch.cat(b)
        return float((a - b).norm() / b.norm().clamp_min(1e-300))

    return {
        "grad_rel_error": rel(g, r),
        "grad_rel_error_y0": rel(g[:1], r[:1]),
        "grad_rel_error_params": rel(g[1:], r[1:]),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MB (VmHWM where it exists)."""
    return _maxrss_mb()


def exact_env(threads: int | None = 1) -> dict:
    """The environment of a fresh measuring process: :data:`EXACT_TUNABLES` added to
    ``GLIBC_TUNABLES``, and ``OMP_NUM_THREADS`` set when ``threads`` is given."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    prev = env.get("GLIBC_TUNABLES")
    env["GLIBC_TUNABLES"] = f"{prev}:{EXACT_TUNABLES}" if prev else EXACT_TUNABLES
    return env


def run_worker_script(script: str, spec: dict, tag: str, timeout: float = 600.0) -> dict:
    """Run ``python script --worker SPEC_JSON`` in a fresh process (:func:`exact_env`) and
    return the JSON it prints after ``tag``; on failure ``spec`` with an ``error``."""
    cmd = [sys.executable, script, "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=exact_env())
    for line in proc.stdout.splitlines():
        if line.startswith(tag):
            return json.loads(line[len(tag) :])
    return {**spec, "error": proc.stderr[-2000:]}


def measure(spec: dict, timeout: float = 600.0) -> dict:
    """Run one configuration in a fresh Python process; returns its result dict.

    ``spec``: ``problem``, ``key``, ``steps`` and optionally ``quick``, ``seed``,
    ``threads``, ``timing_runs`` (timed repeats after the memory run; more, up to
    20, while their total stays under ``timing_budget`` seconds),
    ``timing_cap`` (seconds: no timing runs when the memory run took longer),
    ``dtype`` (``"float64"`` for references), ``save_grads`` (a path),
    ``reference`` (a path written by a reference run), ``exact_allocator``
    (default true: see :data:`EXACT_TUNABLES`). On failure the dict has
    ``status`` ``"timeout"``, ``"unavailable"`` or ``"error"`` and a ``reason``.
    """
    cmd = [sys.executable, "-m", "neurode.app.bench.memory", json.dumps(spec)]
    if spec.get("exact_allocator", True):
        env = exact_env(spec.get("threads"))
    else:
        env = dict(os.environ)
        if spec.get("threads"):
            env["OMP_NUM_THREADS"] = str(spec["threads"])
    base = {"key": spec["key"], "problem": spec["problem"], "steps": spec["steps"]}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**base, "status": "timeout", "reason": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {**base, "status": "error", "reason": f"exit {proc.returncode}: " + " | ".join(tail)}


def _predict(points: list[tuple[int, float]], n: int) -> float | None:
    """Linear extrapolation to ``n`` from the last two points (proportional from one)."""
    if not points:
        return None
    if len(points) == 1:
        n0, v0 = points[0]
        return v0 * n / n0
    (n0, v0), (n1, v1) = points[-2], points[-1]
    slope = (v1 - v0) / (n1 - n0)
    return max(v1 + slope * (n - n1), v1)


def memory_sweep(
    problem: str,
    steps: list[int],
    keys=DEFAULT_KEYS,
    *,
    extra_steps: dict[str, list[int]] | None = None,
    quick: bool = False,
    max_mb: float = 12 * 1024,
    max_seconds: float | None = None,
    timeout: float = 600.0,
    threads: int | None = 1,
    timing_runs: int = 1,
    timing_budget: float = 0.0,
    timing_cap: float = 20.0,
    error_steps: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Measure every configuration in ``keys`` at every ``N_t`` in ``steps`` (plus
    ``extra_steps[key]``), each in a fresh process.

    A configuration is skipped at ``N_t`` when its peak memory extrapolated from
    its smaller ``N_t`` exceeds ``max_mb``, when its time would exceed
    ``max_seconds``, or when a smaller ``N_t`` already failed. The gradient's
    relative error against float64 direct backprop through the same
    discretisation is measured at ``error_steps`` (default: the smallest ``N_t``).

    Returns ``{"problem", "runs": {key: [result, ...]}, "skips", ...}``.
    """
    error_steps = min(steps) if error_steps is None else error_steps
    extra_steps = extra_steps or {}
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="neurode-bench-") as tmp:
        refs: dict[str, str | None] = {}
        for key in keys:
            ref_key = CONFIGS[key].reference
            if ref_key in refs:
                continue
            path = os.path.join(tmp, f"ref-{ref_key}.pt")
            spec = {
                "problem": problem,
                "key": ref_key,
                "steps": error_steps,
                "quick": quick,
                "seed": seed,
                "threads": threads,
                "dtype": "float64",
                "save_grads": path,
                "timing_runs": 0,
            }
            r = measure(spec, timeout)
            refs[ref_key] = path if r.get("status") == "ok" else None
            if log and r.get("status") != "ok":
                log(f"  reference {ref_key}: {r.get('status')}: {r.get('reason')}")
        for key in keys:
            runs[key] = []
            mem_pts: list[tuple[int, float]] = []
            time_pts: list[tuple[int, float]] = []
            failed = None
            for n in sorted(set(steps) | set(extra_steps.get(key, []))):
                base = {"key": key, "problem": problem, "steps": n}
                pm, pt = _predict(mem_pts, n), _predict(time_pts, n)
                if failed is not None:
                    res = {**base, "status": "skipped", "reason": f"a smaller N_t {failed}"}
                elif pm is not None and pm > max_mb:
                    res = {
                        **base,
                        "status": "skipped",
                        "predicted_mb": pm,
                        "reason": f"predicted {pm / 1024:.1f} GB > {max_mb / 1024:.0f} GB",
                    }
                elif max_seconds is not None and pt is not None and pt > max_seconds:
                    res = {
                        **base,
                        "status": "skipped",
                        "predicted_time": pt,
                        "reason": f"predicted {pt:.0f} s > {max_seconds:.0f} s",
                    }
                else:
                    spec = {
                        **base,
                        "quick": quick,
                        "seed": seed,
                        "threads": threads,
                        "timing_runs": timing_runs,
                        "timing_budget": timing_budget,
                        "timing_cap": timing_cap,
                    }
                    ref = refs.get(CONFIGS[key].reference)
                    if n == error_steps and ref:
                        spec["reference"] = ref
                    res = measure(spec, timeout)
                    if res["status"] == "ok":
                        mem_pts.append((n, res["peak_mb"]))
                        time_pts.append((n, res["time_memory_run"]))
                    elif res["status"] == "unavailable":
                        failed = "could not run: " + str(res.get("reason"))
                    else:
                        failed = f"failed ({res['status']})"
                runs[key].append(res)
                if log:
                    log("  " + _describe(res))
                if res["status"] == "unavailable":
                    break  # the same reason holds at every N_t
    return {
        "problem": problem,
        "quick": quick,
        "steps": sorted(steps),
        "extra_steps": extra_steps,
        "error_steps": error_steps,
        "max_mb": max_mb,
        "max_seconds": max_seconds,
        "runs": runs,
    }


def _describe(r: dict) -> str:
    head = f"{r['problem']:>5} {r['key']:<20} N_t={r['steps']:<5}"
    if r["status"] != "ok":
        return f"{head} {r['status']}: {r.get('reason')}"
    err = r.get("grad_rel_error")
    tail = f"  grad err {err:.2e}" if err is not None else ""
    t = f"{r['time']:8.3f} s" if r.get("time") is not None else "   (none)"
    return (
        f"{head} peak {r['peak_mb']:9.1f} MB  time {t} (memory run {r['time_memory_run']:.3f} s)"
        f"  nfe {r['nfe']}{tail}"
    )


def slope_mb_per_step(results: list[dict]) -> float | None:
    """Least-squares slope of peak MB against N_t over the measured points."""
    pts = [(r["steps"], r["peak_mb"]) for r in results if r.get("status") == "ok"]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx > 0 else None


def by_steps(results: list[dict]) -> dict[int, dict]:
    return {r["steps"]: r for r in results}


def time_ratios(sweep: dict) -> dict[str, dict]:
    """Each configuration's time over its direct reference's: at the largest ``N_t`` both
    were timed (``ratio``), at every common ``N_t`` (``per_steps``) and their median."""
    out = {}
    runs = sweep["runs"]
    for key, results in runs.items():
        ref_key = CONFIGS[key].direct
        if ref_key not in runs:
            continue
        mine = {n: r for n, r in by_steps(results).items() if r.get("time") is not None}
        ref = {n: r for n, r in by_steps(runs[ref_key]).items() if r.get("time") is not None}
        common = sorted(set(mine) & set(ref))
        if not common:
            continue
        n = common[-1]
        per = {m: mine[m]["time"] / ref[m]["time"] for m in common}
        out[key] = {
            "steps": n,
            "direct": ref_key,
            "ratio": per[n],
            "median": statistics.median(per.values()),
            "per_steps": per,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Worker entry point: ``python -m neurode.app.bench.memory SPEC_JSON``."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    try:
        result = run_worker(spec)
    except Unavailable as e:
        result = {
            "key": spec["key"],
            "problem": spec["problem"],
            "steps": spec["steps"],
            "status": "unavailable",
            "reason": str(e),
        }
    except Exception as e:  # reported to the parent, which keeps going
        result = {
            "key": spec["key"],
            "problem": spec["problem"],
            "steps": spec["steps"],
            "status": "error",
            "reason": f"{type(e).__name__}: {e}",
        }
    if isinstance(result.get("peak_mb"), float) and not math.isfinite(result["peak_mb"]):
        result["peak_mb"] = None
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ---- analysis of a sweep ---------------------------------------------------------------------


def analyse(sweep: dict, state_bytes: int) -> dict:
    """The memory model's checks on one problem's sweep.

    - ``L``: direct's growth per step (MB), the least-squares slope of its peaks.
    - checkpoint: ``peak(N_t) ≤ N_t·S + 2·L`` at every measured ``N_t`` (``S`` the
      state), and its growth per step over ``S`` (≈ 1: state-sized growth only).
    - ``Checkpoint(budget=8)`` and the reversible gradients flat in ``N_t``:
      ``peak(N_max) / peak(N_min) ≤ 1.1``.
    - time, the median over ``N_t`` of the ratio to direct through the same
      discretisation: checkpoint ≤ 1.4, ALF's reversible gradient ≤ 1.5.
    """
    runs = sweep["runs"]
    S = state_bytes / 2**20
    ok = {k: {r["steps"]: r for r in v if r.get("status") == "ok"} for k, v in runs.items()}
    out: dict = {"state_mb": S, "checks": []}
    L = slope_mb_per_step(runs.get("direct", []))
    out["direct_mb_per_step"] = L
    out["mb_per_step"] = {k: slope_mb_per_step(v) for k, v in runs.items()}
    ratios = time_ratios(sweep)
    out["time_ratios"] = ratios
    checks = out["checks"]

    def add(name, value, met, detail=""):
        checks.append({"target": name, "value": value, "met": met, "detail": detail})

    if "checkpoint" in ok and L is not None:
        rows = []
        for n, r in sorted(ok["checkpoint"].items()):
            bound = n * S + 2 * L
            rows.append(
                {
                    "steps": n,
                    "peak_mb": r["peak_mb"],
                    "bound_mb": bound,
                    "met": r["peak_mb"] <= bound,
                }
            )
        out["checkpoint_bound"] = rows
        # by excess, not ratio: on tiny (--quick) problems the bound can be 0 or below
        worst = max(rows, key=lambda x: x["peak_mb"] - x["bound_mb"])
        add(
            "checkpoint peak <= N_t*S + 2L at every N_t",
            f"worst at N_t={worst['steps']}: {worst['peak_mb']:.1f} MB vs bound {worst['bound_mb']:.1f} MB "
            f"(S={S:.3f} MB, L={L:.2f} MB)",
            all(x["met"] for x in rows),
        )
        # every method also holds the outputs, the gradients and the loss's temporaries:
        # direct's own intercept C. The same bound with C added:
        d = ok.get("direct", {})
        if d:
            n0 = min(d)
            C = d[n0]["peak_mb"] - L * n0
            out["direct_intercept_mb"] = C
            over = [x for x in rows if x["peak_mb"] > x["bound_mb"] + C]
            worst = max(rows, key=lambda x: x["peak_mb"] - x["bound_mb"] - C)
            add(
                "checkpoint peak <= N_t*S + 2L + C (C = direct's intercept)",
                f"worst at N_t={worst['steps']}: {worst['peak_mb']:.1f} MB vs "
                f"{worst['bound_mb'] + C:.1f} MB (C={C:.1f} MB)",
                not over,
            )
        g = out["mb_per_step"].get("checkpoint")
        if g is not None:
            add(
                "checkpoint grows by one state per step",
                f"{g:.3f} MB/step = {g / S:.2f} S (direct: {L / S:.1f} S)",
                g <= 1.25 * S,
            )
    for key, limit in (("checkpoint-8", 1.1), ("reversible-alf", 1.1), ("reversible-rk4", 1.1)):
        pts = ok.get(key, {})
        if len(pts) >= 2:
            lo, hi = min(pts), max(pts)
            # a peak below the page-level resolution reads 0: count it as one page
            ratio = max(pts[hi]["peak_mb"], 4 / 1024) / max(pts[lo]["peak_mb"], 4 / 1024)
            add(
                f"{key} flat: peak({hi})/peak({lo}) <= {limit}",
                f"{ratio:.3f} ({pts[hi]['peak_mb']:.1f} / {pts[lo]['peak_mb']:.1f} MB)",
                ratio <= limit,
            )
    for key, limit in (("checkpoint", 1.4), ("reversible-alf", 1.5)):
        r = ratios.get(key)
        if r is not None:
            per = ", ".join(f"{v:.2f}" for v in r["per_steps"].values())
            add(
                f"{key} time <= {limit}x {r['direct']} (median over N_t)",
                f"{r['median']:.2f} (per N_t {list(r['per_steps'])}: {per})",
                r["median"] <= limit,
            )
    return out
