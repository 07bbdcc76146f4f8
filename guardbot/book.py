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

Re-pricing. A mark re-prices every position on its symbol confirmed before it, at no cost
per position: the book keeps each position as the exchange confirmed it and the latest mark
of each symbol, and prices a position when it is asked for (``get``, ``current``):
``unsettled_pnl = confirmed_pnl + q*(mark - confirmed_mark)``, which keeps the funding owed
(``q*mark - cost - unsettled_pnl``) exactly as confirmed. A mark tick therefore costs the
same with a thousand positions as with one; the guard compares each mark with the band in
which the position needs nothing (``guardbot.policies.quiet``).

Age. A position's age is ``now_ms`` minus the ``received_ms`` of the last exchange update
that confirmed it; mark re-pricing does not make the quantity or margin any fresher, so it
does not reset the age.

Closing. An update with ``qty == 0`` (or ``remove``) drops the position but remembers its
version, so a late copy cannot bring it back: only a strictly newer version reopens it.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from decimal import Decimal

from guardbot.domain import AccountSnapshot, MarginMode, Position, PositionKey, Source

# ``current`` builds the re-priced copy from every field in ``__init__`` order:
# ``dataclasses.replace`` does the same, field by field, at twice the cost (it is on every
# evaluation).
_FIELD_NAMES = tuple(f.name for f in fields(Position))
_ALL_FIELDS = operator.attrgetter(*_FIELD_NAMES)
_MARK_AT = _FIELD_NAMES.index("mark_price")
_PNL_AT = _FIELD_NAMES.index("unsettled_pnl")
_SOURCE_AT = _FIELD_NAMES.index("source")


def _repriced(position: Position, mark: Decimal, unsettled_pnl: Decimal) -> Position:
    """``replace(position, mark_price=mark, unsettled_pnl=..., source=Source.MARK)``."""
    values = list(_ALL_FIELDS(position))
    values[_MARK_AT], values[_PNL_AT], values[_SOURCE_AT] = mark, unsettled_pnl, Source.MARK
    return Position(*values)


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
class Held:
    """One open position as the book holds it: the update the exchange last confirmed,
    never re-priced (a new object for every update applied)."""

    key: PositionKey
    position: Position  # as confirmed, at the mark it was reported with
    version: _Version
    confirmed_ms: int  # received_ms of that update
    stamp: int  # the book's mark count when applied: marks after it re-price it


@dataclass(frozen=True, slots=True)
class _Mark:
    price: Decimal
    exchange_ms: int
    stamp: int


