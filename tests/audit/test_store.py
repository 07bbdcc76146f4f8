"""AuditLog on SQLite and PostgreSQL: durable writes, outages, crashes, budgets."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, make_url, select

from guardbot.audit import chain, queries, verification
from guardbot.audit.store import (
    AuditLog,
    AuditUnavailable,
    CommandRecord,
    EventKind,
    NotRecorded,
    SchemaOutOfDate,
    SpoolInUse,
)
from guardbot.clock import SYSTEM_CLOCK, ManualClock
from guardbot.domain import ActionKind

from .conftest import ACCOUNT, OTHER, T0, Outage, TcpProxy, action

ROOT = Path(__file__).resolve().parents[2]
EVENTS = queries.EVENTS
ACTIONS = queries.ACTIONS


async def open_log(url: str, spool_dir: Path, clock: ManualClock) -> AuditLog:
    log = await AuditLog.open(url, spool_dir, clock=clock, retry_s=0.01)
    await log.start_run("0.1.0", "cafe", "host-1")
    return log


def segments(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob("segment-*"))


def events_in_db(log: AuditLog, account: str) -> list[tuple[int, str, str]]:
    with log.engine.connect() as connection:
        rows = connection.execute(
            select(EVENTS.c.seq, EVENTS.c.kind, EVENTS.c.action_id)
            .where(EVENTS.c.account_id == account)
            .order_by(EVENTS.c.seq)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


async def test_records_reach_the_database_exactly(
    url: str, spool_dir: Path, clock: ManualClock
) -> None:
    log = await open_log(url, spool_dir, clock)
    action_id = await log.record_action(action(amount=Decimal("25.500"), distance=None))
    clock.advance(0.007)
    await log.record_event(action_id, ACCOUNT, EventKind.SENT)
    clock.advance(0.12)
    await log.record_event(action_id, ACCOUNT, EventKind.SUCCEEDED, latency_ms=120,
                           detail={"margin_seen": "175.5"})  # fmt: skip
    await log.flush(10)

    detail = queries.show_action(log.engine, action_id)
    assert detail.action["amount"] == Decimal("25.5")
    assert isinstance(detail.action["amount"], Decimal)
    assert detail.action["margin"] == Decimal("150")
    assert detail.action["qty"] == Decimal("-1.25")
    assert detail.action["distance"] is None
    assert detail.action["time"] == chain.from_ms(T0)
    assert detail.action["time"].utcoffset() is not None
    assert [e["kind"] for e in detail.events] == ["INTENT", "SENT", "SUCCEEDED"]
    assert [chain.to_ms(e["time"]) for e in detail.events] == [T0, T0 + 7, T0 + 127]
    assert detail.events[2]["detail"] == {"margin_seen": "175.5"}
    assert detail.events[2]["latency_ms"] == 120
    await log.end_run()
    await log.aclose()
    assert not segments(spool_dir), "a drained spool is emptied on close"
    assert verification.verify_chains(log.engine).intact


async def test_outage_loses_nothing_and_keeps_order(
    url: str, spool_dir: Path, clock: ManualClock
) -> None:
    log = await open_log(url, spool_dir, clock)
    outage = Outage(log.engine)
    expected: dict[str, list[str]] = {ACCOUNT: [], OTHER: []}
    action_ids: dict[str, list[str]] = {ACCOUNT: [], OTHER: []}

    async def activity(n: int) -> None:
        for i in range(n):
            account = ACCOUNT if i % 3 else OTHER
            clock.advance(0.001)
            action_id = await log.record_action(action(account_id=account))
            await log.record_event(action_id, account, EventKind.SENT)
            await log.record_event(action_id, account, EventKind.SUCCEEDED, latency_ms=i)
            expected[account] += ["INTENT", "SENT", "SUCCEEDED"]
            action_ids[account] += [action_id] * 3

    await activity(5)
    await log.flush(10)
    outage.down = True
    # Decisions go on: every record returns (durable in the spool) while the database is down.
    await asyncio.wait_for(activity(20), timeout=10)
    assert log.spool_depth == 60
    assert outage.refused > 0, "the writer kept trying"
    spooled = [json.loads(line) for f in segments(spool_dir)
               for line in f.read_text().splitlines()]  # fmt: skip
    assert len([r for r in spooled if r["t"] != "run"]) == 75
    outage.down = False
    await log.flush(10)
    assert log.spool_depth == 0
    for account in (ACCOUNT, OTHER):
        rows = events_in_db(log, account)
        assert [seq for seq, _, _ in rows] == list(range(1, len(expected[account]) + 1))
        assert [kind for _, kind, _ in rows] == expected[account]
        assert [a for _, _, a in rows] == action_ids[account]
    assert verification.verify_chains(log.engine).intact
    await log.aclose()


async def test_spool_left_by_an_outage_is_replayed_at_the_next_start(
    url: str, spool_dir: Path, clock: ManualClock
) -> None:
    log = await open_log(url, spool_dir, clock)
    outage = Outage(log.engine)
    outage.down = True
    ids = [await log.record_action(action(amount=Decimal(n))) for n in range(1, 6)]
    await log.aclose(timeout_s=0.2)  # gives up: the records stay in the spool
    assert segments(spool_dir)

    again = await AuditLog.open(url, spool_dir, clock=clock, retry_s=0.01)
    assert again.spool_depth == 6  # the run and five actions
    assert await again.ledger.added_since(ACCOUNT, T0, T0) == Decimal(15)
    await again.flush(10)
    rows = queries.list_actions(again.engine, queries.ActionFilter(account=ACCOUNT))
    assert sorted(row["id"] for row in rows) == sorted(ids)
    await again.aclose()
    assert not segments(spool_dir)


async def until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    """Wait for the background writer to get somewhere (bounded; no fixed sleep)."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - a state of the log under test, no event
            await asyncio.sleep(0.005)


