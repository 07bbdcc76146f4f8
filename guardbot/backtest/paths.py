"""Price paths for the backtest: named shapes, a seeded stochastic generator, CSV replays.

A path is a list of points ``(offset_ms, factor)``: the mark of every symbol, relative to its
start mark, from ``offset_ms`` after the start on (``factor`` 1.0 at offset 0). The runner
turns factors into marks rounded to each symbol's tick. Factors are floats, as in
``guardbot.sim.prices``: they are the shape of a move, not money; every mark is a
``Decimal``.

Named shapes describe an adverse move (``ADVERSE``): a long sees the shape as drawn (the
price falls), a symbol held short by every position on it sees its mirror (the price rises by
the same fractions). ``random`` and ``csv:`` paths move every symbol as given.

``speed`` compresses a shape in time (speed 2: the same move in half the time). A path's
``steepest`` is its fastest fall: the largest adverse move from one mark to the next, in
fractions of the start price per second; ``speed_for(name, rate)`` is the speed at which a
shape falls at most ``rate`` per second (a cascade's last leg, not its average). Shapes are
sampled once per second, plus a flat ``TAIL_S`` at the end for the machinery to settle.

    grind       the price bleeds 25 % over an hour
    crash       20 % in 20 s (1 %/s)
    cascade     three accelerating legs: 5 % in 25 s, 7 % in 10 s, 10 % in 4 s, with pauses
    squeeze     25 % in 30 s, accelerating (exponential): a short squeeze, for a short
    staircase   1 % at once every 2 s, 25 steps
    whipsaw     swings of +-6 % every 60 s around a 15 % fall over 5 minutes
    wick        12 % in 4 s, then back to 2 % within 8 s
    gap         flat for 10 s, then 60 % at once (beyond any liquidation up to 2x)
    random[:D]  GARCH(1,1) volatility clustering with jumps, D long (default 24h; ``90s``,
                ``30m``, ``24h``), seeded; ``speed`` scales its volatility and jump rate
    csv:PATH    rows ``time,price`` (a header is allowed), any resolution; time in seconds,
                epoch milliseconds or ISO 8601; prices relative to the first row; gaps
                longer than a second are interpolated linearly at one mark per second
"""

from __future__ import annotations

import csv
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path

STEP_MS = 1000
TAIL_S = 60
DEFAULT_RANDOM_S = 86_400


class PathError(ValueError):
    """An unknown path name or an unreadable path file (the message says which)."""


@dataclass(frozen=True, slots=True)
class PricePath:
    """One path: ``offsets_ms[i]`` after the start every mark is ``start * factors[i]``
    (its mirror ``start * (2 - factors[i])`` for a mirrored symbol)."""

    name: str
    speed: float
    offsets_ms: tuple[int, ...]
    factors: tuple[float, ...]
    adverse: bool  # a named shape: mirrored for symbols held short

    @property
    def label(self) -> str:
        return self.name if self.speed == 1 else f"{self.name} x{self.speed:g}"

    @property
    def duration_ms(self) -> int:
        return self.offsets_ms[-1]

    @property
    def steepest(self) -> float:
        """The fastest adverse move between two marks (fraction of the start per second;
        for a path that is not a shape, the fastest fall)."""
        points = zip(self.offsets_ms, self.factors, strict=True)
        return max((max(0.0, f0 - f1) * 1000 / (t1 - t0)
                    for (t0, f0), (t1, f1) in itertools.pairwise(points)), default=0.0)

    def marks(self, start: Decimal, tick: Decimal, *, mirrored: bool = False) -> list[Decimal]:
        """The marks of a symbol starting at ``start``, rounded to ``tick`` (at least one
        tick); one per point."""
        marks = []
        last: tuple[float, Decimal] | None = None
        for factor in self.factors:
            if last is not None and last[0] == factor:
                marks.append(last[1])
                continue
            move = 2.0 - factor if mirrored else factor
            price = (start * Decimal(repr(move))).quantize(tick, rounding=ROUND_HALF_EVEN)
            mark = max(tick, price)
            marks.append(mark)
            last = (factor, mark)
        return marks


Shape = Callable[[float], float]  # seconds at speed 1 -> adverse move (fraction)


