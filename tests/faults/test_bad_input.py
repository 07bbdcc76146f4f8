"""Bad exchange input through the pipeline: wire -> WebSocket stream -> PositionBook, then
the same pushes into a running ``guardbot run`` (stream -> book -> policies -> executor).

A hostile WebSocket server on loopback sends Orderly ``position`` pushes that hypothesis has
malformed (fields missing, of the wrong type, non-finite, out of range, the text truncated or
not JSON at all) between well-formed ones, and re-orders well-formed versions. Properties:

* nothing crashes: the stream keeps delivering the good pushes that follow a bad one;
* every malformed push is counted (``guardbot_malformed_messages_total``) and logged;
* nothing built from a bad push reaches the book, so nothing can be acted on: the book holds
  exactly what the good pushes said, the newest version of each position winning whatever
  the order of arrival; and the running guard's audit log shows no action taken on one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from websockets.asyncio.server import ServerConnection, serve

from guardbot.book import PositionBook
from guardbot.domain import MarginMode
from guardbot.exchange import wire
from guardbot.exchange.client import private_parser
from guardbot.exchange.errors import MalformedResponse
from guardbot.exchange.port import PositionsPushed, StreamGap
from guardbot.exchange.ws import Stream, StreamTiming

from .harness import Daemon, Sim, audit_actions, migrate, write_config

pytestmark = pytest.mark.faults

ACCOUNT = "0x" + "cd" * 32
SEQ0 = 1_730_181_536_341_943_600  # above 2**53, as Orderly's are


def entry(symbol: str, seq: int, margin: str = "310.5") -> dict[str, Any]:
    """A well-formed ``position`` push entry (docs/exchange.md §6) for an isolated long that is
    close to liquidation: if anything built from it got through, a top-up would follow."""
    return {
        "symbol": symbol,
        "positionQty": "1.5",
        "costPosition": "3000.15",
        "lastSumUnitaryFunding": "0.804",
        "averageOpenPrice": "2000.1",
        "unsettledPnl": "-280.5",
        "markPrice": "1813.2",
        "estLiqPrice": "1800.3",
        "mmr": "0.05",
        "imr": "0.1",
        "seq": seq,
        "timestamp": 1_685_429_350_571 + seq - SEQ0,
        "updated_time": 1_685_429_350_571 + seq - SEQ0,
        "leverage": 10,
        "marginMode": "ISOLATED",
        "margin": margin,
    }


def push(*entries: dict[str, Any]) -> str:
    # Numbers as strings keep json.dumps float-free; the wire accepts numeric strings (§4).
    data = {"positions": list(entries)}
    return json.dumps({"topic": "position", "ts": 1_685_429_350_600, "data": data})


REQUIRED = [
    "symbol",
    "positionQty",
    "costPosition",
    "averageOpenPrice",
    "markPrice",
    "margin",
    "leverage",
    "unsettledPnl",
    "mmr",
    "imr",
    "lastSumUnitaryFunding",
    "marginMode",
]
TEXT = {"symbol", "marginMode"}
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(
        ["", "abc", "NaN", "Infinity", "-Infinity", "1e999999", "-1e41", "0x10", "1,5"]
    ),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
OUT_OF_RANGE = st.sampled_from(
    [
        ("margin", "-1"),
        ("markPrice", "-0.01"),
        ("leverage", -10),
        ("leverage", "1.5"),
        ("marginMode", "SIDEWAYS"),
        ("seq", "1.5"),
        ("updated_time", "yesterday"),
    ]
)


@st.composite
def malformed_push(draw: st.DrawFn, seq: int) -> str:
    """One push that the wire must refuse, text and all. Were it accepted, it would say the
    ETH position has 1 USDC of margin left (newer than anything else): a top-up at once."""
    good = entry("PERP_ETH_USDC", seq, margin="1")
    how = draw(st.sampled_from(["missing", "junk", "range", "truncated", "shape", "garbage"]))
    if how == "missing":
        del good[draw(st.sampled_from(REQUIRED))]
    elif how == "junk":
        name = draw(st.sampled_from(REQUIRED))
        # Any string is a well-formed symbol or mode name as far as the wire can tell;
        # unknown ones are the "range" case.
        good[name] = draw(JUNK.filter(lambda v: not isinstance(v, str) or name not in TEXT))
    elif how == "range":
        name, value = draw(OUT_OF_RANGE)
        good[name] = value
    elif how == "truncated":
        text = push(good)
        return text[: draw(st.integers(1, len(text) - 1))]
    elif how == "shape":
        data = draw(st.sampled_from([[], "positions", {"positions": {}}, {"positions": [1]}]))
        return json.dumps({"topic": "position", "ts": 1, "data": data})
    else:
        return draw(st.sampled_from(["", "{", "[1,2", "not json", "\x00\x01", '{"a":NaN}']))
    return push(good)


def refused_by_wire(text: str) -> bool:
    try:
        message = wire.obj(wire.loads(text), "m")
        wire.pushed_positions(message.get("data"), account_id=ACCOUNT, received_ms=0)
    except MalformedResponse:
        return True
    return False


# -- the hostile server --------------------------------------------------------------------


class HostileServer:
    """Acks every subscription, then sends the scripted frames and keeps the line open."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.url = ""

    async def handler(self, ws: ServerConnection) -> None:
        async for raw in ws:
            message = json.loads(raw)
            if message.get("event") == "subscribe":
                await ws.send(
                    json.dumps(
                        {"id": message["id"], "event": "subscribe", "success": True, "ts": 1}
                    )
                )
                for frame in self.frames:
                    await ws.send(frame)


