"""The book of positions: TOML, CSV, the JSON of `guardbot status --json`, the demo's; and
how it is opened on the engine (guarded account and unguarded twin)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from guardbot.backtest.portfolio import BookError, load_book
from guardbot.backtest.runner import open_book
from guardbot.clock import ManualClock
from guardbot.sim import margin as m
from guardbot.sim.engine import Engine
from guardbot.sim.margin import MARKETS

TOML = """
[accounts.main]
free_usdc = "2500"

[[positions]]
symbol = "PERP_ETH_USDC"
qty = "2"
entry = "3000"
leverage = 10
margin = "700"

[[positions]]
account = "hedge"
symbol = "PERP_BTC_USDC"
side = "short"
qty = "0.1"
leverage = 20
"""


def engine_for(book_symbols: list[str], marks: dict[str, Decimal]) -> Engine:
    return Engine(ManualClock().now_ms, {s: MARKETS[s] for s in book_symbols}, marks)


def test_a_toml_book_opens_as_written_twice_with_the_free_usdc_left(tmp_path: Path) -> None:
    file = tmp_path / "book.toml"
    file.write_text(TOML)
    book = load_book(str(file))
    assert [a.name for a in book.accounts] == ["main", "hedge"]
    assert book.accounts[1].positions[0].qty == Decimal("-0.1")
    assert book.short_only("PERP_BTC_USDC") and not book.short_only("PERP_ETH_USDC")
    engine = engine_for(book.symbols(), {s: book.start_mark(s) for s in book.symbols()})
    ids = open_book(engine, book)
    for guarded, twin in ids.values():
        a, b = engine.account(guarded), engine.account(twin)
        assert {k: (p.qty, p.margin) for k, p in a.positions.items()} == {
            k: (p.qty, p.margin) for k, p in b.positions.items()}
        assert a.holding == b.holding
    main = engine.account(ids["main"][0])
    assert main.positions[("PERP_ETH_USDC", "ISOLATED")].margin == Decimal(700)
    assert main.holding == Decimal(2500), "free_usdc is what is left once the book is open"
    assert engine.account(ids["hedge"][0]).holding == Decimal(10000), "the default"


def test_a_csv_book_reads_the_same_columns(tmp_path: Path) -> None:
    file = tmp_path / "book.csv"
    file.write_text("account,symbol,qty,leverage,entry,free_usdc\n"
                    "a,PERP_ETH_USDC,1,5,2900,5000\nb,PERP_SOL_USDC,-10,3,,\n")
    book = load_book(str(file))
    assert [(a.name, a.free_usdc) for a in book.accounts] == [("a", Decimal(5000)),
                                                              ("b", Decimal(10000))]
    assert book.start_mark("PERP_ETH_USDC") == Decimal(2900)
    assert book.start_mark("PERP_SOL_USDC") == MARKETS["PERP_SOL_USDC"].start_price


def test_the_status_json_is_replayed_with_its_margin_and_liquidation_price(
    tmp_path: Path,
) -> None:
    market = MARKETS["PERP_ETH_USDC"]
    qty, entry, margin = Decimal(2), Decimal(3000), Decimal("650")
    liq = m.isolated_liquidation_price(market, margin, qty, qty * entry)
    assert liq is not None
    status = {"accounts": [
        {"name": "main", "account_id": "0x" + "ab" * 32, "ok": True, "free_collateral": "1234.5",
         "positions": [
             {"symbol": "PERP_ETH_USDC", "margin_mode": "ISOLATED", "qty": "2",
              "mark_price": "2950", "margin": "650", "leverage": 10,
              "liquidation_price": str(liq.quantize(market.quote_tick)),
              "liquidation_distance_pct": "5.0"},
             {"symbol": "PERP_BTC_USDC", "margin_mode": "CROSS", "qty": "0.01",
              "mark_price": "60000", "margin": "0", "leverage": 10,
              "liquidation_price": None, "liquidation_distance_pct": None}]},
        {"name": "down", "account_id": "0x" + "cd" * 32, "ok": False, "error": "bad key"}]}
    file = tmp_path / "status.json"
    file.write_text(json.dumps(status))
    book = load_book(str(file))
    assert len(book.accounts) == 1 and book.start_mark("PERP_ETH_USDC") == Decimal(2950)
    position = book.accounts[0].positions[0]
    assert position.entry is not None and abs(position.entry - entry) <= Decimal("0.05")
    engine = engine_for(book.symbols(), {s: book.start_mark(s) for s in book.symbols()})
    guarded, _ = open_book(engine, book)["main"]
    assert guarded == "0x" + "ab" * 32
    row = engine.position_view(engine.account(guarded), "PERP_ETH_USDC", "ISOLATED")
    assert row.margin == margin and row.mark_price == Decimal(2950)
    assert row.est_liq_price is not None
    assert abs(row.est_liq_price - liq) <= Decimal("0.1")
    assert engine.account(guarded).holding == Decimal("1234.5")


def test_the_demo_book_is_the_demos() -> None:
    book = load_book("demo")
    assert [(p.symbol, p.margin_mode) for p in book.accounts[0].positions] == [
        ("PERP_ETH_USDC", "ISOLATED"), ("PERP_BTC_USDC", "ISOLATED"),
        ("PERP_SOL_USDC", "ISOLATED"), ("PERP_ETH_USDC", "CROSS")]
    assert book.accounts[0].deposit_usdc == Decimal(20000)


@pytest.mark.parametrize(("text", "message"), [
    ('[[positions]]\nsymbol = "PERP_NOPE_USDC"\nqty = "1"\nleverage = 5\n', "does not list it"),
    ('[[positions]]\nsymbol = "PERP_ETH_USDC"\nqty = "0"\nleverage = 5\n', "non-zero"),
    ('[[positions]]\nsymbol = "PERP_SOL_USDC"\nqty = "1"\nleverage = 20\n', "1 to 10"),
    ('[[positions]]\nsymbol = "PERP_ETH_USDC"\nqty = "1"\n', "leverage is missing"),
    ('[[positions]]\nsymbol = "PERP_ETH_USDC"\nqty = "1"\nleverage = 5\ncolour = "red"\n',
     "unknown field colour"),
    ('[[positions]]\nsymbol = "PERP_ETH_USDC"\nqty = "1"\nleverage = 5\n' * 2,
     "already holds"),
    ("[accounts.x]\nfree_usdc = \"1\"\n", "no positions"),
    ("not toml [", "not valid TOML"),
])
def test_a_bad_book_is_one_line_naming_the_place(tmp_path: Path, text: str,
                                                  message: str) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(text)
    with pytest.raises(BookError, match=message) as raised:
        load_book(str(file))
    assert "\n" not in str(raised.value) and str(file) in str(raised.value)


def test_a_book_the_engine_refuses_says_why(tmp_path: Path) -> None:
    file = tmp_path / "book.toml"
    file.write_text('[[positions]]\nsymbol = "PERP_ETH_USDC"\nqty = "0.00001"\nleverage = 5\n')
    book = load_book(str(file))
    with pytest.raises(BookError, match="refuses it"):
        open_book(engine_for(book.symbols(), {"PERP_ETH_USDC": Decimal(3000)}), book)
    with pytest.raises(BookError, match="use demo"):
        load_book("book.yaml")
