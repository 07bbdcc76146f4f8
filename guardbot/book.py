"""The position book: the latest known state of every position, and how old it is.

Pure (no I/O, no clock: every time is passed in). Three sources feed it
(docs/architecture.md, "Data flow"): REST snapshots, incremental private-WS pushes, and public
mark prices that re-price positions between pushes.

Ordering. Orderly stamps each position version with ``seq`` (docs/exchange.md §4) and an
``updated_time`` (``exchange_ms``). An update is applied unless it is older than what the
book holds: when both carry a ``seq`` the higher ``seq`` wins (equal ``seq`` = the same
version, applied when its timestamp is not older, which refreshes the confirmation time);
otherwise (``positions_lite`` has no ``seq``) the later ``exchange_ms`` wins, ties applied.
So a REST response that left the exchange before a WS push, but arrived after it, is
dropped, whichever order they arrive in.

Age. A position's age is ``now_ms`` minus the ``received_ms`` of the last exchange update
that confirmed it; mark re-pricing does not make the quantity or margin any fresher, so it
does not reset the age.

Closing. An update with ``qty == 0`` (or ``remove``) drops the position but remembers its
version, so a late copy cannot bring it back: only a strictly newer version reopens it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import Decimal

from guardbot.domain import AccountSnapshot, MarginMode, Position, PositionKey, Source


@dataclass(frozen=True, slots=True)
class _Version:
    seq: int | None
    exchange_ms: int

    @classmethod
    def of(cls, position: Position) -> _Version:
        return cls(position.seq, position.exchange_ms)

    def supersedes(self, other: _Version, *, strictly: bool) -> bool:
        if self.seq is not None and other.seq is not None and self.seq != other.seq:
            return self.seq > other.seq
        if strictly:
            return self.exchange_ms > other.exchange_ms
        return self.exchange_ms >= other.exchange_ms


@dataclass(frozen=True, slots=True)
class _Entry:
    position: Position  # as last applied, possibly re-priced at a newer mark
    version: _Version  # of the last exchange update (never of a mark)
    confirmed_ms: int  # received_ms of that update


class PositionBook:
    """Latest ``Position`` per ``(account_id, symbol, margin_mode)``."""

    def __init__(self) -> None:
        self._entries: dict[PositionKey, _Entry] = {}
        self._closed: dict[PositionKey, _Version] = {}
        self._marks: dict[str, tuple[Decimal, int]] = {}

    def apply(self, position: Position) -> bool:
        """Apply one exchange update (REST or WS). Returns ``False`` if it was dropped as
        older than what the book holds; ``True`` if applied (including a close)."""
        key = position.key
        version = _Version.of(position)
        known = self._entries.get(key)
        if known is not None:
            if not version.supersedes(known.version, strictly=False):
                return False
        else:
            # Only a newer version reopens a closed position, never a late copy.
            closed = self._closed.get(key)
            if closed is not None and not version.supersedes(closed, strictly=True):
                return False
        if not position.is_open:
            self._entries.pop(key, None)
            self._closed[key] = version
            return True
        self._closed.pop(key, None)
        self._entries[key] = _Entry(position, version, position.received_ms)
        return True

    def apply_snapshot(self, snapshot: AccountSnapshot) -> list[Position]:
        """Apply a full ``GET /v1/positions`` snapshot of one account. Positions it no longer
        lists are closed, unless the book heard of them after the snapshot was taken (a WS
        push that overtook the REST response). Returns the positions applied."""
        applied = [p for p in snapshot.positions if self.apply(p)]
        listed = {p.key for p in snapshot.positions}
        for key, entry in list(self._entries.items()):
            if (
                key[0] == snapshot.account_id
                and key not in listed
                and entry.version.exchange_ms <= snapshot.exchange_ms
            ):
                self.remove(key)
        return applied

    def apply_mark(self, symbol: str, price: Decimal, exchange_ms: int) -> list[Position]:
        """Re-price every open position on ``symbol`` at a new mark (source ``MARK``).

        ``unsettled_pnl`` is recomputed from cost, quantity and mark with the funding owed
        kept as it was (``upnl = q*mark - cost - funding``). Marks older than the last one
        applied for the symbol are ignored. Returns the re-priced positions.
        """
        if price <= 0:
            raise ValueError(f"{symbol}: mark price must be positive, got {price}")
        last = self._marks.get(symbol)
        if last is not None and exchange_ms < last[1]:
            return []
        self._marks[symbol] = (price, exchange_ms)
        repriced = []
        for key, entry in self._entries.items():
            if key[1] != symbol:
                continue
            old = entry.position
            position = replace(
                old,
                mark_price=price,
                unsettled_pnl=old.unsettled_pnl + old.qty * (price - old.mark_price),
                source=Source.MARK,
            )
            self._entries[key] = replace(entry, position=position)
            repriced.append(position)
        return repriced

    def remove(self, key: PositionKey) -> Position | None:
        """Forget a position (closed, or no longer guarded); returns what was held."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self._closed[key] = entry.version
        return entry.position

    def get(self, key: PositionKey) -> Position | None:
        entry = self._entries.get(key)
        return entry.position if entry is not None else None

    def age_ms(self, key: PositionKey, now_ms: int) -> int | None:
        """Milliseconds since the exchange last confirmed this position; ``None`` if unknown."""
        entry = self._entries.get(key)
        return now_ms - entry.confirmed_ms if entry is not None else None

    def isolated_positions(self, account_id: str) -> list[Position]:
        """Open isolated positions of one account, by symbol. Cross positions on the same
        symbol are never returned: the guard never touches them."""
        return sorted(
            (
                entry.position
                for key, entry in self._entries.items()
                if key[0] == account_id and key[2] is MarginMode.ISOLATED
            ),
            key=lambda p: p.symbol,
        )

    def positions(self) -> list[Position]:
        """Every open position held, cross and isolated."""
        return [entry.position for entry in self._entries.values()]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[PositionKey]:
        return iter(list(self._entries))