@pytest.fixture
async def hostile() -> AsyncIterator[HostileServer]:
    server = HostileServer()
    async with serve(server.handler, "127.0.0.1", 0) as ws_server:
        port = next(iter(ws_server.sockets)).getsockname()[1]
        server.url = f"ws://127.0.0.1:{port}/v2/ws/private/stream/{ACCOUNT}"
        yield server


def malformed_count() -> float:
    value = REGISTRY.get_sample_value("guardbot_malformed_messages_total", {"source": "ws_hostile"})
    return value or 0.0


async def consume(server: HostileServer, frames: list[str], expected_pushes: int) -> PositionBook:
    """Run the real stream against the server until ``expected_pushes`` arrived."""
    server.frames = frames
    stream = Stream(
        "hostile",
        server.url,
        ("position",),
        private_parser(ACCOUNT, clock_ms=lambda: 0),  # the real client's parser
        timing=StreamTiming(silence_s=5.0),
        clock_ms=lambda: 0,
    )
    book = PositionBook()
    seen = 0
    async with asyncio.timeout(10):
        async for event in stream.events():
            if isinstance(event, StreamGap):
                continue
            assert isinstance(event, PositionsPushed)
            for position in event.positions:
                book.apply(position)
            seen += 1
            if seen == expected_pushes:
                break
    return book


# -- properties ----------------------------------------------------------------------------

# Derandomized: the same examples on every run, so CI never flakes on a new draw. Explore
# with GUARDBOT_HYPOTHESIS_EXAMPLES=2000 (random) when changing the wire or the stream.
EXPLORE = int(os.environ.get("GUARDBOT_HYPOTHESIS_EXAMPLES", "0"))
PROPERTY = settings(
    max_examples=EXPLORE or 40,
    derandomize=not EXPLORE,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@PROPERTY
@given(data=st.data())
async def test_malformed_pushes_are_counted_logged_and_never_reach_the_book(
    hostile: HostileServer, data: st.DataObject, caplog: pytest.LogCaptureFixture
) -> None:
    bad = data.draw(st.lists(malformed_push(SEQ0 + 5), min_size=1, max_size=6), label="bad")
    assert all(refused_by_wire(frame) for frame in bad)
    good = [push(entry("PERP_ETH_USDC", SEQ0 + i, margin=f"{300 + i}")) for i in range(3)]
    frames = [*data.draw(st.permutations(bad + good[:-1]), label="order"), good[-1]]
    before = malformed_count()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="guardbot.exchange.ws"):
        book = await consume(hostile, frames, expected_pushes=len(good))
    assert malformed_count() - before == len(bad)
    assert sum("malformed" in r.getMessage() for r in caplog.records) == len(bad)
    # Only the good pushes' version is known, the newest of them.
    assert [p.symbol for p in book.positions()] == ["PERP_ETH_USDC"]
    newest = book.get((ACCOUNT, "PERP_ETH_USDC", MarginMode.ISOLATED))
    assert newest is not None and newest.margin == Decimal("302") and newest.seq == SEQ0 + 2


