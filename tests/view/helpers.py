"""The view tests' helpers: a daemon's guard over the in-memory exchange, on a ManualClock
with a real SQLite audit log, and its live state."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D
from typing import Any

from factories import ACCOUNT, ALT_RULES

from guardbot.audit.store import AuditLog
from guardbot.clock import ManualClock
from guardbot.config import Settings, parse_config
from guardbot.daemon import Daemon, load_policies
from guardbot.domain import AccountSnapshot, MarkPrice, Position, Source
from guardbot.exchange.fake import FakeExchange
from guardbot.exchange.port import MarksPushed
from guardbot.sim.keys import generate_key
from guardbot.view.state import LiveState

ALT = ALT_RULES.symbol
KEY, SECRET = generate_key()


def view_settings(**sections: Any) -> Settings:
    data: dict[str, Any] = {
        "budgets": {"cooldown_s": 0, "per_action": "50", "min_amount": "0.01",
                    "per_position_per_day": "300", "per_account_per_day": "1000"},
        "poll": {"max_data_age_s": 5},
        "accounts": [{"name": "main", "account_id": ACCOUNT, "orderly_key": KEY,
                      "orderly_secret": SECRET}],
        "policies": [{"use": "topup", "params": {"trigger": "0.05", "target": "0.09"}},
                     {"use": "sweep", "params": {"safe": "0.20"}}],
    }  # fmt: skip
    data.update(sections)
    return parse_config(data)


class Watched:
    """A daemon (not run: its guard is driven by hand) and the live state of it."""

    def __init__(self, audit: AuditLog, clock: ManualClock, settings: Settings) -> None:
        self.clock = clock
        self.daemon = Daemon(settings, {ACCOUNT: FakeExchange(ACCOUNT, clock=clock)}, audit,
                             load_policies(settings), account_names={ACCOUNT: "main"},
                             clock=clock)  # fmt: skip
        self.guard = self.daemon.guard
        self.guard.rules = {ALT: ALT_RULES}
        self.guard.acting = True
        self.state = LiveState(self.guard, settings, self.daemon.readiness,
                               instance_id="test-1", sample_s=10)

    async def snapshot(self, *positions: Position, account: str = ACCOUNT) -> None:
        now = self.clock.now_ms()
        await self.guard.on_snapshot(AccountSnapshot(
            account, free_collateral=D(10_000), total_collateral_value=D(10_000),
            positions=tuple(replace(p, account_id=account, exchange_ms=now, received_ms=now,
                                    source=Source.REST) for p in positions),
            exchange_ms=now, received_ms=now))  # fmt: skip

    async def mark(self, price: str, account: str = ACCOUNT) -> None:
        await self.guard.on_event(account, MarksPushed(
            (MarkPrice(ALT, D(price), self.clock.now_ms()),)))