class PositionBook:
    """Latest ``Position`` per ``(account_id, symbol, margin_mode)``."""

    def __init__(self) -> None:
        self._entries: dict[PositionKey, Held] = {}
        self._closed: dict[PositionKey, _Version] = {}
        self._marks: dict[str, _Mark] = {}
        self._stamp = 0  # marks applied so far
        self._by_account: dict[str, set[PositionKey]] = {}
        self._by_symbol: dict[str, set[PositionKey]] = {}
        # per account: its isolated positions by symbol, in symbol order
        self._isolated: dict[str, dict[str, Held]] = {}

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
            self._drop(key)
            self._closed[key] = version
            return True
        self._closed.pop(key, None)
        if known is None:
            self._index(key)
        held = self._entries[key] = Held(key, position, version, position.received_ms,
                                         self._stamp)
        if key[2] is MarginMode.ISOLATED:
            isolated = self._isolated.setdefault(key[0], {})
            new = key[1] not in isolated
            isolated[key[1]] = held
            if new:
                self._isolated[key[0]] = dict(sorted(isolated.items()))
        return True

    def apply_snapshot(self, snapshot: AccountSnapshot) -> list[Position]:
        """Apply a full ``GET /v1/positions`` snapshot of one account. Positions it no longer
        lists are closed, unless the book heard of them after the snapshot was taken (a WS
        push that overtook the REST response). Returns the positions applied."""
        applied = [p for p in snapshot.positions if self.apply(p)]
        listed = {p.key for p in snapshot.positions}
        for key in list(self._by_account.get(snapshot.account_id, ())):
            if key not in listed and self._entries[key].version.exchange_ms <= snapshot.exchange_ms:
                self.remove(key)
        return applied

    def apply_mark(self, symbol: str, price: Decimal, exchange_ms: int) -> bool:
        """Re-price every open position on ``symbol`` at a new mark (source ``MARK``).

        ``unsettled_pnl`` follows the mark with the funding owed kept as it was
        (``upnl = q*mark - cost - funding``). Marks older than the last one applied for the
        symbol are ignored (``False``); the cost does not depend on how many positions the
        symbol has (``accounts_on`` lists the accounts it re-priced).
        """
        if price <= 0:
            raise ValueError(f"{symbol}: mark price must be positive, got {price}")
        last = self._marks.get(symbol)
        if last is not None and exchange_ms < last.exchange_ms:
            return False
        self._stamp += 1
        self._marks[symbol] = _Mark(price, exchange_ms, self._stamp)
        return True

    def accounts_on(self, symbol: str) -> set[str]:
        """The accounts with an open position on ``symbol`` (cross ones included)."""
        return {key[0] for key in self._by_symbol.get(symbol, ())}

    def remove(self, key: PositionKey) -> Position | None:
        """Forget a position (closed, or no longer guarded); returns what was held."""
        held = self._entries.get(key)
        if held is None:
            return None
        self._drop(key)
        self._closed[key] = held.version
        return self.current(held)

    def get(self, key: PositionKey) -> Position | None:
        held = self._entries.get(key)
        return self.current(held) if held is not None else None

    def confirmed(self, key: PositionKey) -> Position | None:
        """The position as the exchange last confirmed it (its mark as of then)."""
        held = self._entries.get(key)
        return held.position if held is not None else None

    def current(self, held: Held) -> Position:
        """``held``'s position at the latest mark of its symbol, if one came after it."""
        position = held.position
        mark = self._marks.get(position.symbol)
        if mark is None or mark.stamp <= held.stamp:
            return position
        moved = position.qty * (mark.price - position.mark_price)
        return _repriced(position, mark.price, position.unsettled_pnl + moved)

    def age_ms(self, key: PositionKey, now_ms: int) -> int | None:
        """Milliseconds since the exchange last confirmed this position; ``None`` if unknown."""
        held = self._entries.get(key)
        return now_ms - held.confirmed_ms if held is not None else None

    def isolated_keys(self, account_id: str) -> list[PositionKey]:
        """The keys of one account's open isolated positions, by symbol."""
        return [held.key for held in self._isolated.get(account_id, {}).values()]

    def isolated_marks(self, account_id: str, symbols: Iterable[str] | None = None
                       ) -> list[tuple[Held, Decimal]]:  # fmt: skip
        """One account's open isolated positions (all, or those on ``symbols``), by symbol,
        each with the mark it is priced at now (``current`` builds the position itself):
        what a mark tick looks at."""
        marks = self._marks
        isolated = self._isolated.get(account_id, {})
        chosen = isolated.values() if symbols is None else [
            isolated[s] for s in sorted(symbols) if s in isolated]
        found = []
        for held in chosen:
            mark = marks.get(held.key[1])
            price = mark.price if mark is not None and mark.stamp > held.stamp else None
            found.append((held, held.position.mark_price if price is None else price))
        return found

    def isolated_positions(self, account_id: str) -> list[Position]:
        """Open isolated positions of one account, by symbol. Cross positions on the same
        symbol are never returned: the guard never touches them."""
        return [self.current(held) for held in self._isolated.get(account_id, {}).values()]

    def positions(self) -> list[Position]:
        """Every open position held, cross and isolated."""
        return [self.current(held) for held in self._entries.values()]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[PositionKey]:
        return iter(list(self._entries))

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def _index(self, key: PositionKey) -> None:
        self._by_account.setdefault(key[0], set()).add(key)
        self._by_symbol.setdefault(key[1], set()).add(key)

    def _drop(self, key: PositionKey) -> None:
        if self._entries.pop(key, None) is None:
            return
        account_id, symbol, mode = key
        for index, name in ((self._by_account, account_id), (self._by_symbol, symbol)):
            index[name].discard(key)
            if not index[name]:
                del index[name]
        if mode is MarginMode.ISOLATED:
            del self._isolated[account_id][symbol]
            if not self._isolated[account_id]:
                del self._isolated[account_id]
