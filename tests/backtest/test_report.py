"""Reports: the terminal table, JSON, CSV, the trade-off table and the HTML charts."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from backtest.conftest import written_config
from guardbot.backtest import report
from guardbot.backtest.chart import write_charts
from guardbot.backtest.paths import shape_path
from guardbot.backtest.portfolio import load_book
from guardbot.backtest.results import ScenarioResult
from guardbot.backtest.runner import AuditTemplate, RunOptions, Scenario
from guardbot.daemon import load_policies


@pytest.fixture(scope="module")
def results(template: AuditTemplate) -> list[ScenarioResult]:
    settings = written_config()
    policies = load_policies(settings)
    return [Scenario(load_book("demo"), shape_path(name), settings, policies,
                     RunOptions(samples=True)).run(template) for name in ("crash", "gap")]


def test_the_table_has_a_row_per_position_and_the_totals(results: list[ScenarioResult]) -> None:
    text = report.text(results)
    rows = [line for line in text.splitlines() if line.startswith(("crash", "gap"))]
    assert len([r for r in rows if "PERP_" in r]) == 6
    assert re.search(r"crash\s+1\s+1.00\s+demo\s+PERP_ETH_USDC\s+long\s+10x\s+alive\s+"
                     r"LIQ 10s\s+yes", text)
    assert "exchange ledger equal to the audit log" in text
    assert "savable positions saved: 3 of 3" in text


def test_json_and_csv_carry_money_as_text(results: list[ScenarioResult]) -> None:
    data = json.loads(report.as_json(results))
    first = data["scenarios"][0]
    assert first["path"] == "crash" and first["ledger"]["equal"] is True
    assert isinstance(first["positions"][0]["peak_extra"], str)
    assert data["totals"]["savable_lost"] == 0 and data["totals"]["ledgers_equal"]
    rows = list(csv.DictReader(io.StringIO(report.as_csv(results))))
    assert len(rows) == 6 and rows[0]["symbol"] == "PERP_ETH_USDC"
    assert rows[0]["actions"].startswith("ADD:applied=")
    table = report.trade_off([("a", results), ("b", results[:1])])
    assert table.splitlines()[1].startswith("a ") and "0 of 3" in table


def test_capital_beyond_the_oracle_is_shown_in_usdc_next_to_the_ratio(
    results: list[ScenarioResult],
) -> None:
    """Where the oracle needs a few USDC the ratio is large for any rescue: the excess (peak
    minus the oracle's) is reported for the same positions the ratio covers."""
    rated = [p for s in results for p in s.positions if p.ratio is not None]
    assert rated
    for p in rated:
        assert p.excess == p.peak_extra - p.verdict.extra and p.excess >= 0
    assert all(p.excess is None for s in results for p in s.positions if p.ratio is None)
    data = json.loads(report.as_json(results))
    rows = [row for s in data["scenarios"] for row in s["positions"]]
    assert {row["peak_excess"] is None for row in rows} == {True, False}
    assert data["totals"]["median_peak_excess"] is not None
    assert "EXCESS" in report.text(results).splitlines()[0]
    assert "MEDIAN EXCESS" in report.trade_off([("a", results)]).splitlines()[0]


def test_a_lost_savable_position_is_explained(results: list[ScenarioResult]) -> None:
    scenario = results[0]
    position = scenario.positions[0]
    position.guarded_liquidated_ms = scenario.start_ms + 12_000  # pretend it died
    try:
        text = report.explain(scenario, position)
    finally:
        position.guarded_liquidated_ms = None
    assert text.startswith("LOST crash demo PERP_ETH_USDC long 10x at 12 s")
    assert "ADD" in text and "applied" in text and "decided" in text


def test_a_chart_is_one_self_contained_page_per_scenario(results: list[ScenarioResult],
                                                         tmp_path: Path) -> None:
    written = write_charts(results, tmp_path / "charts")
    assert [p.name for p in written] == ["crash-x1.html", "gap-x1.html"]
    page = written[0].read_text()
    assert page.count("<svg") == 3 and page.count("<polyline") >= 9
    assert "<script" not in page and "http" not in page.replace(
        "http://www.w3.org/2000/svg", "")
    assert page.count("ADD ") >= 3, "the guard's actions are marked"
    assert "liquidated at" in page
