"""The venue: the engine seen through the simulator's payloads and the bot's parsers, with
feed delay, round trip and lost answers in virtual time."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from decimal import Decimal

import pytest

from guardbot.backtest.venue import Venue, VenueExchange, VenueParams
from guardbot.clock import ManualClock, run_virtual
from guardbot.domain import ActionKind, MarginMode, Source
from guardbot.exchange.errors import Rejected, Uncertain
from guardbot.exchange.port import MarksPushed, PositionsPushed, StreamEvent, StreamGap
from guardbot.sim.engine import Engine
from guardbot.sim.margin import MARKETS

ETH = "PERP_ETH_USDC"


def venue_with_position(params: VenueParams) -> tuple[Venue, VenueExchange, ManualClock]:
    clock = ManualClock()
    engine = Engine(clock.now_ms, {ETH: MARKETS[ETH]}, {ETH: Decimal(3000)})
    account = engine.create_account("ed25519:test", "read,trading", Decimal(10000))
    engine.open_position(account, ETH, "ISOLATED", Decimal(2), 10)
    engine.drain_changes()
    venue = Venue(engine, clock, params, frozenset({account}))
    return venue, venue.exchange(account), clock


async def next_event(events: AsyncGenerator[StreamEvent, None]) -> StreamEvent:
    event = await anext(events)
    while isinstance(event, StreamGap):
        event = await anext(events)
    return event


def test_reads_are_the_engines_state_parsed_by_the_bot() -> None:
    venue, exchange, clock = venue_with_position(VenueParams())

    async def main() -> None:
        snapshot = await exchange.get_positions()
        (position,) = snapshot.positions
        row = venue.engine.position_view(venue.engine.account(exchange.account_id), ETH,
                                         "ISOLATED")
        assert (position.qty, position.margin, position.mark_price, position.seq) == (
            row.qty, row.margin, row.mark_price, row.seq)
        assert position.source is Source.REST and position.received_ms == clock.now_ms()
        assert isinstance(position.margin, Decimal)
        assert snapshot.free_collateral == venue.engine.account(exchange.account_id).holding
        assert await exchange.get_position(ETH, MarginMode.ISOLATED) == position
        assert await exchange.get_position(ETH, MarginMode.CROSS) is None
        rules = await exchange.get_symbol_rules()
        assert rules[ETH].base_mmr == MARKETS[ETH].base_mmr

    run_virtual(main(), clock)


def test_a_margin_call_takes_the_round_trip_and_is_pushed_after_the_feed_delay() -> None:
    venue, exchange, clock = venue_with_position(VenueParams(feed_delay_ms=250,
                                                             round_trip_ms=80))

    async def main() -> None:
        events = exchange.private_events()
        opened = venue.engine.account(exchange.account_id).positions[(ETH, "ISOLATED")].margin
        before = clock.now_ms()
        await exchange.adjust_margin(ETH, ActionKind.ADD, Decimal("100.5"))
        assert clock.now_ms() - before == 80
        (change,) = venue.applied
        assert (change.kind, change.amount, change.answered) == (ActionKind.ADD,
                                                                 Decimal("100.5"), True)
        assert change.time_ms - before == 40, "the engine applies it half way"
        event = await next_event(events)
        assert isinstance(event, PositionsPushed)
        assert event.positions[0].margin == opened + Decimal("100.5")
        assert clock.now_ms() - change.time_ms == 250

    run_virtual(main(), clock)


def test_marks_reach_the_public_stream_after_the_feed_delay() -> None:
    venue, exchange, clock = venue_with_position(VenueParams(feed_delay_ms=300))

    async def main() -> None:
        events = exchange.public_events()
        venue.move_marks({ETH: Decimal(2990)})
        moved = clock.now_ms()
        event = await next_event(events)
        assert isinstance(event, MarksPushed) and event.marks[0].price == Decimal(2990)
        assert clock.now_ms() - moved == 300 and event.marks[0].exchange_ms == moved

    run_virtual(main(), clock)


def test_refusals_are_rejections_and_lost_answers_are_uncertain_but_applied() -> None:
    venue, exchange, clock = venue_with_position(VenueParams(lost=1.0))

    async def main() -> None:
        with pytest.raises(Uncertain, match="lost"):
            await exchange.adjust_margin(ETH, ActionKind.ADD, Decimal(50))
        (change,) = venue.applied
        assert change.amount == Decimal(50) and not change.answered
        assert venue.counts["lost answers"] == 1

    run_virtual(main(), clock)
    venue, exchange, clock = venue_with_position(VenueParams())

    async def refused() -> None:
        with pytest.raises(Rejected) as raised:
            await exchange.adjust_margin(ETH, ActionKind.ADD, Decimal(10**6))
        assert raised.value.code == -1101 and not venue.applied
        venue.engine.open_position(exchange.account_id, ETH, "ISOLATED", Decimal(-2))  # closed
        with pytest.raises(Rejected, match="no isolated position"):
            await exchange.adjust_margin(ETH, ActionKind.REDUCE, Decimal(1))

    run_virtual(refused(), clock)
