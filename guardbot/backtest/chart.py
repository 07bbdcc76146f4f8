"""One self-contained HTML page per scenario: for every position, the mark, the guarded
liquidation price (and the unguarded twin's) and the margin over time, with the guard's
actions and the liquidations marked. Inline SVG drawn here: no script, no CDN, no library.

Liquidation prices come from the simulator's own formula (``guardbot.sim.margin``) at each
sampled margin, so the chart shows what the exchange would have done.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from guardbot.audit.ledger import Status
from guardbot.backtest.report import usdc
from guardbot.backtest.results import PositionResult, ScenarioResult
from guardbot.domain import ActionKind
from guardbot.sim import margin as m
from guardbot.sim.margin import MARKETS

WIDTH, PRICE_H, MARGIN_H, PAD_L, PAD_R, PAD_T, GAP, LEGEND_H = 820, 260, 110, 70, 20, 12, 34, 22
COLORS = {"mark": "#1f2937", "liq": "#dc2626", "twin": "#9ca3af", "margin": "#2563eb",
          "add": "#16a34a", "reduce": "#ea580c"}  # fmt: skip
STYLE = """body{font:14px system-ui,sans-serif;margin:24px;color:#111}h1{font-size:20px}
h2{font-size:15px;margin:28px 0 4px}p{margin:4px 0}svg{background:#fff;border:1px solid #e5e7eb}
.axis{font-size:11px;fill:#6b7280}.legend{font-size:12px}"""


class _Scale:
    def __init__(self, low: float, high: float, start: float, end: float) -> None:
        if high <= low:
            high = low + (abs(low) or 1.0) * 0.01
        self.low, self.high, self.start, self.end = low, high, start, end

    def __call__(self, value: float) -> float:
        return self.start + (value - self.low) / (self.high - self.low) * (self.end - self.start)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round values (steps of 1, 2 or 5 times a power of ten) between ``low`` and ``high``."""
    if high <= low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(f * power for f in (1, 2, 5, 10) if f * power >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _polyline(points: Sequence[tuple[float, float]], color: str, dashed: bool = False) -> str:
    if len(points) < 2:
        return ""
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    dash = ' stroke-dasharray="5 4"' if dashed else ""
    return f'<polyline fill="none" stroke="{color}" stroke-width="1.6"{dash} points="{coords}"/>'


def _liquidation(symbol: str, margin: Decimal, qty: Decimal, cost: Decimal) -> float | None:
    price = m.isolated_liquidation_price(MARKETS[symbol], margin, qty, cost)
    return None if price is None else float(price)


def _marker(x: float, y: float, kind: ActionKind, applied: bool, title: str) -> str:
    color = COLORS["add" if kind is ActionKind.ADD else "reduce"]
    dy = -7 if kind is ActionKind.ADD else 7
    fill = color if applied else "#fff"
    return (f'<path d="M{x:.1f},{y + dy:.1f} L{x - 5:.1f},{y - dy:.1f} L{x + 5:.1f},'
            f'{y - dy:.1f} Z" fill="{fill}" stroke="{color}"><title>{html.escape(title)}'
            "</title></path>")


def _cross(x: float, y: float, color: str, title: str) -> str:
    return (f'<g stroke="{color}" stroke-width="2.5"><title>{html.escape(title)}</title>'
            f'<line x1="{x - 6:.1f}" y1="{y - 6:.1f}" x2="{x + 6:.1f}" y2="{y + 6:.1f}"/>'
            f'<line x1="{x - 6:.1f}" y1="{y + 6:.1f}" x2="{x + 6:.1f}" y2="{y - 6:.1f}"/></g>')


def position_svg(scenario: ScenarioResult, p: PositionResult) -> str:
    """The chart of one position."""
    start = scenario.start_ms
    samples = p.samples
    if not samples:
        return "<p>(no samples)</p>"
    end_s = max(scenario.duration_s, (samples[-1].time_ms - start) / 1000, 1.0)
    x = _Scale(0.0, end_s, PAD_L, WIDTH - PAD_R)
    twin_liq = _liquidation(p.symbol, p.start_margin, p.qty, p.cost)
    series_mark = [((s.time_ms - start) / 1000, float(s.mark)) for s in samples]
    series_liq = [((s.time_ms - start) / 1000, liq) for s in samples if s.margin > 0
                  and (liq := _liquidation(p.symbol, s.margin, p.qty, p.cost)) is not None]
    prices = [v for _, v in series_mark] + [v for _, v in series_liq]
    if twin_liq is not None:
        prices.append(twin_liq)
    price = _Scale(min(prices) * 0.995, max(prices) * 1.005, PAD_T + PRICE_H, PAD_T)
    margin_top = PAD_T + PRICE_H + GAP
    margins = [float(s.margin) for s in samples] + [float(p.start_margin)]
    margin = _Scale(0.0, max(margins) * 1.1, margin_top + MARGIN_H, margin_top)
    height = margin_top + MARGIN_H + 30 + LEGEND_H
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}">']
    for value in _ticks(price.low, price.high, 6):
        parts.append(f'<text class="axis" x="{PAD_L - 6}" y="{price(value) + 4:.1f}" '
                     f'text-anchor="end">{value:,.2f}</text>')
    for value in _ticks(margin.low, margin.high, 4):
        parts.append(f'<text class="axis" x="{PAD_L - 6}" y="{margin(value) + 4:.1f}" '
                     f'text-anchor="end">{value:,.0f}</text>')
    for value in _ticks(0.0, end_s, 6):
        parts.append(f'<text class="axis" x="{x(value):.1f}" y="{height - LEGEND_H - 10}" '
                     f'text-anchor="middle">{value:,.0f} s</text>')
    parts.append(f'<line x1="{PAD_L}" y1="{margin_top + MARGIN_H}" x2="{WIDTH - PAD_R}" '
                 f'y2="{margin_top + MARGIN_H}" stroke="#d1d5db"/>')
    if twin_liq is not None:
        twin_end = end_s if p.unguarded_liquidated_ms is None else \
            (p.unguarded_liquidated_ms - start) / 1000
        parts.append(_polyline([(x(0), price(twin_liq)), (x(twin_end), price(twin_liq))],
                               COLORS["twin"], dashed=True))
    parts.append(_polyline([(x(t), price(v)) for t, v in series_mark], COLORS["mark"]))
    parts.append(_polyline(_steps([(x(t), price(v)) for t, v in series_liq]), COLORS["liq"]))
    parts.append(_polyline([(x(0), margin(float(p.start_margin))),
                            (x(end_s), margin(float(p.start_margin)))], COLORS["twin"],
                           dashed=True))
    parts.append(_polyline(_steps([(x((s.time_ms - start) / 1000), margin(float(s.margin)))
                                   for s in samples]), COLORS["margin"]))
    for action in p.history:
        if action.last_event == "SKIPPED":
            continue
        t = (action.time_ms - start) / 1000
        level = _margin_after(p, action.time_ms)
        parts.append(_marker(x(t), margin(level), action.kind, action.status is Status.APPLIED,
                             f"{t:g} s {action.kind.value} {usdc(action.amount)} "
                             f"({action.status.value}): {action.reason}"))
    for at_ms, color, who in ((p.guarded_liquidated_ms, COLORS["liq"], "guarded"),
                              (p.unguarded_liquidated_ms, COLORS["twin"], "unguarded")):
        if at_ms is not None:
            t = (at_ms - start) / 1000
            parts.append(_cross(x(t), price(_mark_at(p, at_ms)), color,
                                f"{who} liquidated at {t:g} s"))
    parts.append(_legend(height - 8))
    parts.append("</svg>")
    return "".join(parts)


def _steps(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """A step line: each value holds until the next sample."""
    stepped: list[tuple[float, float]] = []
    for point in points:
        if stepped:
            stepped.append((point[0], stepped[-1][1]))
        stepped.append(point)
    return stepped


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


def _legend(baseline: float) -> str:
    items = (("mark", "mark"), ("liq", "guarded liquidation price"),
             ("twin", "unguarded twin"), ("margin", "margin"),
             ("add", "ADD (hollow: not applied)"), ("reduce", "REDUCE"))
    parts, left = [], float(PAD_L)
    for key, label in items:
        parts.append(f'<rect x="{left:.0f}" y="{baseline - 9:.0f}" width="10" height="10" '
                     f'fill="{COLORS[key]}"/><text class="legend" x="{left + 14:.0f}" '
                     f'y="{baseline:.0f}">{html.escape(label)}</text>')
        left += 30 + 6.5 * len(label)
    return "".join(parts)


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
