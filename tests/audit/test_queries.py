"""The read API on both backends, against the six-action ``history`` (tests/audit/conftest.py)."""

from __future__ import annotations

import random
import statistics
from collections import Counter
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from guardbot.audit import chain, queries, schema, verification
from guardbot.audit.database import create_audit_engine
from guardbot.audit.queries import ActionFilter
from guardbot.audit.store import AuditLog, EventKind
from guardbot.audit.tables import OUTCOME_KINDS
from guardbot.clock import ManualClock
from guardbot.domain import ActionKind

from .conftest import ACCOUNT, DAY, HOUR, OTHER, T0, THIRD, action


def names(rows: list[dict[str, object]], history: dict[str, str]) -> list[str]:
    by_id = {action_id: name for name, action_id in history.items()}
    return [by_id[str(row["id"])] for row in rows]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (ActionFilter(), ["a6", "a5", "a4", "a3", "a2", "a1"]),
        (ActionFilter(account=ACCOUNT), ["a6", "a3", "a2", "a1"]),
        (ActionFilter(symbol="PERP_BTC_USDC"), ["a3"]),
        (ActionFilter(policy="sweep"), ["a6", "a3"]),
        (ActionFilter(kind="ADD"), ["a5", "a4", "a2", "a1"]),
        (ActionFilter(status="REJECTED"), ["a2"]),
        (ActionFilter(status="VERIFIED"), ["a1"]),
        (ActionFilter(status="RECONCILED"), ["a4"]),
        (ActionFilter(since=chain.from_ms(T0 + DAY)), ["a6", "a5", "a4"]),
        (ActionFilter(until=chain.from_ms(T0 + HOUR)), ["a1"]),  # until is exclusive
        (ActionFilter(account=ACCOUNT, kind="REDUCE", since=chain.from_ms(T0 + HOUR)),
         ["a6", "a3"]),
        (ActionFilter(account=THIRD), []),
    ],
)  # fmt: skip
def test_list_filters(
    engine: Engine, history: dict[str, str], where: ActionFilter, expected: list[str]
) -> None:
    assert names(queries.list_actions(engine, where), history) == expected


def test_list_rows_and_limit(engine: Engine, history: dict[str, str]) -> None:
    rows = queries.list_actions(engine, ActionFilter(), limit=2)
    assert names(rows, history) == ["a6", "a5"]
    newest = rows[0]
    assert newest["account_id"] == ACCOUNT
    assert newest["kind"] == "REDUCE"
    assert newest["amount"] == Decimal(2)
    assert newest["status"] == "FAILED"
    assert newest["time"] == chain.from_ms(T0 + DAY + 2 * HOUR)
    assert rows[1]["status"] == "DRY_RUN" and rows[1]["dry_run"] is True


def test_show_has_the_snapshot_and_every_event(engine: Engine, history: dict[str, str]) -> None:
    detail = queries.show_action(engine, history["a4"])
    assert detail.action["account_id"] == OTHER
    assert detail.action["mark_price"] == Decimal("3012.34")
    assert detail.action["liquidation_price"] == Decimal("3150.5")
    assert detail.action["data_age_ms"] == 240 and detail.action["source"] == "WS"
    assert detail.action["status"] == "RECONCILED"
    assert [e["kind"] for e in detail.events] == ["INTENT", "SENT", "UNCERTAIN", "RECONCILED"]
    assert detail.events[2]["latency_ms"] == 3000
    with pytest.raises(queries.NotFound):
        queries.show_action(engine, "nope")


def test_summary_by_account(engine: Engine) -> None:
    rows = {row.key: row for row in queries.summarize(engine, by="account")}
    assert set(rows) == {ACCOUNT, OTHER}
    mine, other = rows[ACCOUNT], rows[OTHER]
    assert (mine.actions, mine.added, mine.reduced, mine.failures, mine.uncertain) == (
        4, Decimal(10), Decimal(5), 2, 0)  # fmt: skip
    assert mine.latency_mean_ms == pytest.approx(90)
    assert mine.latency_p99_ms == pytest.approx(197)  # continuous: 100 + 0.97 * (200 - 100)
    # a4 was reconciled as applied; a5 was a dry run.
    assert (other.actions, other.added, other.reduced, other.failures, other.uncertain) == (
        2, Decimal(7), Decimal(0), 0, 1)  # fmt: skip
    assert other.latency_mean_ms == pytest.approx(3000)
    # What dry runs would have moved is shown on its own, never in added/reduced.
    assert (other.dry_run_added, other.dry_run_reduced) == (Decimal(3), Decimal(0))
    assert (mine.dry_run_added, mine.dry_run_reduced) == (Decimal(0), Decimal(0))


