"""The simulator's WebSocket hub: Orderly's public stream (mark prices) and private stream
(position, balance and account pushes, docs/exchange.md §6), their clients and the pings.

Wire choices where docs/exchange.md lists an open question: no snapshot on subscribe (clients
load REST first); a closed position is pushed with ``positionQty`` 0; the unsubscribe ack has
the subscribe ack's shape; server pings carry ``ts``; every client (public too) is dropped
after ``max_missed_pongs`` unanswered pings; a failed auth is answered with ``errorMsg``
"auth failed" and the connection is then closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from guardbot.sim import payloads
from guardbot.sim.auth import AuthFailure, authenticate_ws
from guardbot.sim.engine import Engine
from guardbot.sim.faults import Faults
from guardbot.sim.journal import Changes
from guardbot.sim.records import Liquidation

PRIVATE_TOPICS = ("position", "balance", "account", "liquidationsaccount")
MAX_QUEUED_PUSHES = 1_000  # a client this far behind is dropped, as a real server would
MARK_TOPIC = "@markprice"  # SYMBOL@markprice: one symbol's mark
PUBLIC_PATH = "/ws/stream/{id}"  # served by StreamHub.public_ws
PRIVATE_PATH = "/v2/ws/private/stream/{account_id}"  # StreamHub.private_ws


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
        self.send_text(payloads.dumps(payload))

    def send_text(self, text: str) -> None:
        """Queue an encoded message (one push encoded once for many clients)."""
        if self.queue.qsize() >= MAX_QUEUED_PUSHES:
            self.drop()
            return
        self.queue.put_nowait(text)

    def drop(self) -> None:
        """Cut the TCP connection without a close frame (what a network failure looks like)."""
        transport = self.request.transport
        if transport is not None:
            transport.abort()


class StreamHub:
    """Every WebSocket client of the simulator, and what it pushes to them. ``private`` maps
    an account id to its private connections."""

    def __init__(
        self,
        engine: Engine,
        now_ms: Callable[[], int],
        counters: Counter[str],
        faults: Faults,
        ping_interval_s: float,
        max_missed_pongs: int,
    ) -> None:
        self.engine = engine
        self.now_ms = now_ms
        self.counters = counters
        self.faults = faults
        self.ping_interval_s = ping_interval_s
        self.max_missed_pongs = max_missed_pongs
        self.private: dict[str, set[_Connection]] = {}
        self.public: set[_Connection] = set()

    def connections(self) -> list[_Connection]:
        found = list(self.public)
        for group in self.private.values():
            found.extend(group)
        return found

    # ---------------------------------------------------------- messages
    async def _serve_ws(
        self,
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

    # ---------------------------------------------------------- endpoints
    async def public_ws(self, request: web.Request) -> web.StreamResponse:
        ws = _websocket()
        await ws.prepare(request)
        connection = _Connection(ws, request)
        self.public.add(connection)
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
            await self._serve_ws(connection, lambda c, p: self._subscription(c, p, valid))
        finally:
            self.public.discard(connection)
        return ws

    async def private_ws(self, request: web.Request) -> web.StreamResponse:
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
        self.private.setdefault(account_id, set()).add(connection)

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
            await self._serve_ws(connection, on_message)
        finally:
            group = self.private.get(account_id)
            if group is not None:
                group.discard(connection)
                if not group:
                    del self.private[account_id]
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
    def push_changes(self, changes: Changes) -> None:
        """Push ``changes`` to the private subscribers of the accounts concerned."""
        if not self.private:
            return
        now = self.now_ms()
        for account_id, keys in changes.positions.items():
            listeners = self._listeners(account_id, "position")
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
            listeners = self._listeners(account_id, "balance")
            if listeners:
                row = self.engine.holding_view(self.engine.accounts[account_id])
                push = {"topic": "balance", "ts": now, "data": payloads.balance_push(row, now)}
                for connection in listeners:
                    connection.send(push)
        liquidated: dict[str, list[Liquidation]] = {}
        for liquidation in changes.liquidations:
            liquidated.setdefault(liquidation.account_id, []).append(liquidation)
        for account_id, events in liquidated.items():
            listeners = self._listeners(account_id, "liquidationsaccount")
            if listeners:
                push = {"topic": "liquidationsaccount", "ts": now,
                        "data": payloads.liquidations_push(events)}
                for connection in listeners:
                    connection.send(push)
        for account_id in changes.accounts:
            listeners = self._listeners(account_id, "account")
            if listeners:
                account = self.engine.accounts[account_id]
                data = payloads.account_detail(account, self.engine.account_view(account))
                push = {"topic": "account", "ts": now, "data": data}
                for connection in listeners:
                    connection.send(push)

    def _listeners(self, account_id: str, topic: str) -> list[_Connection]:
        return [c for c in self.private.get(account_id, ()) if topic in c.topics]

    def push_marks(self) -> None:
        """Push the current marks to the public subscribers."""
        if not self.public:
            return
        now = self.now_ms()
        marks = {s: {"symbol": s, "price": payloads.num(p)} for s, p in self.engine.marks.items()}
        everything: str | None = None  # encoded once, for every subscriber of the list
        for connection in self.public:
            if "markprices" in connection.topics:
                if everything is None:
                    everything = payloads.dumps(
                        {"topic": "markprices", "ts": now, "data": list(marks.values())})
                connection.send_text(everything)
            # then one push per symbol subscribed (SYMBOL@markprice), by name
            for topic in sorted(t for t in connection.topics if t.endswith(MARK_TOPIC)):
                mark = marks.get(topic[: -len(MARK_TOPIC)])
                if mark is not None:
                    connection.send({"topic": topic, "ts": now, "data": mark})

    # ------------------------------------------------------------ background
    async def run_pings(self) -> None:
        """Ping every client each ``ping_interval_s``; drop those that stopped answering."""
        while True:
            await asyncio.sleep(self.ping_interval_s)
            ping = {"event": "ping", "ts": self.now_ms()}
            for connection in self.connections():
                if connection.missed_pongs >= self.max_missed_pongs:
                    connection.drop()
                    continue
                connection.missed_pongs += 1
                connection.send(ping)

    async def run_ws_drops(self) -> None:
        """The ``ws_drop_every_s`` fault: drop every client that often."""
        while True:
            every = self.faults.ws_drop_every_s
            await asyncio.sleep(every if every > 0 else 0.1)
            if every > 0 and self.faults.ws_drop_every_s > 0:
                for connection in self.connections():
                    self.counters["fault_ws_drop"] += 1
                    connection.drop()