@PROPERTY
@given(order=st.permutations(range(6)), repeats=st.lists(st.integers(0, 5), max_size=4))
async def test_reordered_and_repeated_pushes_leave_the_newest_version(
    hostile: HostileServer, order: list[int], repeats: list[int]
) -> None:
    """Versions arrive in any order, some twice: the book ends at the highest ``seq`` and
    every older arrival after it is dropped."""
    versions = [entry("PERP_ETH_USDC", SEQ0 + i, margin=f"{100 + i}") for i in range(6)]
    arrivals = [*order, *repeats]
    book = await consume(hostile, [push(versions[i]) for i in arrivals], len(arrivals))
    held = book.get((ACCOUNT, "PERP_ETH_USDC", MarginMode.ISOLATED))
    assert held is not None and held.seq == SEQ0 + 5 and held.margin == Decimal("105")


# -- the same pushes into a running guardbot ---------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sim, Daemon, str, str]]:
    """``guardbot run`` guarding one account of the simulator, private stream subscribed."""
    tmp = tmp_path_factory.mktemp("bad_input")
    url = f"sqlite:///{tmp / 'audit.db'}"
    migrate(url)
    with Sim(tmp, accounts=1) as sim:
        account_id = sim.accounts[0]["account_id"]
        with Daemon(write_config(tmp, sim, url), tmp) as daemon:
            daemon.wait_ready()
            deadline = time.monotonic() + 10
            while sim.inject(account_id, '{"event":"pong"}') == 0:
                assert time.monotonic() < deadline, "the private stream never subscribed"
                time.sleep(0.1)
            yield sim, daemon, url, account_id
    assert not [a for a in audit_actions(url) if a.margin == Decimal(1)]


def skipped(daemon: Daemon) -> int:
    return daemon.log_text().count("skipped a malformed message")


@pytest.mark.slow
@settings(max_examples=15, derandomize=True, deadline=None)
@given(bad=st.lists(malformed_push(SEQ0 + 5), min_size=1, max_size=4))
def test_the_running_guard_counts_skips_and_never_acts_on_malformed_pushes(
    guarded: tuple[Sim, Daemon, str, str], bad: list[str]
) -> None:
    sim, daemon, url, account_id = guarded
    before = skipped(daemon)
    for frame in bad:
        assert sim.inject(account_id, frame) == 1
    deadline = time.monotonic() + 5
    while skipped(daemon) < before + len(bad):
        assert time.monotonic() < deadline, daemon.log_text()[-2000:]
        time.sleep(0.05)
    assert skipped(daemon) == before + len(bad)
    assert daemon.alive()
    assert not [a for a in audit_actions(url) if a.margin == Decimal(1)]


@pytest.mark.slow
def test_the_running_guard_ignores_an_old_version_pushed_late(
    guarded: tuple[Sim, Daemon, str, str],
) -> None:
    """A well-formed push with an old ``seq`` (reordered in transit) claims 1 USDC margin: the
    book drops it as older than what it holds, so nothing is decided on it."""
    sim, daemon, url, account_id = guarded
    stale = entry("PERP_ETH_USDC", 1, margin="1")
    stale["updated_time"] = stale["timestamp"] = 1
    assert sim.inject(account_id, push(stale)) == 1
    # Then a fresh poll and evaluation: the guard runs once a second.
    time.sleep(2)
    assert daemon.alive()
    assert not [a for a in audit_actions(url) if a.margin == Decimal(1)]
