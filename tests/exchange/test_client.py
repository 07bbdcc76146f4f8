"""``OrderlyExchange`` against the simulated exchange over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from decimal import Decimal

import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from pydantic import SecretStr

from guardbot.domain import ActionKind, MarginMode, Source
from guardbot.exchange.client import OrderlyExchange
from guardbot.exchange.errors import (
    AuthError,
    ExchangeError,
    MalformedResponse,
    RateLimited,
    Rejected,
    RetryLater,
    Uncertain,
    Unreachable,
)
from guardbot.exchange.limits import Limit, Priority, RateLimiter
from guardbot.sim.keys import generate_key
from guardbot.sim.reports import PositionRow
from guardbot.sim.server import SimServer

from .conftest import Funded, connect, fund, urls

ETH = "PERP_ETH_USDC"


def sim_position(sim: SimServer, account_id: str, mode: str = "ISOLATED") -> PositionRow:
    return sim.engine.position_view(sim.engine.account(account_id), ETH, mode)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Sleeps:
    """Records backoff sleeps instead of waiting them out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def test_positions_match_the_exchange_exactly(
    venue: SimServer, funded: Funded, exchange: OrderlyExchange
) -> None:
    snapshot = await exchange.get_positions()
    account = venue.engine.account(funded.account_id)
    figures = venue.engine.account_view(account)
    assert snapshot.account_id == funded.account_id
    assert snapshot.free_collateral == figures.free_collateral
    by_mode = {p.margin_mode: p for p in snapshot.positions}
    assert set(by_mode) == {MarginMode.CROSS, MarginMode.ISOLATED}  # both on one symbol
    for mode, pos in by_mode.items():
        view = venue.engine.position_view(account, ETH, mode.value)
        assert (pos.qty, pos.margin, pos.mark_price, pos.cost_position) == (
            view.qty, view.margin, view.mark_price, view.cost_position
        )
        assert pos.est_liq_price == view.est_liq_price
        assert pos.seq == view.seq and isinstance(pos.seq, int) and pos.seq > 2**53
        assert pos.leverage == 10 and pos.source is Source.REST
    assert by_mode[MarginMode.ISOLATED].margin > 0
    assert by_mode[MarginMode.CROSS].margin == 0


async def test_one_position_by_symbol_and_mode(
    venue: SimServer, funded: Funded, exchange: OrderlyExchange
) -> None:
    isolated = await exchange.get_position(ETH, MarginMode.ISOLATED)
    cross = await exchange.get_position(ETH, MarginMode.CROSS, urgent=True)
    assert isolated is not None and cross is not None
    assert (isolated.margin_mode, isolated.qty) == (MarginMode.ISOLATED, Decimal(1))
    assert (cross.margin_mode, cross.qty) == (MarginMode.CROSS, Decimal("0.5"))
    assert await exchange.get_position("PERP_BTC_USDC", MarginMode.ISOLATED) is None
    with pytest.raises(Rejected) as info:
        await exchange.get_position("PERP_NOPE_USDC", MarginMode.ISOLATED)
    assert info.value.code == -1005


async def test_add_and_reduce_margin_move_exact_amounts(
    venue: SimServer, funded: Funded, exchange: OrderlyExchange
) -> None:
    before = await exchange.get_position(ETH, MarginMode.ISOLATED)
    holding_before = (await exchange.get_holdings())[0].holding
    assert before is not None
    await exchange.adjust_margin(ETH, ActionKind.ADD, Decimal("100.25"))
    after_add = await exchange.get_position(ETH, MarginMode.ISOLATED)
    assert after_add is not None and after_add.margin == before.margin + Decimal("100.25")
    assert (await exchange.get_holdings())[0].holding == holding_before - Decimal("100.25")
    await exchange.adjust_margin(ETH, ActionKind.REDUCE, Decimal("0.25"))
    after_reduce = await exchange.get_position(ETH, MarginMode.ISOLATED)
    assert after_reduce is not None and after_reduce.margin == before.margin + 100
    assert after_reduce.seq is not None and before.seq is not None
    assert after_reduce.seq > before.seq


@pytest.mark.parametrize("amount", [Decimal(0), Decimal(-1), Decimal("NaN"), Decimal("Infinity")])
async def test_a_bad_amount_is_refused_before_sending(
    venue: SimServer, exchange: OrderlyExchange, amount: Decimal
) -> None:
    requests = venue.counters["requests"]
    with pytest.raises(ValueError, match="positive finite Decimal"):
        await exchange.adjust_margin(ETH, ActionKind.ADD, amount)
    assert venue.counters["requests"] == requests


