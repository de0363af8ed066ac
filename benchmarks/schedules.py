"""Checkpoint schedules: recomputed steps against the optimum, with the forward sweep free.

    python benchmarks/schedules.py           # N up to 200, budgets 2-8 (seconds)
    python benchmarks/schedules.py --quick   # N up to 40, budgets 2-4

For each budget ``c`` and number of steps ``N``: G(N, c), the fewest recomputed
steps after a free forward sweep (brute-force dynamic programme, independent of
the library's closed form); the fixed-grid chain (``forward_chain``), the
online schedule for adaptive steps (``OnlineCheckpoints``), and for reference
the schedules they replaced (Revolve's first descent; states kept at a
doubling spacing), each run through ``reverse_all`` on a counting engine.
Prints a table of the worst ratios and writes ``benchmarks/results/schedules[-quick].json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import cache
from pathlib import Path

from neurode.gradients.schedule import (
    OnlineCheckpoints,
    forward_chain,
    reverse_all,
    split,
)

RESULTS = Path(__file__).resolve().parent / "results"


@cache
def revolve(n: int, s: int) -> int:  # F(n, s): the first state stored, everything else paid
    if n <= 1:
        return 0
    if s == 1:
        return n * (n - 1) // 2
    return min(m + revolve(n - m, s - 1) + revolve(m, s) for m in range(1, n))


@cache
def optimum(n: int, s: int) -> int:  # G(n, s): the first sweep stores for free
    if n <= 1:
        return 0
    if s == 1:
        return revolve(n, 1)
    return min(optimum(n - m, s - 1) + revolve(m, s) for m in range(1, n))


class Counter:
    def __init__(self, stored):
        self.stored, self.advanced = dict(stored), 0

    def load(self, pos):
        return self.stored[pos]

    def advance(self, state, start, stop):
        self.advanced += stop - start
        return stop

    def store(self, pos, state):
        self.stored[pos] = state

    def drop(self, pos):
        del self.stored[pos]

    def vjp(self, pos, state):
        pass


def cost(positions: list[int], n: int, s: int) -> int:
    eng = Counter({p: p for p in positions})
    reverse_all(eng, sorted(positions), n, s)
    return eng.advanced


def revolve_first_descent(n: int, s: int) -> list[int]:
    chain, a, slots = [0], 0, s
    while slots >= 2 and n - a >= 2:
        a += split(n - a, slots)
        chain.append(a)
        slots -= 1
    return chain


def doubling(n: int, s: int) -> list[int]:
    kept, spacing = [0], 1
    for pos in range(1, n):
        if pos % spacing:
            continue
        while len(kept) >= s and s > 1:
            spacing *= 2
            kept = [q for q in kept if q % spacing == 0]
            if pos % spacing:
                break
        else:
            if len(kept) < s:
                kept.append(pos)
    return kept


def online(n: int, s: int) -> list[int]:
    sched, stored = OnlineCheckpoints(s), {}
    for pos in range(n):
        sched.offer(pos, pos, stored)
    return sorted(stored)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    sys.setrecursionlimit(10_000)
    n_max, budgets = (40, (2, 3, 4)) if args.quick else (200, (2, 3, 4, 5, 6, 8))
    rows = []
    for s in budgets:
        limit = (s + 1) * (s + 2) // 2
        worst = {"fixed": 1.0, "online_small": 1.0, "online": 1.0, "revolve": 1.0, "doubling": 1.0}
        for n in range(2, n_max + 1):
            g = optimum(n, s)
            r = {
                "fixed": cost(forward_chain(n, s), n, s),
                "online": cost(online(n, s), n, s),
                "revolve": cost(revolve_first_descent(n, s), n, s),
                "doubling": cost(doubling(n, s), n, s),
            }
            ratio = {k: (v / g if g else (1.0 if v == 0 else float("inf"))) for k, v in r.items()}
            worst["fixed"] = max(worst["fixed"], ratio["fixed"])
            worst["revolve"] = max(worst["revolve"], ratio["revolve"])
            worst["doubling"] = max(worst["doubling"], ratio["doubling"])
            key = "online_small" if n <= limit else "online"
            worst[key] = max(worst[key], ratio["online"])
        rows.append({"budget": s, "n_max": n_max, "small_n_limit": limit, "worst_ratio": worst})
    print(f"worst recomputation / optimum G(N, c), N = 2..{n_max}")
    print("budget | fixed grid | online, N <= (c+1)(c+2)/2 | online, beyond | "
          "Revolve first descent (before) | doubling spacing (before)")  # fmt: skip
    for r in rows:
        w = r["worst_ratio"]
        print(f"{r['budget']:6d} | {w['fixed']:10.3f} | {w['online_small']:25.3f} | "
              f"{w['online']:14.3f} | {w['revolve']:30.3f} | {w['doubling']:25.3f}")  # fmt: skip
    out = args.out or RESULTS / ("schedules-quick.json" if args.quick else "schedules.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"benchmark": "schedules", "quick": args.quick, "rows": rows}, indent=1)
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
