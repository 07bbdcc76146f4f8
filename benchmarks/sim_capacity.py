"""Capacity of the simulated exchange on this machine; prints its figures.

    .venv/bin/python benchmarks/sim_capacity.py [--seconds 10] [--concurrency 32]
        [--connections 500] [--speed 30]

1. REST: signed ``GET /v1/positions`` from ``--concurrency`` concurrent keep-alive clients
   spread over 50 accounts (rate limits off, the server's only difference from production
   settings), for ``--seconds``: requests/s and latency percentiles.
2. WebSocket: ``--connections`` private connections (one account each, authenticated and
   subscribed to ``position``, each account holding an isolated position); the simulator
   runs at ``--speed`` ticks/s and pushes every re-priced position: pushes received/s.

The simulator runs as a separate ``guardbot sim`` process, so the load generator does not
share its CPU time. Requests are pre-signed once per account (the signature stays valid
for the 300 s timestamp window), so the client spends its time on the wire, not on ed25519.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from websockets.asyncio.client import connect

from guardbot.sim.admin import SimAccount
from guardbot.sim.keys import generate_key, sign, signed_headers


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_note(pid: int, before: float | None, events: int, unit: str) -> str:
    """On a shared machine the wall-clock rate depends on the neighbours; the simulator's
    own CPU time per event says what one dedicated core would sustain."""
    after = cpu_seconds(pid)
    if before is None or after is None or events == 0 or after <= before:
        return ""
    per_event = (after - before) / events
    return (
        f"; simulator CPU {per_event * 1e6:.0f} us per {unit}, i.e. "
        f"~{1 / per_event:,.0f}/s per dedicated core"
    )


def start_simulator(speed: float) -> tuple[subprocess.Popen[str], str]:
    command = [
        str(Path(sys.executable).parent / "guardbot"),
        "sim",
        "--port",
        "0",
        "--speed",
        str(speed),
        "--no-rate-limits",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    if not first.startswith("simulated Orderly exchange at "):
        process.kill()
        raise SystemExit(f"the simulator did not start: {first!r}")
    return process, first.rsplit(" ", 1)[1].strip()


async def open_accounts(session: aiohttp.ClientSession, url: str, count: int) -> list[SimAccount]:
    semaphore = asyncio.Semaphore(16)

    async def one(index: int) -> SimAccount:
        key, secret = generate_key()
        async with semaphore:
            async with session.post(
                url + "/sim/accounts", json={"orderly_key": key, "usdc": "10000"}
            ) as response:
                account_id = (await response.json())["account_id"]
            async with session.post(
                url + "/sim/positions",
                json={
                    "account_id": account_id,
                    "symbol": "PERP_ETH_USDC",
                    "margin_mode": "ISOLATED",
                    "qty": "1" if index % 2 else "-1",
                    "leverage": 10,
                },
            ) as response:
                response.raise_for_status()
        return SimAccount(account_id, key, secret)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def bench_rest(url: str, seconds: float, concurrency: int, pid: int) -> None:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        accounts = await open_accounts(session, url, 50)
        now = int(time.time() * 1000)
        headers = [
            signed_headers(
                a.orderly_secret, a.orderly_key, a.account_id, now, "GET", "/v1/positions"
            )
            for a in accounts
        ]
        latencies: list[float] = []
        failures = 0
        deadline = time.monotonic() + seconds

        async def worker(index: int) -> None:
            nonlocal failures
            signed = headers[index % len(headers)]
            while time.monotonic() < deadline:
                started = time.monotonic()
                async with session.get(url + "/v1/positions", headers=signed) as response:
                    await response.read()
                    if response.status != 200:
                        failures += 1
                        continue
                latencies.append(time.monotonic() - started)

        started, cpu_before = time.monotonic(), cpu_seconds(pid)
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.monotonic() - started
        note = server_cpu_note(pid, cpu_before, len(latencies) + failures, "request")
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    print(
        f"REST GET /v1/positions: {len(latencies) / elapsed:,.0f} req/s "
        f"({len(latencies)} ok, {failures} failed in {elapsed:.1f} s, concurrency "
        f"{concurrency}; latency p50 {p50:.1f} ms, p99 {p99:.1f} ms{note})"
    )


async def bench_ws(url: str, seconds: float, connections: int, speed: float, pid: int) -> None:
    async with aiohttp.ClientSession() as session:
        accounts = await open_accounts(session, url, connections)
    ws_base = url.replace("http://", "ws://") + "/v2/ws/private/stream/"
    pushes = 0
    counting = asyncio.Event()
    stop = asyncio.Event()
    all_ready = asyncio.Event()
    ready = 0

    async def client(account: SimAccount) -> None:
        nonlocal pushes, ready
        async with connect(ws_base + account.account_id, max_queue=1024) as ws:
            ts = int(time.time() * 1000)
            await ws.send(
                json.dumps(
                    {
                        "id": "a",
                        "event": "auth",
                        "params": {
                            "orderly_key": account.orderly_key,
                            "sign": sign(account.orderly_secret, str(ts)),
                            "timestamp": ts,
                        },
                    }
                )
            )
            await ws.send(json.dumps({"id": "s", "topic": "position", "event": "subscribe"}))
            ready += 1
            if ready == connections:
                all_ready.set()
            while not stop.is_set():
                try:
                    text = await asyncio.wait_for(ws.recv(), 1)
                except TimeoutError:
                    continue
                if counting.is_set() and '"topic":"position"' in text:
                    pushes += 1
                elif '"event":"ping"' in text:
                    await ws.send('{"event":"pong"}')

    tasks = [asyncio.create_task(client(a)) for a in accounts]
    await all_ready.wait()
    await asyncio.sleep(1)  # let the subscriptions settle
    counting.set()
    started, cpu_before = time.monotonic(), cpu_seconds(pid)
    await asyncio.sleep(seconds)
    counted, elapsed = pushes, time.monotonic() - started
    note = server_cpu_note(pid, cpu_before, counted, "push")
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    offered = connections * speed
    print(
        f"WS position pushes: {counted / elapsed:,.0f} pushes/s received over {connections} "
        f"private connections ({counted} in {elapsed:.1f} s; offered {offered:,.0f}/s at "
        f"speed {speed:g}{note})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--speed", type=float, default=30)
    parser.add_argument("--only", choices=("rest", "ws"), help="run one of the two benchmarks")
    args = parser.parse_args()
    if args.only != "ws":
        process, url = start_simulator(speed=0)
        try:
            asyncio.run(bench_rest(url, args.seconds, args.concurrency, process.pid))
        finally:
            process.terminate()
            process.wait()
    if args.only != "rest":
        process, url = start_simulator(speed=args.speed)
        try:
            asyncio.run(bench_ws(url, args.seconds, args.connections, args.speed, process.pid))
        finally:
            process.terminate()
            process.wait()


if __name__ == "__main__":
    main()
