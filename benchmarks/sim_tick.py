"""What one simulated second costs the simulator, by the number of symbols it lists; prints
its figures.

    .venv/bin/python benchmarks/sim_tick.py [--symbols 3 0] [--ticks 2000]
        [--scenario calm] [--accounts 200] [--public 10]

One tick is ``SimServer.advance(1)``, what the server's clock runs ``speed`` times per real
second: the price feed's step (every symbol's new mark), the engine's re-pricing,
liquidation check and journal of every open position, the ``markprices`` push to every
public subscriber (``--public`` in-process subscribers whose queues are emptied between
ticks, so the figure is the server's side only) and the private pushes. ``--accounts``
accounts hold one isolated long each, spread over the listed symbols. ``--symbols`` takes
the first N markets of the simulator's list (0: all of them), one run each, in the same
process. Prints, per run, the median and 90th percentile per tick and the feed step alone,
in µs, and the ticks per second one core sustains.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from guardbot.sim.margin import MARKETS
from guardbot.sim.server import SimServer
from guardbot.sim.streams import _Connection


def subscriber() -> _Connection:
    request: Any = SimpleNamespace(transport=None)
    return _Connection(ws=None, request=request, topics={"markprices"})  # type: ignore[arg-type]


def build(symbols: int, scenario: str, accounts: int, public: int) -> SimServer:
    names = list(MARKETS)[: symbols or None]
    sim = SimServer(seed=7, scenario=scenario, speed=0,
                    markets={s: MARKETS[s] for s in names})  # fmt: skip
    for index in range(accounts):
        symbol = names[index % len(names)]
        market = MARKETS[symbol]
        account = sim.engine.create_account(f"ed25519:bench{index}", usdc_amount=Decimal(10**6))
        # about 2,000 USDC of notional at 5x, rounded up to the symbol's size step
        qty = (Decimal(2000) / market.start_price / market.base_tick).to_integral_value()
        sim.engine.open_position(account, symbol, "ISOLATED", max(qty, Decimal(1)) *
                                 market.base_tick, min(5, market.max_leverage))  # fmt: skip
    sim.engine.drain_changes()
    for _ in range(public):
        sim.streams.public.add(subscriber())
    return sim


def run(symbols: int, scenario: str, ticks: int, accounts: int, public: int) -> None:
    sim = build(symbols, scenario, accounts, public)
    per_tick: list[float] = []
    for _ in range(ticks):
        began = time.perf_counter()
        sim.advance(1)
        per_tick.append(time.perf_counter() - began)
        for connection in sim.streams.public:
            while not connection.queue.empty():
                connection.queue.get_nowait()
    feed = build(symbols, scenario, 0, 0).prices
    per_step: list[float] = []
    for _ in range(ticks):
        began = time.perf_counter()
        feed.step()
        per_step.append(time.perf_counter() - began)
    per_tick.sort()
    median = statistics.median(per_tick)
    print(f"{len(sim.engine.markets):3d} symbols, {accounts} positions, {public} public "
          f"subscribers, {scenario}: tick median {median * 1e6:,.0f} µs, p90 "
          f"{per_tick[int(len(per_tick) * 0.9)] * 1e6:,.0f} µs (~{1 / median:,.0f} ticks/s "
          f"per core); feed step alone median {statistics.median(per_step) * 1e6:,.0f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, nargs="+", default=[3, 0])
    parser.add_argument("--ticks", type=int, default=2000)
    parser.add_argument("--scenario", default="calm")
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--public", type=int, default=10)
    args = parser.parse_args()
    logging.getLogger("guardbot").setLevel(logging.ERROR)  # the liquidations of a crash
    for symbols in args.symbols:
        run(symbols, args.scenario, args.ticks, args.accounts, args.public)


if __name__ == "__main__":
    main()
