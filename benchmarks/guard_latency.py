"""Tick-to-request latency of the whole guard. Prints its figures; asserts nothing.

From a mark price change at the simulated exchange to the ``POST /v1/position_margin``
request arriving there, through everything in between: the public WebSocket push, the
position book, the policies, the arbiter, the audit log (two fsync'd records before the
call), the executor's queue and throttle, and the signed REST call.

Set-up: the simulated exchange in this process with its clock stopped (marks move only
when pinned), ``--accounts`` accounts with one isolated ETH long each (100 guarded positions
by default), one ``guardbot run`` process guarding them all (started once ``/readyz`` says
every account has data), SQLite audit log in a temp folder. Each round pins the ETH mark
just inside ``topup``'s trigger for every position at once (a market-wide move: every
position is at risk on the same tick) and records when each account's request arrives; the
next round moves the mark lower again.

    .venv/bin/python benchmarks/guard_latency.py
    .venv/bin/python benchmarks/guard_latency.py --accounts 20 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import httpx
from aiohttp import web

from guardbot.audit import schema
from guardbot.sim.admin import SimAccount, open_account
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


def write_config(folder: Path, sim: SimServer, accounts: list[SimAccount], url: str,
                 health_port: int) -> Path:
    lines = [
        f'[exchange]\npreset = "sim"\nrest_url = "{sim.rest_url}"',
        f'public_ws_url = "{sim.public_ws_url}"\nprivate_ws_url = "{sim.private_ws_url}"',
        f'[audit]\nurl = "{url}"\nspool_dir = "{folder / "spool"}"',
        "[poll]\ninterval_s = 5.0\nfast_interval_s = 5.0\nmax_data_age_s = 30.0",
        "[budgets]\ncooldown_s = 0",
        f"[health]\nport = {health_port}",
    ]
    for index, account in enumerate(accounts):
        lines.append(
            f'[[accounts]]\nname = "a{index}"\naccount_id = "{account.account_id}"\n'
            f'orderly_key = "{account.orderly_key}"\n'
            f'orderly_secret = "{account.orderly_secret}"'
        )
    config = folder / "guardbot.toml"
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o600)
    return config


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def main(accounts: int, rounds: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="guard-latency-"))
    url = f"sqlite:///{folder / 'audit.db'}"
    schema.upgrade(url)
    async with TimedSim(seed=7, scenario="calm", speed=0.0, host="127.0.0.1", port=0) as sim:
        opened = [
            await open_account(sim.rest_url, "100000", [(ETH, "ISOLATED", "1", 10)])
            for _ in range(accounts)
        ]
        health_port = free_port()
        config = write_config(folder, sim, opened, url, health_port)
        # The guard runs in its own process, as in production: the simulator's event loop
        # (this process) only serves the exchange side.
        guard = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("guardbot")), "--log-level", "WARNING",
            "run", "--config", str(config))
        async with httpx.AsyncClient(base_url=sim.rest_url, timeout=10) as admin:
            await wait_ready(f"http://127.0.0.1:{health_port}/readyz", guard)
            # Each top-up restores 10 % distance, so a 6 % lower mark is back inside the 5 %
            # trigger: 2850 is inside for a fresh 10x long (liquidated near 2714).
            price = Decimal(2850)
            samples: list[float] = []
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
        guard.send_signal(signal.SIGTERM)
        await guard.wait()
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(f"tick-to-request latency, {accounts} guarded positions at risk on the same tick, "
          f"{len(samples)} requests over {rounds} rounds:")
    print(f"  median {statistics.median(samples):.1f} ms   p99 {p99:.1f} ms   "
          f"max {samples[-1]:.1f} ms")


async def wait_ready(url: str, guard: asyncio.subprocess.Process) -> None:
    """Until the guard's /readyz says every account has fresh data."""
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(600):
            if guard.returncode is not None:
                raise SystemExit(f"guardbot run exited with {guard.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    await asyncio.sleep(1.0)  # streams subscribed
                    return
            await asyncio.sleep(0.1)
    raise SystemExit("the guard did not become ready in 60 s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.accounts, args.rounds))
