"""The one chart code of guardbot: a position's mark, liquidation price and margin over time,
with its actions marked, as inline SVG.

Why drawn here, server-side, as SVG: operators run guardbot on boxes without internet, so
nothing may come from a CDN, and the install has no JavaScript build step to vendor a chart
library through. An SVG string needs neither: the live page (``guardbot.view.server``) shows
it as it is, a report or a backtest page (``guardbot.backtest.chart``) embeds it and still
opens offline from an email attachment, and all of them draw with this same code. It takes
plain series (floats: they only place pixels; the figures people read are printed from the
``Decimal`` values elsewhere), so it knows nothing of where they come from.

Layout: a price panel (mark, liquidation price, optional reference levels, crosses for
liquidations) above a margin panel (margin, reference levels, a triangle per action: up for
ADD, down for REDUCE, hollow when it was not applied), a time axis and a legend.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

WIDTH, PRICE_H, MARGIN_H, PAD_L, PAD_R, PAD_T, GAP, LEGEND_H = 820, 260, 110, 70, 20, 12, 34, 22
COLORS = {"mark": "#1f2937", "liq": "#dc2626", "twin": "#9ca3af", "margin": "#2563eb",
          "add": "#16a34a", "reduce": "#ea580c"}  # fmt: skip
STYLE = ".axis{font-size:11px;fill:#6b7280}.legend{font-size:12px}"

Point = tuple[float, float]  # (time, value)


@dataclass(frozen=True, slots=True)
class Marker:
    """An action at ``t``, drawn on the margin panel at ``value``."""

    t: float
    value: float
    kind: str  # "ADD" or "REDUCE"
    applied: bool
    title: str


@dataclass(frozen=True, slots=True)
class Cross:
    """A liquidation at ``t``, drawn on the price panel at ``price``."""

    t: float
    price: float
    color: str  # a key of COLORS
    title: str


@dataclass(frozen=True, slots=True)
class Level:
    """A dashed reference line on one panel from ``start`` to ``end``."""

    panel: Literal["price", "margin"]
    value: float
    start: float
    end: float
    color: str = "twin"


LIVE_LEGEND = (("mark", "mark"), ("liq", "liquidation price"), ("margin", "margin"),
               ("add", "ADD (hollow: not applied)"), ("reduce", "REDUCE"))


@dataclass(frozen=True, slots=True)
class Series:
    """Everything one chart shows; times in any one unit the ``TimeAxis`` labels."""

    start: float
    end: float
    mark: Sequence[Point]
    liquidation: Sequence[Point]
    margin: Sequence[Point]
    markers: Sequence[Marker] = ()
    crosses: Sequence[Cross] = ()
    levels: Sequence[Level] = ()
    legend: Sequence[tuple[str, str]] = field(default=LIVE_LEGEND)


@dataclass(frozen=True, slots=True)
class TimeAxis:
    """How the time axis is ticked and labelled."""

    ticks: Callable[[float, float], list[float]]
    label: Callable[[float], str]


def ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round values (steps of 1, 2 or 5 times a power of ten) between ``low`` and ``high``."""
    if high <= low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(f * power for f in (1, 2, 5, 10) if f * power >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


_CLOCK_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
                  21600, 43200, 86400)


def clock_ticks(low_ms: float, high_ms: float, count: int = 6) -> list[float]:
    """Whole seconds, minutes or hours (UTC) between two epoch times in ms."""
    if high_ms <= low_ms:
        return [low_ms]
    raw = (high_ms - low_ms) / max(count - 1, 1) / 1000
    step = 1000 * next((s for s in _CLOCK_STEPS_S if s >= raw), _CLOCK_STEPS_S[-1])
    first = math.ceil(low_ms / step) * step
    return [first + i * step for i in range(int((high_ms - first) / step) + 1)]


def clock_label(at_ms: float) -> str:
    """``HH:MM`` UTC of an epoch time in ms (``HH:MM:SS`` off a whole minute)."""
    moment = datetime.fromtimestamp(at_ms / 1000, UTC)
    return moment.strftime("%H:%M" if at_ms % 60_000 == 0 else "%H:%M:%S")


SECONDS = TimeAxis(lambda low, high: ticks(low, high, 6), lambda v: f"{v:,.0f} s")
CLOCK = TimeAxis(clock_ticks, clock_label)


class Scale:
    """A linear map from values in [low, high] to pixels in [start, end]."""

    def __init__(self, low: float, high: float, start: float, end: float) -> None:
        if high <= low:
            high = low + (abs(low) or 1.0) * 0.01
        self.low, self.high, self.start, self.end = low, high, start, end

    def __call__(self, value: float) -> float:
        return self.start + (value - self.low) / (self.high - self.low) * (self.end - self.start)


def polyline(points: Sequence[Point], color: str, dashed: bool = False) -> str:
    if len(points) < 2:
        return ""
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    dash = ' stroke-dasharray="5 4"' if dashed else ""
    return f'<polyline fill="none" stroke="{color}" stroke-width="1.6"{dash} points="{coords}"/>'


