"""The per-account hash chain over audit events (tamper evidence).

Each event stores ``prev_hash`` (the hash of the account's previous event, ``GENESIS`` for
the first) and ``hash = sha256(canonical(event fields + prev_hash))``. The INTENT event also
covers every column of its action row, so editing an action breaks the chain too. The
canonical form is compact JSON with sorted keys, Decimals in plain notation without trailing
zeros and times as integer epoch milliseconds, so it is the same whether the values come
from the writer or are read back from SQLite or PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

GENESIS = "0" * 64
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

ACTION_FIELDS = (
    "id", "run_id", "time", "account_id", "symbol", "margin_mode", "policy", "kind",
    "amount", "reason", "dry_run", "mark_price", "margin", "qty", "liquidation_price",
    "distance", "data_age_ms", "source", "details",
)  # fmt: skip
EVENT_FIELDS = (
    "id", "action_id", "account_id", "seq", "time", "kind", "code", "message", "detail",
    "latency_ms", "prev_hash",
)  # fmt: skip


def to_ms(moment: datetime) -> int:
    """Exact epoch milliseconds of an aware datetime (no float rounding)."""
    return (moment - _EPOCH) // _MS


def from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def decimal_text(value: Decimal) -> str:
    """``Decimal('1.500000')`` and ``Decimal('1.5')`` both give ``'1.5'``."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, datetime):
        return to_ms(value)
    return value


def canonical(fields: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: _plain(fields[name]) for name in names}


def event_hash(event: Mapping[str, Any], action: Mapping[str, Any] | None) -> str:
    """The hash of one event row (with ``prev_hash`` set); ``action`` is the action row for
    an INTENT event and ``None`` otherwise."""
    body = {
        "event": canonical(event, EVENT_FIELDS),
        "action": None if action is None else canonical(action, ACTION_FIELDS),
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()