def test_summary_by_day_and_since(engine: Engine) -> None:
    rows = queries.summarize(engine, by="day")
    assert [row.key for row in rows] == ["2025-11-22", "2025-11-23"]
    first, second = rows
    assert (first.actions, first.added, first.reduced, first.failures) == (
        3, Decimal(10), Decimal(5), 1)  # fmt: skip
    assert first.latency_p99_ms == pytest.approx(198)
    assert (second.actions, second.added, second.failures, second.uncertain) == (
        3, Decimal(7), 1, 1)  # fmt: skip
    assert second.latency_mean_ms == pytest.approx(1505)
    assert second.latency_p99_ms == pytest.approx(2970.1)
    later = queries.summarize(engine, since=chain.from_ms(T0 + DAY), by="policy")
    assert [(row.key, row.actions) for row in later] == [("sweep", 1), ("topup", 2)]


def test_summary_by_symbol_and_policy(engine: Engine) -> None:
    by_symbol = {row.key: row.actions for row in queries.summarize(engine, by="symbol")}
    assert by_symbol == {"PERP_BTC_USDC": 1, "PERP_ETH_USDC": 5}
    by_policy = {row.key: row for row in queries.summarize(engine, by="policy")}
    assert by_policy["topup"].added == Decimal(17)
    assert by_policy["sweep"].reduced == Decimal(5)


SHAPES: list[list[tuple[EventKind, dict[str, Any]]]] = [
    [(EventKind.SENT, {}), (EventKind.SUCCEEDED, {"latency_ms": 1}), (EventKind.VERIFIED, {})],
    [(EventKind.SENT, {}), (EventKind.SUCCEEDED, {})],  # no latency measured
    [(EventKind.SENT, {}), (EventKind.REJECTED, {"latency_ms": 1, "code": -1, "message": "no"})],
    [(EventKind.SENT, {}), (EventKind.FAILED, {"latency_ms": 1})],
    [(EventKind.SENT, {}), (EventKind.UNCERTAIN, {"latency_ms": 1}),
     (EventKind.RECONCILED, {"detail": {"applied": "true"}})],
    [(EventKind.SENT, {}), (EventKind.UNCERTAIN, {"latency_ms": 1}),
     (EventKind.RECONCILED, {"detail": {"applied": "false"}}), (EventKind.FAILED, {})],
    [(EventKind.SENT, {}), (EventKind.UNCERTAIN, {"latency_ms": 1}), (EventKind.RECONCILED, {}),
     (EventKind.UNCERTAIN, {"latency_ms": 1})],  # several outcomes of one action
    [(EventKind.DRY_RUN, {})],
    [(EventKind.SKIPPED, {"message": "budget"})],
    [(EventKind.SENT, {})],  # still in flight
]  # fmt: skip


async def random_history(url: str, spool: Path, seed: int, actions: int = 80) -> None:
    """Actions over four UTC days, three accounts, symbols and policies, every lifecycle
    shape above with random latencies; half of the events are written in later batches
    than their action, in shuffled order."""
    rng = random.Random(seed)
    clock = ManualClock(start_ms=T0)
    log = await AuditLog.open(url, spool, clock=clock)
    await log.start_run("0.1.0", "cafe", "host-1")
    later: list[tuple[str, str, list[tuple[EventKind, dict[str, Any]]]]] = []
    for _ in range(actions):
        clock.set_ms(T0 + rng.randrange(4 * DAY))
        record = action(
            account_id=rng.choice([ACCOUNT, OTHER, THIRD]),
            symbol=rng.choice(["PERP_ETH_USDC", "PERP_BTC_USDC", "PERP_SOL_USDC"]),
            policy=rng.choice(["topup", "sweep", "vol_target"]),
            kind=rng.choice([ActionKind.ADD, ActionKind.REDUCE]),
            amount=Decimal(rng.randrange(1, 100_000)) / 100,
            dry_run=rng.random() < 0.1,
        )
        action_id = await log.record_action(record)
        events = [(kind, {**extra, "latency_ms": rng.randrange(5000)} if "latency_ms" in extra
                   else extra) for kind, extra in rng.choice(SHAPES)]  # fmt: skip
        if rng.random() < 0.5:
            later.append((action_id, record.account_id, events))
            continue
        for kind, extra in events:
            await log.record_event(action_id, record.account_id, kind, **extra)
    await log.flush(10)
    rng.shuffle(later)
    for action_id, account_id, events in later:
        for kind, extra in events:
            await log.record_event(action_id, account_id, kind, **extra)
    await log.aclose()


