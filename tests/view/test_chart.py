"""The one chart code: plain series in, one self-contained SVG out."""

from __future__ import annotations

from guardbot.view import chart

HOUR_MS = 3_600_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def test_a_chart_draws_mark_liquidation_margin_levels_actions_and_crosses() -> None:
    series = chart.Series(
        start=0.0, end=100.0,
        mark=[(0.0, 100.0), (50.0, 95.0), (100.0, 90.0)],
        liquidation=[(0.0, 84.0), (60.0, 80.0)],
        margin=[(0.0, 200.0), (60.0, 250.0)],
        markers=[chart.Marker(60.0, 250.0, "ADD", True, "ADD 50 <applied>"),
                 chart.Marker(80.0, 250.0, "REDUCE", False, "REDUCE 10")],
        crosses=[chart.Cross(100.0, 90.0, "liq", "liquidated")],
        levels=[chart.Level("price", 84.0, 0.0, 100.0)],
    )  # fmt: skip
    svg = chart.position_chart(series, chart.SECONDS)
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"') and svg.endswith("</svg>")
    assert svg.count("<polyline") == 4, "mark, liquidation, margin and the level"
    assert svg.count('class="action"') == 2
    assert 'fill="#fff"' in svg, "an action not applied is hollow"
    assert "ADD 50 &lt;applied&gt;" in svg, "titles are escaped"
    assert "liquidated" in svg and "40 s" in svg
    assert "<script" not in svg and "href" not in svg


def test_nothing_to_draw_says_so() -> None:
    empty = chart.Series(start=0.0, end=1.0, mark=[], liquidation=[], margin=[])
    assert chart.position_chart(empty) == "<p>(no samples yet)</p>"


def test_the_clock_axis_ticks_whole_minutes_or_hours() -> None:
    ticks = chart.clock_ticks(T0 + 61_000, T0 + 6 * HOUR_MS)
    assert [chart.clock_label(t) for t in ticks] == ["02:00", "04:00", "06:00"]
    short = chart.clock_ticks(T0, T0 + 10 * 60_000)
    assert short[1] - short[0] == 2 * 60_000


def test_flat_values_still_get_a_scale() -> None:
    scale = chart.Scale(5.0, 5.0, 0.0, 100.0)
    assert scale(5.0) == 0.0 and scale.high > scale.low
