"""Why did this position die? ``guardbot audit why`` (docs/architecture.md, "Audit log").

A guarded isolated position the exchange liquidated has a ``position_liquidated``
observation: the exchange's liquidation (id, time, price), how the guard last saw the
position (margin, mark, liquidation price, distance) and the guard's last decisions on it
(``guard_last``, kept in memory, so empty after a restart). This module reads those records
back with every action the audit log holds on the position since it opened (after the
previous close or liquidation on the symbol), and says in one line what the record shows:
the refusal that held the guard back, a gap the mark jumped past the trigger in, or top-ups
that were not enough.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Engine, func, select

from guardbot.audit.ledger import CLOSES
from guardbot.audit.queries import ActionFilter, list_actions
from guardbot.audit.tables import OBSERVATIONS, OUTCOMES

LIQUIDATED = "position_liquidated"
ACTIONS_SHOWN = 50  # actions of one position read back at most


@dataclass(frozen=True, slots=True)
class Death:
    """One liquidated position and what the audit log knows about it."""

    time: datetime
    account_id: str
    symbol: str
    detail: dict[str, str]
    guard_last: list[dict[str, str]]
    actions: list[dict[str, Any]]  # oldest first, as ``queries.list_actions`` rows
    opened_after: datetime | None  # the previous close or liquidation on the symbol
    added: Decimal  # margin the guard's applied ADDs moved into it (not dry runs)

    @property
    def verdict(self) -> str:
        return explain(self)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (money and times as strings)."""
        return {"time": self.time.isoformat(), "account_id": self.account_id,
                "symbol": self.symbol, "verdict": self.verdict, "liquidation": self.detail,
                "added": str(self.added), "guard_last": self.guard_last,
                "actions": [{k: _text(v) for k, v in a.items()} for a in self.actions]}


def deaths(engine: Engine, *, since: datetime | None = None, until: datetime | None = None,
           account: str | None = None, symbol: str | None = None) -> list[Death]:
    """Liquidated guarded positions in the window, oldest first."""
    query = select(OBSERVATIONS).where(OBSERVATIONS.c.kind == LIQUIDATED)
    if since is not None:
        query = query.where(OBSERVATIONS.c.time >= since)
    if until is not None:
        query = query.where(OBSERVATIONS.c.time < until)
    if account is not None:
        query = query.where(OBSERVATIONS.c.account_id == account)
    if symbol is not None:
        query = query.where(OBSERVATIONS.c.symbol == symbol)
    with engine.connect() as connection:
        found = list(connection.execute(query.order_by(OBSERVATIONS.c.time)))
        opened = [connection.execute(
            select(func.max(OBSERVATIONS.c.time)).where(
                OBSERVATIONS.c.account_id == row.account_id,
                OBSERVATIONS.c.symbol == row.symbol,
                OBSERVATIONS.c.kind.in_(CLOSES), OBSERVATIONS.c.time < row.time)
        ).scalar() for row in found]
    result = []
    for row, after in zip(found, opened, strict=True):
        detail = dict(row.detail)
        actions = list_actions(engine, ActionFilter(account=row.account_id, symbol=row.symbol,
                                                    since=after, until=row.time),
                               limit=ACTIONS_SHOWN)
        actions = [a for a in reversed(actions)
                   if after is None or a["time"] > after]
        result.append(Death(row.time, row.account_id, row.symbol, detail,
                            _notes(detail.pop("guard_last", "[]")), actions, after,
                            _added(engine, row.account_id, row.symbol, after, row.time)))
    return result


def _added(engine: Engine, account_id: str, symbol: str, after: datetime | None,
           until: datetime) -> Decimal:
    """Margin the guard's applied ADDs moved into the position, over its whole life (not
    only the actions shown)."""
    query = select(OUTCOMES.c.amount).where(
        OUTCOMES.c.account_id == account_id, OUTCOMES.c.symbol == symbol,
        OUTCOMES.c.applied, OUTCOMES.c.action_kind == "ADD", OUTCOMES.c.dry_run.is_(False),
        OUTCOMES.c.action_time < until)
    if after is not None:
        query = query.where(OUTCOMES.c.action_time > after)
    with engine.connect() as connection:
        return sum((Decimal(a) for (a,) in connection.execute(query)), Decimal(0))


def _text(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _notes(raw: str) -> list[dict[str, str]]:
    try:
        notes = json.loads(raw)
    except ValueError:
        return []
    if not isinstance(notes, list):
        return []
    return [{str(k): str(v) for k, v in n.items()} for n in notes if isinstance(n, dict)]


def _number(detail: dict[str, str], name: str) -> Decimal | None:
    try:
        return Decimal(detail[name])
    except (KeyError, InvalidOperation):
        return None


def explain(death: Death) -> str:
    """One line: what the record shows killed the position."""
    detail = death.detail
    added = death.added
    refused = [a for a in death.actions if a["status"] == "SKIPPED"]
    unknown = [a for a in death.actions if a["kind"] == "ADD" and not a["dry_run"]
               and a["status"] in ("INTENT", "SENT", "UNCERTAIN")]
    noted_refusals = [n for n in death.guard_last if n.get("kind") == "refused"]
    stale = [n for n in death.guard_last if n.get("kind") == "stale"]
    distance = _number(detail, "last_distance")
    last_mark, price = _number(detail, "last_mark"), _number(detail, "transfer_price")
    parts = []
    if added:
        parts.append(f"the guard added {added} USDC")
    if unknown:
        parts.append(f"{len(unknown)} top-up(s) of {sum(a['amount'] for a in unknown)} USDC "
                     "decided but not answered (outcome unknown)")
    if noted_refusals:
        parts.append(f"last refusal: {noted_refusals[-1]['what']}")
    elif refused:
        parts.append(f"last refusal: {refused[-1]['kind']} {refused[-1]['amount']} "
                     f"({refused[-1]['reason']})")
    if stale:
        parts.append(f"data went stale ({stale[-1]['what']})")
    if distance is not None and last_mark and price:
        move = (price - last_mark) / last_mark
        parts.append(f"last confirmed {distance:.2%} from liquidation at mark {last_mark}, "
                     f"liquidated at {price} ({move:+.2%} since)")
    if not parts:
        return "no decision of the guard is recorded on this position"
    if not added and not unknown and not refused and not noted_refusals and not stale:
        parts.insert(0, "the guard never acted")
    return "; ".join(parts)
