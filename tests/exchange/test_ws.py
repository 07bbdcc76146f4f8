"""WebSocket streams over real loopback sockets: the simulated exchange, plus two tiny
``websockets`` servers for what the simulator never does (go silent, send garbage)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from pydantic import SecretStr
from websockets.asyncio.server import ServerConnection, serve

from guardbot.domain import ActionKind, MarginMode, Source
from guardbot.exchange.client import OrderlyExchange, parse_public, private_parser
from guardbot.exchange.errors import AuthError
from guardbot.exchange.port import (
    HoldingsPushed,
    LiquidationsPushed,
    MarksPushed,
    PositionsPushed,
    StreamEvent,
    StreamGap,
)
from guardbot.exchange.ws import PING, Reply, Stream, StreamTiming
from guardbot.sim.keys import generate_key
from guardbot.sim.server import SimServer

from .conftest import FAST_STREAMS, Funded, connect

ETH = "PERP_ETH_USDC"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def next_of(events: AsyncIterator[Any], kind: type[Any] = object) -> Any:
    """The next event of ``kind`` (skipping others); fails after 5 s. Cancelling ``anext``
    would finalise the generator, so only use it where that ends the test anyway."""
    async with asyncio.timeout(5):
        while True:
            event = await anext(events)
            if isinstance(event, kind):
                return event


@contextlib.asynccontextmanager
async def collecting(events: AsyncIterator[StreamEvent]) -> AsyncIterator[list[StreamEvent]]:
    """Consume ``events`` in the background into a list the test inspects."""
    seen: list[StreamEvent] = []

    async def consume() -> None:
        async for event in events:
            seen.append(event)

    task = asyncio.create_task(consume())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_private_stream_gap_then_position_and_balance_pushes(
    venue: SimServer, funded: Funded, exchange: OrderlyExchange
) -> None:
    async with contextlib.aclosing(exchange.private_events()) as events:
        gap = await next_of(events)
        assert gap == StreamGap("private", "connected")
        await exchange.adjust_margin(ETH, ActionKind.ADD, Decimal("12.5"))
        pushed = await next_of(events, PositionsPushed)
        (position,) = pushed.positions
        view = venue.engine.position_view(venue.engine.account(funded.account_id), ETH, "ISOLATED")
        assert (position.symbol, position.margin_mode) == (ETH, MarginMode.ISOLATED)
        assert position.margin == view.margin and position.seq == view.seq
        assert position.source is Source.WS and position.account_id == funded.account_id
        balance = await next_of(events, HoldingsPushed)
        assert balance.holdings[0].isolated_margin == venue.engine.holding_view(
            venue.engine.account(funded.account_id)
        ).isolated_margin


async def test_public_mark_prices(venue: SimServer, exchange: OrderlyExchange) -> None:
    async with contextlib.aclosing(exchange.public_events()) as events:
        assert await next_of(events) == StreamGap("public", "connected")
        venue.engine.pin_mark(ETH, Decimal("2999.5"))
        venue.advance()
        marks = await next_of(events, MarksPushed)
        assert {m.symbol: m.price for m in marks.marks}[ETH] == Decimal("2999.5")


async def test_reconnect_after_a_drop_signals_a_gap_and_pushes_resume(
    venue: SimServer, exchange: OrderlyExchange
) -> None:
    before = sample("guardbot_ws_reconnects_total", stream="private")
    async with contextlib.aclosing(exchange.private_events()) as events:
        await next_of(events, StreamGap)
        venue.faults.update({"ws_drop_every_s": 0.1})
        gap = await next_of(events, StreamGap)
        venue.faults.update({"ws_drop_every_s": 0})
        assert gap.reason.startswith("reconnected after connection closed")
        assert venue.counters["fault_ws_drop"] >= 1
        await exchange.adjust_margin(ETH, ActionKind.ADD, Decimal(3))
        assert (await next_of(events, PositionsPushed)).positions
    assert sample("guardbot_ws_reconnects_total", stream="private") >= before + 1


async def test_server_pings_are_answered_so_the_server_keeps_us(funded: Funded) -> None:
    # The simulator drops a client after 4 unanswered pings, 50 ms apart (12 are sent); our
    # own pings and the silence timeout are far away so only the pong answers keep the link.
    quiet = StreamTiming(ping_interval_s=60, silence_s=5, backoff_base_s=0.01)
    async with SimServer(speed=0, ping_interval_s=0.05, max_missed_pongs=4) as sim:
        sim.engine.create_account(funded.orderly_key, "read,trading", Decimal(100),
                                  funded.account_id)
        async with connect(sim, funded, stream_timing=quiet) as client, collecting(
            client.private_events()
        ) as seen:
            await asyncio.sleep(0.6)
            assert seen == [StreamGap("private", "connected")]  # no reconnect
            (connection,) = sim._private[funded.account_id]
            assert connection.missed_pongs < 4


async def test_failed_login_is_an_auth_error(venue: SimServer, funded: Funded) -> None:
    key, secret = generate_key()
    async with connect(venue, Funded(funded.account_id, key, SecretStr(secret))) as client:
        with pytest.raises(AuthError, match="login refused: auth failed"):
            await next_of(client.private_events())


# -- our own servers: silence, garbage, client pings ----------------------------------------

Script = Callable[[ServerConnection], Awaitable[None]]


@contextlib.asynccontextmanager
async def ws_server(script: Script) -> AsyncIterator[str]:
    async with serve(script, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws/stream/x"


async def ack_subscriptions(ws: ServerConnection, received: list[Any] | None = None) -> None:
    async for raw in ws:
        message = json.loads(raw)
        if received is not None:
            received.append(message)
        if message.get("event") == "subscribe":
            await ws.send(json.dumps({"id": message["id"], "event": "subscribe",
                                      "success": True, "ts": 1}))
            return


def public_stream(url: str, timing: StreamTiming = FAST_STREAMS) -> Stream:
    return Stream("public", url, ("markprices",), parse_public, timing=timing,
                  clock_ms=lambda: 42)


async def test_a_silent_connection_is_detected_and_replaced() -> None:
    connections = 0

    async def silent(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        await ack_subscriptions(ws)
        await ws.wait_closed()  # then never say anything again, nor answer pings

    timing = StreamTiming(ping_interval_s=0.05, silence_s=0.2, backoff_base_s=0.01)
    async with ws_server(silent) as url, contextlib.aclosing(
        public_stream(url, timing).events()
    ) as events:
        assert await next_of(events) == StreamGap("public", "connected")
        gap = await next_of(events)
        assert gap == StreamGap("public", "reconnected after silent for 0.2 s")
    assert connections == 2


async def test_malformed_messages_are_counted_and_skipped() -> None:
    garbage: list[str | bytes] = [
        "not json",
        "[1, 2]",
        '{"topic":"markprices","ts":1,"data":"x"}',
        '{"topic":"markprices","ts":1,"data":[{"symbol":"PERP_ETH_USDC","price":"abc"}]}',
        '{"topic":"markprices","ts":"later","data":[]}',
        b"\xff\xfe",
    ]

    async def noisy(ws: ServerConnection) -> None:
        await ack_subscriptions(ws)
        for message in garbage:
            await ws.send(message)
        await ws.send('{"topic":"markprices","ts":7,"data":[{"symbol":"PERP_ETH_USDC",'
                      '"price":3000.5}]}')
        await ws.wait_closed()

    before = sample("guardbot_malformed_messages_total", source="ws_public")
    async with ws_server(noisy) as url, contextlib.aclosing(public_stream(url).events()) as events:
        await next_of(events, StreamGap)
        marks = await next_of(events)
    assert isinstance(marks, MarksPushed)
    assert marks.marks[0].price == Decimal("3000.5") and marks.marks[0].exchange_ms == 7
    assert sample("guardbot_malformed_messages_total", source="ws_public") == before + len(garbage)


async def test_client_pings_and_answers_server_pings() -> None:
    received: list[Any] = []

    async def pinging(ws: ServerConnection) -> None:
        await ack_subscriptions(ws, received)
        await ws.send('{"event":"ping","ts":5}')
        async for raw in ws:
            received.append(json.loads(raw))

    timing = StreamTiming(ping_interval_s=0.05, silence_s=5, backoff_base_s=0.01)
    async with ws_server(pinging) as url, collecting(public_stream(url, timing).events()) as seen:
        await asyncio.sleep(0.3)
    assert seen == [StreamGap("public", "connected")]
    events_seen = [m.get("event") for m in received]
    assert events_seen[0] == "subscribe"
    assert {"event": "pong", "ts": 42} in received
    assert events_seen.count("ping") >= 2


# -- the sans-I/O core never raises on any input --------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6)
    | st.decimals(allow_nan=False, allow_infinity=False, places=3).map(float),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["topic", "event", "ts", "data", "id", "success",
                                       "positions", "balances", "USDC", "symbol", "price"])
                      | st.text(max_size=5), children, max_size=5),
    max_leaves=15,
)
pushes = st.fixed_dictionaries(
    {"topic": st.sampled_from(["position", "balance", "markprices", "other"]),
     "ts": json_values, "data": json_values}
)
controls = st.fixed_dictionaries(
    {"event": st.sampled_from(["ping", "pong", "auth", "subscribe", "other"]),
     "id": json_values, "success": json_values}
)
STREAMS = (
    Stream("private", "ws://x", ("position", "balance"),
           private_parser("0x" + "1" * 64, lambda: 1), clock_ms=lambda: 1),
    Stream("public", "ws://x", ("markprices",), parse_public, clock_ms=lambda: 1),
)


@given(raw=(json_values | pushes | controls).map(json.dumps) | st.text(max_size=40)
       | st.binary(max_size=40))
def test_interpret_never_raises(raw: str | bytes) -> None:
    for stream in STREAMS:
        result = stream.interpret(raw)
        assert result is None or result is PING or isinstance(
            result, Reply | PositionsPushed | HoldingsPushed | MarksPushed
        )


async def test_backoff_grows_on_flapping_links_and_resets_after_a_long_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    connections = 0
    sixth = asyncio.Event()

    async def flapping(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        if connections == 6:
            sixth.set()
        await ack_subscriptions(ws)
        if connections == 4:
            await asyncio.sleep(0.3)  # one link that outlives the backoff cap

    timing = StreamTiming(ping_interval_s=5, silence_s=5, backoff_base_s=0.04, backoff_cap_s=0.2)
    caplog.set_level(logging.INFO, logger="guardbot.exchange.ws")
    async with ws_server(flapping) as url, collecting(public_stream(url, timing).events()) as seen:
        await asyncio.wait_for(sixth.wait(), 5)
    reconnects = [r for r in caplog.records if "reconnecting in" in r.getMessage()]
    delays = [float(r.getMessage().rsplit("reconnecting in ", 1)[1].split()[0])
              for r in reconnects]
    # The server closes each link cleanly (1000): a routine reconnect, not a warning.
    assert {r.levelname for r in reconnects} == {"INFO"}
    # Short links: 0.04, 0.08, 0.16 ceilings (jitter keeps each in [d/2, d]); after the long
    # fourth link the next delay starts from the base again.
    assert 0.02 <= delays[0] <= 0.04 and 0.04 <= delays[1] <= 0.08 and delays[2] >= 0.08
    assert delays[3] <= 0.04
    assert sum(isinstance(e, StreamGap) for e in seen) >= 5


async def test_a_login_refusal_without_our_id_is_still_an_auth_error() -> None:
    async def refusing(ws: ServerConnection) -> None:
        await ws.recv()  # the auth message
        await ws.send('{"event":"auth","success":false,"errorMsg":"auth failed"}')
        await ws.wait_closed()

    async with ws_server(refusing) as url:
        stream = Stream("private", url, ("position",), parse_public,
                        login=lambda: {"id": "auth", "event": "auth"}, timing=FAST_STREAMS,
                        clock_ms=lambda: 1)
        with pytest.raises(AuthError, match="auth failed"):
            await next_of(stream.events())


async def test_a_liquidation_is_pushed_and_read_back_the_same(
    venue: SimServer, funded: Funded, exchange: OrderlyExchange
) -> None:
    """The isolated long is liquidated: the ``liquidationsaccount`` push and
    ``GET /v1/liquidations`` report the same liquidation, parsed to the same values."""
    async with contextlib.aclosing(exchange.private_events()) as events:
        await next_of(events, StreamGap)
        venue.engine.pin_mark(ETH, Decimal(2000))
        venue.flush()
        pushed = await next_of(events, LiquidationsPushed)
    [liquidation] = pushed.liquidations
    assert (liquidation.symbol, liquidation.qty, liquidation.transfer_price) == (
        ETH, Decimal(1), Decimal(2000))
    assert liquidation.account_id == funded.account_id and liquidation.fee == 0
    assert await exchange.get_liquidations(0) == pushed.liquidations
    assert await exchange.get_liquidations(liquidation.time_ms + 1) == ()
