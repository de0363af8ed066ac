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

When the number of steps is unknown in advance (adaptive steps) the forward
solve keeps states at multiples of a spacing ``d`` that doubles whenever the
budget is full (:class:`OnlineThinning`); each segment between kept states is
then reversed with the binomial rule and the slots that are free at that
moment. The budget is never exceeded; the number of recomputed steps is
reported, not promised optimal.

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


def forward_chain(n: int, s: int) -> list[int]:
    """Positions the first forward sweep stores for a known number of steps ``n``."""
    chain = [0]
    a, slots = 0, s
    while slots >= 2 and n - a >= 2:
        a += split(n - a, slots)
        chain.append(a)
        slots -= 1
    return chain


class OnlineThinning:
    """Keep states at multiples of a spacing that doubles when the budget is full.

    After ``n`` steps at most ``budget`` states are kept, spaced at most
    ``2n / budget`` apart; position 0 is always kept.
    """

    def __init__(self, budget: int):
        self.budget = budget
        self.spacing = 1

    def offer(self, pos: int, state, stored: dict) -> None:
        """Offer the state at ``pos``; keeps it in ``stored`` if the schedule wants it."""
        if pos == 0:
            stored[0] = state
            return
        if pos % self.spacing:
            return
        while len(stored) >= self.budget:
            if self.budget == 1:
                return
            self.spacing *= 2
            for q in [q for q in stored if q % self.spacing]:
                del stored[q]
            if pos % self.spacing:
                return
        stored[pos] = state


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
