"""One self-contained HTML page per scenario: for every position, the mark, the guarded
liquidation price (and the unguarded twin's) and the margin over time, with the guard's
actions and the liquidations marked, drawn by the one chart code (``guardbot.view.chart``,
which says why charts are inline SVG drawn server-side): no script, no CDN, no library.

Liquidation prices come from the simulator's own formula (``guardbot.sim.margin``) at each
sampled margin, so the chart shows what the exchange would have done.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from guardbot.audit.ledger import Status
from guardbot.backtest.report import usdc
from guardbot.backtest.results import PositionResult, ScenarioResult
from guardbot.sim import margin as m
from guardbot.sim.margin import MARKETS
from guardbot.view import chart

STYLE = """body{font:14px system-ui,sans-serif;margin:24px;color:#111}h1{font-size:20px}
h2{font-size:15px;margin:28px 0 4px}p{margin:4px 0}svg{background:#fff;border:1px solid #e5e7eb}
"""
LEGEND = (("mark", "mark"), ("liq", "guarded liquidation price"), ("twin", "unguarded twin"),
          ("margin", "margin"), ("add", "ADD (hollow: not applied)"), ("reduce", "REDUCE"))


def _liquidation(symbol: str, margin: Decimal, qty: Decimal, cost: Decimal) -> float | None:
    price = m.isolated_liquidation_price(MARKETS[symbol], margin, qty, cost)
    return None if price is None else float(price)


def position_svg(scenario: ScenarioResult, p: PositionResult) -> str:
    """The chart of one position (``guardbot.view.chart``), in seconds since the start."""
    start = scenario.start_ms
    samples = p.samples
    if not samples:
        return "<p>(no samples)</p>"

    def seconds(at_ms: int) -> float:
        return (at_ms - start) / 1000

    end_s = max(scenario.duration_s, seconds(samples[-1].time_ms), 1.0)
    levels = [chart.Level("margin", float(p.start_margin), 0.0, end_s)]
    twin_liq = _liquidation(p.symbol, p.start_margin, p.qty, p.cost)
    if twin_liq is not None:
        twin_end = end_s if p.unguarded_liquidated_ms is None else \
            seconds(p.unguarded_liquidated_ms)
        levels.append(chart.Level("price", twin_liq, 0.0, twin_end))
    markers = [
        chart.Marker(seconds(a.time_ms), _margin_after(p, a.time_ms), a.kind.value,
                     a.status is Status.APPLIED,
                     f"{seconds(a.time_ms):g} s {a.kind.value} {usdc(a.amount)} "
                     f"({a.status.value}): {a.reason}")
        for a in p.history if a.last_event != "SKIPPED"
    ]
    crosses = [
        chart.Cross(seconds(at_ms), _mark_at(p, at_ms), color,
                    f"{who} liquidated at {seconds(at_ms):g} s")
        for at_ms, color, who in ((p.guarded_liquidated_ms, "liq", "guarded"),
                                  (p.unguarded_liquidated_ms, "twin", "unguarded"))
        if at_ms is not None
    ]
    return chart.position_chart(chart.Series(
        start=0.0, end=end_s,
        mark=[(seconds(s.time_ms), float(s.mark)) for s in samples],
        liquidation=[(seconds(s.time_ms), liq) for s in samples if s.margin > 0
                     and (liq := _liquidation(p.symbol, s.margin, p.qty, p.cost)) is not None],
        margin=[(seconds(s.time_ms), float(s.margin)) for s in samples],
        markers=markers, crosses=crosses, levels=levels, legend=LEGEND), chart.SECONDS)


def _margin_after(p: PositionResult, at_ms: int) -> float:
    """The margin the first sample after ``at_ms`` shows (an action lands between them)."""
    for sample in p.samples:
        if sample.time_ms > at_ms:
            return float(sample.margin)
    return float(p.samples[-1].margin)


def _mark_at(p: PositionResult, at_ms: int) -> float:
    mark = float(p.samples[0].mark)
    for sample in p.samples:
        if sample.time_ms > at_ms:
            break
        mark = float(sample.mark)
    return mark


def page(scenario: ScenarioResult) -> str:
    """The scenario's HTML page."""
    sections = []
    for p in scenario.positions:
        fate = "liquidated" if p.guarded_liquidated_ms is not None else "saved"
        twin = "liquidated" if p.unguarded_liquidated_ms is not None else "alive"
        savable = "savable" if p.verdict.savable else "not savable"
        sections.append(
            f"<h2>{html.escape(f'{p.account} {p.symbol} {p.side} {p.leverage}x')}</h2>"
            f"<p>guarded: {fate}; unguarded twin: {twin}; oracle {usdc(p.verdict.extra)} USDC "
            f"({savable}: {html.escape(p.verdict.binding)}); peak extra {usdc(p.peak_extra)}, "
            f"final {usdc(p.final_extra)}, swept {usdc(p.swept)}</p>" + position_svg(scenario, p))
    title = f"guardbot backtest: {scenario.label}"
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{scenario.duration_s:g} s of virtual time; exchange ledger "
            f"{'equal to' if scenario.ledger.equal else 'DIFFERENT from'} the audit log</p>"
            + "".join(sections) + "</body></html>\n")


def write_charts(results: Sequence[ScenarioResult], folder: Path) -> list[Path]:
    """One page per scenario in ``folder``; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for scenario in results:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{scenario.path}-x{scenario.speed:g}")
        target = folder / f"{name}.html"
        target.write_text(page(scenario), encoding="utf-8")
        written.append(target)
    return written
