"""Checkpoint schedules: which states to keep, and how to reverse the steps.

Binomial checkpointing (Griewank & Walther, "Algorithm 799: Revolve", ACM TOMS
2000). With ``s`` checkpoint slots (the slot holding the segment's first state
included) and every step recomputed at most ``r`` times, up to

    β(s, r) = C(s + r, s)

steps can be reversed, and β(s, r) = β(s, r − 1) + β(s − 1, r): the first
checkpoint of a segment is placed so that the part to its left (reversed later
with all ``s`` slots, one repetition already spent) has at most β(s, r − 1)
steps and the part to its right (reversed now with ``s − 1`` slots) at most
β(s − 1, r) steps.

The forward sweep is counted as free (it computes every state anyway): for a
known number of steps (fixed grids) :func:`forward_chain` stores the chain that
attains the optimum :func:`free_sweep_steps`; when the number is unknown
(adaptive steps) :class:`OnlineCheckpoints` decides at each step which state to
keep. Each segment between kept states is then reversed with the binomial rule
and the slots that are free at that moment; the budget is never exceeded.

The module is pure Python: the reversal talks to an *engine* (``load``,
``advance``, ``store``, ``drop``, ``vjp``) so that the schedule is tested on its
own, without tensors.
"""

from __future__ import annotations

from math import comb
from typing import Protocol


def beta(s: int, r: int) -> int:
    """Number of steps reversible with ``s`` slots and ``r`` repetitions."""
    return comb(s + r, s)


def repetitions(n: int, s: int) -> int:
    """The smallest ``r`` with ``β(s, r) ≥ n``."""
    if s < 1:
        raise ValueError("need at least one checkpoint slot")
    r = 0
    while beta(s, r) < n:
        r += 1
    return r


def split(n: int, s: int) -> int:
    """Where to put the next checkpoint in a segment of ``n ≥ 2`` steps with ``s ≥ 2`` slots.

    Returns the length of the left part, ``max(β(s, r − 2), n − β(s − 1, r))``:
    the right part is as long as ``s − 1`` slots can reverse with ``r``
    repetitions, but never so long that the left part would waste a level.
    The whole reversal then costs Griewank's minimal ``r·n − β(s + 1, r − 1)``
    forward steps (checked against brute-force search in the tests).
    """
    r = repetitions(n, s)
    left = max(beta(s, r - 2) if r >= 2 else 1, n - beta(s - 1, r))
    return min(max(left, 1), n - 1)


def minimal_forward_steps(n: int, s: int) -> int:
    """Griewank–Walther: the fewest step advances that reverse ``n`` steps with ``s`` slots,
    starting from the stored first state, ``r·n − β(s + 1, r − 1)``."""
    if n <= 1:
        return 0
    r = repetitions(n, s)
    return r * n - beta(s + 1, r - 1)


def free_sweep_steps(n: int, s: int) -> int:
    """G(n, s): the fewest recomputed steps that reverse ``n`` steps with ``s`` slots when
    the first forward sweep is free (it may store its ``s`` states anywhere).

    Segment ``j`` of the stored chain (from the left) is reversed with the ``s − j``
    slots free by then, at cost F(l, k) = ``minimal_forward_steps(l, k)``, convex in
    ``l`` with increments ``repetitions(l + 1, k)``. So G takes the ``n`` cheapest
    increments over all ``k``: with ``R`` the smallest level with
    ``β(s, R + 1) − 1 ≥ n``, every increment below ``R`` and the rest at ``R``.
    """
    if n <= 1:
        return 0
    big = _level(n, s)
    below = beta(s, big) - 1  # increments of level < big, over k = 1..s
    cost = sum(r * (beta(s, r + 1) - beta(s, r)) for r in range(1, big))
    return cost + big * (n - below)


def _level(n: int, s: int) -> int:
    r = 0
    while beta(s, r + 1) - 1 < n:
        r += 1
    return r


def forward_chain(n: int, s: int) -> list[int]:
    """Positions the first forward sweep stores for a known number of steps ``n``:
    the segment lengths that attain :func:`free_sweep_steps` (Griewank's binomial
    rule inside each segment then reverses it at its minimal cost)."""
    if n <= 1 or s <= 1:
        return [0]
    if n <= s:  # a slot for every state
        return list(range(n))
    big = _level(n, s)
    # slots k = s, s-1, ..., 1 from the left; each takes its increments below `big`,
    # then increments of level `big` while any are left (up to β(k, big) in all)
    lengths = {k: beta(k, big - 1) for k in range(1, s + 1)}
    extra = n - sum(lengths.values())
    for k in range(s, 0, -1):
        take = min(extra, beta(k, big) - lengths[k])
        lengths[k] += take
        extra -= take
    chain, pos = [0], 0
    for k in range(s, 1, -1):
        pos += lengths[k]
        if pos >= n:
            break
        chain.append(pos)
    return chain


