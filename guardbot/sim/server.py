"""The simulated exchange on one aiohttp port: Orderly's REST API (``rest``), both WebSockets
(``streams``) and the admin API (``admin``) around the sans-I/O ``Engine``.

    async with SimServer(seed=7, scenario="calm", speed=1.0) as sim:
        sim.rest_url, sim.public_ws_url, sim.private_ws_url, sim.engine

Time: marks tick once per simulated second and ``speed`` simulated seconds pass per real
second (``speed=60``: 60 ticks per real second; ``speed=0``: marks move only through
``advance()`` or ``POST /sim/marks``). Timestamps on the wire are always real epoch
milliseconds, because clients sign with their real clock and judge data age by it.

Each REST request runs: faults (latency, 5xx, 429) -> authentication (auth.py) -> rate limit
(limits.py) -> handler -> pushes for what changed -> maybe a lost response (faults.py).
Admin requests (``/sim/``) are served to loopback clients only, with no faults or limits.

Wire choice where docs/exchange.md lists an open question: 429 carries no ``Retry-After``;
the message is "Too many requests, please try again later.".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from types import TracebackType
from typing import Any

from aiohttp import web

from guardbot.sim.admin import AdminApi
from guardbot.sim.auth import AuthFailure, Caller, authenticate_request
from guardbot.sim.engine import Engine
from guardbot.sim.faults import FaultDice, Faults
from guardbot.sim.limits import LimitEnforcer
from guardbot.sim.margin import MARKETS, Market
from guardbot.sim.params import EngineError
from guardbot.sim.prices import PriceFeed
from guardbot.sim.rest import BODY, CALLER, PUBLIC, TRADING, Handler, RestApi, fail
from guardbot.sim.streams import PRIVATE_PATH, PUBLIC_PATH, StreamHub

log = logging.getLogger(__name__)

MAX_CATCH_UP_TICKS = 600
LOOPBACK = ("127.", "::1", "::ffff:127.")


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
        self.limiter = LimitEnforcer() if rate_limits else None
        self.counters: Counter[str] = Counter()
        self.started_ms = self.now_ms()
        self.rest = RestApi(self.engine, self.now_ms, self.started_ms)
        self.streams = StreamHub(
            self.engine, self.now_ms, self.counters, self.faults, ping_interval_s, max_missed_pongs
        )
        self.admin = AdminApi(self)
        # The private connections by account (tests/faults/simproc.py and the bot's WS tests
        # reach into them).
        self._private = self.streams.private
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
        for job in (self._run_clock, self.streams.run_pings, self.streams.run_ws_drops):
            self._tasks.append(asyncio.create_task(job()))
        log.info("simulated exchange at %s", self.rest_url)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for connection in self.streams.connections():
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
        self.streams.push_marks()
        self.flush()

    def flush(self) -> None:
        """Push every change the engine recorded to the private subscribers concerned."""
        self.streams.push_changes(self.engine.drain_changes())

    def state(self) -> dict[str, Any]:
        """Everything ``GET /sim/state`` shows (money as decimal strings)."""
        return self.admin.snapshot()

    # --------------------------------------------------------------- routes
    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=1 << 20)
        for method, path, handler, access in self.rest.routes():
            app.router.add_route(method, path, handler)
            self._routes[(method, path)] = access
        app.router.add_get(PUBLIC_PATH, self.streams.public_ws)
        app.router.add_get(PRIVATE_PATH, self.streams.private_ws)
        for method, path, handler in self.admin.routes():
            app.router.add_route(method, path, handler)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/sim/"):
            if not (request.remote or "").startswith(LOOPBACK):
                return fail(-1002, "the admin API accepts only loopback clients", 403)
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
            return fail(-1000, "injected server error", 500)
        if self.dice.rate_limited():
            self.counters["fault_429"] += 1
            return fail(-1003, "Too many requests (injected).", 429)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else ""
        access = self._routes.get((request.method, route))
        if access is None:
            return fail(-1000, f"{request.method} {request.path} does not exist", 404)
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
                return fail(exc.code, exc.message, 401)
            request[CALLER] = caller
        if self.limiter is not None and not self.limiter.allow(
            request.method,
            route,
            caller.key.orderly_key if caller else None,
            request.remote or "",
            time.monotonic(),
        ):
            self.counters["rate_limited"] += 1
            return fail(-1003, "Too many requests, please try again later.", 429)
        request[BODY] = body
        return await self._guarded(request, handler)

    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except EngineError as exc:
            return fail(exc.code, exc.message, exc.http_status)
        finally:
            self.flush()

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
