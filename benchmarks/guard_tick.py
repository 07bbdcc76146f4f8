"""What one mark tick costs the guard, evaluating every position (old path) or only those
whose mark left the band where none of its policies can act (new path), in the same run.

    .venv/bin/python benchmarks/guard_tick.py [--sizes 1 100 1000] [--ticks 200]

The guard (``guardbot.guard.Guard``, policies ``topup`` and ``sweep`` with their defaults)
holds N isolated longs, 100 symbols per account (ETH's margin rules, MMR growing with
notional), on a ManualClock with the in-memory exchange and an SQLite audit log. Most
positions sit 12-18 % from liquidation, far from any band edge; one in fifty sits just
beyond the sweep's ``safe`` with too little excess to sweep (evaluated on every tick, no
action), one in a hundred just above the trigger (in its band, polled fast). One tick is a
``markprices`` push of every symbol, each moving by up to 0.02 %, through
``Guard.on_event``. Prints the median and 90th percentile per tick, in µs.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import tempfile
import time
from decimal import Decimal as D
from pathlib import Path

from inprocess import guard_holding, long_at, settings_with

from guardbot.clock import ManualClock
from guardbot.domain import MarkPrice, Position
from guardbot.exchange.port import MarksPushed

SYMBOLS_PER_ACCOUNT = 100
MARK = D(3000)


def book(count: int) -> dict[str, list[Position]]:
    """``count`` longs of 2 each at mark 3000, by account."""
    accounts: dict[str, list[Position]] = {}
    for i in range(count):
        account = f"0x{i // SYMBOLS_PER_ACCOUNT + 1:064x}"
        symbol = f"PERP_X{i % SYMBOLS_PER_ACCOUNT}_USDC"
        if i % 50 == 49:
            distance = D("0.2003")  # beyond safe 0.20, about 2 USDC to sweep: below 10
        elif i % 100 == 48:
            distance = D("0.06")  # above the trigger 0.05, below the fast-poll 0.10
        else:
            distance = D("0.12") + D(i % 7) / 100
        accounts.setdefault(account, []).append(long_at(account, symbol, distance, MARK))
    return accounts


async def measure(count: int, ticks: int, folder: Path) -> dict[bool, list[float]]:
    clock = ManualClock()
    positions = book(count)
    (folder / str(count)).mkdir()
    guard = await guard_holding(folder / str(count), positions, settings_with(), clock)
    symbols = sorted({p.symbol for held in positions.values() for p in held})
    first = next(iter(positions))
    timings: dict[bool, list[float]] = {False: [], True: []}
    for n in range(2 * ticks):
        bands = n % 2 == 1  # alternate, so both paths see the same marks and book
        guard.quiet_bands = bands
        clock.advance(1)
        stamp = clock.now_ms()
        wiggle = D(math.sin(n / 7)).quantize(D("0.0001")) * D("0.0002")
        push = MarksPushed(tuple(MarkPrice(s, MARK * (1 + wiggle), stamp) for s in symbols))
        started = time.perf_counter()
        await guard.on_event(first, push)
        timings[bands].append(time.perf_counter() - started)
    assert not guard.executor.blocked(), "the book is built for no action"
    await guard.audit.aclose()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--ticks", type=int, default=200, help="per path and size")
    args = parser.parse_args()
    print(f"{'positions':>9} {'path':>4} {'median µs':>10} {'p90 µs':>10} {'µs/position':>12}")
    with tempfile.TemporaryDirectory() as folder:
        for count in args.sizes:
            timings = asyncio.run(measure(count, args.ticks, Path(folder)))
            medians = {}
            for bands, label in ((False, "old"), (True, "new")):
                ordered = sorted(timings[bands][5:])  # the first ticks warm caches up
                medians[bands] = statistics.median(ordered) * 1e6
                p90 = ordered[int(len(ordered) * 0.9)] * 1e6
                print(f"{count:>9} {label:>4} {medians[bands]:>10.0f} {p90:>10.0f} "
                      f"{medians[bands] / count:>12.2f}")
            print(f"{count:>9} old/new {medians[False] / medians[True]:.1f}x; "
                  f"a day at 1 s: {medians[True] * 86_400 / 1e6:.1f} s (new)")


if __name__ == "__main__":
    main()
