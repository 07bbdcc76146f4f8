"""A market-wide move over loopback: every position at risk on the same tick, from the tick
to the margin requests. Prints its figures; asserts nothing.

From a mark change at the simulated exchange to each ``POST /v1/position_margin`` request
arriving there, through everything in between: the public WebSocket push, the position
book, the policies, the arbiter, the audit log (two fsync'd records before each call), the
executor's queue and the exchange's per-account limit (10 calls a second), and the signed
REST call.

Set-up: the simulated exchange in this process, its clock stopped (marks move only when the
benchmark moves them); ``--accounts`` accounts (100) with ``--per-account`` isolated 10x
longs each (10, one per symbol, about 3,000 USDC each: 1,000 positions); one ``guardbot
run`` process guarding them all with the defaults (``topup`` and ``sweep``, no cooldown),
started once ``/readyz`` says every account has data; SQLite audit log in a temporary
folder. Each round moves every symbol's mark at once, in one push, to 4.5 % above the
highest liquidation price of its positions (inside ``topup``'s 5 % trigger for all of
them), and records when each request arrives: the time to the first and to the last
request, and requests per second. The per-account limit lets each account's 10 calls go in
one burst, so the floor is the guard's own work, not the exchange.

``--compare REV`` runs the guard of another revision too (``git archive`` into a temporary
folder, run with that folder on ``PYTHONPATH``) against the same set-up, alternating, and
prints both.

    .venv/bin/python benchmarks/guard_latency.py
    .venv/bin/python benchmarks/guard_latency.py --accounts 20 --per-account 5 --rounds 3
    .venv/bin/python benchmarks/guard_latency.py --compare HEAD~5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from revisions import REPO, checkout

from guardbot.sim.admin import SimAccount, open_account
from guardbot.sim.margin import MARKETS
from guardbot.sim.reports import position_row
from guardbot.sim.server import SimServer

NOTIONAL = Decimal(3000)
LEVERAGE = 10
INSIDE = Decimal("0.045")  # distance to liquidation after the move (the trigger is 5 %)


class TimedSim(SimServer):
    """The simulator, noting when each margin request arrives, by account."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.arrivals: list[tuple[float, str]] = []
        self.expected = 0
        self.all_arrived = asyncio.Event()

    async def _orderly(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/v1/position_margin":
            self.arrivals.append((time.perf_counter(), request.headers.get("orderly-account-id",
                                                                           "")))
            if len(self.arrivals) >= self.expected:
                self.all_arrived.set()
        return await super()._orderly(request, handler)

    def move(self, symbols: list[str]) -> None:
        """Every symbol to ``INSIDE`` above its positions' highest liquidation price, in
        one push."""
        engine = self.engine
        for symbol in symbols:
            highest = max(
                position_row(account, symbol, "ISOLATED", engine.markets,
                             engine.marks).est_liq_price or Decimal(0)
                for account in engine.accounts.values()
            )
            price = (highest / (1 - INSIDE)).quantize(engine.markets[symbol].quote_tick)
            engine.pin_mark(symbol, price)
        self.streams.push_marks()


def symbols_for(count: int) -> list[str]:
    """``count`` symbols that allow 10x, the largest first (BTC, ETH, ...)."""
    usable = [m for m in MARKETS.values() if 1 / m.base_imr >= LEVERAGE]
    usable.sort(key=lambda m: -m.start_price)
    if len(usable) < count:
        raise SystemExit(f"only {len(usable)} symbols allow {LEVERAGE}x")
    return [m.symbol for m in usable[:count]]


def qty(symbol: str) -> str:
    market = MARKETS[symbol]
    amount = (NOTIONAL / market.start_price).quantize(market.base_tick)
    return str(max(amount, market.base_min))


def write_config(folder: Path, sim: SimServer, accounts: list[SimAccount], url: str,
                 health_port: int) -> Path:  # fmt: skip
    lines = [
        f'[exchange]\npreset = "sim"\nrest_url = "{sim.rest_url}"',
        f'public_ws_url = "{sim.public_ws_url}"\nprivate_ws_url = "{sim.private_ws_url}"',
        f'[audit]\nurl = "{url}"\nspool_dir = "{folder / "spool"}"',
        "[poll]\ninterval_s = 5.0\nfast_interval_s = 5.0\nmax_data_age_s = 30.0",
        '[budgets]\ncooldown_s = 0\nper_account_per_day = "1000000"\n'
        'per_position_per_day = "1000000"',
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


async def measure(args: argparse.Namespace, tree: Path, folder: Path) -> dict[str, Any]:
    """One guard (the ``guardbot`` of ``tree``) through ``args.rounds`` market-wide moves."""
    url = f"sqlite:///{folder / 'audit.db'}"  # `guardbot run` creates it, at its schema
    symbols = symbols_for(args.per_account)
    total = args.accounts * args.per_account
    async with TimedSim(seed=7, scenario="calm", speed=0.0, host="127.0.0.1", port=0) as sim:
        async with httpx.AsyncClient(base_url=sim.rest_url, timeout=30) as admin:
            opened = [
                await open_account(sim.rest_url, "1000000",
                                   [(s, "ISOLATED", qty(s), LEVERAGE) for s in symbols],
                                   client=admin)
                for _ in range(args.accounts)
            ]
        health_port = free_port()
        config = write_config(folder, sim, opened, url, health_port)
        # The guard in its own process, as in production: this process's event loop serves
        # only the exchange side.
        guard = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from guardbot.cli import main; main()",
            "--log-level", "WARNING", "run", "--config", str(config),
            env={**os.environ, "PYTHONPATH": str(tree)})
        rounds: list[dict[str, float]] = []
        try:
            await wait_ready(f"http://127.0.0.1:{health_port}/readyz", guard)
            for _ in range(args.rounds):
                sim.arrivals.clear()
                sim.expected = total
                sim.all_arrived.clear()
                ticked = time.perf_counter()
                sim.move(symbols)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sim.all_arrived.wait(), 60)
                times = sorted((t - ticked) * 1000 for t, _ in sim.arrivals[:total])
                if not times:
                    raise SystemExit("no request arrived in 60 s")
                spread = (times[-1] - times[0]) / 1000
                rounds.append({
                    "arrived": len(times), "first_ms": times[0], "last_ms": times[-1],
                    "median_ms": statistics.median(times),
                    "per_s": len(times) / spread if spread > 0 else float("inf"),
                })  # fmt: skip
                print(f"  {len(times)}/{total} requests: first {times[0]:.0f} ms, median "
                      f"{rounds[-1]['median_ms']:.0f} ms, last {times[-1]:.0f} ms, "
                      f"{rounds[-1]['per_s']:.0f}/s", flush=True)
                await asyncio.sleep(args.pause_s)  # verification and sweeps settle
        finally:
            if guard.returncode is None:
                guard.send_signal(signal.SIGTERM)
            await guard.wait()
    return {
        "positions": total, "accounts": args.accounts, "rounds": len(rounds),
        **{key: statistics.median(r[key] for r in rounds)
           for key in ("arrived", "first_ms", "median_ms", "last_ms", "per_s")},
    }  # fmt: skip