def chain_cost(positions: list[int], n: int, s: int) -> int:
    """Recomputed steps to reverse ``n`` steps from the states stored at ``positions``
    (sorted, starting with 0) with ``s`` slots: segment ``j`` is reversed with the
    ``s − j`` slots free by then, at its minimal cost."""
    ends = positions[1:] + [n]
    return sum(minimal_forward_steps(e - a, s - j) for j, (a, e) in enumerate(zip(positions, ends)))


class OnlineCheckpoints:
    """Which states an adaptive forward solve keeps when the number of steps is unknown.

    At each new state the schedule may store it (a slot is free), store it in place
    of one stored state, or pass: whichever makes :func:`chain_cost` smallest were
    the solve to end after this step, ties broken by the cost one step later. This
    attains the optimum :func:`free_sweep_steps` for every number of steps up to
    ``(s + 1)(s + 2)/2`` and stays within 1.25× of it beyond (checked against
    brute-force search in the tests; Stumm & Walther 2010 give the bound for the
    first regime). The budget is never exceeded; position 0 is always kept.
    """

    def __init__(self, budget: int):
        self.budget = budget
        self.positions = [0]

    def offer(self, pos: int, state, stored: dict) -> None:
        """Offer the state at ``pos`` (the start of step ``pos``); updates ``stored``."""
        if pos == 0:
            stored[0] = state
            self.positions = [0]
            return
        choice = self._choose(pos)
        if choice is None:
            return
        if choice > 0:
            del stored[self.positions[choice]]
            del self.positions[choice]
        stored[pos] = state
        self.positions.append(pos)

    def _choose(self, pos: int) -> int | None:
        """``None``: pass; ``0``: store ``pos``; ``j > 0``: store it in place of
        ``positions[j]``. The cost of every option in O(budget), from prefix sums."""
        F, s, P = minimal_forward_steps, self.budget, self.positions
        m = len(P) - 1
        closed = [P[i + 1] - P[i] for i in range(m)]  # segment lengths but the last
        A = [0]  # A[i]: closed segments before i at their own slots
        for i, li in enumerate(closed):
            A.append(A[-1] + F(li, s - i))
        last = pos + 1 - P[m]  # the open segment, step `pos` included
        # (cost were the solve to end now, one step later); min keeps the first of equals
        best = (A[m] + F(last, s - m), A[m] + F(last + 1, s - m))
        choice = None
        if m + 1 < s:
            head = A[m] + F(last - 1, s - m)
            cand = (head + F(1, s - m - 1), head + F(2, s - m - 1))
            return 0 if cand < best else None
        B = [0] * (m + 1)  # B[i]: closed segments i.. shifted one slot up
        for i in range(m - 1, -1, -1):
            B[i] = B[i + 1] + F(closed[i], s - i + 1)
        for j in range(1, m + 1):
            if j < m:
                head = A[j - 1] + F(closed[j - 1] + closed[j], s - j + 1) + B[j + 1]
                head += F(last - 1, s - m + 1)
            else:
                head = A[m - 1] + F(closed[m - 1] + last - 1, s - m + 1)
            cand = (head + F(1, s - m), head + F(2, s - m))
            if cand < best:
                best, choice = cand, j
        return choice


class Engine(Protocol):
    def load(self, pos: int): ...
    def advance(self, state, start: int, stop: int): ...
    def store(self, pos: int, state) -> None: ...
    def drop(self, pos: int) -> None: ...
    def vjp(self, pos: int, state) -> None: ...


def reverse_segment(engine: Engine, a: int, b: int, slots: int) -> None:
    """Reverse steps ``b − 1, …, a`` given the state at ``a`` stored and ``slots``
    slots for this segment (the one holding ``a`` included)."""
    while b > a:
        n = b - a
        if n == 1:
            engine.vjp(a, engine.load(a))
            return
        if slots <= 1:
            for j in range(b - 1, a - 1, -1):
                engine.vjp(j, engine.advance(engine.load(a), a, j))
            return
        m = a + split(n, slots)
        engine.store(m, engine.advance(engine.load(a), a, m))
        reverse_segment(engine, m, b, slots - 1)
        engine.drop(m)
        b = m  # then the left part, with all slots again (tail call as a loop)


def reverse_all(engine: Engine, positions: list[int], n: int, budget: int) -> None:
    """Reverse ``n`` steps given states stored at sorted ``positions`` (``positions[0] == 0``),
    right to left, each segment using the slots free at that moment."""
    ends = positions[1:] + [n]
    for j in range(len(positions) - 1, -1, -1):
        reverse_segment(engine, positions[j], ends[j], budget - j)
        if j > 0:
            engine.drop(positions[j])
