"""A self-healing Orderly WebSocket stream (docs/exchange.md §2, §6) on ``websockets``.

One ``Stream`` is one connection URL plus its topics. ``events()`` connects, logs in (private
streams), subscribes, and yields a ``StreamGap`` every time it has (re)subscribed, the first
time included: pushes sent while we were away, or before we subscribed, are lost, so the
consumer resynchronises over REST before trusting pushes (§6: "always re-fetch the REST
snapshot after reconnecting"). Then it yields pushes as domain events until the consumer
stops iterating.

Keep-alive follows §6: the server's ``{"event":"ping"}`` is answered with a pong, and we send
our own ping every ``ping_interval_s`` (the server answers, so even a quiet private stream
carries traffic). A connection with no message at all for ``silence_s`` is presumed dead and
replaced. Reconnects wait a jittered exponential delay (``limits.backoff``), reset once a
connection delivers a push or stays up longer than the backoff cap. A failed login is an
``AuthError``: retrying cannot fix a key. Malformed messages are counted in
``guardbot_malformed_messages_total``, logged and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from guardbot import metrics
from guardbot.backoff import backoff
from guardbot.exchange import wire
from guardbot.exchange.errors import AuthError, MalformedResponse
from guardbot.exchange.port import StreamEvent, StreamGap

log = logging.getLogger(__name__)

Parse = Callable[[str, Any, int], StreamEvent | None]
"""(topic, data, ts_ms) -> a domain event, or None for a topic we do not use."""


@dataclass(frozen=True, slots=True)
class StreamTiming:
    """Keep-alive and reconnect timing; tests shrink it instead of sleeping."""

    ping_interval_s: float = 10.0  # the server pings every 10 s too (§6)
    silence_s: float = 30.0
    open_timeout_s: float = 10.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0


DEFAULT_TIMING = StreamTiming()


@dataclass(frozen=True, slots=True)
class Reply:
    """The server's answer to our ``auth`` or ``subscribe`` request (§6)."""

    request_id: str
    event: str
    success: bool
    error: str


class Ping(enum.Enum):
    PING = "ping"


PING = Ping.PING


class _Reconnect(Exception):
    """The connection is unusable; the reason goes into the log and the next StreamGap."""


