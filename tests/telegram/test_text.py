"""/status and /budget as chat text, from a state shaped as guardbot.view.state's snapshot."""

from __future__ import annotations

from typing import Any

from guardbot.telegram.text import budget_answer, percent, short_symbol, status_answer, usdc


def position(account: str, symbol: str, distance: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "account": account, "symbol": symbol, "side": "LONG", "margin": "150.004",
        "distance": distance, "zone": extra.pop("zone", "safe"), "stale": False,
        "bands": {"trigger": "0.05", "add_target": "0.09", "reduce_floor": None},
        "budget": {"per_day": "5000", "added": "120", "left": "4880"}, **extra,
    }  # fmt: skip


def state(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "instance": {"dry_run": False, "kill_switch": False},
        "ready": True, "problems": [],
        "budgets": {"per_action": "1000", "reserve": "0"},
        "accounts": [
            {"name": "main", "guarded_here": True,
             "budget": {"per_day": "20000", "added": "120", "left": "19880"}},
            {"name": "other", "guarded_here": False, "budget": {}},
        ],
        "positions": [
            position("main", "PERP_BTC_USDC", "0.1231", side="SHORT", margin="980"),
            position("main", "PERP_ETH_USDC", "0.041", zone="trigger"),
            position("main", "PERP_SOL_USDC", None, zone="unknown",
                     budget={"per_day": "5000", "added": "0", "left": "5000"}),
        ],
    }  # fmt: skip
    return {**base, **overrides}


def test_status_is_one_line_per_position_most_endangered_first() -> None:
    assert status_answer(state()).splitlines() == [
        "guardbot LIVE, ready: 3 positions, 1 account guarded here",
        "! main ETH LONG 4.10% to liq (trigger 5.00%), margin 150.00",
        "  main BTC SHORT 12.31% to liq (trigger 5.00%), margin 980.00",
        "? main SOL LONG ? to liq (trigger 5.00%), margin 150.00",
    ]


def test_status_says_paused_dry_run_and_not_ready() -> None:
    paused = state(instance={"dry_run": True, "kill_switch": True}, ready=False,
                   problems=["kill switch engaged (STOP exists): no new action"], positions=[])
    assert status_answer(paused).splitlines() == [
        "guardbot DRY-RUN PAUSED (kill switch: /resume), NOT READY: 0 positions, 1 account "
        "guarded here",
        "- kill switch engaged (STOP exists): no new action",
        "no isolated position is guarded here",
    ]


def test_budget_per_account_and_per_position() -> None:
    assert budget_answer(state()).splitlines() == [
        "budget left today (UTC day), USDC; at most 1,000.00 per action, reserve 0.00",
        "main: 19,880.00 of 20,000.00 left (120.00 added)",
        "  BTC: 4,880.00 of 5,000.00 left (120.00 added)",
        "  ETH: 4,880.00 of 5,000.00 left (120.00 added)",
        "  SOL: 5,000.00 of 5,000.00 left (0.00 added)",
    ]
    assert budget_answer(state(accounts=[], positions=[])).endswith(
        "no account is guarded here")


def test_figures_in_words() -> None:
    assert usdc("1234.565") == "1,234.56"  # to the cent, half to even
    assert usdc(None) == "?" and usdc("NaN") == "?" and usdc("x") == "?"
    assert percent("0.05") == "5.00%" and percent(None) == "?"
    assert short_symbol("PERP_1000PEPE_USDC") == "1000PEPE"
    assert short_symbol("SPOT_ETH_USDT") == "SPOT_ETH_USDT"
