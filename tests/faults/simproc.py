"""The simulated exchange as its own process, for the fault suite.

    python tests/faults/simproc.py --seed 7 --accounts 2 --symbols PERP_ETH_USDC,PERP_BTC_USDC

Runs the real ``SimServer`` on a free loopback port, opens funded accounts with one isolated
long per symbol, and prints one JSON line (``rest_url`` and each account's id, key and
secret) once it is ready. It adds one thing to the simulator: a ledger of every
``position_margin`` change the engine *applied*, shown as ``margin_changes`` in
``GET /sim/state``, including those whose response was then lost. That is the exchange's own
record, which the suite compares with the audit log. And ``POST /sim/inject`` sends raw
text down an account's private streams, for the bad-input tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from decimal import Decimal
from typing import Any

from aiohttp import web

from guardbot.sim.admin import open_account
from guardbot.sim.params import parse_decimal
from guardbot.sim.server import SimServer


class LedgerSim(SimServer):
    """``SimServer`` that remembers every applied margin change."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ledger: list[dict[str, Any]] = []
        apply = self.engine.adjust_margin

        def recorded(account_id: str, symbol: object, kind: object, amount: object) -> None:
            apply(account_id, symbol, kind, amount)  # raises, changing nothing, if refused
            self.ledger.append(
                {
                    "account_id": account_id,
                    "symbol": str(symbol),
                    "kind": str(kind),
                    "amount": str(parse_decimal(amount, "amount")),
                    "time_ms": self.now_ms(),
                }
            )

        self.engine.adjust_margin = recorded  # type: ignore[method-assign]
        self.app.router.add_post("/sim/inject", self._inject)

    async def _inject(self, request: web.Request) -> web.Response:
        """Send raw text, as is, to the account's private streams subscribed to ``position``
        (the bad-input tests' hostile pushes)."""
        body = await request.json()
        sent = 0
        for connection in self._private.get(body["account_id"], set()):
            if "position" in connection.topics:
                connection.queue.put_nowait(body["text"])
                sent += 1
        return web.json_response({"sent": sent})

    def state(self) -> dict[str, Any]:
        state = super().state()
        state["margin_changes"] = list(self.ledger)
        return state


def qty(notional: Decimal, sim: SimServer, symbol: str) -> Decimal:
    tick = sim.engine.markets[symbol].base_tick
    return (notional / sim.engine.marks[symbol]).quantize(tick)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--scenario", default="calm")
    parser.add_argument("--accounts", type=int, default=2)
    parser.add_argument("--symbols", default="PERP_ETH_USDC,PERP_BTC_USDC")
    parser.add_argument("--notional", default="5000", help="USDC per position at the start")
    parser.add_argument("--leverage", type=int, default=10)
    parser.add_argument("--usdc", default="100000")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with LedgerSim(
        seed=args.seed, scenario=args.scenario, speed=args.speed, host=args.host
    ) as sim:
        rest_url = f"http://127.0.0.1:{sim.port}"
        symbols = args.symbols.split(",")
        positions = [
            (s, "ISOLATED", str(qty(Decimal(args.notional), sim, s)), args.leverage)
            for s in symbols
        ]
        accounts = [
            await open_account(rest_url, usdc=args.usdc, positions=positions)
            for _ in range(args.accounts)
        ]
        ready = {
            "rest_url": rest_url,
            "accounts": [
                {"account_id": a.account_id, "key": a.orderly_key, "secret": a.orderly_secret}
                for a in accounts
            ],
        }
        print(json.dumps(ready), flush=True)
        await stop.wait()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