def reference_summary(
    engine: Engine, since: datetime | None, by: queries.GroupBy
) -> list[queries.SummaryRow]:
    """``audit summary`` the straightforward way: every action and event, in Python."""
    with engine.connect() as connection:
        actions = {row.id: row for row in connection.execute(select(queries.ACTIONS))}
        events = list(connection.execute(select(queries.EVENTS)))
    chosen = {i: a for i, a in actions.items() if since is None or a.time >= since}

    def key(a: Any) -> str:
        return str({"account": a.account_id, "symbol": a.symbol, "policy": a.policy,
                    "day": a.time.date().isoformat()}[by])  # fmt: skip

    groups: dict[str, dict[str, Any]] = {}

    def group(a: Any) -> dict[str, Any]:
        zero = {"actions": 0, "added": Decimal(0), "reduced": Decimal(0), "failures": 0,
                "uncertain": 0, "ms": []}  # fmt: skip
        return groups.setdefault(key(a), zero)

    for a in chosen.values():
        group(a)["actions"] += 1
    for e in events:
        a = chosen.get(e.action_id)
        if a is None or e.kind not in OUTCOME_KINDS:
            continue
        g = group(a)
        applied = e.kind == "SUCCEEDED" or (
            e.kind == "RECONCILED" and (e.detail or {}).get("applied") == "true"
        )
        if applied and not a.dry_run:
            g["added" if a.kind == "ADD" else "reduced"] += a.amount
        g["failures"] += e.kind in ("REJECTED", "FAILED")
        g["uncertain"] += e.kind == "UNCERTAIN"
        if e.latency_ms is not None:
            g["ms"].append(e.latency_ms)
    rows = []
    for name in sorted(groups):
        g = groups[name]
        ms = sorted(g["ms"])
        p99 = None
        if ms:
            position = 0.99 * (len(ms) - 1)
            low = int(position)
            high = min(low + 1, len(ms) - 1)
            p99 = ms[low] + (ms[high] - ms[low]) * (position - low)
        rows.append(queries.SummaryRow(
            name, g["actions"], g["added"], g["reduced"], g["failures"], g["uncertain"],
            statistics.fmean(ms) if ms else None, p99))  # fmt: skip
    return rows


def exact(row: queries.SummaryRow) -> tuple[object, ...]:
    return (row.key, row.actions, row.added, row.reduced, row.failures, row.uncertain)


@pytest.mark.parametrize("written_by", ["writer", "migration"])
async def test_summary_equals_the_reference_on_every_grouping(
    url: str, tmp_path: Path, written_by: str
) -> None:
    await random_history(url, tmp_path / "spool", seed=7)
    if written_by == "migration":  # action_outcomes rebuilt from the events by 0002
        schema.downgrade(url, "0001")
        schema.upgrade(url)
    engine = create_audit_engine(url)
    try:
        for by in queries.GROUP_BY:
            for since in (None, chain.from_ms(T0 + DAY + DAY // 2)):
                fast = queries.summarize(engine, since, by)
                expected = reference_summary(engine, since, by)
                assert [row.key for row in fast] == [row.key for row in expected], (by, since)
                for got, want in zip(fast, expected, strict=True):
                    assert exact(got) == exact(want), (by, since)
                    assert got.latency_mean_ms == pytest.approx(want.latency_mean_ms)
                    assert got.latency_p99_ms == pytest.approx(want.latency_p99_ms)
        assert verification.verify_chains(engine).intact
    finally:
        engine.dispose()


def test_summary_of_an_empty_log_is_empty(url: str) -> None:
    engine = create_audit_engine(url)
    try:
        for by in queries.GROUP_BY:
            assert queries.summarize(engine, by=by) == []
            assert queries.summarize(engine, chain.from_ms(T0), by) == []
    finally:
        engine.dispose()


def test_export_streams_every_column_oldest_first(engine: Engine, history: dict[str, str]) -> None:
    rows = list(queries.export_actions(engine, ActionFilter(account=OTHER)))
    assert names(rows, history) == ["a4", "a5"]
    assert rows[0]["margin"] == Decimal(150) and rows[0]["qty"] == Decimal("-1.25")
    assert rows[0]["details"] == {}


def test_account_known(engine: Engine) -> None:
    assert queries.account_known(engine, ACCOUNT)
    assert queries.account_known(engine, THIRD)  # only an observation
    assert not queries.account_known(engine, "0x" + "00" * 32)


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=300),
       st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]))  # fmt: skip
def test_histogram_percentile_is_percentile_cont(values: list[int], fraction: float) -> None:
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    expected = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
    histogram = list(Counter(values).items())
    assert queries.percentile(histogram, fraction) == pytest.approx(expected)