async def test_database_ok_follows_the_writer(
    url: str, spool_dir: Path, clock: ManualClock
) -> None:
    log = await open_log(url, spool_dir, clock)
    assert (log.database_ok, log.last_database_error) == (True, None)
    outage = Outage(log.engine)
    outage.down = True
    await log.record_action(action())
    await until(lambda: not log.database_ok)
    assert log.last_database_error is not None
    assert "test outage" in log.last_database_error
    assert "SQL" not in log.last_database_error, "one line, without the statement"
    outage.down = False
    await log.flush(10)
    assert log.database_ok
    assert "test outage" in (log.last_database_error or ""), "kept for diagnosis"
    await log.aclose()


async def reopened_after_a_crash(log: AuditLog, url: str, spool_dir: Path,
                                 clock: ManualClock, tmp_path: Path) -> AuditLog:
    """``log`` crashed after the database commit but before the spool was released: the
    spool as it was is put back and the log opened again, its replay written."""
    await log.flush(10)
    saved = tmp_path / "saved"
    shutil.copytree(spool_dir, saved, ignore=shutil.ignore_patterns("spool.lock"))
    await log.aclose()
    for segment in saved.glob("segment-*"):
        shutil.copy(segment, spool_dir / segment.name)
    again = await AuditLog.open(url, spool_dir, clock=clock, retry_s=0.01)
    await again.flush(10)
    return again


async def test_replay_of_records_already_written_inserts_nothing_twice(
    url: str, spool_dir: Path, clock: ManualClock, tmp_path: Path
) -> None:
    log = await open_log(url, spool_dir, clock)
    for n in range(3):
        action_id = await log.record_action(action(amount=Decimal(n + 1)))
        await log.record_event(action_id, ACCOUNT, EventKind.SUCCEEDED)
    again = await reopened_after_a_crash(log, url, spool_dir, clock, tmp_path)
    with again.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(ACTIONS)).scalar() == 3
        assert connection.execute(select(func.count()).select_from(EVENTS)).scalar() == 6
    assert verification.verify_chains(again.engine).intact
    await again.aclose()


def pause(**overrides: str) -> CommandRecord:
    values = {"channel": "telegram", "chat_id": "-100123", "sender": "@alice (id 42)",
              "command": "pause", "arguments": "ETH looks wild", "result": "done",
              "message": "paused: created STOP"}
    return CommandRecord(**{**values, **overrides}, detail={"update_id": "7"})


