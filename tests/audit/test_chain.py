"""The canonical form behind the hash chain: equal values hash equally, any edit differs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from guardbot.audit import chain

EVENT = {
    "id": "e1", "action_id": "a1", "account_id": "0xabc", "seq": 1,
    "time": datetime(2026, 11, 22, 1, 2, 3, 456000, tzinfo=UTC), "kind": "SENT",
    "code": None, "message": None, "detail": {"b": "2", "a": "1"}, "latency_ms": 12,
    "prev_hash": chain.GENESIS,
}  # fmt: skip


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("1.500000000000000000"), "1.5"),
        (Decimal("100"), "100"),
        (Decimal("1E+2"), "100"),
        (Decimal("0E-18"), "0"),
        (Decimal("-0"), "0"),
        (Decimal("-2.50"), "-2.5"),
        (Decimal("0.000000000000000001"), "0.000000000000000001"),
    ],
)
def test_decimal_text(value: Decimal, text: str) -> None:
    assert chain.decimal_text(value) == text


def test_times_are_exact_milliseconds_in_any_zone() -> None:
    moment = EVENT["time"]
    assert isinstance(moment, datetime)
    assert chain.to_ms(moment) == 1_795_309_323_456
    assert chain.from_ms(chain.to_ms(moment)) == moment
    elsewhere = moment.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert chain.to_ms(elsewhere) == chain.to_ms(moment)


def test_same_values_from_either_backend_hash_the_same() -> None:
    as_read = {**EVENT, "detail": {"a": "1", "b": "2"}}
    assert chain.event_hash(EVENT, None) == chain.event_hash(as_read, None)


@pytest.mark.parametrize(
    ("field", "value"),
    [("seq", 2), ("kind", "SUCCEEDED"), ("latency_ms", 13), ("detail", {"a": "1"}),
     ("prev_hash", "f" * 64), ("time", datetime(2026, 11, 22, 1, 2, 3, 457000, tzinfo=UTC))],
)  # fmt: skip
def test_any_edit_changes_the_hash(field: str, value: object) -> None:
    assert chain.event_hash({**EVENT, field: value}, None) != chain.event_hash(EVENT, None)
