"""Price paths: the named shapes, their speed, the stochastic generator and CSV replays."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from guardbot.backtest.paths import (
    SHAPES,
    TAIL_S,
    PathError,
    csv_path,
    load_path,
    random_path,
    shape_path,
    speed_for,
)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_shape_starts_at_its_start_and_moves_against_the_position(name: str) -> None:
    path = shape_path(name)
    assert path.adverse and path.offsets_ms[0] == 0 and path.factors[0] == 1.0
    assert min(path.factors) < 0.9, "every shape is a real adverse move"
    assert path.offsets_ms == tuple(range(0, path.duration_ms + 1, 1000))
    assert len(set(path.factors[-TAIL_S:])) == 1, "the tail is flat"


def test_speed_compresses_a_shape_in_time_and_speed_for_finds_the_fall_rate() -> None:
    slow, fast = shape_path("crash", 1.0), shape_path("crash", 2.0)
    assert slow.duration_ms - TAIL_S * 1000 == 20_000
    assert fast.duration_ms - TAIL_S * 1000 == 10_000
    assert min(slow.factors) == pytest.approx(min(fast.factors))
    assert fast.steepest == pytest.approx(0.02)
    for name in ("crash", "cascade", "wick", "whipsaw"):
        assert shape_path(name, speed_for(name, 0.03)).steepest == pytest.approx(0.03, rel=0.02)
    with pytest.raises(PathError, match="at once"):
        speed_for("gap", 0.01)


def test_a_short_sees_the_mirror_and_marks_are_rounded_to_the_tick() -> None:
    path = shape_path("crash")
    longs = path.marks(Decimal(3000), Decimal("0.01"))
    shorts = path.marks(Decimal(3000), Decimal("0.01"), mirrored=True)
    assert longs[-1] == Decimal("2400.00") and shorts[-1] == Decimal("3600.00")
    assert all(a + b == Decimal(6000) for a, b in zip(longs, shorts, strict=True))
    assert all(m == m.quantize(Decimal("0.01")) for m in longs)


def test_the_random_path_is_seeded_clusters_and_is_not_mirrored() -> None:
    one, again, other = random_path(3600, seed=1), random_path(3600, seed=1), random_path(
        3600, seed=2)
    assert one.factors == again.factors and one.factors != other.factors
    assert not one.adverse and len(one.factors) == 3601
    returns = [b / a - 1 for a, b in zip(one.factors, one.factors[1:], strict=False)]
    assert max(abs(r) for r in returns) < 0.2
    faster = random_path(3600, speed=16, seed=1)
    spread = [max(p.factors) - min(p.factors) for p in (one, faster)]
    assert spread[1] > spread[0], "speed scales the volatility"
    assert load_path("random:1h", seed=1).factors == one.factors


def test_a_csv_replay_reads_any_resolution_and_fills_gaps_per_second(tmp_path: Path) -> None:
    file = tmp_path / "eth.csv"
    file.write_text("time,price\n2026-01-01T00:00:00Z,100\n2026-01-01T00:00:00.500Z,99\n"
                    "2026-01-01T00:00:04Z,95\n")
    path = csv_path(file)
    assert path.offsets_ms == (0, 500, 1500, 2500, 3500, 4000)
    assert path.factors[0] == 1.0 and path.factors[1] == pytest.approx(0.99)
    assert path.factors[-1] == pytest.approx(0.95)
    assert path.factors[2] == pytest.approx(0.99 - 0.04 / 3.5)
    seconds = tmp_path / "s.csv"
    seconds.write_text("0,10\n60,11\n")
    assert len(csv_path(seconds).offsets_ms) == 61


@pytest.mark.parametrize(("text", "message"), [
    ("time,price\n0,100\n", "at least two rows"),
    ("0,100\n1,abc\n", "not a number"),
    ("0,100\n1,-5\n", "positive"),
    ("5,100\n1,100\n", "time goes back"),
    ("0,100\nyesterday,100\n", "neither seconds nor ISO"),
])
def test_a_bad_csv_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "bad.csv"
    file.write_text(text)
    with pytest.raises(PathError, match=message):
        csv_path(file)


def test_unknown_names_and_durations_are_refused() -> None:
    with pytest.raises(PathError, match=r"unknown path 'moon'.*crash"):
        load_path("moon")
    with pytest.raises(PathError, match="bad duration"):
        load_path("random:soon")
    with pytest.raises(PathError, match="cannot read"):
        load_path("csv:/nonexistent/file.csv")
