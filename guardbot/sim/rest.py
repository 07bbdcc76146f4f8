"""Orderly's REST API on the simulator (docs/exchange.md §4): one aiohttp handler per endpoint
over the engine, and the JSON request and reply helpers the admin API shares.

The server's middleware authenticates a request before its handler runs and leaves the
caller (``CALLER``) and the raw body it checked (``BODY``) on the request.

Wire choices where docs/exchange.md lists an open question (the engine's are in engine.py,
fills.py, liquidation.py and settings.py):
- ``GET /v1/position/{symbol}`` with no position answers a zero-qty position object;
  ``GET /v1/positions`` keeps a closed position's row, with qty 0.
- ``/v1/public/futures/{symbol}`` answers a bare object, not ``rows``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from aiohttp import web

from guardbot.sim import payloads
from guardbot.sim.auth import Caller
from guardbot.sim.engine import Engine
from guardbot.sim.params import CROSS, MARGIN_MODES, EngineError, bad_param, parse_margin_mode
from guardbot.sim.records import Account

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Route = tuple[str, str, Handler, str]  # (method, path, handler, access)
PUBLIC, READ, TRADING = "public", "read", "trading"
CALLER = web.RequestKey("caller", Caller)
BODY = web.RequestKey("body", bytes)
ORDER_PARAMETERS = frozenset(
    {
        "symbol",
        "order_type",
        "side",
        "order_price",
        "order_quantity",
        "order_amount",
        "client_order_id",
        "visible_quantity",
        "reduce_only",
        "slippage",
        "order_tag",
        "level",
        "post_only_adjust",
        "margin_mode",
    }
)
USDC_TOKEN = {
    "token": "USDC",
    "token_hash": "0xd6aca1be9729c13d677335161321649cccae6a591554772516700f986f942eaa",
    "decimals": 6,
    "minimum_withdraw_amount": 1.0,
    "chain_details": [{"chain_id": 42161, "contract_address": "", "decimals": 6}],
}
ARBITRUM = {
    "name": "Arbitrum",
    "public_rpc_url": "",
    "chain_id": 42161,
    "currency_symbol": "ETH",
    "currency_decimal": 18,
    "explorer_base_url": "",
    "vault_address": "",
}


def reply(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=payloads.dumps(payload), status=status, content_type="application/json"
    )


def fail(code: int, message: str, status: int) -> web.Response:
    return reply(payloads.error(code, message), status)


async def read_body(request: web.Request, allowed: set[str] | frozenset[str]) -> dict[str, Any]:
    """The JSON object body (the one the middleware checked, if it did); -1005 if it is not
    one, -1004 for a parameter not in ``allowed``."""
    raw = request.get(BODY)
    if raw is None:
        raw = await request.read()
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise bad_param("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise bad_param("the body must be a JSON object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise EngineError(-1004, f"unknown parameter {', '.join(unknown)}")
    return data


class RestApi:
    """The Orderly REST endpoints; ``routes()`` lists them with the access each needs."""

    def __init__(self, engine: Engine, now_ms: Callable[[], int], started_ms: int) -> None:
        self.engine = engine
        self.now_ms = now_ms
        self.started_ms = started_ms

    def routes(self) -> list[Route]:
        return [
            ("GET", "/v1/positions", self._positions, READ),
            ("GET", "/v1/position/{symbol}", self._position, READ),
            ("POST", "/v1/position_margin", self._position_margin, TRADING),
            ("POST", "/v1/client/leverages", self._set_leverage, READ),
            ("POST", "/v1/client/leverage", self._set_leverage, READ),
            ("GET", "/v1/client/leverage", self._leverage, READ),
            ("GET", "/v1/client/leverages", self._leverages, READ),
            ("POST", "/v1/client/margin_mode", self._set_margin_mode, READ),
            ("GET", "/v1/client/margin_modes", self._margin_modes, READ),
            ("GET", "/v1/client/holding", self._holding, READ),
            ("GET", "/v1/client/aggregate/holding", self._aggregate_holding, READ),
            ("GET", "/v1/client/info", self._client_info, READ),
            ("GET", "/v1/account_info", self._account_info, READ),
            ("GET", "/v1/client/key_info", self._key_info, READ),
            ("POST", "/v1/order", self._place_order, TRADING),
            ("GET", "/v1/orders", self._orders, READ),
            ("GET", "/v1/liquidations", self._liquidations, READ),
            ("DELETE", "/v1/order", self._cancel_order, TRADING),
            ("GET", "/v1/public/info", self._public_info, PUBLIC),
            ("GET", "/v1/public/info/{symbol}", self._public_info, PUBLIC),
            ("GET", "/v1/public/futures", self._public_futures, PUBLIC),
            ("GET", "/v1/public/futures/{symbol}", self._public_futures, PUBLIC),
            ("GET", "/v1/public/system_info", self._system_info, PUBLIC),
            ("GET", "/v1/public/token", self._token, PUBLIC),
            ("GET", "/v1/public/chain_info", self._chain_info, PUBLIC),
        ]

    def _ok(self, data: Any = None) -> web.Response:
        return reply(payloads.ok(data, self.now_ms()))

    @staticmethod
    def _caller(request: web.Request) -> str:
        return request[CALLER].account_id

    def _account(self, request: web.Request) -> Account:
        return self.engine.account(self._caller(request))

    # ------------------------------------------------------- private REST
    async def _positions(self, request: web.Request) -> web.StreamResponse:
        account = self._account(request)
        now = self.now_ms()
        data = payloads.account_figures(self.engine.account_view(account))
        data["rows"] = [payloads.position(v, now) for v in self.engine.positions(account)]
        return self._ok(data)

    async def _position(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/position/{symbol}``; with no position it answers a zero-qty position
        object (the real answer is unconfirmed, §4 open question 5)."""
        account = self._account(request)
        market = self.engine.market(request.match_info["symbol"])
        mode = parse_margin_mode(request.query.get("margin_mode"))
        row = self.engine.position_view(account, market.symbol, mode)
        return self._ok(payloads.position(row, self.now_ms()))

    async def _position_margin(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, {"symbol", "amount", "type"})
        self.engine.adjust_margin(
            self._caller(request), body.get("symbol"), body.get("type"), body.get("amount")
        )
        return self._ok()

    async def _set_leverage(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, {"symbol", "leverage", "margin_mode"})
        changed = self.engine.set_leverage(
            self._caller(request),
            body.get("leverage"),
            body.get("symbol"),
            body.get("margin_mode"),
        )
        if body.get("symbol") is not None:
            symbol, mode, leverage = changed[0]
            return self._ok({"symbol": symbol, "margin_mode": mode, "leverage": leverage})
        mode = parse_margin_mode(body.get("margin_mode"))
        return self._ok({"margin_mode": mode, "leverage": body["leverage"]})

    async def _leverage(self, request: web.Request) -> web.StreamResponse:
        account = self._account(request)
        symbol = request.query.get("symbol")
        if not symbol:
            raise bad_param("missing required parameter symbol")
        market = self.engine.market(symbol)
        mode = parse_margin_mode(request.query.get("margin_mode"))
        leverage = self.engine.leverage(account, market.symbol, mode)
        return self._ok({"symbol": market.symbol, "margin_mode": mode, "leverage": leverage})

    async def _leverages(self, request: web.Request) -> web.StreamResponse:
        account = self._account(request)
        rows = [
            {"symbol": s, "margin_mode": mode, "leverage": self.engine.leverage(account, s, mode)}
            for s in self.engine.markets
            for mode in MARGIN_MODES
        ]
        return self._ok({"rows": rows})

    async def _set_margin_mode(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, {"symbol", "default_margin_mode"})
        self.engine.set_default_margin_mode(
            self._caller(request), body.get("symbol"), body.get("default_margin_mode")
        )
        return self._ok()

    async def _margin_modes(self, request: web.Request) -> web.StreamResponse:
        account = self._account(request)
        rows = [
            {"symbol": s, "default_margin_mode": account.default_modes.get(s, CROSS)}
            for s in self.engine.markets
        ]
        return self._ok({"rows": rows})

    async def _holding(self, request: web.Request) -> web.StreamResponse:
        account = self._account(request)
        return self._ok({"holding": [payloads.holding(self.engine.holding_view(account))]})

    async def _aggregate_holding(self, request: web.Request) -> web.StreamResponse:
        account = self._account(request)
        row = {
            "account_id": account.account_id,
            **payloads.holding(self.engine.holding_view(account)),
        }
        return self._ok({"rows": [row]})

    async def _client_info(self, request: web.Request) -> web.StreamResponse:
        account = self._account(request)
        leverage = self.engine.leverage(account, "PERP_ETH_USDC", CROSS)
        return self._ok(
            payloads.client_info(account.account_id, self.engine.markets.values(), leverage)
        )

    async def _account_info(self, request: web.Request) -> web.StreamResponse:
        figures = self.engine.account_view(self._account(request))
        return self._ok(payloads.account_figures(figures, pnl_key="total_pnl_24h"))

    async def _key_info(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/client/key_info``: the caller's account's keys (docs/exchange.md §2.1;
        the row fields are the simulator's reading of the docs)."""
        account_id = self._caller(request)
        rows = [
            {"orderly_key": key.orderly_key, "key_status": "ACTIVE",
             "scope": ",".join(sorted(key.scopes)), "expiration": key.expires_ms}
            for key in self.engine.keys.values() if key.account_id == account_id
        ]  # fmt: skip
        return self._ok({"rows": rows})

    async def _place_order(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, ORDER_PARAMETERS)
        order = self.engine.place_order(
            self._caller(request),
            body.get("symbol"),
            body.get("order_type"),
            body.get("side"),
            body.get("order_quantity"),
            body.get("order_price"),
            body.get("margin_mode"),
            body.get("reduce_only", False),
            body.get("client_order_id"),
        )
        return self._ok(payloads.order_created(order))

    async def _orders(self, request: web.Request) -> web.StreamResponse:
        account = self._account(request)
        symbol = request.query.get("symbol")
        status = request.query.get("status")
        orders = [
            o
            for o in account.orders.values()
            if (not symbol or o.symbol == symbol)
            and (
                not status
                or status == o.status
                or (status == "INCOMPLETE" and o.status == "NEW")
                or (status == "COMPLETED" and o.status != "NEW")
            )
        ]
        rows = [payloads.order(o) for o in sorted(orders, key=lambda o: -o.order_id)]
        meta = {"total": len(rows), "records_per_page": len(rows), "current_page": 1}
        return self._ok({"meta": meta, "rows": rows})

    async def _liquidations(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/liquidations``: the caller's liquidations, newest first, filtered by
        ``start_t``/``end_t`` (ms) and paged by ``page``/``size``."""
        account_id = self._caller(request)
        start, end = _query_int(request, "start_t", 0), _query_int(request, "end_t", 2**63)
        page, size = _query_int(request, "page", 1), _query_int(request, "size", 25)
        if page < 1 or not 1 <= size <= 500:
            raise bad_param("page must be 1 or more and size from 1 to 500")
        rows = payloads.liquidations(
            e for e in self.engine.liquidations
            if e.account_id == account_id and start <= e.time_ms <= end)
        rows.sort(key=lambda row: -row["liquidation_id"])
        meta = {"total": len(rows), "records_per_page": size, "current_page": page}
        return self._ok({"meta": meta, "rows": rows[(page - 1) * size:page * size]})

    async def _cancel_order(self, request: web.Request) -> web.StreamResponse:
        order_id = request.query.get("order_id")
        if not order_id:
            raise bad_param("missing required parameter order_id")
        self.engine.cancel_order(self._caller(request), order_id, request.query.get("symbol"))
        return self._ok({"status": "CANCEL_SENT"})

    # -------------------------------------------------------- public REST
    def _open_interest(self, symbol: str) -> Decimal:
        total = Decimal(0)
        for account in self.engine.accounts.values():
            for position in account.open_positions():
                if position.symbol == symbol and position.qty > 0:
                    total += position.qty
        return total

    async def _public_info(self, request: web.Request) -> web.StreamResponse:
        symbol = request.match_info.get("symbol")
        if symbol is not None:
            return self._ok(payloads.market_info(self.engine.market(symbol), self.started_ms))
        rows = [payloads.market_info(m, self.started_ms) for m in self.engine.markets.values()]
        return self._ok({"rows": rows})

    async def _public_futures(self, request: web.Request) -> web.StreamResponse:
        """``/v1/public/futures/{symbol}`` answers a bare object (§4: more likely than rows)."""
        now = self.now_ms()
        symbol = request.match_info.get("symbol")
        markets = [self.engine.market(symbol)] if symbol else list(self.engine.markets.values())
        rows = [
            payloads.futures(m, self.engine.marks[m.symbol], self._open_interest(m.symbol), now)
            for m in markets
        ]
        return self._ok(rows[0] if symbol else {"rows": rows})

    async def _system_info(self, request: web.Request) -> web.StreamResponse:
        return self._ok({"status": 0, "msg": ""})

    async def _token(self, request: web.Request) -> web.StreamResponse:
        return self._ok({"rows": [USDC_TOKEN]})

    async def _chain_info(self, request: web.Request) -> web.StreamResponse:
        return self._ok({"rows": [ARBITRUM]})


def _query_int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise bad_param(f"{name} must be an integer") from None