def _legs(points: Sequence[tuple[float, float]]) -> Shape:
    """Piecewise-linear adverse move through ``(seconds, move)`` points."""

    def shape(t: float) -> float:
        if t <= points[0][0]:
            return points[0][1]
        for (t0, a0), (t1, a1) in itertools.pairwise(points):
            if t <= t1:
                return a0 + (a1 - a0) * (t - t0) / (t1 - t0)
        return points[-1][1]

    return shape


def _squeeze(t: float) -> float:
    k, total, length = 3.0, 0.25, 30.0
    u = min(max(t, 0.0), length) / length
    return total * (math.exp(k * u) - 1) / (math.exp(k) - 1)


def _staircase(t: float) -> float:
    return 0.01 * min(25, math.floor(max(t, 0.0) / 2 + 1e-9))


def _whipsaw(t: float) -> float:
    u = min(max(t, 0.0), 300.0)
    return 0.15 * u / 300 + 0.06 * math.sin(2 * math.pi * u / 60)


def _gap(t: float) -> float:
    return 0.60 if t >= 10 else 0.0


@dataclass(frozen=True, slots=True)
class ShapeSpec:
    shape: Shape
    duration_s: float  # at speed 1, before the tail
    # How fast it falls where it falls fastest, at speed 1 (fraction per second; the
    # staircase: its average, one step per 2 s; the gap: at once).
    rate: float


SHAPES: dict[str, ShapeSpec] = {
    "grind": ShapeSpec(_legs([(0, 0.0), (3600, 0.25)]), 3600, 0.25 / 3600),
    "crash": ShapeSpec(_legs([(0, 0.0), (20, 0.20)]), 20, 0.20 / 20),
    "cascade": ShapeSpec(
        _legs([(0, 0.0), (25, 0.05), (35, 0.05), (45, 0.12), (50, 0.12), (54, 0.22)]), 54,
        0.10 / 4),
    "squeeze": ShapeSpec(_squeeze, 30, 0.25 * 3 / 30 * math.exp(3) / (math.exp(3) - 1)),
    "staircase": ShapeSpec(_staircase, 50, 0.01 / 2),
    "whipsaw": ShapeSpec(_whipsaw, 300, 0.15 / 300 + 0.06 * 2 * math.pi / 60),
    "wick": ShapeSpec(_legs([(0, 0.0), (4, 0.12), (12, 0.02)]), 12, 0.12 / 4),
    "gap": ShapeSpec(_gap, 10, math.inf),
}


def shape_path(name: str, speed: float = 1.0) -> PricePath:
    """A named shape at ``speed``."""
    spec = SHAPES[name]
    if speed <= 0:
        raise PathError(f"speed must be positive, got {speed:g}")
    length_s = math.ceil(spec.duration_s / speed)
    offsets, factors = [], []
    for second in range(length_s + TAIL_S + 1):
        offsets.append(second * STEP_MS)
        factors.append(1.0 - spec.shape(min(second, length_s) * speed))
    return PricePath(name, speed, tuple(offsets), tuple(factors), adverse=True)


def speed_for(name: str, rate: float) -> float:
    """The speed at which shape ``name`` falls at ``rate`` (fraction per second) where it
    falls fastest. ``PathError`` for the gap, which falls at once whatever the speed."""
    spec = SHAPES[name]
    if not math.isfinite(spec.rate):
        raise PathError(f"{name} falls at once: it has no speed for {rate:g} per second")
    return rate / spec.rate


# -- stochastic -------------------------------------------------------------------------

SIGMA_PER_S = 0.0003  # long-run volatility per second (about 9 % per day)
GARCH_ALPHA, GARCH_BETA = 0.05, 0.94
JUMPS_PER_S = 1 / 3600
JUMP_MEAN, JUMP_SIGMA = -0.004, 0.01


def random_path(duration_s: int, speed: float = 1.0, seed: int = 7) -> PricePath:
    """GARCH(1,1) returns (volatility clusters) plus Poisson jumps, one step per second.
    ``speed`` multiplies the variance and the jump rate per second (a faster market)."""
    if speed <= 0:
        raise PathError(f"speed must be positive, got {speed:g}")
    rng = random.Random(seed)
    variance = SIGMA_PER_S**2 * speed
    omega = variance * (1 - GARCH_ALPHA - GARCH_BETA)
    sigma2, last, log_price = variance, 0.0, 0.0
    offsets, factors = [0], [1.0]
    for second in range(1, duration_s + 1):
        sigma2 = omega + GARCH_ALPHA * last * last + GARCH_BETA * sigma2
        ret = math.sqrt(sigma2) * rng.gauss(0.0, 1.0)
        last = ret
        if rng.random() < JUMPS_PER_S * speed:
            ret += rng.gauss(JUMP_MEAN, JUMP_SIGMA)
        log_price += ret
        offsets.append(second * STEP_MS)
        factors.append(math.exp(log_price))
    name = "random" if duration_s == DEFAULT_RANDOM_S else f"random:{_duration_text(duration_s)}"
    return PricePath(name, speed, tuple(offsets), tuple(factors), adverse=False)