async def test_exchange_refusals_are_rejected_with_code(
    venue: SimServer, funded: Funded, exchange: OrderlyExchange
) -> None:
    margin = sim_position(venue, funded.account_id).margin
    with pytest.raises(Rejected) as over_reduce:
        await exchange.adjust_margin(ETH, ActionKind.REDUCE, margin)
    assert over_reduce.value.code == -1101 and over_reduce.value.http_status == 400
    with pytest.raises(Rejected) as no_position:
        await exchange.adjust_margin("PERP_BTC_USDC", ActionKind.ADD, Decimal(1))
    assert no_position.value.code == -1006
    assert sim_position(venue, funded.account_id).margin == margin


async def test_holdings_rules_and_marks(
    venue: SimServer, funded: Funded, exchange: OrderlyExchange
) -> None:
    (usdc,) = await exchange.get_holdings()
    view = venue.engine.holding_view(venue.engine.account(funded.account_id))
    assert (usdc.token, usdc.holding, usdc.isolated_margin) == (
        "USDC", view.holding, view.isolated_margin
    )
    rules = await exchange.get_symbol_rules()
    assert rules[ETH].base_mmr == Decimal("0.006") and rules[ETH].base_imr == Decimal("0.01")
    assert set(rules) == set(venue.engine.markets)
    marks = await exchange.get_mark_prices()
    assert marks[ETH].price == venue.engine.marks[ETH]


# -- authentication ----------------------------------------------------------------------


async def test_unregistered_key_is_an_auth_error(venue: SimServer, funded: Funded) -> None:
    key, secret = generate_key()
    stranger = Funded(funded.account_id, key, SecretStr(secret))
    async with connect(venue, stranger) as client:
        with pytest.raises(AuthError) as info:
            await client.get_positions()
    assert info.value.code == -1002


async def test_signature_from_a_skewed_clock_is_rejected(venue: SimServer, funded: Funded) -> None:
    skewed = connect(venue, funded, clock_ms=lambda: venue.now_ms() - 600_000)
    async with skewed:
        with pytest.raises(AuthError) as info:
            await skewed.adjust_margin(ETH, ActionKind.ADD, Decimal(1))
    assert info.value.code == -1001
    assert venue.counters["auth_-1001"] == 1
    # The refusal names the likely cause, read from the exchange's Date header (whole
    # seconds, hence 599 or 600).
    assert re.search(r"this host's clock is -(599|600|601) s off the exchange's", str(info.value))


async def test_read_only_key_cannot_move_margin(venue: SimServer) -> None:
    read_only = fund(venue, scopes="read")
    async with connect(venue, read_only) as client:
        await client.get_positions()
        with pytest.raises(AuthError) as info:
            await client.adjust_margin(ETH, ActionKind.ADD, Decimal(1))
    assert info.value.code == -1002


def test_secret_of_another_key_fails_before_any_request(venue: SimServer, funded: Funded) -> None:
    _, other_secret = generate_key()
    with pytest.raises(AuthError, match="does not belong to key"):
        connect(venue, Funded(funded.account_id, funded.orderly_key, SecretStr(other_secret)))
    assert venue.counters["requests"] == 0


def test_bad_urls_fail_at_construction(funded: Funded, venue: SimServer) -> None:
    with pytest.raises(ValueError, match="rest_url must be a http/https URL"):
        OrderlyExchange(funded.account_id, funded.orderly_key, funded.orderly_secret,
                        {**urls(venue), "rest_url": "127.0.0.1:8900"})
    with pytest.raises(ValueError, match="public_ws_url must be a ws/wss URL"):
        OrderlyExchange(funded.account_id, funded.orderly_key, funded.orderly_secret,
                        {**urls(venue), "public_ws_url": "http://x/ws"})


# -- rate limits ---------------------------------------------------------------------------


async def test_a_burst_without_our_limiter_is_answered_429(
    venue: SimServer, funded: Funded
) -> None:
    unlimited = RateLimiter({"GET /v1/positions": Limit(1000, 1.0)})
    async with connect(venue, funded, limiter=unlimited, max_attempts=1) as client:
        results = await asyncio.gather(
            *(client.get_positions() for _ in range(40)), return_exceptions=True
        )
    limited = [r for r in results if isinstance(r, RateLimited)]
    assert len(limited) == 10  # the exchange allows 30 per 10 s
    assert all(r.retry_after_s > 0 for r in limited)
    assert len(results) - len(limited) == 30


async def test_our_limiter_keeps_a_margin_burst_under_the_exchange_limit(
    venue: SimServer, funded: Funded
) -> None:
    async with connect(venue, funded, limiter=RateLimiter()) as client:
        await asyncio.gather(
            *(client.adjust_margin(ETH, ActionKind.ADD, Decimal(1)) for _ in range(15))
        )
    assert venue.counters["rate_limited"] == 0
    assert sim_position(venue, funded.account_id).margin > 0


