"""The pure-Python checkpoint schedule (``neurode.gradients.schedule``), driven by a mock engine.

No tensors: a "state" is just the position it belongs to, so the mock can check
that every advance starts from the state it claims to start from, that every
vector-Jacobian product sees the state of its own step, and how many states are
held at once.
"""

from __future__ import annotations

from functools import cache
from math import comb

import pytest

from neurode.gradients.schedule import (
    OnlineThinning,
    beta,
    forward_chain,
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


@pytest.mark.parametrize("budget", BUDGETS)
def test_forward_chain_prestored(budget):
    """(d) with the chain stored by the forward sweep, backward recomputes exactly
    minimal_forward_steps − chain[-1]: the chain is the recursive schedule's first
    descent, whose advances the forward sweep has already paid for."""
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
        assert eng.advanced == minimal_forward_steps(n, budget) - chain[-1], (n, budget)
        assert eng.stored == {0: ("state", 0)}


def test_forward_chain_examples():
    # one slot: only the first state; enough slots for every step: every step
    assert forward_chain(10, 1) == [0]
    assert forward_chain(4, 4) == [0, 1, 2, 3]
    assert forward_chain(1, 3) == [0]


def _thin(n: int, budget: int):
    thin = OnlineThinning(budget)
    stored: dict[int, tuple] = {}
    history = []
    for pos in range(n):
        thin.offer(pos, ("state", pos), stored)
        assert len(stored) <= budget, (n, budget, pos, sorted(stored))
        assert 0 in stored
        history.append(sorted(stored))
    return thin, stored, history


@pytest.mark.parametrize("budget", BUDGETS)
def test_online_thinning_keeps_within_budget_and_evenly_spaced(budget):
    """(e) OnlineThinning. From the code: the spacing D doubles only when the store is full,
    i.e. when offered position budget·(D/2) ≤ n − 1 arrives; so D ≤ max(1, 2(n − 1)/budget),
    the kept positions are exactly the multiples of D seen so far, and every segment
    (including the last, up to n) is at most D long. With budget 1 only position 0 is kept."""
    for n in NS:
        thin, stored, _ = _thin(n, budget)
        kept = sorted(stored)
        assert all(stored[p] == ("state", p) for p in kept)
        if budget == 1:
            assert kept == [0]
            continue
        D = thin.spacing
        assert D == 1 or D <= 2 * (n - 1) / budget, (n, budget, D)
        assert kept == list(range(0, n, D)), (n, budget, D, kept)
        gaps = [b - a for a, b in zip(kept, kept[1:] + [n])]
        assert max(gaps) <= max(1, 2 * n / budget), (n, budget, gaps)
        # the budget is used well: at least half of it once there is enough to keep
        if n >= budget:
            assert len(kept) >= (budget + 1) // 2


@pytest.mark.parametrize("budget", BUDGETS)
def test_online_thinning_then_reverse_all(budget):
    """The adaptive path: thin online, then reverse with the slots left free."""
    for n in NS:
        _, stored, _ = _thin(n, budget)
        positions = sorted(stored)
        eng = MockEngine(n, stored)
        reverse_all(eng, positions, n, budget)
        assert eng.max_stored <= budget, (n, budget)
        assert eng.vjps == list(range(n - 1, -1, -1)), (n, budget)
        # never worse than re-advancing from the start for every step, and at least
        # as costly as the optimal offline schedule once the forward's stores are credited
        assert eng.advanced <= n * (n - 1) // 2
        assert eng.advanced >= minimal_forward_steps(n, budget) - positions[-1]


def test_online_thinning_spacing_doubles():
    thin, stored, history = _thin(17, 4)
    # 0,1,2,3 fill the store; 4 doubles the spacing to 2 (keeps 0,2 then 4);
    # 6 fills it; 8 doubles to 4 (keeps 0,4 then 8); 12 fills; 16 doubles to 8.
    assert history[3] == [0, 1, 2, 3]
    assert history[4] == [0, 2, 4]
    assert history[7] == [0, 2, 4, 6]
    assert history[8] == [0, 4, 8]
    assert history[16] == [0, 8, 16]
    assert thin.spacing == 8