async def test_operator_commands_are_recorded_once_even_when_replayed(
    url: str, spool_dir: Path, clock: ManualClock, tmp_path: Path
) -> None:
    log = await open_log(url, spool_dir, clock)
    await log.record_command(pause())
    clock.advance(60)
    await log.record_command(pause(command="resume", arguments="x" * 500, result="unchanged",
                                   message="not paused"))
    with pytest.raises(ValueError, match="result must be one of"):
        await log.record_command(pause(result="ok"))
    again = await reopened_after_a_crash(log, url, spool_dir, clock, tmp_path)

    rows = queries.list_commands(again.engine)
    assert [(r["command"], r["result"]) for r in rows] == [("pause", "done"),
                                                           ("resume", "unchanged")]
    assert rows[0]["run_id"] == log.run_id
    assert rows[0]["time"] == chain.from_ms(T0)
    assert rows[0]["sender"] == "@alice (id 42)"
    assert rows[0]["detail"] == {"update_id": "7"}
    assert rows[1]["arguments"] == "x" * 200, "arguments are cut to a few words' length"
    later = queries.list_commands(again.engine, since=chain.from_ms(T0 + 1))
    assert [r["command"] for r in later] == ["resume"]
    assert queries.list_commands(again.engine, until=chain.from_ms(T0 + 1))[0]["command"] == (
        "pause")
    await again.aclose()


