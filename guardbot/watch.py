"""Which positions a mark tick must look at: per-tick work that follows the positions that
might act, not the positions held.

For each position the guard looked at, it leaves here the interval of marks in which it
found nothing to do (a cell of the position's band, ``guardbot.policies.quiet``: calm, or
near the trigger but still quiet), or marks it "always" (no band, evaluated in full, not
looked at yet). A tick on a symbol then visits only:

- the positions whose cell no longer holds the new mark, found with two heaps per symbol
  (the cells' upper ends in a min-heap, their lower ends in a max-heap) in
  ``O(k log n)`` for ``k`` positions leaving their cells; a position found this way
  becomes "always" until the guard gives it a new cell, so a visit that does not happen
  (an account not owned, an evaluation that failed) is not lost;
- the "always" positions of the symbol;
- every celled position of the symbol whose band holds only while the mark is calm
  (``Quiet.calm``), when the guard finds the mark moving (``speeds``, ``celled``).

Cells are replaced, never edited: each carries a token, and heap entries of an older token
are dropped when they surface (or when a heap grows past twice its live cells). Pure: no
clock, no I/O; the guard decides what a cell is.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Iterable
from decimal import Decimal

from guardbot.domain import PositionKey
from guardbot.policies.quiet import Cell, Speeds

_COMPACT_SLACK = 64


class _Symbol:
    __slots__ = ("always", "cells", "highs", "lows", "speeds")

    def __init__(self) -> None:
        self.cells: dict[PositionKey, tuple[Cell, int]] = {}
        self.always: set[PositionKey] = set()
        self.highs: list[tuple[Decimal, int, PositionKey]] = []  # min-heap of upper ends
        self.lows: list[tuple[Decimal, int, PositionKey]] = []  # max-heap (negated lows)
        self.speeds: Counter[Speeds] = Counter()


class MarkWatch:
    """The positions each symbol's next tick must visit."""

    def __init__(self) -> None:
        self._symbols: dict[str, _Symbol] = {}
        self._tokens = itertools.count()

    def always(self, key: PositionKey) -> None:
        """Visit ``key`` on every tick of its symbol until it gets a cell."""
        entry = self._entry(key[1])
        self._uncell(entry, key)
        entry.always.add(key)

    def cell(self, key: PositionKey, cell: Cell) -> None:
        """``key`` needs nothing while its symbol's mark stays in ``cell``."""
        entry = self._entry(key[1])
        entry.always.discard(key)
        found = entry.cells.get(key)
        if found is not None and found[0] == cell:
            return
        self._uncell(entry, key)
        token = next(self._tokens)
        entry.cells[key] = (cell, token)
        if cell.speeds:
            entry.speeds[cell.speeds] += 1
        heapq.heappush(entry.highs, (cell.high, token, key))
        heapq.heappush(entry.lows, (-cell.low, token, key))
        if max(len(entry.highs), len(entry.lows)) > 2 * len(entry.cells) + _COMPACT_SLACK:
            self._compact(entry)

    def forget(self, key: PositionKey) -> None:
        """The position is gone (closed, released)."""
        entry = self._symbols.get(key[1])
        if entry is None:
            return
        self._uncell(entry, key)
        entry.always.discard(key)

    def forget_account(self, account_id: str) -> None:
        for entry in self._symbols.values():
            for key in [k for k in (*entry.cells, *entry.always) if k[0] == account_id]:
                self._uncell(entry, key)
                entry.always.discard(key)

    def reset(self) -> None:
        """Every position is visited on its symbol's next tick (the rules changed)."""
        for entry in self._symbols.values():
            entry.always.update(entry.cells)
            entry.cells.clear()
            entry.highs.clear()
            entry.lows.clear()
            entry.speeds.clear()

    def near(self, key: PositionKey) -> bool | None:
        """Whether ``key``'s cell is near its trigger; ``None`` without a cell."""
        entry = self._symbols.get(key[1])
        found = None if entry is None else entry.cells.get(key)
        return None if found is None else found[0].near

    def speeds(self, symbol: str) -> list[Speeds]:
        """The distinct speed conditions of the symbol's cells."""
        entry = self._symbols.get(symbol)
        return [] if entry is None else [s for s, n in entry.speeds.items() if n > 0]

    def visit(self, symbol: str, mark: Decimal, *, moving: Iterable[Speeds] = ()
              ) -> set[PositionKey]:  # fmt: skip
        """The positions a tick of ``symbol`` to ``mark`` must visit: those leaving their
        cells (they become "always"), the "always" ones, and those whose cell holds only
        while the mark is calm under one of the ``moving`` speed conditions."""
        entry = self._symbols.get(symbol)
        if entry is None:
            return set()
        cells = entry.cells
        left: list[PositionKey] = []
        highs, lows = entry.highs, entry.lows
        while highs and highs[0][0] < mark:
            _, token, key = heapq.heappop(highs)
            found = cells.get(key)
            if found is not None and found[1] == token:
                left.append(key)
        while lows and -lows[0][0] > mark:
            _, token, key = heapq.heappop(lows)
            found = cells.get(key)
            if found is not None and found[1] == token:
                left.append(key)
        for key in left:
            self.always(key)
        visit = set(entry.always)
        conditions = set(moving)
        if conditions:
            visit.update(k for k, (c, _) in cells.items() if c.speeds in conditions)
        return visit

    def __len__(self) -> int:
        return sum(len(e.cells) + len(e.always) for e in self._symbols.values())

    def _entry(self, symbol: str) -> _Symbol:
        entry = self._symbols.get(symbol)
        if entry is None:
            entry = self._symbols[symbol] = _Symbol()
        return entry

    @staticmethod
    def _uncell(entry: _Symbol, key: PositionKey) -> None:
        found = entry.cells.pop(key, None)
        if found is not None and found[0].speeds:
            entry.speeds[found[0].speeds] -= 1
            if entry.speeds[found[0].speeds] <= 0:
                del entry.speeds[found[0].speeds]

    @staticmethod
    def _compact(entry: _Symbol) -> None:
        """Drop the heap entries of replaced cells."""
        entry.highs = [(c.high, t, k) for k, (c, t) in entry.cells.items()]
        entry.lows = [(-c.low, t, k) for k, (c, t) in entry.cells.items()]
        heapq.heapify(entry.highs)
        heapq.heapify(entry.lows)
