"""The pure-Python checkpoint schedule (``neurode.gradients.schedule``), driven by a mock engine.

No tensors: a "state" is just the position it belongs to, so the mock can check
that every advance starts from the state it claims to start from, that every
vector-Jacobian product sees the state of its own step, and how many states are
held at once.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from math import comb
from pathlib import Path

import pytest

from neurode.gradients.schedule import (
    OnlineCheckpoints,
    beta,
    chain_cost,
    forward_chain,
    free_sweep_steps,
    minimal_forward_steps,
    repetitions,
    reverse_all,
    reverse_segment,
    split,
)

NS = range(1, 61)
BUDGETS = range(1, 7)


class MockEngine:
    """Records what a schedule does; fails loudly on anything inconsistent."""

    def __init__(self, n: int, stored: dict[int, tuple] | None = None):
        self.n = n
        self.stored: dict[int, tuple] = dict(stored or {0: ("state", 0)})
        self.max_stored = len(self.stored)
        self.advanced = 0
        self.vjps: list[int] = []

    def load(self, pos):
        assert pos in self.stored, f"load of position {pos}, which is not stored"
        return self.stored[pos]

    def advance(self, state, start, stop):
        assert state == ("state", start), f"advance from {start} given {state}"
        assert 0 <= start <= stop <= self.n
        self.advanced += stop - start
        return ("state", stop)

    def store(self, pos, state):
        assert state == ("state", pos)
        assert pos not in self.stored, f"position {pos} stored twice"
        self.stored[pos] = state
        self.max_stored = max(self.max_stored, len(self.stored))

    def drop(self, pos):
        assert pos in self.stored, f"drop of position {pos}, which is not stored"
        del self.stored[pos]

    def vjp(self, pos, state):
        assert state == ("state", pos), f"vjp of step {pos} given {state}"
        self.vjps.append(pos)


@cache
def brute_force(n: int, s: int) -> int:
    """Fewest advances to reverse ``n`` steps with ``s`` slots (the first state's included),
    by exhaustive search over where the next checkpoint goes (the classic Revolve DP)."""
    if n <= 1:
        return 0
    if s == 1:
        return n * (n - 1) // 2  # re-advance from the start for every step
    return min(m + brute_force(n - m, s - 1) + brute_force(m, s) for m in range(1, n))


def test_beta_is_binomial_and_satisfies_the_recursion():
    for s in range(1, 8):
        for r in range(1, 8):
            assert beta(s, r) == comb(s + r, s)
            assert beta(s, r) == beta(s, r - 1) + beta(s - 1, r)


@pytest.mark.parametrize("s", BUDGETS)
def test_repetitions_is_the_smallest_sufficient_r(s):
    for n in NS:
        r = repetitions(n, s)
        assert beta(s, r) >= n
        assert r == 0 or beta(s, r - 1) < n


def test_repetitions_rejects_zero_slots():
    with pytest.raises(ValueError):
        repetitions(5, 0)


@pytest.mark.parametrize("s", range(2, 7))
def test_split_leaves_both_parts_nonempty(s):
    for n in range(2, 61):
        m = split(n, s)
        assert 1 <= m <= n - 1


@pytest.mark.parametrize("budget", BUDGETS)
def test_reverse_from_first_state_only(budget):
    """(a) budget respected, (b) each vjp once in order n-1..0, (c) cost = Griewank–Walther."""
    for n in NS:
        eng = MockEngine(n)
        reverse_all(eng, [0], n, budget)
        assert eng.max_stored <= budget, (n, budget, eng.max_stored)
        assert eng.vjps == list(range(n - 1, -1, -1)), (n, budget)
        assert eng.advanced == minimal_forward_steps(n, budget), (n, budget)
        # the closed form itself: r·n − β(s+1, r−1)
        if n > 1:
            r = repetitions(n, budget)
            assert eng.advanced == r * n - comb(budget + r, budget + 1)
        # everything the reversal stored it also dropped, except the caller's first state
        assert set(eng.stored) == {0}


@pytest.mark.parametrize("budget", range(1, 6))
def test_minimal_forward_steps_is_the_true_minimum(budget):
    """The closed form equals exhaustive search over every checkpoint placement."""
    for n in range(1, 31):
        assert minimal_forward_steps(n, budget) == brute_force(n, budget), (n, budget)


@pytest.mark.parametrize("budget", BUDGETS)
def test_reverse_segment_directly(budget):
    """reverse_segment on a sub-interval [a, b): same guarantees, positions offset by a."""
    a = 7
    for length in range(1, 40):
        b = a + length
        eng = MockEngine(b, {a: ("state", a)})
        reverse_segment(eng, a, b, budget)
        assert eng.max_stored <= budget
        assert eng.vjps == list(range(b - 1, a - 1, -1))
        assert eng.advanced == minimal_forward_steps(length, budget)


@cache
def brute_force_free(n: int, s: int) -> int:
    """Fewest recomputed steps when the first forward sweep is free: it may store the
    state at any position m on its way; the right part continues the free sweep with
    one slot less, the left part is then reversed from its stored start."""
    if n <= 1:
        return 0
    if s == 1:
        return brute_force(n, 1)
    return min(brute_force_free(n - m, s - 1) + brute_force(m, s) for m in range(1, n))


@pytest.mark.parametrize("budget", BUDGETS)
def test_free_sweep_optimum_is_the_brute_force_optimum(budget):
    for n in NS:
        assert free_sweep_steps(n, budget) == brute_force_free(n, budget), (n, budget)
        # never worse than the Revolve first descent the forward sweep stored before
        old = forward_chain_revolve(n, budget)
        assert free_sweep_steps(n, budget) <= minimal_forward_steps(n, budget) - old[-1]


# the previous chain, Revolve's first descent (the reference for the improvement),
# as benchmarks/schedules.py writes it
_spec = importlib.util.spec_from_file_location(
    "bench_schedules", Path(__file__).resolve().parents[1] / "benchmarks" / "schedules.py"
)
_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench)
forward_chain_revolve = _bench.revolve_first_descent


@pytest.mark.parametrize("budget", BUDGETS)
def test_forward_chain_prestored(budget):
    """(d) with the chain stored by the forward sweep, backward recomputes exactly the
    free-sweep optimum G(n, budget), found here by brute force."""
    for n in NS:
        chain = forward_chain(n, budget)
        assert chain[0] == 0
        assert chain == sorted(set(chain))
        assert all(0 <= c < n for c in chain)
        assert len(chain) <= budget
        eng = MockEngine(n, {c: ("state", c) for c in chain})
        reverse_all(eng, chain, n, budget)
        assert eng.max_stored <= budget, (n, budget)
        assert eng.vjps == list(range(n - 1, -1, -1)), (n, budget)
        assert eng.advanced == brute_force_free(n, budget), (n, budget)
        assert eng.advanced == chain_cost(chain, n, budget)
        assert eng.stored == {0: ("state", 0)}


def test_forward_chain_examples():
    # one slot: only the first state; enough slots for every step: every step
    assert forward_chain(10, 1) == [0]
    assert forward_chain(4, 4) == [0, 1, 2, 3]
    assert forward_chain(1, 3) == [0]
    # the free sweep stores far to the right: 4 steps, 2 slots -> 0 and 3 (2 recomputed)
    assert forward_chain(4, 2) == [0, 3]


def _online(n: int, budget: int):
    online = OnlineCheckpoints(budget)
    stored: dict[int, tuple] = {}
    for pos in range(n):
        online.offer(pos, ("state", pos), stored)
        assert len(stored) <= budget, (n, budget, pos, sorted(stored))
        assert 0 in stored and sorted(stored) == online.positions
    return stored


@pytest.mark.parametrize("budget", BUDGETS)
def test_online_schedule_then_reverse_all(budget):
    """The adaptive path: decide online, then reverse with the slots left free. Optimal
    (the brute-force free-sweep optimum) up to (c+1)(c+2)/2 steps, within 1.25x beyond."""
    for n in range(1, 151):
        stored = _online(n, budget)
        positions = sorted(stored)
        assert all(stored[p] == ("state", p) for p in positions)
        eng = MockEngine(n, stored)
        reverse_all(eng, positions, n, budget)
        assert eng.max_stored <= budget, (n, budget)
        assert eng.vjps == list(range(n - 1, -1, -1)), (n, budget)
        best = brute_force_free(n, budget)
        if n <= (budget + 1) * (budget + 2) // 2:
            assert eng.advanced == best, (n, budget, positions)
        else:
            assert eng.advanced <= 1.25 * best, (n, budget, eng.advanced, best)


def test_online_schedule_examples():
    # budget 3, 8 steps: the doubling spacing recomputed 7 steps, the optimum is 5
    stored = _online(8, 3)
    eng = MockEngine(8, stored)
    reverse_all(eng, sorted(stored), 8, 3)
    assert eng.advanced == 5 == brute_force_free(8, 3)
