"""What the live page costs the daemon: CPU per pushed update, by number of positions.

    .venv/bin/python benchmarks/view_update.py [--sizes 1 100 1000] [--updates 100]

The guard of ``benchmarks/guard_tick.py`` (same book: N isolated longs, 100 symbols per
account, policies ``topup`` and ``sweep``; ManualClock, in-memory exchange, SQLite audit
log) with the page's ``LiveState`` over it. One update is what ``View`` does per
``[health] push_s`` while anybody watches: build the snapshot (``LiveState.snapshot``),
encode it as one server-sent event (``View.update``) and hand it to the listeners
(``View.publish``, one listener here: the bytes are shared, more cost nothing per update).
A mark tick moves every symbol between updates, so each snapshot prices fresh marks.
Also printed: a chart sample of every position (``LiveState.sample``, once per
``chart_sample_s``) and one position's chart (``LiveState.chart``, per page fetch), and
the size of an update. CPU is ``time.process_time`` per update (this process does nothing
else); the median wall time is printed beside it.
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

from guard_tick import MARK, book
from inprocess import guard_holding, settings_with

from guardbot.clock import ManualClock
from guardbot.domain import MarkPrice
from guardbot.exchange.port import MarksPushed
from guardbot.health import Readiness
from guardbot.view.server import View
from guardbot.view.state import LiveState


async def measure(count: int, updates: int, folder: Path) -> dict[str, float]:
    clock = ManualClock()
    positions = book(count)
    settings = settings_with()
    (folder / str(count)).mkdir()
    guard = await guard_holding(folder / str(count), positions, settings, clock)
    symbols = sorted({p.symbol for held in positions.values() for p in held})
    state = LiveState(guard, settings, lambda: Readiness(database_reachable=True),
                      sample_s=1)
    view = View(state)
    listener: asyncio.Queue[bytes] = asyncio.Queue(2)
    view._listeners.add(listener)  # one watching page
    first = next(iter(positions))
    wall, cpu, samples, size = [], [], [], 0
    for n in range(updates + 5):
        clock.advance(1)
        stamp = clock.now_ms()
        wiggle = D(math.sin(n / 7)).quantize(D("0.0001")) * D("0.0002")
        await guard.on_event(first, MarksPushed(
            tuple(MarkPrice(s, MARK * (1 + wiggle), stamp) for s in symbols)))
        started, started_cpu = time.perf_counter(), time.process_time()
        update = await view.update()
        view.publish(update)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
        size = len(update)
        sampled = time.perf_counter()
        state.sample()
        samples.append(time.perf_counter() - sampled)
    key = next(iter(state.samples))
    charted = time.perf_counter()
    svg = state.chart(key)
    chart_s = time.perf_counter() - charted
    assert svg.startswith("<svg") and listener.qsize() == 2
    await guard.audit.aclose()
    return {"wall": statistics.median(wall[5:]), "cpu": sum(cpu[5:]) / updates,
            "sample": statistics.median(samples[5:]), "chart": chart_s, "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--updates", type=int, default=100, help="per size")
    args = parser.parse_args()
    print(f"{'positions':>9} {'CPU µs/update':>14} {'median wall µs':>15} {'µs/position':>12} "
          f"{'sample µs':>10} {'chart µs':>9} {'update KiB':>11}")
    with tempfile.TemporaryDirectory() as folder:
        for count in args.sizes:
            m = asyncio.run(measure(count, args.updates, Path(folder)))
            print(f"{count:>9} {m['cpu'] * 1e6:>14.0f} {m['wall'] * 1e6:>15.0f} "
                  f"{m['cpu'] * 1e6 / count:>12.1f} {m['sample'] * 1e6:>10.0f} "
                  f"{m['chart'] * 1e6:>9.0f} {m['bytes'] / 1024:>11.1f}")
    print("at the default push_s = 1: CPU per second of watching = the update's CPU")


if __name__ == "__main__":
    main()
