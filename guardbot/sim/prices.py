"""Seeded mark-price scenarios for the simulated exchange.

A ``PriceFeed`` advances one simulated second per ``step()`` and returns the new mark of every
symbol; the server calls it ``speed`` times per real second. The same seed and scenario always
give the same path, so tests and demos are reproducible.

Scenarios:
    ``calm``     a random walk, about 0.02 % per second
    ``trend``    the walk with a steady drift (up for odd seeds, down for even ones), ~2 %/h
    ``crash``    calm for 60 s, then every symbol falls 30 % over the next 120 s, then calm
    ``fastcrash`` calm for 60 s, then every symbol falls 30 % in 10 s (about 3.5 %/s), then
                 calm: the kind of fall one top-up does not survive
    ``squeeze``  calm for 60 s, then every symbol rises 25 % over 60 s, then calm
    ``csv:PATH`` replay: a header ``t,<SYMBOL>,<SYMBOL>...`` then one row per simulated second
                 (``t`` is ignored); symbols not in the file walk calmly; the last row holds.

The random draws are floats (they are noise, not money); every mark is a ``Decimal`` rounded
to the symbol's ``quote_tick``.
"""

from __future__ import annotations

import csv
import random
import zlib
from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path

from guardbot.sim.margin import Market

SCENARIOS = ("calm", "trend", "crash", "fastcrash", "squeeze")
CALM_SIGMA = 0.0002
TREND_DRIFT = 0.0000055  # per second: about 2 % per hour
SHOCK_START_S = 60
CRASH = (Decimal("-0.30"), 120)
FAST_CRASH = (Decimal("-0.30"), 10)
SQUEEZE = (Decimal("0.25"), 60)
# scenario -> (relative move, seconds it takes), from SHOCK_START_S on
SHOCKS = {"crash": CRASH, "fastcrash": FAST_CRASH, "squeeze": SQUEEZE}


class ScenarioError(ValueError):
    """An unknown scenario name or an unreadable replay file."""


class PriceFeed:
    """The mark path of every market under one scenario (one ``step()`` = one sim second)."""

    def __init__(self, markets: Mapping[str, Market], scenario: str = "calm", seed: int = 7):
        self.markets = dict(markets)
        self.scenario = scenario
        self.seed = seed
        self.second = 0
        self.marks = {s: m.start_price for s, m in self.markets.items()}
        # One generator per symbol, so adding a symbol does not change the others' paths.
        self._rngs = {s: random.Random(seed * 1_000_003 + zlib.crc32(s.encode())) for s in markets}
        self._replay: list[dict[str, Decimal]] = []
        if scenario.startswith("csv:"):
            self._replay = _read_replay(Path(scenario[4:]), self.markets)
            if self._replay:
                self.marks.update(self._replay[0])
        elif scenario not in SCENARIOS:
            raise ScenarioError(
                f"unknown scenario {scenario!r}: use one of {', '.join(SCENARIOS)} or csv:PATH"
            )
        self._origin = dict(self.marks)
        # The lowest and highest mark of each symbol so far (what an oracle needs).
        self.extremes = {s: (mark, mark) for s, mark in self.marks.items()}

    def step(self) -> dict[str, Decimal]:
        """Advance one simulated second; return every symbol's new mark."""
        self.second += 1
        for symbol, market in self.markets.items():
            mark = self._next(symbol, market)
            self.marks[symbol] = mark
            low, high = self.extremes[symbol]
            self.extremes[symbol] = (min(low, mark), max(high, mark))
        return dict(self.marks)

    def phases(self) -> list[tuple[int, str]]:
        """The scripted phases of the path: (first simulated second, what happens). After
        the last one begins nothing scripted is left; empty for the endless walks (calm,
        trend)."""
        if self._replay:
            return [(0, f"replay of {len(self._replay)} s"),
                    (len(self._replay), "replay over: the last marks hold")]
        shock = SHOCKS.get(self.scenario)
        if shock is None:
            return []
        move, duration = shock
        verb = "falls" if move < 0 else "rises"
        return [(0, "calm"),
                (SHOCK_START_S, f"every symbol {verb} {abs(move) * 100:.0f} % in {duration} s"),
                (SHOCK_START_S + duration, "calm again")]

    def _next(self, symbol: str, market: Market) -> Decimal:
        if self._replay:
            row = self._replay[min(self.second, len(self._replay) - 1)]
            if symbol in row:
                return row[symbol]
        noise = self._rngs[symbol].gauss(0.0, CALM_SIGMA)
        if self.scenario == "trend":
            noise += TREND_DRIFT if self.seed % 2 else -TREND_DRIFT
        price = self.marks[symbol] * (1 + Decimal(repr(noise)))
        shock = SHOCKS.get(self.scenario)
        if shock is not None:
            move, duration = shock
            elapsed = self.second - SHOCK_START_S
            if 0 < elapsed <= duration:
                # Spread the move evenly over its duration (geometrically).
                per_second = (1 + move) ** (Decimal(1) / duration)
                price *= per_second
        tick = market.quote_tick
        return max(tick, price.quantize(tick, rounding=ROUND_HALF_EVEN))


def _read_replay(path: Path, markets: Mapping[str, Market]) -> list[dict[str, Decimal]]:
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the replay file: {exc.strerror}") from None
    replay: list[dict[str, Decimal]] = []
    for number, row in enumerate(rows, start=2):
        marks: dict[str, Decimal] = {}
        for symbol, text in row.items():
            if symbol in markets and text:
                try:
                    price = Decimal(text)
                except InvalidOperation:
                    raise ScenarioError(
                        f"{path}:{number}: {symbol}: not a number: {text!r}"
                    ) from None
                if not price.is_finite() or price <= 0:
                    raise ScenarioError(f"{path}:{number}: {symbol}: price must be positive")
                marks[symbol] = price.quantize(markets[symbol].quote_tick)
        replay.append(marks)
    if not replay:
        raise ScenarioError(f"{path}: the replay file has no rows")
    return replay
