"""What the Orderly client costs per call, against the simulated exchange. Prints its figures.

For ``GET /v1/positions`` and ``POST /v1/position_margin`` (ADD and REDUCE alternating, so
the position stays put) it times, call by call and one at a time:

* ``client``: ``OrderlyExchange.get_positions()`` / ``adjust_margin()``: throttle, sign,
  send, classify, parse into domain values, metrics and logging;
* ``bare``: the same request through a bare ``httpx.AsyncClient`` with headers signed before
  the timer starts and the body left unparsed: the floor any client pays for the round trip.

The difference of the medians is the client's own overhead. The simulator runs in this
process (speed 0, rate limits off, so the exchange never throttles the measurement; our own
limiter is given a table with room for it).

    .venv/bin/python benchmarks/client_overhead.py [--calls 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal

import httpx
from pydantic import SecretStr

from guardbot.domain import ActionKind
from guardbot.exchange.client import OrderlyExchange, wall_clock_ms
from guardbot.exchange.limits import LIMITS, Limit, RateLimiter
from guardbot.exchange.signing import Signer
from guardbot.sim.keys import generate_key
from guardbot.sim.server import SimServer

ETH = "PERP_ETH_USDC"


async def timed(
    calls: int, *variants: Callable[[int], Awaitable[object]]
) -> list[list[float]]:
    """Milliseconds per call of each variant, interleaved call by call so that drift in the
    machine's load hits every variant alike."""
    for i in range(20):  # warm up: connection pools, caches
        for call in variants:
            await call(i)
    samples: list[list[float]] = [[] for _ in variants]
    for i in range(calls):
        for call, out in zip(variants, samples, strict=True):
            start = time.perf_counter()
            await call(i)
            out.append((time.perf_counter() - start) * 1000)
    return samples


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def main(calls: int) -> None:
    async with SimServer(seed=7, scenario="calm", speed=0, rate_limits=False) as sim:
        key, secret = generate_key()
        account_id = sim.engine.create_account(key, "read,trading", Decimal(1_000_000))
        sim.engine.open_position(account_id, ETH, "ISOLATED", Decimal(1), 10)
        roomy = RateLimiter({endpoint: Limit(10**6, 1.0) for endpoint in LIMITS})
        urls = {"rest_url": sim.rest_url, "public_ws_url": sim.public_ws_url,
                "private_ws_url": sim.private_ws_url}
        signer = Signer(key, SecretStr(secret))
        kinds = (ActionKind.ADD, ActionKind.REDUCE)
        results: dict[str, tuple[list[float], list[float]]] = {}
        async with OrderlyExchange(account_id, key, SecretStr(secret), urls,
                                   limiter=roomy) as client, httpx.AsyncClient(
            base_url=sim.rest_url
        ) as bare:

            async def bare_get(_: int) -> object:
                headers = signer.rest_headers(account_id, wall_clock_ms(), "GET",
                                              "/v1/positions")
                return await bare.get("/v1/positions", headers=headers)

            async def bare_post(i: int) -> object:
                body = json.dumps({"symbol": ETH, "amount": "1", "type": kinds[i % 2].value},
                                  separators=(",", ":"))
                headers = signer.rest_headers(account_id, wall_clock_ms(), "POST",
                                              "/v1/position_margin", body)
                return await bare.post("/v1/position_margin", content=body, headers=headers)

            async def client_get(_: int) -> object:
                return await client.get_positions()

            async def client_post(i: int) -> None:
                await client.adjust_margin(ETH, kinds[i % 2], Decimal(1))

            client_ms, bare_ms = await timed(calls, client_get, bare_get)
            results["GET /v1/positions"] = (client_ms, bare_ms)
            client_ms, bare_ms = await timed(calls, client_post, bare_post)
            results["POST /v1/position_margin"] = (client_ms, bare_ms)

    print(f"client overhead against the in-process simulator, {calls} sequential calls each")
    print(f"{'endpoint':28} {'client med':>10} {'client p99':>10} {'bare med':>9} "
          f"{'bare p99':>9} {'overhead med':>12}  (ms)")
    for endpoint, (client_ms, bare_ms) in results.items():
        c_med, c_p99 = summary(client_ms)
        b_med, b_p99 = summary(bare_ms)
        print(f"{endpoint:28} {c_med:10.3f} {c_p99:10.3f} {b_med:9.3f} {b_p99:9.3f} "
              f"{c_med - b_med:12.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    asyncio.run(main(parser.parse_args().calls))
