"""Checking the audit log has not been tampered with: ``guardbot audit verify``.

Each account's events form a hash chain (``chain.py``): every event stores the hash of the
previous one, and an INTENT event's hash covers its action row. ``verify_chains`` recomputes
every chain and names the first broken link of each account (an edited or deleted row, a
forged link), then checks that ``action_outcomes``, the copy ``audit summary`` reads, still
agrees with the events and actions it was copied from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, Select, and_, exists, or_, select

from guardbot.audit import chain
from guardbot.audit.tables import ACTIONS, EVENTS, OUTCOME_KINDS, OUTCOMES, outcome_row


@dataclass(frozen=True, slots=True)
class Break:
    """The first broken link of one account's chain."""

    account_id: str
    seq: int | None
    event_id: str | None
    action_id: str | None
    problem: str

    def __str__(self) -> str:
        where = f"account {self.account_id}"
        if self.seq is not None:
            where += f", event seq {self.seq} (id {self.event_id}, action {self.action_id})"
        elif self.action_id is not None:
            where += f", action {self.action_id}"
        return f"{where}: {self.problem}"


@dataclass(slots=True)
class Verification:
    accounts: int = 0
    events: int = 0
    breaks: list[Break] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.breaks


def verify_chains(engine: Engine, account: str | None = None) -> Verification:
    """Recompute every account's hash chain and name the first broken link of each; then
    check that ``action_outcomes`` (the summary's copy) still agrees with the chain."""
    result = Verification()
    action_columns = [ACTIONS.c[name].label(f"a_{name}") for name in chain.ACTION_FIELDS]
    query = (
        select(EVENTS, *action_columns)
        .select_from(
            EVENTS.outerjoin(
                ACTIONS, and_(ACTIONS.c.id == EVENTS.c.action_id, EVENTS.c.kind == "INTENT")
            )
        )
        .order_by(EVENTS.c.account_id, EVENTS.c.seq)
    )
    orphans = select(ACTIONS.c.account_id, ACTIONS.c.id).where(
        ~exists().where(EVENTS.c.action_id == ACTIONS.c.id, EVENTS.c.kind == "INTENT")
    )
    if account is not None:
        query = query.where(EVENTS.c.account_id == account)
        orphans = orphans.where(ACTIONS.c.account_id == account)
    broken: set[str] = set()
    current: str | None = None
    expected_seq, prev_hash = 1, chain.GENESIS
    with engine.connect() as connection:
        for row in connection.execution_options(yield_per=5000).execute(query):
            values = row._mapping
            account_id: str = values["account_id"]
            if account_id != current:
                current = account_id
                result.accounts += 1
                expected_seq, prev_hash = 1, chain.GENESIS
            result.events += 1
            if account_id in broken:
                continue
            problem = _check_link(values, expected_seq, prev_hash)
            if problem is not None:
                broken.add(account_id)
                result.breaks.append(
                    Break(account_id, values["seq"], values["id"], values["action_id"], problem)
                )
            expected_seq, prev_hash = values["seq"] + 1, values["hash"]
        for row in connection.execute(orphans):
            if row.account_id not in broken:
                broken.add(row.account_id)
                result.breaks.append(Break(
                    row.account_id, None, None, row.id,
                    "the action has no INTENT event (deleted?)"))  # fmt: skip
        copies = _outcome_copies(account)
        for row in connection.execution_options(yield_per=5000).execute(copies):
            values = row._mapping
            if values["account_id"] in broken:
                continue
            problem = _check_copy(values)
            if problem is not None:
                broken.add(values["account_id"])
                result.breaks.append(Break(values["account_id"], values["seq"], values["id"],
                                           values["action_id"], problem))  # fmt: skip
    return result


_COPIED = ("id", "time", "account_id", "symbol", "policy", "kind", "amount", "dry_run")


def _outcome_copies(account: str | None) -> Select[Any]:
    """Outcome events, and any event with an outcome row, beside that row and the action."""
    query = (
        select(
            EVENTS.c.id, EVENTS.c.account_id, EVENTS.c.seq, EVENTS.c.action_id, EVENTS.c.kind,
            EVENTS.c.detail, EVENTS.c.latency_ms,
            *(ACTIONS.c[name].label(f"a_{name}") for name in _COPIED),
            *(column.label(f"o_{column.name}") for column in OUTCOMES.c),
        )
        .select_from(
            EVENTS.join(ACTIONS, ACTIONS.c.id == EVENTS.c.action_id)
            .outerjoin(OUTCOMES, OUTCOMES.c.event_id == EVENTS.c.id)
        )
        .where(or_(EVENTS.c.kind.in_(OUTCOME_KINDS), OUTCOMES.c.event_id.is_not(None)))
        .order_by(EVENTS.c.account_id, EVENTS.c.seq)
    )  # fmt: skip
    return query if account is None else query.where(EVENTS.c.account_id == account)


def _check_copy(values: Any) -> str | None:
    if values["o_event_id"] is None:
        return "this outcome event has no action_outcomes row (deleted?)"
    expected = None
    if values["kind"] in OUTCOME_KINDS:
        action = {name: values[f"a_{name}"] for name in _COPIED}
        expected = outcome_row(values, action)
    stored = {column.name: values[f"o_{column.name}"] for column in OUTCOMES.c}
    if stored != expected:
        return "its action_outcomes row does not match the event and its action (edited?)"
    return None


def _check_link(values: Any, expected_seq: int, prev_hash: str) -> str | None:
    if values["seq"] != expected_seq:
        return f"expected seq {expected_seq}: events missing before this one (deleted?)"
    if values["prev_hash"] != prev_hash:
        return "prev_hash does not match the previous event's hash (rows removed or edited)"
    action = None
    if values["kind"] == "INTENT":
        action = {name: values[f"a_{name}"] for name in chain.ACTION_FIELDS}
        if action["id"] is None:
            return "the INTENT event's action row is missing"
    if chain.event_hash(values, action) != values["hash"]:
        what = "this event or its action row" if action is not None else "this event"
        return f"hash does not match the stored values: {what} was edited"
    return None
