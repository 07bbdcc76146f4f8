"""Audit log under load, on PostgreSQL. Prints its figures; asserts nothing.

1. Creates a scratch database (``guardbot_bench`` by default) and migrates it to 0001.
2. Fills it server-side (INSERT ... SELECT generate_series) with ``--events`` action events
   (4 per action, 50 accounts, ~6 months). The bulk rows carry placeholder hashes: they are
   load, not a verifiable chain. Then migrates to head, timing what an operator's upgrade
   of a full database costs (0002 copies every outcome event into ``action_outcomes``).
3. Measures the real store path on top of that: ``--producers`` concurrent "accounts" call
   ``record_action`` + 3 x ``record_event`` through ``AuditLog`` (fsync'd spool, background
   writer, hash chain) and reports events/s into the database, how long a caller waits for
   its record to be durable, and how late the event loop ran meanwhile (decisions share it).
4. Times ``audit list --account A --since T --limit 100`` and ``audit summary --by ...``
   through ``guardbot.audit.queries`` (the CLI's own code; the CLI process start is extra).
5. Drops the database unless ``--keep``.

    .venv/bin/python benchmarks/audit_load.py                  # 10 million events
    .venv/bin/python benchmarks/audit_load.py --events 200000  # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guardbot.audit import queries, schema
from guardbot.audit.database import create_audit_engine
from guardbot.audit.store import ActionRecord, AuditLog, EventKind
from guardbot.domain import ActionKind, MarginMode, Source

ACCOUNTS = 50
START = datetime(2026, 5, 1, tzinfo=UTC)
STEP_S = 6  # one action every 6 s across all accounts: 2.5 M actions ~ 174 days

FILL_ACTIONS = """
INSERT INTO actions (id, run_id, time, account_id, symbol, margin_mode, policy, kind, amount,
    reason, dry_run, mark_price, margin, qty, liquidation_price, distance, data_age_ms,
    source, details)
SELECT lpad(to_hex(i), 32, '0'), 'bench', :start + i * interval '6 seconds',
    '0x' || lpad(to_hex(i % 50), 64, '0'),
    (ARRAY['PERP_ETH_USDC','PERP_BTC_USDC','PERP_SOL_USDC','PERP_ARB_USDC','PERP_DOGE_USDC'])
        [1 + (i / 50) % 5],
    'ISOLATED', (ARRAY['topup','sweep','vol_target'])[1 + i % 3],
    CASE WHEN i % 3 = 1 THEN 'REDUCE' ELSE 'ADD' END,
    round((1 + (i * 7919) % 10000 / 100.0)::numeric, 2), 'bench load', i % 97 = 0,
    3000 + i % 1000, 150, -1.25, 3150.5, 0.04, i % 500, 'WS', '{}'
FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS i
"""
FILL_EVENTS = """
INSERT INTO action_events (id, action_id, account_id, seq, time, kind, code, message, detail,
    latency_ms, prev_hash, hash)
SELECT lpad(to_hex(i * 4 + k), 32, '0'), lpad(to_hex(i), 32, '0'),
    '0x' || lpad(to_hex(i % 50), 64, '0'), (i / 50) * 4 + k + 1,
    :start + i * interval '6 seconds' + k * interval '100 milliseconds',
    CASE k WHEN 0 THEN 'INTENT' WHEN 1 THEN 'SENT'
        WHEN 2 THEN (CASE i % 20 WHEN 0 THEN 'REJECTED' WHEN 1 THEN 'UNCERTAIN'
                     ELSE 'SUCCEEDED' END)
        ELSE (CASE i % 20 WHEN 1 THEN 'RECONCILED' ELSE 'VERIFIED' END) END,
    CASE WHEN k = 2 AND i % 20 = 0 THEN -1 END,
    CASE WHEN k = 2 AND i % 20 = 0 THEN 'rejected' END,
    CASE WHEN k = 3 AND i % 20 = 1 THEN '{"applied": "true"}'::json END,
    CASE WHEN k = 2 THEN 20 + (i * 7919) % 500 END,
    repeat('0', 64), md5(i::text) || md5(k::text || i::text)
FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS i
    CROSS JOIN generate_series(0, 3) AS k
