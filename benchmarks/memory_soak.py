"""The guard's memory over a long run with 10,000 positions. Prints its figures; asserts
nothing.

Set-up (``inprocess``): ``--accounts`` accounts (1,000) with ``--per-account`` isolated 10x
longs (10, on 10 symbols: 10,000 positions) 8-20 % from liquidation, under ``topup`` and
``sweep`` with their defaults, the executor's workers running, on the in-memory exchange
with a real SQLite audit log. The clock is virtual: every step is ``--step-s`` seconds (5),
in which each symbol's mark takes a random step (seeded, ``--sigma`` 0.05 % with a 2 %
jump one step in a thousand, pulled back toward its start so the book stays in range),
and one account in a hundred is polled (each account every 100 steps), with the
exchange's own view of its positions (margin calls included). Positions that fall into
the trigger band are topped up, the sweep takes the excess back when they recover:
actions, verifications and audit records keep flowing, and virtual days pass.

What the guard keeps is bounded by design: the ledger holds two UTC days of records (the
budgets' window), the trail a few notes per position, the settlement one entry per
position that had a call. So the soak must cover more than two virtual days for the slope
to mean "flat"; the figures say how many it covered.

It runs for ``--minutes`` of wall time (60: the soak) and samples the process's resident
memory every ``--sample-s`` seconds, then prints the samples, the first and last figures,
and the slope of a least-squares line through the samples after the first ``--warm-up``
minutes (MB per hour), with the virtual time covered and the actions taken.

    .venv/bin/python benchmarks/memory_soak.py                 # the 1-hour soak
    .venv/bin/python benchmarks/memory_soak.py --minutes 5 --sample-s 15
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import tempfile
import time
from dataclasses import replace
from decimal import Decimal as D
from pathlib import Path

from inprocess import guard_holding, long_at, settings_with

from guardbot.clock import ManualClock
from guardbot.domain import MarkPrice
from guardbot.exchange.port import MarksPushed

MARK = D(3000)
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


def slope_per_hour(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB), in MB per hour."""
    if len(samples) < 2:
        return 0.0
    seconds, mb = zip(*samples, strict=True)
    return statistics.linear_regression(seconds, mb).slope * 3600


async def soak(args: argparse.Namespace, folder: Path) -> None:
    logging.getLogger("guardbot").setLevel(logging.ERROR)
    rng = random.Random(7)
    clock = ManualClock()
    symbols = [f"PERP_X{n}_USDC" for n in range(args.per_account)]
    accounts = [f"0x{n + 1:064x}" for n in range(args.accounts)]
    settings = settings_with(budgets={"per_position_per_day": "1000000",
                                      "per_account_per_day": "10000000", "cooldown_s": 0})
    book = {account: [long_at(account, symbol, D("0.08") + D(rng.randrange(13)) / 100, MARK)
                      for symbol in symbols] for account in accounts}  # fmt: skip
    started_rss = rss_mb()
    guard = await guard_holding(folder, book, settings, clock)
    if hasattr(guard, "warmed"):
        await guard.warmed()
    loaded_rss = rss_mb()
    print(f"before the guard {started_rss:.0f} MB; holding "
          f"{args.accounts * args.per_account:,} positions {loaded_rss:.0f} MB", flush=True)
    workers = asyncio.create_task(guard.executor.run())
    marks = dict.fromkeys(symbols, 1.0)  # factor against MARK (the walk's math only)
    exchanges = guard.exchanges
    began = last_sample = time.monotonic()
    samples: list[tuple[float, float]] = []
    step = 0
    while (elapsed := time.monotonic() - began) < args.minutes * 60:
        step += 1
        clock.advance(args.step_s)
        now = clock.now_ms()
        for symbol in symbols:
            move = rng.gauss(0, args.sigma) + (rng.choice((-0.02, 0.02)) if rng.random() < 0.001
                                          else 0.0)
            marks[symbol] = min(1.2, max(0.85, marks[symbol] * (1 + move)
                                         + (1 - marks[symbol]) * 0.001))
        prices = {s: (MARK * D(repr(f))).quantize(D("0.01")) for s, f in marks.items()}
        await guard.on_event(accounts[0], MarksPushed(tuple(
            MarkPrice(s, p, now) for s, p in prices.items())))
        for account in accounts[step % 100::100]:
            polled = await exchanges[account].get_positions()
            await guard.on_snapshot(replace(polled, received_ms=now, positions=tuple(
                replace(p, mark_price=prices[p.symbol], exchange_ms=now, received_ms=now,
                        unsettled_pnl=p.qty * prices[p.symbol] - p.cost_position)
                for p in polled.positions)))
        if step % 10 == 0:
            guard.check_stale()
            await guard.executor.expire()
        await asyncio.sleep(0)  # the workers send
        for exchange in exchanges.values():  # the in-memory exchange's own call log
            exchange.calls.clear()
            exchange.reads.clear()
        if time.monotonic() - last_sample >= args.sample_s:
            last_sample = time.monotonic()
            samples.append((elapsed, rss_mb()))
            print(f"  {elapsed / 60:5.1f} min  {samples[-1][1]:6.1f} MB  virtual "
                  f"{step * args.step_s / 3600:6.2f} h  calls {guard.executor.calls:,}", flush=True)
    workers.cancel()
    await asyncio.gather(workers, return_exceptions=True)
    await guard.audit.aclose()
    steady = [(t, m) for t, m in samples if t >= args.warm_up * 60] or samples
    print(f"memory soak, {args.accounts * args.per_account:,} positions / {args.accounts:,} "
          f"accounts, {args.minutes:g} min wall ({step * args.step_s / 3600:.1f} h virtual, "
          f"{step:,} steps, {guard.executor.calls:,} margin calls):")
    print(f"  resident {samples[0][1] if samples else loaded_rss:.0f} MB at the first sample, "
          f"{max(m for _, m in samples) if samples else 0:.0f} MB at most, "
          f"{samples[-1][1] if samples else 0:.0f} MB at the end; slope after "
          f"{args.warm_up:g} min {slope_per_hour(steady):+.1f} MB/hour")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--per-account", type=int, default=10)
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--sample-s", type=float, default=60)
    parser.add_argument("--sigma", type=float, default=0.0005,
                        help="the marks' standard deviation per step (the walk's math only)")
    parser.add_argument("--step-s", type=int, default=5, help="virtual seconds per step")
    parser.add_argument("--warm-up", type=float, default=5, help="minutes left out of the slope")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="guardbot-soak-") as folder:
        asyncio.run(soak(args, Path(folder)))


if __name__ == "__main__":
    main()
