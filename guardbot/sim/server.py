"""The simulated exchange's I/O layer: Orderly's REST API, both WebSockets and the admin API
on one aiohttp port, around the sans-I/O ``Engine``.

    async with SimServer(seed=7, scenario="calm", speed=1.0) as sim:
        sim.rest_url, sim.public_ws_url, sim.private_ws_url, sim.engine

Time: marks tick once per simulated second and ``speed`` simulated seconds pass per real
second (``speed=60``: 60 ticks per real second; ``speed=0``: marks move only through
``advance()`` or ``POST /sim/marks``). Timestamps on the wire are always real epoch
milliseconds, because clients sign with their real clock and judge data age by it.

Each REST request runs: faults (latency, 5xx, 429) -> authentication (auth.py) -> rate limit
(limits.py) -> handler -> pushes for what changed -> maybe a lost response (faults.py).

Wire choices where docs/exchange.md lists an open question (the engine's are in engine.py):
- ``GET /v1/position/{symbol}`` with no position answers a zero-qty position object;
  ``GET /v1/positions`` keeps a closed position's row, with qty 0.
- ``/v1/public/futures/{symbol}`` answers a bare object, not ``rows``.
- 429 carries no ``Retry-After``; the message is "Too many requests, please try again later.".
- WS: no snapshot on subscribe (clients load REST first); a closed position is pushed with
  ``positionQty`` 0; the unsubscribe ack has the subscribe ack's shape; server pings carry
  ``ts``; every client (public too) is dropped after 10 unanswered pings; a failed auth is
  answered with ``errorMsg`` "auth failed" and the connection is then closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import Any

from aiohttp import WSMsgType, web

from guardbot.sim import payloads
from guardbot.sim.auth import AuthFailure, Caller, authenticate_request, authenticate_ws
from guardbot.sim.engine import Engine
from guardbot.sim.faults import FaultDice, Faults, FaultsError
from guardbot.sim.limits import RateLimiter
from guardbot.sim.margin import MARKETS, Market, usdc
from guardbot.sim.params import (
    CROSS,
    MARGIN_MODES,
    EngineError,
    bad_param,
    parse_decimal,
    parse_margin_mode,
)
from guardbot.sim.prices import PriceFeed

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC, READ, TRADING = "public", "read", "trading"
PRIVATE_TOPICS = ("position", "balance", "account")
MAX_QUEUED_PUSHES = 1_000  # a client this far behind is dropped, as a real server would
MAX_CATCH_UP_TICKS = 600
LOOPBACK = ("127.", "::1", "::ffff:127.")
CALLER = web.RequestKey("caller", Caller)
BODY = web.RequestKey("body", bytes)


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=payloads.dumps(payload), status=status, content_type="application/json"
    )


def _fail(code: int, message: str, status: int) -> web.Response:
    return _json(payloads.error(code, message), status)


def _websocket() -> web.WebSocketResponse:
    # No permessage-deflate: it cost ~20 us per push, the largest single item in the push
    # path, and Orderly's docs do not promise it.
    return web.WebSocketResponse(autoping=True, max_msg_size=1 << 16, compress=False)


@dataclass(eq=False)
class _Connection:
    """One WebSocket client: its subscriptions and an outgoing queue drained by one task, so
    a slow client never stalls the others."""

    ws: web.WebSocketResponse
    request: web.Request
    account_id: str | None = None  # private: the path's account
    authed: bool = False
    topics: set[str] = field(default_factory=set)
    missed_pongs: int = 0
    queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    def send(self, payload: dict[str, Any]) -> None:
        if self.queue.qsize() >= MAX_QUEUED_PUSHES:
            self.drop()
            return
        self.queue.put_nowait(payloads.dumps(payload))

    def drop(self) -> None:
        """Cut the TCP connection without a close frame (what a network failure looks like)."""
        transport = self.request.transport
        if transport is not None:
            transport.abort()


class SimServer:
    """The simulated Orderly exchange on ``host:port`` (port 0: a free one), as an async
    context manager. ``rate_limits=False`` turns the §5 limits off (capacity benchmarks);
    ``ping_interval_s`` is the server WS ping period (10 s, as Orderly's)."""

    def __init__(
        self,
        seed: int = 7,
        scenario: str = "calm",
        speed: float = 1.0,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        markets: dict[str, Market] | None = None,
        rate_limits: bool = True,
        ping_interval_s: float = 10.0,
        max_missed_pongs: int = 10,
    ) -> None:
        if speed < 0:
            raise ValueError("speed must not be negative")
        self.host, self.port, self.speed = host, port, speed
        self.prices = PriceFeed(markets or MARKETS, scenario, seed)
        self.engine = Engine(self.now_ms, self.prices.markets, self.prices.marks)
        self.faults = Faults()
        self.dice = FaultDice(self.faults, seed)
        self.limiter = RateLimiter() if rate_limits else None
        self.ping_interval_s = ping_interval_s
        self.max_missed_pongs = max_missed_pongs
        self.counters: Counter[str] = Counter()
        self.started_ms = self.now_ms()
        self._private: dict[str, set[_Connection]] = {}
        self._public: set[_Connection] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self._routes: dict[tuple[str, str], str] = {}
        self.app = self._build_app()

    # ------------------------------------------------------------ lifecycle
    @staticmethod
    def now_ms() -> int:
        return int(time.time() * 1000)

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def public_ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws/stream/{{account_id}}"

    @property
    def private_ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v2/ws/private/stream/{{account_id}}"

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]
        for job in (self._run_clock, self._run_pings, self._run_ws_drops):
            self._tasks.append(asyncio.create_task(job()))
        log.info("simulated exchange at %s", self.rest_url)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for connection in self._connections():
            connection.drop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def advance(self, seconds: int = 1) -> None:
        """Run ``seconds`` simulated seconds now (re-price, fill, liquidate, push)."""
        for _ in range(seconds):
            self.engine.advance(self.prices.step())
        self._push_marks()
        self.flush()

    # --------------------------------------------------------------- routes
    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=1 << 20)
        routes: list[tuple[str, str, Handler, str]] = [
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
            ("POST", "/v1/order", self._place_order, TRADING),
            ("GET", "/v1/orders", self._orders, READ),
            ("DELETE", "/v1/order", self._cancel_order, TRADING),
            ("GET", "/v1/public/info", self._public_info, PUBLIC),
            ("GET", "/v1/public/info/{symbol}", self._public_info, PUBLIC),
            ("GET", "/v1/public/futures", self._public_futures, PUBLIC),
            ("GET", "/v1/public/futures/{symbol}", self._public_futures, PUBLIC),
            ("GET", "/v1/public/system_info", self._system_info, PUBLIC),
            ("GET", "/v1/public/token", self._token, PUBLIC),
            ("GET", "/v1/public/chain_info", self._chain_info, PUBLIC),
        ]
        for method, path, handler, access in routes:
            app.router.add_route(method, path, handler)
            self._routes[(method, path)] = access
        app.router.add_get("/ws/stream/{id}", self._public_ws)
        app.router.add_get("/v2/ws/private/stream/{account_id}", self._private_ws)
        app.router.add_post("/sim/accounts", self._admin_accounts)
        app.router.add_post("/sim/keys", self._admin_keys)
        app.router.add_post("/sim/positions", self._admin_positions)
        app.router.add_post("/sim/marks", self._admin_marks)
        app.router.add_post("/sim/tick", self._admin_tick)
        app.router.add_post("/sim/faults", self._admin_faults)
        app.router.add_get("/sim/faults", self._admin_faults)
        app.router.add_get("/sim/state", self._admin_state)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/sim/"):
            if not (request.remote or "").startswith(LOOPBACK):
                return _fail(-1002, "the admin API accepts only loopback clients", 403)
            return await self._guarded(request, handler)
        if path.startswith(("/ws/", "/v2/ws/")):
            return await handler(request)
        self.counters["requests"] += 1
        response = await self._orderly(request, handler)
        if response.status >= 400:
            self.counters["rejections"] += 1
        log.debug("%s %s -> %s", request.method, request.path_qs, response.status)
        if self.dice.lose_response():
            # The change is applied; the client never learns it (docs/architecture.md,
            # "Invariants": every USDC moved is known).
            self.counters["fault_lost_response"] += 1
            if request.transport is not None:
                request.transport.close()
        return response

    async def _orderly(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.faults.latency_ms:
            self.counters["fault_latency"] += 1
            await asyncio.sleep(self.faults.latency_ms / 1000)
        if self.dice.server_error():
            self.counters["fault_5xx"] += 1
            return _fail(-1000, "injected server error", 500)
        if self.dice.rate_limited():
            self.counters["fault_429"] += 1
            return _fail(-1003, "Too many requests (injected).", 429)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else ""
        access = self._routes.get((request.method, route))
        if access is None:
            return _fail(-1000, f"{request.method} {request.path} does not exist", 404)
        body = await request.read()
        caller: Caller | None = None
        if access != PUBLIC:
            try:
                caller = authenticate_request(
                    self.engine.keys,
                    request.headers,
                    request.method,
                    request.raw_path,
                    body,
                    self.now_ms(),
                    need_trading=access == TRADING,
                )
            except AuthFailure as exc:
                self.counters[f"auth_{exc.code}"] += 1
                return _fail(exc.code, exc.message, 401)
            request[CALLER] = caller
        if self.limiter is not None and not self.limiter.allow(
            request.method,
            route,
            caller.key.orderly_key if caller else None,
            request.remote or "",
            time.monotonic(),
        ):
            self.counters["rate_limited"] += 1
            return _fail(-1003, "Too many requests, please try again later.", 429)
        request[BODY] = body
        return await self._guarded(request, handler)

    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except EngineError as exc:
            return _fail(exc.code, exc.message, exc.http_status)
        finally:
            self.flush()

    # ------------------------------------------------------------- helpers
    def _ok(self, data: Any = None) -> web.Response:
        return _json(payloads.ok(data, self.now_ms()))

    @staticmethod
    def _caller(request: web.Request) -> str:
        return request[CALLER].account_id

    @staticmethod
    async def _body(request: web.Request, allowed: set[str]) -> dict[str, Any]:
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

    # ------------------------------------------------------- private REST
    async def _positions(self, request: web.Request) -> web.StreamResponse:
        account = self.engine.account(self._caller(request))
        now = self.now_ms()
        data = payloads.account_figures(self.engine.account_view(account))
        data["rows"] = [payloads.position(v, now) for v in self.engine.positions(account)]
        return self._ok(data)

    async def _position(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/position/{symbol}``; with no position it answers a zero-qty position
        object (the real answer is unconfirmed, §4 open question 5)."""
        account = self.engine.account(self._caller(request))
        market = self.engine.market(request.match_info["symbol"])
        mode = parse_margin_mode(request.query.get("margin_mode"))
        view = self.engine.position_view(account, market.symbol, mode)
        return self._ok(payloads.position(view, self.now_ms()))

    async def _position_margin(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, {"symbol", "amount", "type"})
        self.engine.adjust_margin(
            self._caller(request), body.get("symbol"), body.get("type"), body.get("amount")
        )
        return self._ok()

    async def _set_leverage(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, {"symbol", "leverage", "margin_mode"})
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
        account = self.engine.account(self._caller(request))
        symbol = request.query.get("symbol")
        if not symbol:
            raise bad_param("missing required parameter symbol")
        market = self.engine.market(symbol)
        mode = parse_margin_mode(request.query.get("margin_mode"))
        leverage = self.engine.leverage(account, market.symbol, mode)
        return self._ok({"symbol": market.symbol, "margin_mode": mode, "leverage": leverage})

    async def _leverages(self, request: web.Request) -> web.StreamResponse:
        account = self.engine.account(self._caller(request))
        rows = [
            {"symbol": s, "margin_mode": mode, "leverage": self.engine.leverage(account, s, mode)}
            for s in self.engine.markets
            for mode in MARGIN_MODES
        ]
        return self._ok({"rows": rows})

    async def _set_margin_mode(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, {"symbol", "default_margin_mode"})
        self.engine.set_default_margin_mode(
            self._caller(request), body.get("symbol"), body.get("default_margin_mode")
        )
        return self._ok()

    async def _margin_modes(self, request: web.Request) -> web.StreamResponse:
        account = self.engine.account(self._caller(request))
        rows = [
            {"symbol": s, "default_margin_mode": account.default_modes.get(s, CROSS)}
            for s in self.engine.markets
        ]
        return self._ok({"rows": rows})

    async def _holding(self, request: web.Request) -> web.StreamResponse:
        account = self.engine.account(self._caller(request))
        return self._ok({"holding": [payloads.holding(self.engine.holding_view(account))]})

    async def _aggregate_holding(self, request: web.Request) -> web.StreamResponse:
        account = self.engine.account(self._caller(request))
        row = {
            "account_id": account.account_id,
            **payloads.holding(self.engine.holding_view(account)),
        }
        return self._ok({"rows": [row]})

    async def _client_info(self, request: web.Request) -> web.StreamResponse:
        account = self.engine.account(self._caller(request))
        leverage = self.engine.leverage(account, "PERP_ETH_USDC", CROSS)
        return self._ok(
            payloads.client_info(account.account_id, self.engine.markets.values(), leverage)
        )

    async def _account_info(self, request: web.Request) -> web.StreamResponse:
        account = self.engine.account(self._caller(request))
        view = self.engine.account_view(account)
        return self._ok(payloads.account_figures(view, pnl_key="total_pnl_24h"))

    async def _place_order(self, request: web.Request) -> web.StreamResponse:
        allowed = {
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
        body = await self._body(request, allowed)
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
        account = self.engine.account(self._caller(request))
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
        row = {
            "token": "USDC",
            "token_hash": "0xd6aca1be9729c13d677335161321649cccae6a591554772516700f986f942eaa",
            "decimals": 6,
            "minimum_withdraw_amount": 1.0,
            "chain_details": [{"chain_id": 42161, "contract_address": "", "decimals": 6}],
        }
        return self._ok({"rows": [row]})

    async def _chain_info(self, request: web.Request) -> web.StreamResponse:
        row = {
            "name": "Arbitrum",
            "public_rpc_url": "",
            "chain_id": 42161,
            "currency_symbol": "ETH",
            "currency_decimal": 18,
            "explorer_base_url": "",
            "vault_address": "",
        }
        return self._ok({"rows": [row]})

    # --------------------------------------------------------------- admin
    async def _admin_accounts(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, {"account_id", "orderly_key", "scopes", "usdc"})
        if not isinstance(body.get("orderly_key"), str):
            raise bad_param("orderly_key is required: ed25519:<base58 public key>")
        account_id = self.engine.create_account(
            body["orderly_key"],
            str(body.get("scopes", "read,trading")),
            parse_decimal(body.get("usdc", "0"), "usdc"),
            body.get("account_id"),
        )
        return _json({"account_id": account_id})

    async def _admin_keys(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, {"account_id", "orderly_key", "scopes", "expires_ms"})
        expires = body.get("expires_ms")
        if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int)):
            raise bad_param("expires_ms must be an integer")
        self.engine.add_key(
            str(body.get("account_id")),
            str(body.get("orderly_key")),
            str(body.get("scopes", "read,trading")),
            expires,
        )
        return _json({"orderly_key": body["orderly_key"]})

    async def _admin_positions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, {"account_id", "symbol", "margin_mode", "qty", "leverage"})
        leverage = body.get("leverage")
        if leverage is not None and (isinstance(leverage, bool) or not isinstance(leverage, int)):
            raise bad_param("leverage must be an integer")
        view = self.engine.open_position(
            str(body.get("account_id")),
            str(body.get("symbol")),
            str(body.get("margin_mode") or CROSS),
            parse_decimal(body.get("qty"), "qty"),
            leverage,
        )
        return _json(self._state_position(str(body["account_id"]), view.symbol, view.margin_mode))

    async def _admin_marks(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, {"symbol", "price"})
        price = body.get("price")
        symbol = str(body.get("symbol"))
        self.engine.pin_mark(symbol, None if price is None else parse_decimal(price, "price"))
        self._push_marks()
        return _json({"symbol": symbol, "price": str(self.engine.marks[symbol])})

    async def _admin_tick(self, request: web.Request) -> web.StreamResponse:
        """Run N simulated seconds now (drives a paused ``speed=0`` simulator)."""
        body = await self._body(request, {"seconds"})
        seconds = body.get("seconds", 1)
        if isinstance(seconds, bool) or not isinstance(seconds, int) or not 1 <= seconds <= 86400:
            raise bad_param("seconds must be an integer from 1 to 86400")
        self.advance(seconds)
        return _json({"sim_second": self.prices.second})

    async def _admin_faults(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            body = await self._body(request, set(self.faults.as_dict()))
            try:
                self.faults.update(body)
            except FaultsError as exc:
                raise bad_param(str(exc)) from None
            log.info("faults now %s", self.faults.as_dict())
        return _json(self.faults.as_dict())

    async def _admin_state(self, request: web.Request) -> web.StreamResponse:
        return _json(self.state())

    def _state_position(self, account_id: str, symbol: str, mode: str) -> dict[str, Any]:
        account = self.engine.account(account_id)
        view = self.engine.position_view(account, symbol, mode)
        return {
            "account_id": account.account_id,
            "symbol": view.symbol,
            "margin_mode": view.margin_mode,
            "qty": str(view.qty),
            "average_open_price": str(view.average_open_price),
            "cost_position": str(view.cost_position),
            "margin": str(view.margin),
            "leverage": view.leverage,
            "mark_price": str(view.mark_price),
            "unsettled_pnl": str(view.unsettled_pnl),
            "liquidation_price": None if view.est_liq_price is None else str(view.est_liq_price),
            "max_reduce": str(self.engine.max_reduce(account, account.positions[(symbol, mode)]))
            if (symbol, mode) in account.positions and mode != CROSS
            else "0",
            "seq": view.seq,
        }

    def state(self) -> dict[str, Any]:
        """Everything ``GET /sim/state`` shows (money as decimal strings)."""
        accounts = []
        for account in self.engine.accounts.values():
            holding = self.engine.holding_view(account)
            figures = self.engine.account_view(account)
            accounts.append(
                {
                    "account_id": account.account_id,
                    "holding": str(holding.holding),
                    "isolated_margin": str(holding.isolated_margin),
                    "isolated_order_frozen": str(holding.isolated_order_frozen),
                    "free_collateral": str(figures.free_collateral),
                    "total_collateral_value": str(figures.total_collateral_value),
                    "positions": [
                        self._state_position(account.account_id, s, mode)
                        for (s, mode) in account.positions
                    ],
                }
            )
        return {
            "time_ms": self.now_ms(),
            "sim_second": self.prices.second,
            "scenario": self.prices.scenario,
            "marks": {s: str(p) for s, p in self.engine.marks.items()},
            "pinned": sorted(self.engine.pinned),
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
                for liq in self.engine.liquidations
            ],
            "insurance_fund": str(usdc(self.engine.insurance_fund)),
            "faults": self.faults.as_dict(),
            "counters": dict(self.counters),
        }

    # ---------------------------------------------------------- WebSockets
    def _connections(self) -> list[_Connection]:
        found = list(self._public)
        for group in self._private.values():
            found.extend(group)
        return found

    async def _serve_ws(
        self,
        request: web.Request,
        connection: _Connection,
        on_message: Callable[[_Connection, dict[str, Any]], None],
    ) -> None:
        sender = asyncio.create_task(self._send_loop(connection))
        try:
            async for message in connection.ws:
                if message.type != WSMsgType.TEXT:
                    continue
                try:
                    payload = json.loads(message.data)
                except ValueError:
                    payload = None
                if not isinstance(payload, dict):
                    connection.send(self._ws_error(None, "", "invalid message: not a JSON object"))
                    continue
                self._on_common(connection, payload, on_message)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _send_loop(self, connection: _Connection) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while True:
                text = await connection.queue.get()
                await connection.ws.send_str(text)

    def _ws_error(self, ident: object, event: object, message: str) -> dict[str, Any]:
        return {
            "id": ident,
            "event": event,
            "success": False,
            "ts": self.now_ms(),
            "errorMsg": message,
        }

    def _ack(self, ident: object, event: str) -> dict[str, Any]:
        return {"id": ident, "event": event, "success": True, "ts": self.now_ms()}

    def _on_common(
        self,
        connection: _Connection,
        payload: dict[str, Any],
        on_message: Callable[[_Connection, dict[str, Any]], None],
    ) -> None:
        event = payload.get("event")
        if event == "pong":
            connection.missed_pongs = 0
        elif event == "ping":
            connection.send({"event": "pong", "ts": self.now_ms()})
        else:
            on_message(connection, payload)

    def _subscription(
        self, connection: _Connection, payload: dict[str, Any], valid: Callable[[str], str | None]
    ) -> None:
        ident, event = payload.get("id"), payload.get("event")
        if event not in ("subscribe", "unsubscribe"):
            connection.send(self._ws_error(ident, event, f"invalid event {event}"))
            return
        topic = payload.get("topic")
        if not isinstance(topic, str) or not topic:
            connection.send(self._ws_error(ident, event, "missing required parameter topic"))
            return
        problem = valid(topic)
        if problem is not None:
            connection.send(self._ws_error(ident, event, problem))
            return
        if event == "subscribe":
            connection.topics.add(topic)
        else:
            connection.topics.discard(topic)
        connection.send(self._ack(ident, event))

    async def _public_ws(self, request: web.Request) -> web.StreamResponse:
        ws = _websocket()
        await ws.prepare(request)
        connection = _Connection(ws, request)
        self._public.add(connection)
        self.counters["ws_public_connections"] += 1

        def valid(topic: str) -> str | None:
            if topic == "markprices":
                return None
            symbol, _, kind = topic.partition("@")
            if kind != "markprice":
                return f"invalid topic {topic}"
            if symbol not in self.engine.markets:
                return f"invalid symbol {symbol}"
            return None

        try:
            await self._serve_ws(request, connection, lambda c, p: self._subscription(c, p, valid))
        finally:
            self._public.discard(connection)
        return ws

    async def _private_ws(self, request: web.Request) -> web.StreamResponse:
        ws = _websocket()
        await ws.prepare(request)
        account_id = request.match_info["account_id"].lower()
        connection = _Connection(ws, request, account_id=account_id)
        self.counters["ws_private_connections"] += 1
        query = request.query
        # URL authentication (§2): ?orderly_key=..&timestamp=..&sign=..
        if "orderly_key" in query and not self._ws_auth(
            connection, query.get("orderly_key"), query.get("sign"), query.get("timestamp")
        ):
            await ws.send_str(payloads.dumps(self._ws_error(None, "auth", "auth failed")))
            await ws.close()
            return ws
        self._private.setdefault(account_id, set()).add(connection)

        def on_message(conn: _Connection, payload: dict[str, Any]) -> None:
            ident, event = payload.get("id"), payload.get("event")
            if event == "auth":
                params = payload.get("params")
                params = params if isinstance(params, dict) else {}
                if self._ws_auth(
                    conn, params.get("orderly_key"), params.get("sign"), params.get("timestamp")
                ):
                    conn.send(self._ack(ident, "auth"))
                else:
                    conn.send(self._ws_error(ident, "auth", "auth failed"))
                    asyncio.get_running_loop().call_later(0.05, conn.drop)
                return
            if not conn.authed:
                conn.send(self._ws_error(ident, event, "Auth is needed."))
                return
            self._subscription(
                conn, payload, lambda t: None if t in PRIVATE_TOPICS else f"invalid topic {t}"
            )

        try:
            await self._serve_ws(request, connection, on_message)
        finally:
            group = self._private.get(account_id)
            if group is not None:
                group.discard(connection)
                if not group:
                    del self._private[account_id]
        return ws

    def _ws_auth(self, connection: _Connection, key: object, sign: object, ts: object) -> bool:
        assert connection.account_id is not None
        try:
            authenticate_ws(self.engine.keys, connection.account_id, key, sign, ts, self.now_ms())
        except AuthFailure:
            self.counters["ws_auth_failed"] += 1
            return False
        connection.authed = True
        return True

    # ---------------------------------------------------------------- pushes
    def flush(self) -> None:
        """Push every change the engine recorded to the private subscribers concerned."""
        changes = self.engine.drain_changes()
        if not self._private:
            return
        now = self.now_ms()
        for account_id, keys in changes.positions.items():
            listeners = [c for c in self._private.get(account_id, ()) if "position" in c.topics]
            if not listeners:
                continue
            account = self.engine.accounts[account_id]
            rows = [
                payloads.position_push(self.engine.position_view(account, s, mode), now)
                for (s, mode) in sorted(keys)
            ]
            push = {"topic": "position", "ts": now, "data": {"positions": rows}}
            self.counters["ws_position_pushes"] += len(listeners)
            for connection in listeners:
                connection.send(push)
        for account_id in changes.balances:
            listeners = [c for c in self._private.get(account_id, ()) if "balance" in c.topics]
            if listeners:
                view = self.engine.holding_view(self.engine.accounts[account_id])
                push = {"topic": "balance", "ts": now, "data": payloads.balance_push(view, now)}
                for connection in listeners:
                    connection.send(push)
        for account_id in changes.accounts:
            listeners = [c for c in self._private.get(account_id, ()) if "account" in c.topics]
            if listeners:
                push = {"topic": "account", "ts": now, "data": self._account_detail(account_id)}
                for connection in listeners:
                    connection.send(push)

    def _account_detail(self, account_id: str) -> dict[str, Any]:
        account = self.engine.accounts[account_id]
        view = self.engine.account_view(account)
        fee = payloads.fee_rate_bps(Decimal("0.0006"))
        return {
            "accountDetail": {
                "marginMode": "SPOT_FUTURES",
                "futuresLeverage": self.engine.leverage(account, "PERP_ETH_USDC", CROSS),
                "takerFeeRate": fee,
                "makerFeeRate": fee / 2,
                "maintenanceCancelFlag": False,
                "totalCollateralValue": payloads.num(view.total_collateral_value),
                "freeCollateral": payloads.num(view.free_collateral),
                "accountValue": payloads.num(view.account_value),
                "symbolLeverage": [
                    {"symbol": s, "marginMode": mode, "leverage": lev}
                    for (s, mode), lev in sorted(account.leverages.items())
                ],
            }
        }

    def _push_marks(self) -> None:
        if not self._public:
            return
        now = self.now_ms()
        marks = [{"symbol": s, "price": payloads.num(p)} for s, p in self.engine.marks.items()]
        everything = {"topic": "markprices", "ts": now, "data": marks}
        for connection in self._public:
            if "markprices" in connection.topics:
                connection.send(everything)
            for mark in marks:
                topic = f"{mark['symbol']}@markprice"
                if topic in connection.topics:
                    connection.send({"topic": topic, "ts": now, "data": mark})

    # ------------------------------------------------------------ background
    async def _run_clock(self) -> None:
        if self.speed == 0:
            return
        loop = asyncio.get_running_loop()
        start = loop.time()
        done = 0
        while True:
            due = int((loop.time() - start) * self.speed)
            if due > done:
                # After a stall, skip ahead rather than replay a backlog in one burst.
                self.advance(min(due - done, MAX_CATCH_UP_TICKS))
                done = due
            await asyncio.sleep(max(0.0, start + (done + 1) / self.speed - loop.time()))

    async def _run_pings(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)
            ping = {"event": "ping", "ts": self.now_ms()}
            for connection in self._connections():
                if connection.missed_pongs >= self.max_missed_pongs:
                    connection.drop()
                    continue
                connection.missed_pongs += 1
                connection.send(ping)

    async def _run_ws_drops(self) -> None:
        while True:
            every = self.faults.ws_drop_every_s
            await asyncio.sleep(every if every > 0 else 0.1)
            if every > 0 and self.faults.ws_drop_every_s > 0:
                for connection in self._connections():
                    self.counters["fault_ws_drop"] += 1
                    connection.drop()
