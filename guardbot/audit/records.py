"""What the audit log records: the value types its callers hand in, and the spool records
(plain JSON objects, ``"t"`` naming the kind) that ``AuditLog`` writes to the spool and
``DatabaseWriter`` copies into the tables.

A spool record is built, and checked, here once: money is stored with ``MONEY_SCALE``
decimal places (an amount that does not fit exactly is refused, derived figures are
rounded), and every id is generated here, not by the database, so a record replayed twice is
recognised and inserted once.
"""

from __future__ import annotations

import enum
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from guardbot.audit import chain
from guardbot.audit.tables import COMMAND_RESULTS, MONEY_SCALE
from guardbot.domain import ActionKind, MarginMode, Source

Record = dict[str, Any]
"""One spool record."""

_QUANTUM = Decimal(1).scaleb(-MONEY_SCALE)


class EventKind(enum.StrEnum):
    """The lifecycle of an action. INTENT is written by ``record_action``."""

    INTENT = "INTENT"
    SENT = "SENT"
    SUCCEEDED = "SUCCEEDED"
    REJECTED = "REJECTED"  # the exchange refused: code + message
    UNCERTAIN = "UNCERTAIN"  # may have been applied: must be reconciled
    RECONCILED = "RECONCILED"
    VERIFIED = "VERIFIED"
    SKIPPED = "SKIPPED"  # the arbiter's reason in ``message``
    FAILED = "FAILED"
    DRY_RUN = "DRY_RUN"