async def test_gets_back_off_on_429_and_succeed(venue: SimServer, funded: Funded) -> None:
    sleeps = Sleeps()
    venue.faults.update({"rate_limit_rate": 0.5})
    async with connect(venue, funded, max_attempts=20, sleep=sleeps) as client:
        for _ in range(5):
            await client.get_positions()
    assert venue.counters["fault_429"] >= 1
    assert len(sleeps.delays) == venue.counters["fault_429"]
    assert all(delay >= 1.0 for delay in sleeps.delays)  # at least the default Retry-After


# -- failures: 5xx, lost responses, timeouts, no connection --------------------------------


async def test_5xx_get_is_retried_then_retry_later(venue: SimServer, funded: Funded) -> None:
    venue.faults.update({"error_rate": 1.0})
    sleeps = Sleeps()
    async with connect(venue, funded, max_attempts=3, sleep=sleeps) as client:
        with pytest.raises(RetryLater, match="HTTP 500"):
            await client.get_positions()
    assert venue.counters["fault_5xx"] == 3 and len(sleeps.delays) == 2


async def test_5xx_post_is_uncertain_and_not_retried(venue: SimServer, funded: Funded) -> None:
    venue.faults.update({"error_rate": 1.0})
    async with connect(venue, funded) as client:
        with pytest.raises(Uncertain, match="re-read the position"):
            await client.adjust_margin(ETH, ActionKind.ADD, Decimal(5))
    assert venue.counters["requests"] == 1


async def test_lost_response_after_the_change_is_uncertain(
    venue: SimServer, funded: Funded
) -> None:
    margin = sim_position(venue, funded.account_id).margin
    venue.faults.update({"lost_response_rate": 1.0})
    async with connect(venue, funded) as client:
        with pytest.raises(Uncertain, match="may have been applied"):
            await client.adjust_margin(ETH, ActionKind.ADD, Decimal(5))
        # The exchange did apply it: exactly why the client must not call this a failure.
        assert sim_position(venue, funded.account_id).margin == margin + 5
        assert venue.counters["requests"] == 1  # and it was not retried blindly
        venue.faults.update({"lost_response_rate": 0.0})
        after = await client.get_position(ETH, MarginMode.ISOLATED)
    assert after is not None and after.margin == margin + 5


async def test_lost_response_on_a_get_is_retried(venue: SimServer, funded: Funded) -> None:
    venue.faults.update({"lost_response_rate": 0.5})
    async with connect(venue, funded, max_attempts=30, sleep=Sleeps()) as client:
        for _ in range(4):
            assert (await client.get_positions()).positions
    assert venue.counters["fault_lost_response"] >= 1


async def test_timeout_after_sending_a_post_is_uncertain(
    venue: SimServer, funded: Funded
) -> None:
    venue.faults.update({"latency_ms": 500})
    async with connect(venue, funded, timeout_s=0.1, sleep=Sleeps()) as client:
        with pytest.raises(Uncertain, match="ReadTimeout"):
            await client.adjust_margin(ETH, ActionKind.ADD, Decimal(5))
        with pytest.raises(RetryLater, match="ReadTimeout"):
            await client.get_positions()


async def test_unreachable_exchange_is_retry_later_and_nothing_sent(funded: Funded) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = {
        "rest_url": f"http://127.0.0.1:{port}",
        "public_ws_url": f"ws://127.0.0.1:{port}/ws/{{account_id}}",
        "private_ws_url": f"ws://127.0.0.1:{port}/v2/{{account_id}}",
    }
    async with OrderlyExchange(
        funded.account_id, funded.orderly_key, funded.orderly_secret, dead, max_attempts=1
    ) as client:
        # Unreachable is a RetryLater: nothing was sent, so even a POST may be retried.
        with pytest.raises(Unreachable, match="nothing was sent"):
            await client.adjust_margin(ETH, ActionKind.ADD, Decimal(1))
        with pytest.raises(Unreachable, match="cannot reach the exchange"):
            await client.get_positions()


async def test_repr_names_the_account_not_the_secret(venue: SimServer, funded: Funded) -> None:
    async with connect(venue, funded) as client:
        assert funded.account_id in repr(client)
        assert funded.orderly_secret.get_secret_value() not in repr(client)


# -- secrets -------------------------------------------------------------------------------

SIGNATURE = re.compile(r"[A-Za-z0-9_\-+/]{86}==")


