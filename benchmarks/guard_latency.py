"""Tick-to-request latency of the whole guard. Prints its figures; asserts nothing.

From a mark price change at the simulated exchange to the ``POST /v1/position_margin``
request arriving there, through everything in between: the public WebSocket push, the
position book, the policies, the arbiter, the audit log (two fsync'd records before the
call), the executor's queue and throttle, and the signed REST call.

Set-up: ``guardbot sim`` in-process with its clock stopped (marks move only when pinned),
``--accounts`` guarded accounts with one isolated ETH long each (100 guarded positions by
default), one guard process (``run_daemon``) guarding them all, SQLite audit log in a temp
folder. Each round pins the ETH mark just inside ``topup``'s trigger for every position at
once (a market-wide move: every position is at risk on the same tick) and records when each
account's request arrives; the next round moves the mark lower again.

    .venv/bin/python benchmarks/guard_latency.py
    .venv/bin/python benchmarks/guard_latency.py --accounts 20 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import httpx
from aiohttp import web

from guardbot.audit import schema
from guardbot.config import parse_config
from guardbot.daemon import run_daemon
from guardbot.sim.admin import open_account
from guardbot.sim.server import SimServer

ETH = "PERP_ETH_USDC"


class TimedSim(SimServer):
    """The simulator, noting when marks are pinned and when margin requests arrive."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.tick_at = 0.0
        self.arrivals: list[float] = []
        self.expected = 0
        self.all_arrived = asyncio.Event()

    async def _admin_marks(self, request: web.Request) -> web.StreamResponse:
        self.tick_at = time.perf_counter()
        return await super()._admin_marks(request)

    async def _position_margin(self, request: web.Request) -> web.StreamResponse:
        self.arrivals.append(time.perf_counter())
        if len(self.arrivals) >= self.expected:
            self.all_arrived.set()
        return await super()._position_margin(request)


async def main(accounts: int, rounds: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="guard-latency-"))
    url = f"sqlite:///{folder / 'audit.db'}"
    schema.upgrade(url)
    async with TimedSim(seed=7, scenario="calm", speed=0.0, host="127.0.0.1", port=0) as sim:
        opened = [
            await open_account(sim.rest_url, "100000", [(ETH, "ISOLATED", "1", 10)])
            for _ in range(accounts)
        ]
        settings = parse_config({
            "exchange": {"preset": "sim", "rest_url": sim.rest_url,
                         "public_ws_url": sim.public_ws_url,
                         "private_ws_url": sim.private_ws_url},
            "audit": {"url": url, "spool_dir": str(folder / "spool")},
            "poll": {"interval_s": 5.0, "fast_interval_s": 5.0, "max_data_age_s": 30.0},
            "budgets": {"cooldown_s": 0},
            "health": {"enabled": False},
            "accounts": [{"name": f"a{i}", "account_id": a.account_id,
                          "orderly_key": a.orderly_key, "orderly_secret": a.orderly_secret}
                         for i, a in enumerate(opened)],
        })  # fmt: skip
        stop = asyncio.Event()
        guard = asyncio.create_task(run_daemon(settings, stop=stop))
        await asyncio.sleep(3.0 + accounts * 0.03)  # first snapshots and streams
        # Each top-up restores 10 % distance, so a 6 % lower mark is back inside the 5 %
        # trigger: 2850 is inside for a fresh 10x long (liquidated near 2714).
        price = Decimal(2850)
        samples: list[float] = []
        async with sim_admin(sim) as admin:
            for number in range(rounds):
                sim.arrivals.clear()
                sim.expected = accounts
                sim.all_arrived.clear()
                response = await admin.post("/sim/marks", json={"symbol": ETH,
                                                                "price": str(price)})
                response.raise_for_status()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sim.all_arrived.wait(), 30)
                got = [(t - sim.tick_at) * 1000 for t in sim.arrivals[:accounts]]
                samples += got
                print(f"round {number + 1}: mark {price}, {len(got)}/{accounts} requests, "
                      f"first {min(got):.1f} ms, last {max(got):.1f} ms")
                await asyncio.sleep(1.0)  # let verification settle before the next move
                price = (price * Decimal("0.94")).quantize(Decimal("0.01"))
        stop.set()
        await guard
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(f"tick-to-request latency, {accounts} guarded positions at risk on the same tick, "
          f"{len(samples)} requests over {rounds} rounds:")
    print(f"  median {statistics.median(samples):.1f} ms   p99 {p99:.1f} ms   "
          f"max {samples[-1]:.1f} ms")


def sim_admin(sim: SimServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=sim.rest_url, timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.accounts, args.rounds))
