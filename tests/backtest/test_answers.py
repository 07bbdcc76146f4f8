"""The venue's typed answers are what the bot's parser makes of the simulator's JSON: the same
values, down to each Decimal's exponent, for every kind of position the engine reports."""

from __future__ import annotations

from decimal import Decimal

import pytest

from guardbot.backtest.answers import wire_decimal, wire_rate
from guardbot.backtest.venue import Venue, VenueParams
from guardbot.clock import ManualClock, run_virtual
from guardbot.domain import MarginMode
from guardbot.exchange import wire
from guardbot.exchange.errors import Rejected
from guardbot.sim import payloads
from guardbot.sim.engine import Engine
from guardbot.sim.margin import MARKETS

ETH, BTC = "PERP_ETH_USDC", "PERP_BTC_USDC"


def engine_with_every_kind(clock: ManualClock) -> tuple[Engine, list[str]]:
    """Accounts holding longs and shorts, isolated and cross, a closed position, a resting
    order, a margin that covers the whole cost (no liquidation price), odd amounts."""
    engine = Engine(clock.now_ms, {s: MARKETS[s] for s in (ETH, BTC)},
                    {ETH: Decimal("3000.50"), BTC: Decimal(60000)})
    accounts = [engine.create_account(f"ed25519:k{i}", "read,trading", Decimal("25000.123456"))
                for i in range(4)]  # fmt: skip
    first, second, third, fourth = accounts
    engine.open_position(first, ETH, "ISOLATED", Decimal("1.2345"), 20)
    engine.open_position(first, BTC, "CROSS", Decimal("-0.05"), 5)
    engine.open_position(second, ETH, "ISOLATED", Decimal(-2), 3)
    engine.adjust_margin(second, ETH, "ADD", "123.456789")
    engine.open_position(second, BTC, "ISOLATED", Decimal("0.1"), 10)
    engine.open_position(second, BTC, "ISOLATED", Decimal("-0.1"))  # closed: qty 0 reported
    engine.open_position(third, ETH, "ISOLATED", Decimal("0.5"), 2)
    engine.adjust_margin(third, ETH, "ADD", "2000")  # margin above the cost
    engine.place_order(third, ETH, "LIMIT", "BUY", "0.5", "2500", "ISOLATED")
    engine.open_position(fourth, ETH, "CROSS", Decimal(3), 10)
    clock.advance(7.5)
    engine.advance({ETH: Decimal("2987.13"), BTC: Decimal("61234.5")})
    engine.drain_changes()
    return engine, accounts


def test_typed_answers_equal_the_parsed_json_value_for_value() -> None:
    clock = ManualClock()
    engine, accounts = engine_with_every_kind(clock)
    typed = Venue(engine, clock, VenueParams(), frozenset(accounts))
    parsed = Venue(engine, clock, VenueParams(wire=True), frozenset(accounts))

    async def main() -> None:
        kinds = set()
        for account_id in accounts:
            fast, slow = typed.exchange(account_id), parsed.exchange(account_id)
            snapshot = await fast.get_positions()
            # repr shows each Decimal as it is stored: 3000.5 and 3000.50 differ there.
            assert repr(snapshot) == repr(await slow.get_positions())
            for position in snapshot.positions:
                kinds.add((position.margin_mode, position.qty > 0, position.qty == 0,
                           position.est_liq_price is None))
            for symbol in (ETH, BTC):
                for mode in MarginMode:
                    assert repr(await fast.get_position(symbol, mode)) == repr(
                        await slow.get_position(symbol, mode))
            clock.advance(0.25)
        assert len(kinds) >= 6, kinds  # longs, shorts, closed, cross, no liquidation price
        assert typed.counts == parsed.counts

    run_virtual(main(), clock)


def test_errors_reach_the_bot_as_on_the_wire() -> None:
    clock = ManualClock()
    engine, accounts = engine_with_every_kind(clock)

    async def refused(params: VenueParams) -> tuple[str, ...]:
        venue = Venue(engine, clock, params, frozenset(accounts))
        found = []
        for call in (venue.exchange("0x" + "ab" * 32).get_positions(),
                     venue.exchange(accounts[0]).get_position("PERP_NONE_USDC",
                                                              MarginMode.ISOLATED)):
            with pytest.raises(Rejected) as raised:
                await call
            found.append(repr(raised.value))
        return tuple(found)

    assert run_virtual(refused(VenueParams()), clock) == run_virtual(
        refused(VenueParams(wire=True)), clock)


FIGURES = ["3000.50", "3000.5", "5", "5.000", "0", "-0.000000", "0E-6", "-0.000001",
           "123456789.123456", "0.00001", "1E+3", "-2.5000", "0.00000123"]


@pytest.mark.parametrize("order", [FIGURES, FIGURES[::-1]])
def test_a_figure_reads_back_as_the_parser_reads_its_json_number(order: list[str]) -> None:
    # In both orders: equal figures (5 and 5.000, 0 and -0) share what is remembered only
    # where they read back alike.
    for text in order:
        value = Decimal(text)
        read = wire.loads(payloads.dumps({"x": payloads.num(value)}))["x"]
        assert repr(wire_decimal(value)) == repr(read), text
        rate = wire.loads(payloads.dumps({"x": payloads.rate(value)}))["x"]
        assert repr(wire_rate(value)) == repr(rate), text
