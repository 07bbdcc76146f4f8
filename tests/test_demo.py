"""``guardbot demo`` as a user runs it, plus its rendering."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from guardbot.cli import main
from guardbot.demo import DemoOptions, render_summary, render_table


@pytest.mark.slow
def test_demo_json_compares_the_guarded_account_with_its_unguarded_twin(tmp_path: Path) -> None:
    # fastcrash at 20x: calm for 3 s, then -30 % in 10 simulated seconds (0.5 s); the demo
    # ends about 2 s later. The demo runs in real time: at 40x (0.25 s for the crash) a
    # scheduling stall on 2 shared cores let the crash reach both longs before the guard's
    # first rescue (2 failures in 8 runs under load; 0 in 8 at 20x).
    result = CliRunner().invoke(
        main, ["demo", "--duration", "20", "--speed", "20", "--json", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert set(summary["guarded"]) == {"liquidations", "margin_added", "margin_swept", "actions"}
    assert set(summary["unguarded"]) == set(summary["guarded"])
    assert summary["guarded"]["liquidations"] == 0
    assert summary["unguarded"]["liquidations"] == 2  # the two isolated longs
    assert Decimal(summary["guarded"]["margin_added"]) > 0
    assert summary["guarded"]["actions"] > 0
    assert summary["unguarded"] == {"liquidations": 2, "margin_added": "0",
                                    "margin_swept": "0", "actions": 0}
    assert summary["cross_touched"] is False
    assert Path(summary["audit_db"]).is_file()
    efficacy = summary["efficacy"]
    assert efficacy["savable"] == 3, "the default budgets could save every isolated position"
    assert efficacy["saved"] == efficacy["savable"]
    assert Decimal(efficacy["oracle_margin"]) > 0


@pytest.mark.slow
def test_piped_the_demo_prints_a_legend_and_a_line_per_event_and_ends_when_settled(
    tmp_path: Path,
) -> None:
    # Not a terminal (CliRunner): event lines, not a redrawn table. fastcrash at 40x is over
    # 1.75 s in; with 30 s allowed the demo ends once the guard has settled after that.
    result = CliRunner().invoke(
        main, ["demo", "--duration", "30", "--speed", "40", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "\x1b" not in result.output  # no screen control codes in a pipe
    legend = "\n".join(lines[:8])
    assert "guarded    guardbot watches it" in legend and "unguarded  its twin" in legend
    assert "less than 5 % of the mark away, back to 9 %" in legend  # topup's thresholds
    assert "beyond 25 %" in legend  # sweep's
    events = [line[9:] for line in lines if line[5:9] == " s  "]  # "  2.3 s  <event>"
    assert events[0] == "phase: calm"
    assert "phase: every symbol falls 30 % in 10 s" in events
    assert "phase: calm again" in events
    assert sum(e.startswith("LIQUIDATED: unguarded ") for e in events) == 2
    assert any(e.startswith("guard: ADD ") and "by topup" in e for e in events)
    summary = json.loads((tmp_path / "summary.json").read_text())  # the promised file
    assert summary["summary_file"] == str(tmp_path / "summary.json")
    assert summary["duration_s"] < 10, "no idle tail after the guard settled"
    assert summary["unguarded"]["liquidations"] == 2
    assert f"summary: {tmp_path / 'summary.json'}" in lines


def test_an_endless_walk_has_no_scripted_end_in_the_legend() -> None:
    from guardbot.config import parse_config
    from guardbot.demo import demo_legend

    settings = parse_config({"policies": [{"use": "topup", "params": {"trigger": "0.08",
                                                                      "target": "0.15"}}]})
    legend = demo_legend(settings, DemoOptions(scenario="calm"), [])
    assert any("less than 8 % of the mark away, back to 15 %" in line for line in legend)
    assert any("calm: a random walk with no scripted end" in line for line in legend)


def test_render_table_shows_open_and_liquidated_positions() -> None:
    rows = [
        {"account": "guarded", "symbol": "PERP_ETH_USDC", "mode": "ISOLATED",
         "mark": Decimal("2500"), "qty": Decimal(2), "margin": Decimal("812.5"),
         "liq": Decimal("2250"), "distance": Decimal("0.1"), "status": "open"},
        {"account": "unguarded", "symbol": "PERP_ETH_USDC", "mode": "ISOLATED",
         "mark": Decimal("2500"), "status": "LIQUIDATED"},
    ]  # fmt: skip
    text = render_table(rows, ["ADD 100 USDC on PERP_ETH_USDC"], 3.0, DemoOptions())
    lines = text.splitlines()
    assert "scenario=fastcrash" in lines[0]
    assert any("812.50" in line and "10.0 %" in line and "open" in line for line in lines)
    assert any(line.startswith("unguarded") and "LIQUIDATED" in line for line in lines)
    assert lines[-1].strip() == "ADD 100 USDC on PERP_ETH_USDC"


def test_render_summary_puts_the_two_accounts_side_by_side() -> None:
    summary = {
        "guarded": {"liquidations": 0, "margin_added": "120.50", "margin_swept": "10.00",
                    "actions": 3},
        "unguarded": {"liquidations": 2, "margin_added": "0", "margin_swept": "0",
                      "actions": 0},
        "scenario": "crash", "speed": 30.0, "duration_s": 20.0, "isolated_positions": 3,
        "cross_touched": False, "audit_db": "demo-output/audit.db",
        "efficacy": {"savable": 3, "saved": 3, "margin_added": "120.50",
                     "oracle_margin": "80.25"},
    }  # fmt: skip
    text = render_summary(summary)
    liquidations = next(line for line in text.splitlines() if line.startswith("isolated liq"))
    assert liquidations.split()[-2:] == ["0", "2"]
    assert "120.50" in text and "cross position touched: no" in text
    assert "3 of 3 savable positions saved; 120.50 USDC added against the oracle's 80.25" in text