# An ADD with one of these never moved money: it leaves the budget.
NOT_APPLIED = frozenset(
    {EventKind.REJECTED, EventKind.SKIPPED, EventKind.FAILED, EventKind.DRY_RUN}
)
# The outcome is known: nothing left to reconcile at start-up.
SETTLED = frozenset(
    {
        EventKind.SUCCEEDED,
        EventKind.REJECTED,
        EventKind.RECONCILED,
        EventKind.VERIFIED,
        EventKind.SKIPPED,
        EventKind.FAILED,
        EventKind.DRY_RUN,
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionRecord:
    """A decided action and the snapshot it was based on.

    Money and snapshot figures are stored with 18 decimal places: ``amount`` must fit
    exactly (``ValueError`` otherwise); derived figures (``distance``...) are rounded.
    ``run_id`` defaults to the run started by ``AuditLog.start_run``.
    """

    account_id: str
    symbol: str
    margin_mode: MarginMode
    policy: str
    kind: ActionKind
    amount: Decimal
    reason: str
    dry_run: bool
    mark_price: Decimal
    margin: Decimal
    qty: Decimal
    liquidation_price: Decimal | None = None
    distance: Decimal | None = None
    data_age_ms: int
    source: Source
    run_id: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UnfinishedAction:
    """An action with no settled outcome (intent, sent or uncertain): reconcile it."""

    action_id: str
    time_ms: int
    last_event: EventKind
    record: ActionRecord


# Ids need to be unique, not unguessable (nothing is authorised by knowing one): 80 bits
# from a generator seeded once per process from the OS, since a system call per id
# (os.urandom) cost more than the rest of a record in a market-wide move.
_ID_BITS = random.Random(int.from_bytes(os.urandom(32), "big"))


def _reseed() -> None:
    _ID_BITS.seed(int.from_bytes(os.urandom(32), "big"))


# A forked child inherits the generator's state: seeded again, or parent and child would
# draw the same ids (the random module does the same for its own generator).
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


def new_id(now_ms: int) -> str:
    """Time-ordered (keeps the primary-key index append-mostly) and unique without the
    database: two processes (instances sharing a database) draw from differently seeded
    generators."""
    return f"{now_ms:012x}{_ID_BITS.getrandbits(80):020x}"


def _money(name: str, value: Decimal, exact: bool) -> str:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError(f"{name} must be a finite Decimal, got {value!r}")
    rounded = value.quantize(_QUANTUM)
    if exact and rounded != value:
        raise ValueError(f"{name} {value} has more than {MONEY_SCALE} decimal places")
    if rounded.adjusted() >= 38 - MONEY_SCALE:
        raise ValueError(f"{name} {value} is too large to record")
    return chain.decimal_text(rounded)


def _optional_money(name: str, value: Decimal | None) -> str | None:
    return None if value is None else _money(name, value, exact=False)


def _strings(name: str, mapping: Mapping[str, str] | None) -> dict[str, str] | None:
    if mapping is None:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise ValueError(f"{name} must map str to str")
    return dict(mapping)


def run_record(now_ms: int, version: str, config_hash: str, host: str) -> Record:
    """A daemon start; its ``id`` is the run id."""
    return {"t": "run", "id": new_id(now_ms), "time_ms": now_ms, "version": version,
            "config_hash": config_hash, "host": host}  # fmt: skip


def run_end_record(run_id: str, now_ms: int) -> Record:
    return {"t": "run_end", "id": run_id, "time_ms": now_ms}


def action_record(action: ActionRecord, run_id: str, now_ms: int) -> Record:
    """A decided action and its INTENT event (``event_id``). Raises ``ValueError`` for an
    action that cannot be stored faithfully."""
    return {
        "t": "action", "id": new_id(now_ms), "event_id": new_id(now_ms), "run_id": run_id,
        "time_ms": now_ms, "account_id": action.account_id, "symbol": action.symbol,
        "margin_mode": MarginMode(action.margin_mode).value, "policy": action.policy,
        "kind": ActionKind(action.kind).value,
        "amount": _money("amount", action.amount, exact=True), "reason": action.reason,
        "dry_run": bool(action.dry_run),
        "mark_price": _money("mark_price", action.mark_price, exact=False),
        "margin": _money("margin", action.margin, exact=False),
        "qty": _money("qty", action.qty, exact=False),
        "liquidation_price": _optional_money("liquidation_price", action.liquidation_price),
        "distance": _optional_money("distance", action.distance),
        "data_age_ms": int(action.data_age_ms), "source": Source(action.source).value,
        "details": _strings("details", action.details),
    }  # fmt: skip


def event_record(
    action_id: str, account_id: str, kind: EventKind, now_ms: int, *, code: int | None,
    message: str | None, detail: Mapping[str, str] | None, latency_ms: int | None,
) -> Record:
    """A lifecycle event of an action (any but INTENT, which ``action_record`` carries)."""
    kind = EventKind(kind)
    if kind is EventKind.INTENT:
        raise ValueError("INTENT is written by record_action")
    return {
        "t": "event", "id": new_id(now_ms), "action_id": action_id,
        "account_id": account_id, "time_ms": now_ms, "kind": kind.value,
        "code": None if code is None else int(code), "message": message,
        "detail": _strings("detail", detail),
        "latency_ms": None if latency_ms is None else int(latency_ms),
    }  # fmt: skip


def observation_record(
    account_id: str, symbol: str | None, kind: str, detail: Mapping[str, str], now_ms: int
) -> Record:
    return {
        "t": "observation", "id": new_id(now_ms), "time_ms": now_ms, "account_id": account_id,
        "symbol": symbol, "kind": kind, "detail": _strings("detail", detail) or {},
    }  # fmt: skip


# Longest operator text kept: a command's arguments are a few words.
MAX_ARGUMENTS = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandRecord:
    """An operator's command to the daemon and what came of it (``operator_commands``).

    ``result`` is one of ``tables.COMMAND_RESULTS``; ``arguments`` is cut to
    ``MAX_ARGUMENTS`` characters. ``run_id`` defaults to the run started by
    ``AuditLog.start_run``."""

    channel: str
    chat_id: str
    sender: str | None
    command: str
    arguments: str
    result: str
    message: str
    detail: Mapping[str, str] = field(default_factory=dict)
    run_id: str | None = None


def command_record(command: CommandRecord, run_id: str | None, now_ms: int) -> Record:
    """Raises ``ValueError`` for a result that is not one of ``COMMAND_RESULTS``."""
    if command.result not in COMMAND_RESULTS:
        raise ValueError(f"result must be one of {', '.join(COMMAND_RESULTS)}, "
                         f"got {command.result!r}")
    return {
        "t": "command", "id": new_id(now_ms), "time_ms": now_ms, "run_id": run_id,
        "channel": command.channel, "chat_id": command.chat_id, "sender": command.sender,
        "command": command.command, "arguments": command.arguments[:MAX_ARGUMENTS],
        "result": command.result, "message": command.message,
        "detail": _strings("detail", command.detail) or {},
    }  # fmt: skip
