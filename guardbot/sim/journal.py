"""The engine's record of what changed, for the pushes, and the exchange-wide ``seq``.

``seq`` is one counter for the whole exchange (starting above 2**53, like the real one); a
position takes a new ``seq`` whenever anything it reports changes, mark re-pricing included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from guardbot.sim.records import Account, Liquidation, PositionState, SymbolMode

SEQ_START = 1_700_000_000_000_000_000


@dataclass(slots=True)
class Changes:
    """What changed since the last drain: the server pushes these over the private WS."""

    positions: dict[str, set[SymbolMode]] = field(default_factory=dict)
    balances: set[str] = field(default_factory=set)
    accounts: set[str] = field(default_factory=set)
    liquidations: list[Liquidation] = field(default_factory=list)


class Journal:
    """Collects ``Changes`` until they are drained, hands out ``seq`` numbers and reads the
    injected ``clock`` (epoch ms) for every timestamp the engine books."""

    def __init__(self, clock: Callable[[], int]) -> None:
        self.clock = clock
        self.changes = Changes()
        self._seq = SEQ_START
        self._liquidation_id = 0

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def next_liquidation_id(self) -> int:
        self._liquidation_id += 1
        return self._liquidation_id

    def liquidated(self, event: Liquidation) -> None:
        self.changes.liquidations.append(event)

    def position_changed(self, account_id: str, position: PositionState) -> None:
        """The position itself changed (qty, margin, leverage): a new ``seq`` and
        ``updated_ms``."""
        position.updated_ms = self.clock()
        self.figures_changed(account_id, position)

    def figures_changed(self, account_id: str, position: PositionState) -> None:
        """What the position reports changed around it (its mark, its pending orders): a new
        ``seq``, the same ``updated_ms``."""
        position.seq = self.next_seq()
        self.touched(account_id, position)

    def repriced(self, account_id: str, positions: list[PositionState]) -> None:
        """``figures_changed`` for each of one account's ``positions`` in turn (a mark
        tick re-prices every open position on its symbol)."""
        if not positions:
            return
        touched = self.changes.positions.setdefault(account_id, set())
        for position in positions:
            self._seq += 1
            position.seq = self._seq
            touched.add((position.symbol, position.margin_mode))

    def touched(self, account_id: str, position: PositionState) -> None:
        self.changes.positions.setdefault(account_id, set()).add(
            (position.symbol, position.margin_mode)
        )

    def balance_changed(self, account: Account) -> None:
        account.updated_ms = self.clock()
        self.changes.balances.add(account.account_id)

    def drain(self) -> Changes:
        """Hand over (and forget) what changed since the last call."""
        changes, self.changes = self.changes, Changes()
        return changes
