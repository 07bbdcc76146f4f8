"""PositionBook: ordering, re-pricing, closing and age, with injected times."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D
from random import Random
from typing import Any

import pytest
from factories import ACCOUNT
from factories import position as long_position
from hypothesis import given, settings
from hypothesis import strategies as st

from guardbot.book import PositionBook
from guardbot.domain import AccountSnapshot, MarginMode, Position, Source

OTHER = "0x" + "cd" * 32

ETH = long_position(
    symbol="PERP_ETH_USDC",
    qty=D(2),
    average_open_price=D(2000),
    cost_position=D(4000),
    mark_price=D(2000),
    margin=D(400),
    unsettled_pnl=D(-3),  # funding owed 3
    est_liq_price=D(1815),
    seq=100,
    exchange_ms=10_000,
    received_ms=10_050,
)


def version(seq: int | None, exchange_ms: int, **changes: Any) -> Position:
    return replace(ETH, seq=seq, exchange_ms=exchange_ms, received_ms=exchange_ms + 50, **changes)


@pytest.mark.parametrize(
    ("held", "incoming", "applied"),
    [
        # seq decides when both have one, whatever the timestamps say
        (version(100, 10_000), version(101, 9_000), True),
        (version(100, 10_000), version(99, 11_000), False),
        # the same version again (a REST poll confirming a WS push) is applied ...
        (version(100, 10_000), version(100, 10_000), True),
        # ... unless it is an older copy
        (version(100, 10_000), version(100, 9_999), False),
        # without seq (positions_lite) the exchange timestamp decides, ties applied
        (version(100, 10_000), version(None, 10_001), True),
        (version(100, 10_000), version(None, 10_000), True),
        (version(100, 10_000), version(None, 9_999), False),
        (version(None, 10_000), version(7, 9_999), False),
    ],
)
def test_ordering(held: Position, incoming: Position, applied: bool) -> None:
    book = PositionBook()
    assert book.apply(held)
    assert book.apply(incoming) is applied
    assert book.get(ETH.key) == (incoming if applied else held)


def test_rest_response_overtaken_by_a_ws_push_is_dropped() -> None:
    book = PositionBook()
    pushed = version(101, 10_100, margin=D(500), source=Source.WS)
    polled_before_push = version(100, 10_000, source=Source.REST)  # arrives later
    assert book.apply(pushed)
    assert not book.apply(polled_before_push)
    held = book.get(ETH.key)
    assert held is not None and held.margin == D(500)


def test_positions_are_keyed_by_account_symbol_and_mode() -> None:
    book = PositionBook()
    cross = replace(ETH, margin_mode=MarginMode.CROSS, margin=D(0), seq=1)
    other = replace(ETH, account_id=OTHER, seq=1)
    for position in (ETH, cross, other):
        assert book.apply(position)
    assert len(book) == 3
    assert book.isolated_positions(ACCOUNT) == [ETH]
    assert book.isolated_positions(OTHER) == [other]
    assert set(book) == {ETH.key, cross.key, other.key}


def test_isolated_positions_are_sorted_by_symbol() -> None:
    book = PositionBook()
    btc = replace(ETH, symbol="PERP_BTC_USDC")
    book.apply(ETH)
    book.apply(btc)
    assert [p.symbol for p in book.isolated_positions(ACCOUNT)] == [
        "PERP_BTC_USDC",
        "PERP_ETH_USDC",
    ]


def test_mark_reprices_between_pushes_keeping_funding() -> None:
    book = PositionBook()
    cross = replace(ETH, account_id=OTHER, margin_mode=MarginMode.CROSS, margin=D(0))
    btc = replace(ETH, symbol="PERP_BTC_USDC")
    for position in (ETH, cross, btc):
        book.apply(position)
    # the accounts it re-priced, cross positions included
    assert book.apply_mark("PERP_ETH_USDC", D(1900), 10_500)
    assert book.accounts_on("PERP_ETH_USDC") == {ACCOUNT, OTHER}
    assert book.apply_mark("PERP_SOL_USDC", D(150), 10_500)
    assert book.accounts_on("PERP_SOL_USDC") == set()
    held = book.get(ETH.key)
    assert held is not None
    assert held.mark_price == D(1900)
    # q*mark - cost - funding = 2*1900 - 4000 - 3
    assert held.unsettled_pnl == D(-203)
    assert held.source is Source.MARK
    assert (held.seq, held.margin, held.qty) == (ETH.seq, ETH.margin, ETH.qty)
    untouched = book.get(btc.key)
    assert untouched is not None and untouched.mark_price == D(2000)


def test_older_marks_are_ignored() -> None:
    book = PositionBook()
    book.apply(ETH)
    book.apply_mark("PERP_ETH_USDC", D(1900), 10_500)
    assert not book.apply_mark("PERP_ETH_USDC", D(2100), 10_400)
    held = book.get(ETH.key)
    assert held is not None and held.mark_price == D(1900)


def test_a_bad_mark_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        PositionBook().apply_mark("PERP_ETH_USDC", D(0), 1)


def test_repricing_does_not_block_the_next_exchange_update() -> None:
    book = PositionBook()
    book.apply(ETH)
    book.apply_mark("PERP_ETH_USDC", D(1900), 99_999)
    assert book.apply(version(101, 10_001))


def test_closing_removes_and_remembers_the_version() -> None:
    book = PositionBook()
    book.apply(ETH)
    assert book.apply(version(101, 10_100, qty=D(0)))
    assert book.get(ETH.key) is None
    assert book.isolated_positions(ACCOUNT) == []
    # a late copy of the open position cannot resurrect it
    assert not book.apply(version(100, 10_000))
    assert book.get(ETH.key) is None
    # a newer open reopens it
    assert book.apply(version(102, 10_200))
    assert book.get(ETH.key) is not None


def test_remove() -> None:
    book = PositionBook()
    book.apply(ETH)
    assert book.remove(ETH.key) == ETH
    assert book.remove(ETH.key) is None
    assert not book.apply(ETH)


def test_snapshot_closes_what_it_no_longer_lists() -> None:
    book = PositionBook()
    btc = replace(ETH, symbol="PERP_BTC_USDC", seq=5, exchange_ms=9_000)
    late_push = replace(ETH, symbol="PERP_SOL_USDC", seq=9, exchange_ms=12_500)
    elsewhere = replace(ETH, account_id=OTHER)
    for position in (btc, late_push, elsewhere):
        book.apply(position)
    snapshot = AccountSnapshot(
        account_id=ACCOUNT,
        free_collateral=D(1000),
        total_collateral_value=D(1000),
        positions=(ETH,),
        exchange_ms=12_000,
        received_ms=12_050,
    )
    assert book.apply_snapshot(snapshot) == [ETH]
    # BTC closed before the snapshot; SOL opened after it was taken; OTHER is another account
    assert book.get(btc.key) is None
    assert book.get(late_push.key) == late_push
    assert book.get(elsewhere.key) == elsewhere


def test_age() -> None:
    book = PositionBook()
    book.apply(ETH)  # received at 10_050
    btc = replace(ETH, symbol="PERP_BTC_USDC", received_ms=14_000)
    book.apply(btc)
    assert book.age_ms(ETH.key, 12_050) == 2_000
    assert book.age_ms(("nobody", "PERP_ETH_USDC", MarginMode.ISOLATED), 1) is None
    assert (book.age_ms(ETH.key, 20_050), book.age_ms(btc.key, 20_050)) == (10_000, 6_050)
    # a mark does not make the position fresher ...
    book.apply_mark("PERP_ETH_USDC", D(1900), 20_000)
    assert book.age_ms(ETH.key, 20_050) == 10_000
    # ... a confirmation of the same version does
    book.apply(replace(ETH, received_ms=20_000))
    assert book.age_ms(ETH.key, 20_050) == 50


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 50), st.booleans(), st.booleans()),
        min_size=1,
        max_size=20,
        unique_by=lambda t: t[0],
    ),
    st.randoms(use_true_random=False),
)
def test_any_arrival_order_ends_at_the_newest_version(
    versions: list[tuple[int, bool, bool]], rng: Random
) -> None:
    """Versions (seq, closed?, lite?) arriving in any order: the book ends holding the
    newest one, or nothing if the newest is a close. ``lite`` ones (positions_lite) carry
    no seq, only their timestamp, which grows with seq at the exchange."""
    updates = [
        replace(
            version(None if lite else seq, 10_000 + seq * 10),
            qty=D(0) if closed else ETH.qty,
            margin=D(seq),
        )
        for seq, closed, lite in versions
    ]
    arrivals = list(updates)
    rng.shuffle(arrivals)
    book = PositionBook()
    for update in arrivals:
        book.apply(update)
    newest = max(updates, key=lambda p: p.exchange_ms)
    assert book.get(ETH.key) == (newest if newest.is_open else None)


def test_a_version_confirmed_after_a_mark_keeps_its_own_mark_until_the_next() -> None:
    book = PositionBook()
    book.apply(ETH)
    book.apply_mark("PERP_ETH_USDC", D(1900), 10_500)
    confirmed = version(101, 10_600, mark_price=D(1950), unsettled_pnl=D(-103))
    book.apply(confirmed)
    assert book.get(ETH.key) == confirmed
    [(held, mark)] = book.isolated_marks(ACCOUNT)
    assert (held.position, mark) == (confirmed, D(1950))
    book.apply_mark("PERP_ETH_USDC", D(1800), 10_700)
    [(held, mark)] = book.isolated_marks(ACCOUNT)
    assert held.position == confirmed, "the held version is never re-priced"
    current = book.current(held)
    assert (mark, current.mark_price, current.unsettled_pnl) == (D(1800), D(1800), D(-403))


def test_the_indexes_follow_opens_closes_and_removals() -> None:
    book = PositionBook()
    btc = replace(ETH, symbol="PERP_BTC_USDC")
    cross = replace(ETH, margin_mode=MarginMode.CROSS)
    for position in (ETH, btc, cross):
        book.apply(position)
    assert book.isolated_keys(ACCOUNT) == [btc.key, ETH.key]
    assert ETH.key in book and cross.key in book
    book.apply(version(101, 10_100, qty=D(0)))  # ETH isolated closes
    assert book.isolated_keys(ACCOUNT) == [btc.key]
    assert ETH.key not in book
    assert book.accounts_on("PERP_ETH_USDC") == {ACCOUNT}, "the cross one"
    book.remove(cross.key)
    assert book.accounts_on("PERP_ETH_USDC") == set()
    book.apply(version(102, 10_200))  # reopened
    assert book.isolated_keys(ACCOUNT) == [btc.key, ETH.key]
    assert [p.mark_price for p in book.isolated_positions(ACCOUNT)] == [D(2000), D(2000)]
    assert book.isolated_keys(OTHER) == [] and book.isolated_marks(OTHER) == []


prices = st.decimals(min_value=D("0.0001"), max_value=D(200_000), places=4)


@settings(max_examples=200, deadline=None)
@given(
    st.decimals(min_value=D("-1000"), max_value=D("1000"), places=4).filter(bool),
    prices,
    st.decimals(min_value=D(-10_000), max_value=D(10_000), places=6),
    st.lists(st.one_of(prices, st.none()), min_size=1, max_size=30),
)
def test_pricing_on_demand_equals_re_pricing_on_every_mark(
    qty: D, confirmed_mark: D, pnl: D, steps: list[D | None]
) -> None:
    """The book prices a position from its confirmed version and the latest mark; the same
    as re-pricing it on every mark (``upnl += q*(new - old)``), and the funding owed never
    moves (so neither does the liquidation price, guardbot/policies/quiet.py). ``None`` is a
    new confirmation of the position at the latest mark."""
    book = PositionBook()
    held = replace(ETH, qty=qty, mark_price=confirmed_mark, unsettled_pnl=pnl,
                   cost_position=qty * D(2000))
    book.apply(held)
    funding = held.qty * held.mark_price - held.cost_position - held.unsettled_pnl
    expected = held
    for n, price in enumerate(steps):
        if price is None:
            expected = replace(expected, source=Source.REST, received_ms=20_000 + n)
            book.apply(expected)
        else:
            book.apply_mark(ETH.symbol, price, 20_000 + n)
            expected = replace(expected, mark_price=price, source=Source.MARK,
                               unsettled_pnl=expected.unsettled_pnl
                               + expected.qty * (price - expected.mark_price))
        current = book.get(ETH.key)
        assert current == expected
        [(_, mark)] = book.isolated_marks(ACCOUNT)
        assert mark == expected.mark_price
        assert current is not None
        owed = current.qty * current.mark_price - current.cost_position - current.unsettled_pnl
        assert owed == funding