async def wait_ready(url: str, guard: asyncio.subprocess.Process) -> None:
    """Until the guard's /readyz says every account has fresh data."""
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(1200):
            if guard.returncode is not None:
                raise SystemExit(f"guardbot run exited with {guard.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    await asyncio.sleep(2.0)  # streams subscribed
                    return
            await asyncio.sleep(0.1)
    raise SystemExit("the guard did not become ready in 120 s")


def report(name: str, figures: dict[str, Any]) -> None:
    print(f"{name:<12} {figures['positions']:,} positions at risk across "
          f"{figures['accounts']} accounts, median of {figures['rounds']} moves: "
          f"{figures['arrived']:.0f} requests, first {figures['first_ms']:.0f} ms, median "
          f"{figures['median_ms']:.0f} ms, last {figures['last_ms']:.0f} ms, "
          f"{figures['per_s']:.0f} requests/s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--per-account", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pause-s", type=float, default=3.0)
    parser.add_argument("--compare", metavar="REV")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="guardbot-bench-") as scratch:
        trees = {"this tree": REPO}
        if args.compare:
            trees = {args.compare: checkout(args.compare, Path(scratch) / "old"), **trees}
        results = {}
        for name, tree in trees.items():
            print(f"{name}:", flush=True)
            folder = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
            results[name] = asyncio.run(measure(args, tree, folder))
        for name, figures in results.items():
            report(name, figures)


if __name__ == "__main__":
    main()