def _duration_text(seconds: int) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_duration(text: str) -> int:
    """``90``, ``90s``, ``30m``, ``24h`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise PathError(f"bad duration {text!r}: use e.g. 90s, 30m or 24h") from None
    if not 1 <= seconds <= 31 * 86_400:
        raise PathError(f"duration {text!r} must be between 1 s and 31 days")
    return round(seconds)


# -- CSV ------------------------------------------------------------------------------------


def csv_path(file: Path, speed: float = 1.0) -> PricePath:
    """A replay of ``time,price`` rows (see the module docstring). ``speed`` compresses
    time (speed 2: the same moves in half the time)."""
    if speed <= 0:
        raise PathError(f"speed must be positive, got {speed:g}")
    try:
        with file.open(newline="") as handle:
            rows = [row for row in csv.reader(handle) if row and any(c.strip() for c in row)]
    except OSError as exc:
        raise PathError(f"{file}: cannot read the price file: {exc.strerror}") from None
    points: list[tuple[float, Decimal]] = []
    for number, row in enumerate(rows, start=1):
        if len(row) < 2:
            raise PathError(f"{file}:{number}: expected time,price")
        if number == 1 and not _is_number(row[1]):
            continue  # a header
        seconds = _seconds(row[0].strip(), f"{file}:{number}")
        try:
            price = Decimal(row[1].strip())
        except InvalidOperation:
            raise PathError(f"{file}:{number}: price is not a number: {row[1]!r}") from None
        if not price.is_finite() or price <= 0:
            raise PathError(f"{file}:{number}: price must be positive, got {row[1]!r}")
        if points and seconds < points[-1][0]:
            raise PathError(f"{file}:{number}: time goes back")
        points.append((seconds, price))
    if len(points) < 2:
        raise PathError(f"{file}: a path needs at least two rows of time,price")
    origin, first = points[0]
    offsets, factors = [0], [1.0]
    previous = (0.0, 1.0)
    for seconds, price in points[1:]:
        at = (seconds - origin) / speed
        factor = float(price / first)
        # The exchange's mark moves every second: fill longer gaps linearly.
        steps = math.ceil(at - previous[0])
        for step in range(1, steps):
            t = previous[0] + step
            weight = step / (at - previous[0])
            offsets.append(round(t * 1000))
            factors.append(previous[1] + (factor - previous[1]) * weight)
        offset = round(at * 1000)
        if offset <= offsets[-1]:
            factors[-1] = factor  # same millisecond: the later row wins
        else:
            offsets.append(offset)
            factors.append(factor)
        previous = (at, factor)
    return PricePath(f"csv:{file.name}", speed, tuple(offsets), tuple(factors), adverse=False)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _seconds(text: str, where: str) -> float:
    """Seconds (relative or epoch), epoch milliseconds (above 1e11) or ISO 8601."""
    try:
        value = float(text)
    except ValueError:
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise PathError(f"{where}: time is neither seconds nor ISO 8601: {text!r}"
                            ) from None
    if not math.isfinite(value):
        raise PathError(f"{where}: time must be finite")
    return value / 1000 if value > 1e11 else value


# -- names ----------------------------------------------------------------------------------


def path_names() -> list[str]:
    return [*SHAPES, "random[:DURATION]", "csv:PATH"]


def load_path(spec: str, speed: float = 1.0, seed: int = 7) -> PricePath:
    """A path from its name: a shape, ``random[:DURATION]`` or ``csv:PATH``."""
    if spec in SHAPES:
        return shape_path(spec, speed)
    if spec == "random" or spec.startswith("random:"):
        duration = parse_duration(spec[7:]) if ":" in spec else DEFAULT_RANDOM_S
        return random_path(duration, speed, seed)
    if spec.startswith("csv:"):
        return csv_path(Path(spec[4:]), speed)
    raise PathError(f"unknown path {spec!r}: use one of {', '.join(path_names())}")