def steps(points: Sequence[Point]) -> list[Point]:
    """A step line: each value holds until the next sample."""
    stepped: list[Point] = []
    for point in points:
        if stepped:
            stepped.append((point[0], stepped[-1][1]))
        stepped.append(point)
    return stepped


def marker(x: float, y: float, kind: str, applied: bool, title: str) -> str:
    add = kind == "ADD"
    color = COLORS["add" if add else "reduce"]
    dy = -7 if add else 7
    fill = color if applied else "#fff"
    return (f'<path class="action" d="M{x:.1f},{y + dy:.1f} L{x - 5:.1f},{y - dy:.1f} '
            f'L{x + 5:.1f},{y - dy:.1f} Z" fill="{fill}" stroke="{color}"><title>'
            f"{html.escape(title)}</title></path>")


def cross(x: float, y: float, color: str, title: str) -> str:
    return (f'<g stroke="{color}" stroke-width="2.5"><title>{html.escape(title)}</title>'
            f'<line x1="{x - 6:.1f}" y1="{y - 6:.1f}" x2="{x + 6:.1f}" y2="{y + 6:.1f}"/>'
            f'<line x1="{x - 6:.1f}" y1="{y + 6:.1f}" x2="{x + 6:.1f}" y2="{y - 6:.1f}"/></g>')


def legend(items: Sequence[tuple[str, str]], baseline: float) -> str:
    parts, left = [], float(PAD_L)
    for key, label in items:
        parts.append(f'<rect x="{left:.0f}" y="{baseline - 9:.0f}" width="10" height="10" '
                     f'fill="{COLORS[key]}"/><text class="legend" x="{left + 14:.0f}" '
                     f'y="{baseline:.0f}">{html.escape(label)}</text>')
        left += 30 + 6.5 * len(label)
    return "".join(parts)


def position_chart(series: Series, axis: TimeAxis = CLOCK) -> str:
    """The SVG of one position's chart (a paragraph saying so when there is nothing yet)."""
    if not series.mark and not series.margin:
        return "<p>(no samples yet)</p>"
    x = Scale(series.start, max(series.end, series.start + 1.0), PAD_L, WIDTH - PAD_R)
    prices = ([v for _, v in series.mark] + [v for _, v in series.liquidation]
              + [lv.value for lv in series.levels if lv.panel == "price"])
    price = Scale(min(prices) * 0.995, max(prices) * 1.005, PAD_T + PRICE_H, PAD_T)
    margin_top = PAD_T + PRICE_H + GAP
    margins = ([v for _, v in series.margin] + [m.value for m in series.markers]
               + [lv.value for lv in series.levels if lv.panel == "margin"])
    margin = Scale(0.0, max(margins, default=1.0) * 1.1, margin_top + MARGIN_H, margin_top)
    height = margin_top + MARGIN_H + 30 + LEGEND_H
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}"><style>{STYLE}</style>']
    for value in ticks(price.low, price.high, 6):
        parts.append(f'<text class="axis" x="{PAD_L - 6}" y="{price(value) + 4:.1f}" '
                     f'text-anchor="end">{value:,.2f}</text>')
    for value in ticks(margin.low, margin.high, 4):
        parts.append(f'<text class="axis" x="{PAD_L - 6}" y="{margin(value) + 4:.1f}" '
                     f'text-anchor="end">{value:,.0f}</text>')
    for value in axis.ticks(x.low, x.high):
        parts.append(f'<text class="axis" x="{x(value):.1f}" y="{height - LEGEND_H - 10}" '
                     f'text-anchor="middle">{html.escape(axis.label(value))}</text>')
    parts.append(f'<line x1="{PAD_L}" y1="{margin_top + MARGIN_H}" x2="{WIDTH - PAD_R}" '
                 f'y2="{margin_top + MARGIN_H}" stroke="#d1d5db"/>')
    for level in series.levels:
        scale = price if level.panel == "price" else margin
        parts.append(polyline([(x(level.start), scale(level.value)),
                               (x(level.end), scale(level.value))], COLORS[level.color],
                              dashed=True))
    parts.append(polyline([(x(t), price(v)) for t, v in series.mark], COLORS["mark"]))
    parts.append(polyline(steps([(x(t), price(v)) for t, v in series.liquidation]),
                          COLORS["liq"]))
    parts.append(polyline(steps([(x(t), margin(v)) for t, v in series.margin]),
                          COLORS["margin"]))
    for m in series.markers:
        parts.append(marker(x(m.t), margin(m.value), m.kind, m.applied, m.title))
    for c in series.crosses:
        parts.append(cross(x(c.t), price(c.price), COLORS[c.color], c.title))
    parts.append(legend(series.legend, height - 8))
    parts.append("</svg>")
    return "".join(parts)