async def test_no_secret_or_signature_in_any_log_line_error_or_repr(
    venue: SimServer, funded: Funded, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, the libraries' included
    secret = funded.orderly_secret.get_secret_value()
    texts: list[str] = []
    async with connect(venue, funded, sleep=Sleeps()) as client:
        texts.append(repr(client))
        async with contextlib.aclosing(client.private_events()) as events:
            await anext(events)  # logged in and subscribed
            await client.adjust_margin(ETH, ActionKind.ADD, Decimal(2))
            await anext(events)
        await client.get_positions()
        await client.get_holdings()
        for faults in ({"error_rate": 1.0}, {"lost_response_rate": 1.0}, {"rate_limit_rate": 1.0}):
            venue.faults.update(faults)
            for call in (client.get_positions(),
                         client.adjust_margin(ETH, ActionKind.REDUCE, Decimal(1))):
                with pytest.raises(ExchangeError) as info:
                    await call
                texts += [str(info.value), repr(info.value)]
            venue.faults.update(dict.fromkeys(faults, 0.0))
        with pytest.raises(Rejected) as rejected:
            await client.adjust_margin(ETH, ActionKind.REDUCE, Decimal(10**6))
        texts.append(str(rejected.value))
    skewed = connect(venue, funded, clock_ms=lambda: 0)
    async with skewed:
        with pytest.raises(AuthError) as auth:
            await skewed.get_positions()
        texts.append(str(auth.value))
    texts += [record.getMessage() for record in caplog.records]
    assert len(caplog.records) > 20
    assert any("position_margin" in r.getMessage() and r.levelno == logging.INFO
               for r in caplog.records)
    bare_secret = secret.removeprefix("ed25519:")
    for text in texts:
        assert bare_secret not in text
        assert not SIGNATURE.search(text), text
        assert "orderly-signature" not in text


# -- a broken exchange: answers that are not what the docs say -----------------------------


async def test_malformed_answers_raise_and_are_counted(funded: Funded) -> None:
    answers = {
        "/v1/positions": (200, b'{"success":true,"data":{"rows":[{"symbol":"PERP_ETH_USDC"}]}}'),
        "/v1/client/holding": (200, b"<html>maintenance</html>"),
        "/v1/position_margin": (200, b'{"succ'),
    }
    gzip_garbage = {"/v1/public/futures"}

    async def handler(request: web.Request) -> web.Response:
        if request.path in gzip_garbage:  # a body httpx cannot even decode
            return web.Response(body=b"not gzip", headers={"Content-Encoding": "gzip"})
        status, body = answers[request.path]
        return web.Response(status=status, body=body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    broken = {"rest_url": f"http://127.0.0.1:{port}", "public_ws_url": "ws://127.0.0.1:1/x",
              "private_ws_url": "ws://127.0.0.1:1/y"}
    before = sample("guardbot_malformed_messages_total", source="rest")
    try:
        async with OrderlyExchange(funded.account_id, funded.orderly_key,
                                   funded.orderly_secret, broken, sleep=Sleeps()) as client:
            with pytest.raises(MalformedResponse, match=r"positions\.rows\[0\]\.margin_mode"):
                await client.get_positions()
            with pytest.raises(MalformedResponse, match="not valid JSON"):
                await client.get_holdings()
            with pytest.raises(Uncertain, match="unreadable HTTP 200 answer"):
                await client.adjust_margin(ETH, ActionKind.ADD, Decimal(1))
            with pytest.raises(RetryLater, match="DecodingError"):
                await client.get_mark_prices()
            gzip_garbage.add("/v1/position_margin")
            with pytest.raises(Uncertain, match="DecodingError"):
                await client.adjust_margin(ETH, ActionKind.ADD, Decimal(1))
    finally:
        await runner.cleanup()
    assert sample("guardbot_malformed_messages_total", source="rest") == before + 2


async def test_top_ups_and_their_verification_reads_are_urgent_sweeps_and_polls_routine(
    venue: SimServer, funded: Funded
) -> None:
    class Recording(RateLimiter):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple[str, Priority]] = []

        async def acquire(
            self, endpoint: str, orderly_key: str, priority: Priority, host: str = ""
        ) -> None:
            self.calls.append((endpoint, priority))
            await super().acquire(endpoint, orderly_key, priority, host)

    limiter = Recording()
    async with connect(venue, funded, limiter=limiter) as client:
        await client.adjust_margin(ETH, ActionKind.ADD, Decimal(1))
        await client.get_position(ETH, MarginMode.ISOLATED, urgent=True)
        await client.adjust_margin(ETH, ActionKind.REDUCE, Decimal(1))
        await client.get_positions()
    assert limiter.calls == [
        ("POST /v1/position_margin", Priority.URGENT),
        ("GET /v1/position/{symbol}", Priority.URGENT),
        ("POST /v1/position_margin", Priority.ROUTINE),
        ("GET /v1/positions", Priority.ROUTINE),
    ]