"""


def database(url: str, create: bool) -> None:
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}"'))
        if create:
            connection.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()


def fill(url: str, events: int, chunk: int = 250_000) -> None:
    actions = events // 4
    engine = create_engine(url)
    started = time.perf_counter()
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO runs VALUES ('bench', :start, 'bench', 'bench', 'bench')"),
            {"start": START})  # fmt: skip
    for lo in range(0, actions, chunk):
        hi = min(lo + chunk, actions) - 1
        with engine.begin() as connection:
            params = {"start": START, "lo": lo, "hi": hi}
            connection.execute(text(FILL_ACTIONS), params)
            connection.execute(text(FILL_EVENTS), params)
        print(f"  filled {(hi + 1) * 4:>11,} events  {time.perf_counter() - started:7.1f} s",
              flush=True)  # fmt: skip
    vacuum(url)
    with engine.connect() as connection:
        size = connection.execute(
            text("SELECT pg_size_pretty(pg_database_size(current_database()))")
        ).scalar()
    engine.dispose()
    print(f"fill: {actions * 4:,} events ({actions:,} actions) in "
          f"{time.perf_counter() - started:.0f} s; database size {size}")  # fmt: skip


def vacuum(url: str) -> None:
    engine = create_engine(url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE"))
    engine.dispose()


async def store_throughput(url: str, producers: int, actions_each: int) -> None:
    lags: list[float] = []
    waits: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:  # how late does the event loop run?
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - before - 0.005)

    async def producer(n: int, log: AuditLog) -> None:
        account = "0x" + f"{n:x}".rjust(4, "0") * 16
        for _ in range(actions_each):
            before = time.perf_counter()
            action_id = await log.record_action(ActionRecord(
                account_id=account, symbol="PERP_ETH_USDC", margin_mode=MarginMode.ISOLATED,
                policy="topup", kind=ActionKind.ADD, amount=Decimal("12.34"), reason="bench",
                dry_run=False, mark_price=Decimal("3000.5"), margin=Decimal(150),
                qty=Decimal("-1.25"), liquidation_price=Decimal("3150.5"),
                distance=Decimal("0.04"), data_age_ms=100, source=Source.WS))  # fmt: skip
            waits.append(time.perf_counter() - before)
            for kind in (EventKind.SENT, EventKind.SUCCEEDED, EventKind.VERIFIED):
                before = time.perf_counter()
                await log.record_event(action_id, account, kind, latency_ms=42)
                waits.append(time.perf_counter() - before)

    with tempfile.TemporaryDirectory() as spool:
        log = await AuditLog.open(url, Path(spool))
        await log.start_run("bench", "bench", "bench")
        tick = asyncio.create_task(ticker())
        started = time.perf_counter()
        await asyncio.gather(*(producer(n, log) for n in range(producers)))
        recorded = time.perf_counter() - started
        await log.flush()
        written = time.perf_counter() - started
        stop.set()
        await tick
        await log.aclose()
    total = producers * actions_each * 4
    waits.sort()
    print(f"store: {total:,} events from {producers} concurrent producers")
    print(f"  durable in the spool: {total / recorded:,.0f} events/s; in the database: "
          f"{total / written:,.0f} events/s ({written:.1f} s)")  # fmt: skip
    print(f"  caller wait per record: p50 {statistics.median(waits) * 1000:.2f} ms, "
          f"p99 {waits[int(len(waits) * 0.99)] * 1000:.2f} ms")  # fmt: skip
    print(f"  event-loop lag: mean {statistics.fmean(lags) * 1000:.2f} ms, "
          f"max {max(lags) * 1000:.1f} ms")  # fmt: skip


def timed(label: str, call: object, repeat: int = 5) -> None:
    assert callable(call)
    times = []
    for _ in range(repeat):
        before = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - before)
    print(f"{label}: first {times[0] * 1000:.0f} ms, median {statistics.median(times) * 1000:.0f}"
          f" ms over {repeat} runs ({len(result)} rows)")  # fmt: skip


def query_times(url: str, events: int) -> None:
    engine = create_audit_engine(url)
    account = "0x" + "7".rjust(64, "0")
    span = (events // 4) * STEP_S
    since = START + timedelta(seconds=span * 0.9)
    where = queries.ActionFilter(account=account, since=since)
    timed(f"audit list --account A --since {since:%Y-%m-%d} --limit 100",
          lambda: queries.list_actions(engine, where, 100))  # fmt: skip
    timed(
        "audit list --account A --limit 100 (no --since)",
        lambda: queries.list_actions(engine, queries.ActionFilter(account=account), 100),
    )
    for by in queries.GROUP_BY:
        timed(f"audit summary --by {by}", lambda by=by: queries.summarize(engine, by=by), repeat=3)
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("GUARDBOT_TEST_PG_URL",
                             "postgresql+psycopg://postgres@127.0.0.1:5432/test")  # fmt: skip
    parser.add_argument(
        "--url",
        default=str(
            make_url(default).set(database="guardbot_bench").render_as_string(hide_password=False)
        ),
    )
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--producers", type=int, default=50)
    parser.add_argument("--actions-each", type=int, default=500)
    parser.add_argument("--keep", action="store_true", help="do not drop the database")
    args = parser.parse_args()
    print(f"database {make_url(args.url).render_as_string(hide_password=True)}")
    database(args.url, create=True)
    try:
        schema.upgrade(args.url, "0001")
        fill(args.url, args.events)
        started = time.perf_counter()
        schema.upgrade(args.url)
        print(f"migrate to {schema.HEAD} on the filled database: "
              f"{time.perf_counter() - started:.1f} s")  # fmt: skip
        vacuum(args.url)  # what autovacuum does minutes after the upgrade's bulk copy
        asyncio.run(store_throughput(args.url, args.producers, args.actions_each))
        query_times(args.url, args.events)
    finally:
        if not args.keep:
            database(args.url, create=False)
            print("dropped the benchmark database")


if __name__ == "__main__":
    main()
