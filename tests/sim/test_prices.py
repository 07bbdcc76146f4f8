"""Seeded scenarios: deterministic per seed, shaped as documented, accelerated by speed."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from guardbot.sim.margin import MARKETS
from guardbot.sim.prices import PriceFeed, ScenarioError
from guardbot.sim.server import SimServer

ETH = "PERP_ETH_USDC"


def path(scenario: str, seed: int, seconds: int) -> list[Decimal]:
    feed = PriceFeed(MARKETS, scenario, seed)
    return [feed.step()[ETH] for _ in range(seconds)]


def test_same_seed_same_path_other_seed_other_path() -> None:
    assert path("calm", 7, 300) == path("calm", 7, 300)
    assert path("calm", 7, 300) != path("calm", 8, 300)


def test_marks_are_decimals_on_the_tick() -> None:
    feed = PriceFeed(MARKETS, "calm", 1)
    for _ in range(50):
        for symbol, mark in feed.step().items():
            assert isinstance(mark, Decimal) and mark % MARKETS[symbol].quote_tick == 0


def test_calm_stays_near_the_start() -> None:
    prices = path("calm", 7, 600)
    assert all(Decimal(2700) < p < Decimal(3300) for p in prices)


def test_crash_falls_about_thirty_percent() -> None:
    prices = path("crash", 7, 200)
    assert prices[58] > Decimal(2900)
    assert Decimal(1950) < prices[-1] < Decimal(2250)  # 3000 * 0.7 = 2100, plus noise


def test_fastcrash_falls_thirty_percent_in_ten_seconds_and_the_extremes_are_kept() -> None:
    feed = PriceFeed(MARKETS, "fastcrash", 7)
    prices = [feed.step()[ETH] for _ in range(80)]
    assert prices[59] > Decimal(2900)
    assert Decimal(1950) < prices[70] < Decimal(2250)  # 10 s later: 3000 * 0.7, plus noise
    assert feed.extremes[ETH] == (min(prices), max([MARKETS[ETH].start_price, *prices]))


def test_phases_say_when_the_scripted_part_of_a_path_is_over(tmp_path: Path) -> None:
    assert PriceFeed(MARKETS, "fastcrash", 7).phases() == [
        (0, "calm"), (60, "every symbol falls 30 % in 10 s"), (70, "calm again")]
    assert PriceFeed(MARKETS, "squeeze", 7).phases()[1] == (60, "every symbol rises 25 % in 60 s")
    assert PriceFeed(MARKETS, "calm", 7).phases() == []  # an endless walk
    replay = tmp_path / "path.csv"
    replay.write_text("t,PERP_ETH_USDC\n0,3000\n1,2900\n2,2800\n")
    assert PriceFeed(MARKETS, f"csv:{replay}", 7).phases()[-1] == (
        3, "replay over: the last marks hold")


def test_squeeze_rises_about_twenty_five_percent() -> None:
    prices = path("squeeze", 7, 130)
    assert Decimal(3500) < prices[-1] < Decimal(4000)  # 3000 * 1.25 = 3750


def test_trend_drifts_by_seed_parity() -> None:
    up, down = path("trend", 7, 3600), path("trend", 8, 3600)
    assert up[-1] > Decimal(3000) > down[-1]


def test_csv_replay(tmp_path: Path) -> None:
    replay = tmp_path / "marks.csv"
    replay.write_text("t,PERP_ETH_USDC\n0,3000\n1,2990.5\n2,2980\n")
    feed = PriceFeed(MARKETS, f"csv:{replay}", 7)
    marks = [feed.step()[ETH] for _ in range(4)]
    assert marks == [Decimal("2990.50"), Decimal("2980.00"), Decimal("2980.00"), Decimal("2980.00")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("t,PERP_ETH_USDC\n0,abc\n", "not a number"),
        ("t,PERP_ETH_USDC\n0,-1\n", "positive"),
        ("t,PERP_ETH_USDC\n", "no rows"),
    ],
)
def test_bad_replay_files_are_named(tmp_path: Path, content: str, message: str) -> None:
    replay = tmp_path / "bad.csv"
    replay.write_text(content)
    with pytest.raises(ScenarioError, match=message):
        PriceFeed(MARKETS, f"csv:{replay}", 7)


def test_unknown_scenario() -> None:
    with pytest.raises(ScenarioError, match="unknown scenario"):
        PriceFeed(MARKETS, "moon", 7)
    with pytest.raises(ScenarioError, match="cannot read"):
        PriceFeed(MARKETS, "csv:/nonexistent.csv", 7)


async def test_speed_accelerates_the_clock() -> None:
    async with SimServer(speed=100) as sim:
        started = time.monotonic()
        await asyncio.sleep(0.3)
        elapsed = time.monotonic() - started
        # ~100 simulated seconds per real one (loose below: a loaded machine lags)
        assert elapsed * 50 <= sim.prices.second <= elapsed * 100 + 3
    async with SimServer(speed=0) as paused:
        await asyncio.sleep(0.05)
        assert paused.prices.second == 0
        paused.advance(5)
        assert paused.prices.second == 5
        async with httpx.AsyncClient(base_url=paused.rest_url) as http:
            ticked = await http.post("/sim/tick", json={"seconds": 10})
            assert ticked.json() == {"sim_second": 15}
            refused = await http.post("/sim/tick", json={"seconds": 0})
            assert refused.status_code == 400 and "seconds" in refused.json()["message"]
