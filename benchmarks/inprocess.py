"""A guard in this process, for the benchmarks that time it: the in-memory exchange
(``guardbot.exchange.fake``), a real SQLite audit log (with its fsync'd spool) in a given
folder, the policies of the config, ETH's margin rules (MMR growing with notional) on every
symbol, and every account's book loaded by one snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from decimal import Decimal as D
from pathlib import Path
from typing import Any

from guardbot import risk
from guardbot.audit import schema
from guardbot.audit.store import AuditLog
from guardbot.clock import ManualClock
from guardbot.config import parse_config
from guardbot.domain import AccountSnapshot, MarginMode, Position, Source, SymbolRules
from guardbot.exchange.fake import FakeExchange
from guardbot.guard import Guard
from guardbot.policies.loader import load_policies

REPO = Path(__file__).resolve().parent.parent


def rules_for(symbol: str) -> SymbolRules:
    return SymbolRules(symbol, D("0.01"), D("0.006"), D("0.0000002512"))


def long_at(account: str, symbol: str, distance: D, mark: D, qty: D = D(2)) -> Position:
    """A 10x isolated long of ``qty`` opened at ``mark``, with the margin that puts it
    ``distance`` from liquidation there."""
    position = Position(
        account_id=account, symbol=symbol, margin_mode=MarginMode.ISOLATED, qty=qty,
        average_open_price=mark, cost_position=qty * mark, mark_price=mark, margin=D(0),
        leverage=10, unsettled_pnl=D(0), est_liq_price=None, mmr=D("0.006"), imr=D("0.01"),
        last_sum_unitary_funding=D(0), seq=1, exchange_ms=0, received_ms=0,
        source=Source.REST)  # fmt: skip
    margin = risk.round_up(risk.margin_for_distance(position, rules_for(symbol), distance))
    return replace(position, margin=margin)


def settings_with(**sections: Any) -> Any:
    """``topup`` and ``sweep`` with their defaults, no data ever stale (a long run), and
    ``sections`` over that."""
    return parse_config({"policies": [{"use": "topup"}, {"use": "sweep"}],
                         "poll": {"max_data_age_s": 10**6}, **sections})


async def guard_holding(folder: Path, book: Mapping[str, Sequence[Position]], settings: Any,
                        clock: ManualClock, exchange: type[FakeExchange] = FakeExchange
                        ) -> Guard:  # fmt: skip
    """A guard acting on ``book`` (positions by account), each account's positions also
    held by its exchange, confirmed now. Close ``guard.audit`` when done."""
    url = f"sqlite:///{folder / 'audit.db'}"
    schema.upgrade(url)
    audit = await AuditLog.open(url, folder / "spool", clock=clock)
    await audit.start_run("benchmark", "h", "host")
    exchanges = {account: exchange(account, clock=clock) for account in book}
    guard = Guard(settings, exchanges, audit,
                  load_policies(settings.policies, REPO / "strategies"), clock=clock)
    guard.rules = {p.symbol: rules_for(p.symbol) for held in book.values() for p in held}
    guard.acting = True
    now = clock.now_ms()
    for account, held in book.items():
        confirmed = tuple(replace(p, exchange_ms=now, received_ms=now) for p in held)
        for position in confirmed:
            exchanges[account].set_position(position)
        await guard.on_snapshot(AccountSnapshot(account, D(10**7), D(10**7), confirmed,
                                                now, now))  # fmt: skip
    return guard