KILLED = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from guardbot.audit.store import AuditLog, EventKind
    from tests.audit.conftest import ACCOUNT, Outage, action

    async def main(url, spool, db_down):
        log = await AuditLog.open(url, spool, retry_s=0.01)
        await log.start_run("0.1.0", "cafe", "host-1")
        if db_down:
            Outage(log.engine).down = True
        action_id = await log.record_action(action())
        await log.record_event(action_id, ACCOUNT, EventKind.SENT)
        print(action_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # the exchange call was in flight

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] == "down"))
    """
)


@pytest.mark.parametrize("db_state", ["down", "up"])
async def test_killed_between_intent_and_outcome_is_found_at_startup(
    url: str, spool_dir: Path, db_state: str
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED, url, str(spool_dir), db_state,
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"},
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == -signal.SIGKILL, err.decode()
    action_id = out.decode().strip()

    log = await AuditLog.open(url, spool_dir, retry_s=0.01)
    unfinished = await log.unfinished_actions([ACCOUNT, OTHER])
    assert [(u.action_id, u.last_event) for u in unfinished] == [(action_id, EventKind.SENT)]
    assert unfinished[0].record.margin == Decimal("150")
    assert unfinished[0].record.kind is ActionKind.ADD
    # Until reconciled it counts against the budget.
    assert await log.ledger.added_since(ACCOUNT, 0, SYSTEM_CLOCK.now_ms()) == Decimal("25.5")
    await log.record_event(action_id, ACCOUNT, EventKind.RECONCILED, detail={"applied": "true"})
    assert await log.unfinished_actions([ACCOUNT]) == []
    await log.aclose()


async def test_a_record_the_database_refuses_is_set_aside_not_lost(
    url: str, spool_dir: Path, clock: ManualClock
) -> None:
    log = await open_log(url, spool_dir, clock)
    good = await log.record_action(action())
    await log.record_event("no-such-action", ACCOUNT, EventKind.SENT)
    await log.record_event(good, ACCOUNT, EventKind.SUCCEEDED)
    await log.flush(10)
    assert [kind for _, kind, _ in events_in_db(log, ACCOUNT)] == ["INTENT", "SUCCEEDED"]
    quarantined = [json.loads(line) for line in
                   (spool_dir / "quarantine.jsonl").read_text().splitlines()]  # fmt: skip
    assert [r["action_id"] for r in quarantined] == ["no-such-action"]
    assert verification.verify_chains(log.engine).intact
    await log.aclose()


async def test_bad_input_is_refused_before_anything_is_written(
    url: str, spool_dir: Path, clock: ManualClock
) -> None:
    log = await open_log(url, spool_dir, clock)
    await log.flush(10)
    with pytest.raises(ValueError, match="more than 18 decimal places"):
        await log.record_action(action(amount=Decimal("1.0000000000000000001")))
    with pytest.raises(ValueError, match="finite Decimal"):
        await log.record_action(action(amount=1.5))
    with pytest.raises(ValueError, match="finite Decimal"):
        await log.record_action(action(mark_price=Decimal("NaN")))
    with pytest.raises(ValueError, match="unknown run_id"):
        await log.record_action(action(run_id="not-a-run"))
    with pytest.raises(ValueError, match="INTENT"):
        await log.record_event("x", ACCOUNT, EventKind.INTENT)
    with pytest.raises(ValueError, match="str to str"):
        await log.record_event("x", ACCOUNT, EventKind.SENT, detail={"n": 1})  # type: ignore[dict-item]
    assert log.spool_depth == 0
    assert await log.ledger.added_since(ACCOUNT, 0, T0) == 0
    # Derived figures are rounded to the stored 18 places rather than refused.
    action_id = await log.record_action(action(distance=Decimal(1) / Decimal(3)))
    await log.flush(10)
    stored = queries.show_action(log.engine, action_id).action["distance"]
    assert stored == Decimal("0.333333333333333333")
    await log.aclose()


async def test_open_refuses_a_database_without_the_current_schema(
    empty_url: str, spool_dir: Path
) -> None:
    with pytest.raises(SchemaOutOfDate, match="guardbot db upgrade"):
        await AuditLog.open(empty_url, spool_dir)


async def test_open_refuses_a_spool_another_process_holds(
    url: str, spool_dir: Path, clock: ManualClock
) -> None:
    log = await open_log(url, spool_dir, clock)
    with pytest.raises(SpoolInUse, match=r"its own audit\.spool_dir"):
        await AuditLog.open(url, spool_dir)
    await log.aclose()


async def test_open_on_an_unreachable_database_says_so(spool_dir: Path) -> None:
    with pytest.raises(AuditUnavailable, match="cannot reach"):
        await AuditLog.open("postgresql+psycopg://postgres@127.0.0.1:1/none", spool_dir)


@pytest.mark.postgres
@pytest.mark.parametrize("empty_url", ["postgresql"], indirect=True)
async def test_postgresql_network_outage_loses_nothing(
    url: str, spool_dir: Path, clock: ManualClock
) -> None:
    parsed = make_url(url)
    proxy = TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5432))
    proxied = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    log = await AuditLog.open(proxied, spool_dir, clock=clock, retry_s=0.01)
    try:
        await log.start_run("0.1.0", "cafe", "host-1")
        before = [await log.record_action(action(amount=Decimal(n))) for n in range(1, 4)]
        await log.flush(10)
        proxy.cut()
        during = [await log.record_action(action(amount=Decimal(n))) for n in range(4, 24)]
        with pytest.raises(AuditUnavailable):
            await log.flush(0.3)  # the writer meets the outage; nothing is lost
        assert log.spool_depth == 20
        await until(lambda: not log.database_ok)
        proxy.restore()
        await log.flush(30)
        assert log.database_ok
        rows = events_in_db(log, ACCOUNT)
        assert [a for _, _, a in rows] == before + during
        assert verification.verify_chains(log.engine).intact
    finally:
        await log.aclose()
        proxy.close()


async def test_a_record_that_cannot_be_spooled_is_refused_and_not_counted(
    url: str, spool_dir: Path, clock: ManualClock
) -> None:
    log = await AuditLog.open(url, spool_dir, clock=clock, segment_bytes=1)
    await log.start_run("0.1.0", "cafe", "host-1")  # one record per segment from here on
    blocked = (
        spool_dir / f"segment-{max(int(p.stem[8:]) for p in segments(spool_dir)) + 1:08d}.jsonl"
    )
    blocked.mkdir()  # the next segment cannot be created
    with pytest.raises(NotRecorded, match="cannot be written"):
        await log.record_action(action(amount=Decimal(40)))
    assert await log.ledger.added_since(ACCOUNT, 0, T0) == 0, "not recorded, not counted"
    blocked.rmdir()
    await log.record_action(action(amount=Decimal(2)))
    assert await log.ledger.added_since(ACCOUNT, 0, T0) == Decimal(2)
    await log.aclose()


async def test_a_failing_listener_never_fails_the_record(
    url: str, spool_dir: Path, clock: ManualClock
) -> None:
    """A listener's bug (the live view) is logged: the caller still gets the action id of
    the record it made durable, and the record reaches the database."""
    log = await open_log(url, spool_dir, clock)

    def broken(record: object) -> None:
        raise KeyError("liquidation_price")

    log.listen(broken)
    action_id = await log.record_action(action())
    await log.flush(10)
    with log.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(ACTIONS)).scalar() == 1
    assert action_id
    await log.aclose()
