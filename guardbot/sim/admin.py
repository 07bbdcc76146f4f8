"""The simulator's admin API (``/sim/...``, loopback clients only): the server's handlers
(``AdminApi``) and a client for tests, demos and benchmarks (``open_account``).

    account = await open_account(sim.rest_url, usdc="10000",
                                 positions=[("PERP_ETH_USDC", "ISOLATED", "1", 10)])

Money in admin answers is decimal strings, never JSON numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from aiohttp import web

from guardbot.sim.faults import FaultsError
from guardbot.sim.keys import generate_key
from guardbot.sim.margin import usdc
from guardbot.sim.params import CROSS, bad_param, parse_decimal
from guardbot.sim.rest import Handler, read_body, reply

if TYPE_CHECKING:
    from guardbot.sim.server import SimServer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SimAccount:
    """A funded simulator account and its key. The secret never appears in ``repr``."""

    account_id: str
    orderly_key: str
    orderly_secret: str = field(repr=False)


class AdminError(RuntimeError):
    """The simulator refused an admin request (the message is its answer)."""


async def admin_call(
    client: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    response = await client.request(method, path, json=body)
    data: dict[str, Any] = response.json()
    if response.status_code != 200:
        raise AdminError(f"{method} {path}: HTTP {response.status_code}: {data.get('message')}")
    return data


async def open_account(
    rest_url: str,
    usdc: str = "10000",
    positions: Iterable[tuple[str, str, str, int]] = (),
    scopes: str = "read,trading",
    client: httpx.AsyncClient | None = None,
) -> SimAccount:
    """Create an account with a fresh key, fund it, and open ``positions`` given as
    ``(symbol, margin_mode, signed qty, leverage)`` at the current mark."""
    own = client is None
    client = client or httpx.AsyncClient(base_url=rest_url, timeout=10)
    try:
        orderly_key, secret = generate_key()
        created = await admin_call(
            client,
            "POST",
            "/sim/accounts",
            {"orderly_key": orderly_key, "scopes": scopes, "usdc": usdc},
        )
        account_id = str(created["account_id"])
        for symbol, mode, qty, leverage in positions:
            await admin_call(
                client,
                "POST",
                "/sim/positions",
                {
                    "account_id": account_id,
                    "symbol": symbol,
                    "margin_mode": mode,
                    "qty": qty,
                    "leverage": leverage,
                },
            )
        return SimAccount(account_id, orderly_key, secret)
    finally:
        if own:
            await client.aclose()


class AdminApi:
    """The ``/sim/`` endpoints of ``sim``: open accounts, keys and positions, pin marks, run
    ticks, set faults, and show the whole state."""

    def __init__(self, sim: SimServer) -> None:
        self.sim = sim
        self.engine = sim.engine

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/sim/accounts", self._accounts),
            ("POST", "/sim/keys", self._keys),
            ("DELETE", "/sim/keys", self._revoke),
            ("POST", "/sim/positions", self._positions),
            ("POST", "/sim/marks", self._marks),
            ("POST", "/sim/tick", self._tick),
            ("POST", "/sim/faults", self._faults),
            ("GET", "/sim/faults", self._faults),
            ("GET", "/sim/state", self._state),
        ]

    async def _accounts(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, {"account_id", "orderly_key", "scopes", "usdc"})
        if not isinstance(body.get("orderly_key"), str):
            raise bad_param("orderly_key is required: ed25519:<base58 public key>")
        account_id = self.engine.create_account(
            body["orderly_key"],
            str(body.get("scopes", "read,trading")),
            parse_decimal(body.get("usdc", "0"), "usdc"),
            body.get("account_id"),
        )
        return reply({"account_id": account_id})

    async def _keys(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, {"account_id", "orderly_key", "scopes", "expires_ms"})
        expires = body.get("expires_ms")
        if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int)):
            raise bad_param("expires_ms must be an integer")
        self.engine.add_key(
            str(body.get("account_id")),
            str(body.get("orderly_key")),
            str(body.get("scopes", "read,trading")),
            expires,
        )
        return reply({"orderly_key": body["orderly_key"]})

    async def _revoke(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, {"orderly_key"})
        self.engine.remove_key(str(body.get("orderly_key")))
        return reply({"orderly_key": body["orderly_key"]})

    async def _positions(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, {"account_id", "symbol", "margin_mode", "qty", "leverage"})
        leverage = body.get("leverage")
        if leverage is not None and (isinstance(leverage, bool) or not isinstance(leverage, int)):
            raise bad_param("leverage must be an integer")
        row = self.engine.open_position(
            str(body.get("account_id")),
            str(body.get("symbol")),
            str(body.get("margin_mode") or CROSS),
            parse_decimal(body.get("qty"), "qty"),
            leverage,
        )
        return reply(self._position(str(body["account_id"]), row.symbol, row.margin_mode))

    async def _marks(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, {"symbol", "price"})
        price = body.get("price")
        symbol = str(body.get("symbol"))
        self.engine.pin_mark(symbol, None if price is None else parse_decimal(price, "price"))
        self.sim.streams.push_marks()
        return reply({"symbol": symbol, "price": str(self.engine.marks[symbol])})

    async def _tick(self, request: web.Request) -> web.StreamResponse:
        """Run N simulated seconds now (drives a paused ``speed=0`` simulator)."""
        body = await read_body(request, {"seconds"})
        seconds = body.get("seconds", 1)
        if isinstance(seconds, bool) or not isinstance(seconds, int) or not 1 <= seconds <= 86400:
            raise bad_param("seconds must be an integer from 1 to 86400")
        self.sim.advance(seconds)
        return reply({"sim_second": self.sim.prices.second})

    async def _faults(self, request: web.Request) -> web.StreamResponse:
        faults = self.sim.faults
        if request.method == "POST":
            body = await read_body(request, set(faults.as_dict()))
            try:
                faults.update(body)
            except FaultsError as exc:
                raise bad_param(str(exc)) from None
            log.info("faults now %s", faults.as_dict())
        return reply(faults.as_dict())

    async def _state(self, request: web.Request) -> web.StreamResponse:
        return reply(self.sim.state())

    def _position(self, account_id: str, symbol: str, mode: str) -> dict[str, Any]:
        account = self.engine.account(account_id)
        row = self.engine.position_view(account, symbol, mode)
        return {
            "account_id": account.account_id,
            "symbol": row.symbol,
            "margin_mode": row.margin_mode,
            "qty": str(row.qty),
            "average_open_price": str(row.average_open_price),
            "cost_position": str(row.cost_position),
            "margin": str(row.margin),
            "leverage": row.leverage,
            "mark_price": str(row.mark_price),
            "unsettled_pnl": str(row.unsettled_pnl),
            "liquidation_price": None if row.est_liq_price is None else str(row.est_liq_price),
            "max_reduce": str(self.engine.max_reduce(account, account.positions[(symbol, mode)]))
            if (symbol, mode) in account.positions and mode != CROSS
            else "0",
            "seq": row.seq,
        }

    def snapshot(self) -> dict[str, Any]:
        """Everything ``GET /sim/state`` shows (money as decimal strings)."""
        engine = self.engine
        accounts = []
        for account in engine.accounts.values():
            holding = engine.holding_view(account)
            figures = engine.account_view(account)
            accounts.append(
                {
                    "account_id": account.account_id,
                    "holding": str(holding.holding),
                    "isolated_margin": str(holding.isolated_margin),
                    "isolated_order_frozen": str(holding.isolated_order_frozen),
                    "free_collateral": str(figures.free_collateral),
                    "total_collateral_value": str(figures.total_collateral_value),
                    "positions": [
                        self._position(account.account_id, s, mode)
                        for (s, mode) in account.positions
                    ],
                }
            )
        return {
            "time_ms": self.sim.now_ms(),
            "sim_second": self.sim.prices.second,
            "scenario": self.sim.prices.scenario,
            "marks": {s: str(p) for s, p in engine.marks.items()},
            "pinned": sorted(engine.pinned),
            "accounts": accounts,
            "liquidations": [
                {
                    "account_id": liq.account_id,
                    "symbol": liq.symbol,
                    "margin_mode": liq.margin_mode,
                    "qty": str(liq.qty),
                    "price": str(liq.price),
                    "margin_lost": str(liq.margin_lost),
                    "to_insurance_fund": str(liq.to_insurance_fund),
                    "time_ms": liq.time_ms,
                }
                for liq in engine.liquidations
            ],
            "insurance_fund": str(usdc(engine.insurance_fund)),
            "faults": self.sim.faults.as_dict(),
            "counters": dict(self.sim.counters),
        }