class Stream:
    """One Orderly WebSocket connection, reconnecting forever (see module docstring)."""

    def __init__(
        self,
        name: str,
        url: str,
        topics: tuple[str, ...],
        parse: Parse,
        *,
        login: Callable[[], dict[str, object]] | None = None,
        timing: StreamTiming = DEFAULT_TIMING,
        clock_ms: Callable[[], int],
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self._topics = topics
        self._parse = parse
        self._login = login
        self._timing = timing
        self._clock_ms = clock_ms
        self._rng = rng or random.Random()

    def __repr__(self) -> str:
        return f"Stream({self.name!r}, {self.url!r}, topics={self._topics!r})"

    def _delays(self) -> Iterator[float]:
        return backoff(self._timing.backoff_base_s, self._timing.backoff_cap_s, self._rng)

    async def events(self) -> AsyncGenerator[StreamEvent, None]:
        """Pushes as domain events, with a ``StreamGap`` after every (re)subscription."""
        delays = self._delays()
        gap_reason = "connected"
        loop = asyncio.get_running_loop()
        while True:
            up_since: float | None = None
            closed_cleanly = False  # the server said goodbye (1000, 1001): a routine reconnect
            try:
                async with connect(
                    self.url,
                    ping_interval=None,  # keep-alive is Orderly's JSON ping (§6)
                    open_timeout=self._timing.open_timeout_s,
                    close_timeout=1.0,
                ) as ws:
                    early = await self._open(ws)
                    up_since = loop.time()
                    log.info("%s stream subscribed to %s", self.name, ", ".join(self._topics))
                    yield StreamGap(self.name, gap_reason)
                    for event in early:
                        yield event
                    pinger = asyncio.create_task(self._ping_forever(ws))
                    try:
                        async for event in self._pushes(ws):
                            delays = self._delays()  # this connection works: start over
                            yield event
                    finally:
                        pinger.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await pinger
            except _Reconnect as exc:
                gap_reason = str(exc)
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else "no close frame"
                gap_reason = f"connection closed ({code})"
                closed_cleanly = code in (1000, 1001)
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                gap_reason = f"cannot connect ({type(exc).__name__}: {exc})"
            metrics.WS_RECONNECTS.labels(self.name).inc()
            if up_since is not None and loop.time() - up_since >= self._timing.backoff_cap_s:
                delays = self._delays()  # it was a long-lived link: come back quickly
            delay = next(delays)
            log.log(logging.INFO if closed_cleanly else logging.WARNING,
                    "%s stream: %s; reconnecting in %.2f s", self.name, gap_reason, delay)
            gap_reason = f"reconnected after {gap_reason}"
            await asyncio.sleep(delay)

    async def _open(self, ws: ClientConnection) -> list[StreamEvent]:
        """Log in and subscribe; returns pushes that arrived before the last ack."""
        waiting: dict[str, str] = {}
        if self._login is not None:
            login = self._login()
            waiting[str(login["id"])] = "auth"
            await ws.send(json.dumps(login))
        for topic in self._topics:
            request_id = f"{self.name}-{topic}"
            waiting[request_id] = topic
            await ws.send(json.dumps({"id": request_id, "topic": topic, "event": "subscribe"}))
        early: list[StreamEvent] = []
        while waiting:
            incoming = await self._next(ws)
            if isinstance(incoming, Reply):
                # A refusal may not echo our id (§2: the server just says "auth failed").
                what = waiting.pop(incoming.request_id, incoming.event)
                if not incoming.success:
                    if "auth" in (what, incoming.event) or "auth" in incoming.error.lower():
                        raise AuthError(None, f"{self.name} stream login refused: {incoming.error}")
                    raise _Reconnect(f"subscribe to {what} refused: {incoming.error}")
            elif incoming is not None:
                early.append(incoming)
        return early

    async def _pushes(self, ws: ClientConnection) -> AsyncIterator[StreamEvent]:
        while True:
            incoming = await self._next(ws)
            if isinstance(incoming, Reply):
                if not incoming.success:
                    log.warning("%s stream: %s refused: %s", self.name, incoming.event,
                                incoming.error)
            elif incoming is not None:
                yield incoming

    async def _next(self, ws: ClientConnection) -> StreamEvent | Reply | None:
        """The next message, interpreted; pings are answered here."""
        try:
            async with asyncio.timeout(self._timing.silence_s):
                raw = await ws.recv()
        except TimeoutError:
            raise _Reconnect(f"silent for {self._timing.silence_s:g} s") from None
        incoming = self.interpret(raw)
        if incoming is PING:
            await ws.send(json.dumps({"event": "pong", "ts": self._clock_ms()}))
            return None
        return incoming

    def interpret(self, raw: str | bytes) -> StreamEvent | Reply | Ping | None:
        """Sans-I/O core: one raw message -> a domain event, a reply to our request, a
        server ping, or None (control traffic we ignore, or malformed: counted and logged)."""
        try:
            message = wire.obj(wire.loads(raw), f"{self.name} message")
            event = message.get("event")
            if event == "ping":
                return PING
            if event in ("auth", "subscribe", "unsubscribe"):
                return Reply(str(message.get("id")), event, message.get("success") is True,
                             str(message.get("errorMsg", "")))
            topic = message.get("topic")
            if event is not None or not isinstance(topic, str):
                if event != "pong":
                    log.debug("%s stream: ignoring %.200s", self.name, message)
                return None
            ts = wire.integer(message, "ts", f"{self.name} {topic}", default=self._clock_ms())
            return self._parse(topic, message.get("data"), ts)
        except MalformedResponse as exc:
            metrics.MALFORMED.labels(f"ws_{self.name}").inc()
            log.warning("%s stream: skipped a malformed message: %s", self.name, exc)
            return None

    async def _ping_forever(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(self._timing.ping_interval_s)
                await ws.send(json.dumps({"event": "ping", "ts": self._clock_ms()}))
