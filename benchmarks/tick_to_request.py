"""From a mark tick to the first margin request, with a large quiet book; and what a quiet
tick costs. Prints its figures; asserts nothing.

Set-up: ``--accounts`` accounts (1,000) with ``--per-account`` isolated longs each (10, on
10 symbols: 10,000 positions), all 12-18 % from liquidation, in their bands, under
``topup`` and ``sweep`` with their defaults. The guard (``guardbot.guard.Guard``) and its
executor's workers run in this process on the in-memory exchange
(``guardbot.exchange.fake``), with a real SQLite audit log (fsync'd spool) in a temporary
folder; only the clock of the data is frozen (no data ages), the event loop and the disk are
real.

One account per round also holds a position just above the trigger: in round ``r`` the
``r``-th of them is the closest, and the round's tick (every symbol 0.02 % lower) takes
exactly it below the trigger. The figure (a) is the time from handing the tick to the guard
to the ``position_margin`` call reaching the exchange. Between rounds a quiet tick (the
marks 0.02 % higher and back, nobody crosses) measures (e): the guard's CPU per quiet tick.

``--compare REV`` runs the same on another revision too (``git archive``, imported instead
of this tree), in one session, and prints both.

    .venv/bin/python benchmarks/tick_to_request.py
    .venv/bin/python benchmarks/tick_to_request.py --accounts 100 --rounds 50
    .venv/bin/python benchmarks/tick_to_request.py --compare HEAD~1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from decimal import Decimal as D
from pathlib import Path
from typing import Any

from inprocess import guard_holding, long_at, settings_with
from revisions import REPO, alternate, checkout

from guardbot.clock import ManualClock
from guardbot.domain import (
    ActionKind,
    MarkPrice,
)
from guardbot.exchange.fake import FakeExchange
from guardbot.exchange.port import MarksPushed

MARK = D(3000)
STEP = D("0.0002")  # a tick moves every mark by this fraction


class TimedExchange(FakeExchange):
    """The in-memory exchange, noting when the first margin call of a round arrives."""

    arrived: asyncio.Event
    arrived_at = 0.0

    async def adjust_margin(self, symbol: str, kind: ActionKind, amount: D) -> None:
        if not TimedExchange.arrived.is_set():
            TimedExchange.arrived_at = time.perf_counter()
            TimedExchange.arrived.set()
        await super().adjust_margin(symbol, kind, amount)


async def measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    logging.getLogger("guardbot").setLevel(logging.ERROR)
    TimedExchange.arrived = asyncio.Event()
    clock = ManualClock()
    symbols = [f"PERP_X{n}_USDC" for n in range(args.per_account)]
    accounts = [f"0x{n + 1:064x}" for n in range(args.accounts)]
    settings = settings_with(budgets={"per_position_per_day": "1000000",
                                      "per_account_per_day": "10000000"})
    # the account of round r holds, on the first symbol, a position whose mark at the
    # trigger (0.05) lies halfway between the r-th and the (r+1)-th tick down
    book = {}
    for index, account in enumerate(accounts):
        book[account] = []
        for n, symbol in enumerate(symbols):
            if n == 0 and index < args.rounds:
                distance = 1 - D("0.95") * (1 - STEP) ** (D(index) + D("0.5"))
            else:
                distance = D("0.12") + D((index + n) % 7) / 100
            book[account].append(long_at(account, symbol, distance, MARK))
    guard = await guard_holding(folder, book, settings, clock, TimedExchange)
    exchanges = guard.exchanges
    if hasattr(guard, "warmed"):  # the ledger holds every position's history: steady state
        await guard.warmed()
    workers = asyncio.create_task(guard.executor.run())
    mark = MARK
    latencies, quiet_cpu = [], []

    async def tick(price: D) -> None:
        clock.advance(1)
        stamp = clock.now_ms()
        await guard.on_event(accounts[0], MarksPushed(tuple(
            MarkPrice(s, price, stamp) for s in symbols)))

    for round_ in range(args.rounds):
        for price in (mark * (1 + STEP), mark):  # quiet: up and back
            started = time.process_time()
            await tick(price)
            quiet_cpu.append(time.process_time() - started)
        TimedExchange.arrived.clear()
        mark = mark * (1 - STEP)
        started = time.perf_counter()
        await tick(mark)
        await TimedExchange.arrived.wait()
        latencies.append(TimedExchange.arrived_at - started)
        while guard.executor.busy():  # noqa: ASYNC110 (the executor has no "idle" event)
            await asyncio.sleep(0.001)
        # the account's next poll shows the margin added, at the current mark
        account = accounts[round_]
        polled = await exchanges[account].get_positions()
        await guard.on_snapshot(replace(polled, positions=tuple(
            replace(p, mark_price=mark, unsettled_pnl=p.qty * mark - p.cost_position)
            for p in polled.positions)))
    workers.cancel()
    await asyncio.gather(workers, return_exceptions=True)
    await guard.audit.aclose()
    ordered = sorted(latencies)
    return {
        "positions": args.accounts * args.per_account, "accounts": args.accounts,
        "rounds": args.rounds,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "max_ms": ordered[-1] * 1000,
        "quiet_tick_cpu_us": statistics.median(quiet_cpu) * 1e6,
    }  # fmt: skip


def report(name: str, figures: dict[str, Any]) -> None:
    print(f"{name:<12} {figures['positions']:>9,} positions / {figures['accounts']:,} accounts, "
          f"{figures['rounds']} rounds: tick to first request p50 {figures['p50_ms']:.2f} ms, "
          f"p99 {figures['p99_ms']:.2f} ms, max {figures['max_ms']:.2f} ms; "
          f"quiet tick CPU {figures['quiet_tick_cpu_us']:,.0f} us", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--per-account", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--compare", metavar="REV")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compare:
        argv = [a for a in sys.argv[1:] if a not in ("--compare", args.compare)]
        with tempfile.TemporaryDirectory(prefix="guardbot-bench-") as folder:
            trees = {args.compare: checkout(args.compare, Path(folder) / "old"),
                     "this tree": REPO}  # fmt: skip
            alternate(__file__, trees, argv, 1, report)
        return
    with tempfile.TemporaryDirectory(prefix="guardbot-bench-") as folder:
        figures = asyncio.run(measure(args, Path(folder)))
    if args.json:
        print(json.dumps(figures))
    else:
        report("this tree", figures)


if __name__ == "__main__":
    main()
