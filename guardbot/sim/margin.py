"""The simulated exchange's own margin math (docs/exchange.md §7), as pure functions, and
the markets it applies to (``MARKETS``, read from ``markets.csv`` in this package).

This is deliberately a separate implementation from the bot's risk module: the two are pinned
to the same hand-computed cases, so each checks the other. Money is ``Decimal``; every amount
the exchange books is quantized to USDC's 6 decimals (``usdc``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal, InvalidOperation
from importlib import resources

ZERO = Decimal(0)
ONE = Decimal(1)
USDC_STEP = Decimal("0.000001")
RATE_STEP = Decimal("0.00000001")
FOUR_FIFTHS = Decimal("0.8")
# js-sdk's iso_taker_fee_buffer: isolated fills allocate notional*(1/leverage + buffer).
ISOLATED_FEE_BUFFER = Decimal("0.0006")


@dataclass(frozen=True, slots=True)
class Market:
    """One perpetual's rules, as ``GET /v1/public/info/{symbol}`` reports them, with the
    simulator's own ``start_price`` and ``beta``."""

    symbol: str
    base_imr: Decimal
    base_mmr: Decimal
    imr_factor: Decimal
    start_price: Decimal
    quote_tick: Decimal = Decimal("0.01")
    base_tick: Decimal = Decimal("0.0001")
    base_min: Decimal = Decimal("0.0001")
    base_max: Decimal = Decimal("100000")
    min_notional: Decimal = Decimal("10")
    std_liquidation_fee: Decimal = Decimal("0.012")
    liquidator_fee: Decimal = Decimal("0.006")
    # How strongly a market-wide move reaches this symbol (BTC 1): its factor is the
    # market's to the power ``beta`` (``guardbot.sim.prices.Reach``). The simulator's own,
    # not an exchange field.
    beta: Decimal = ONE
    # Below this notional ``imr_factor * notional^0.8 < base_imr`` (so the scaled MMR term is
    # below ``base_mmr`` too): the floors decide and the slow Decimal power can be skipped.
    floor_notional: Decimal = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        floor = (self.base_imr / self.imr_factor) ** Decimal("1.25") * Decimal("0.999999")
        object.__setattr__(self, "floor_notional", floor)

    @property
    def max_leverage(self) -> int:
        """``1/base_imr`` (docs/exchange.md §4, [D:mlp])."""
        return int(ONE / self.base_imr)


MARKETS_FILE = "markets.csv"  # in this package; the columns are Market's fields
_DECIMALS = tuple(f for f in Market.__dataclass_fields__ if f not in ("symbol", "floor_notional"))


class MarketsError(ValueError):
    """A markets table the simulator cannot use (the message names the line and the field)."""


def load_markets(text: str, source: str = MARKETS_FILE) -> dict[str, Market]:
    """Every market of a table in ``markets.csv``'s format: a header naming ``symbol`` and
    every other field of ``Market``, one row per symbol, ``#`` lines are comments. Each row
    must be a market the exchange could list (positive steps and rates, ``base_mmr <
    base_imr <= 1`` with a whole maximum leverage, a start price on the tick, sizes on the
    size step); the first that is not is one ``MarketsError``."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]  # fmt: skip
    if not lines:
        raise MarketsError(f"{source}: no header and no markets")
    header_number, header = lines[0]
    columns = [c.strip() for c in next(csv.reader([header]))]
    missing = [c for c in ("symbol", *_DECIMALS) if c not in columns]
    unknown = [c for c in columns if c not in ("symbol", *_DECIMALS)]
    if missing:
        raise MarketsError(f"{source}:{header_number}: the header lacks {', '.join(missing)}")
    if unknown:
        raise MarketsError(f"{source}:{header_number}: unknown column {', '.join(unknown)}")
    markets: dict[str, Market] = {}
    rows = csv.reader(line for _, line in lines[1:])
    for (line_number, _), row in zip(lines[1:], rows, strict=True):
        where = f"{source}:{line_number}"
        if len(row) != len(columns):
            raise MarketsError(f"{where}: {len(row)} values for {len(columns)} columns")
        values = dict(zip(columns, (v.strip() for v in row), strict=True))
        symbol = values.pop("symbol")
        if not symbol or symbol in markets:
            raise MarketsError(f"{where}: symbol {symbol!r} is empty or listed twice")
        numbers: dict[str, Decimal] = {}
        for name, text_value in values.items():
            try:
                number = Decimal(text_value)
            except InvalidOperation:
                raise MarketsError(f"{where}: {symbol} {name}: not a number: {text_value!r}"
                                   ) from None  # fmt: skip
            if not number.is_finite() or number <= 0:
                raise MarketsError(f"{where}: {symbol} {name} must be positive, got {text_value}")
            numbers[name] = number
        market = Market(symbol, **numbers)
        problem = _inconsistency(market)
        if problem:
            raise MarketsError(f"{where}: {symbol}: {problem}")
        markets[symbol] = market
    return markets


def _inconsistency(market: Market) -> str | None:
    """What makes ``market`` impossible on the exchange, or ``None``."""
    if not market.base_mmr < market.base_imr <= ONE:
        return f"needs base_mmr < base_imr <= 1 (got {market.base_mmr}, {market.base_imr})"
    if (ONE / market.base_imr) % 1:
        return f"1/base_imr is not a whole leverage (base_imr {market.base_imr})"
    if market.start_price % market.quote_tick:
        return f"start_price {market.start_price} is not a multiple of quote_tick"
    if market.base_min % market.base_tick or market.base_max % market.base_tick:
        return "base_min and base_max must be multiples of base_tick"
    if market.base_min > market.base_max:
        return f"base_min {market.base_min} is above base_max {market.base_max}"
    if market.liquidator_fee > market.std_liquidation_fee:
        return "liquidator_fee is above std_liquidation_fee (the liquidator's share of it)"
    return None


# The simulator's universe (docs/exchange.md §7.9): markets.csv, shipped with the package.
MARKETS: dict[str, Market] = load_markets(
    resources.files("guardbot.sim").joinpath(MARKETS_FILE).read_text(encoding="utf-8")
)


def usdc(amount: Decimal) -> Decimal:
    """Round a USDC amount to the 6 decimals the exchange books (half-even, like a ledger)."""
    return amount.quantize(USDC_STEP, rounding=ROUND_HALF_EVEN)


def usdc_down(amount: Decimal) -> Decimal:
    """Round a USDC amount down: used for limits, so a shown maximum is always accepted."""
    return amount.quantize(USDC_STEP, rounding=ROUND_DOWN)


def _notional_term(market: Market, factor: Decimal, notional: Decimal) -> Decimal:
    """``factor * notional^(4/5)``, or 0 where it cannot beat the floors."""
    if notional <= market.floor_notional:
        return ZERO
    return factor * notional**FOUR_FIFTHS


def imr(market: Market, notional: Decimal, leverage: int) -> Decimal:
    """``IMR = max(1/leverage, base_imr, imr_factor * notional^(4/5))`` (§7)."""
    return max(ONE / leverage, market.base_imr, _notional_term(market, market.imr_factor, notional))


def mmr(market: Market, notional: Decimal) -> Decimal:
    """``MMR = max(base_mmr, base_mmr/base_imr * imr_factor * notional^(4/5))`` (§7)."""
    scaled = market.base_mmr / market.base_imr * market.imr_factor
    return max(market.base_mmr, _notional_term(market, scaled, notional))


def max_leverage_for(market: Market, notional: Decimal) -> int:
    """``floor(min(1/(imr_factor*notional^0.8), 1/base_imr))`` (§4, leverage validation)."""
    term = _notional_term(market, market.imr_factor, notional)
    cap = ONE / market.base_imr if term == 0 else min(ONE / term, ONE / market.base_imr)
    return int(cap)


def isolated_equity(
    margin: Decimal, qty: Decimal, cost_position: Decimal, mark: Decimal
) -> Decimal:
    """``margin + unsettled_pnl`` with ``unsettled_pnl = qty*mark - cost_position`` (§7; the
    simulator charges no funding, so the funding term is zero)."""
    return margin + qty * mark - cost_position


def isolated_is_liquidatable(
    market: Market, margin: Decimal, qty: Decimal, cost_position: Decimal, mark: Decimal
) -> bool:
    """Liquidation when ``margin + unsettled_pnl <= |qty|*mark*MMR`` (§7, isolated)."""
    if qty == 0:
        return False
    notional = abs(qty) * mark
    return isolated_equity(margin, qty, cost_position, mark) <= notional * mmr(market, notional)


# Relative slack of ``isolated_safe_marks``: far above the rounding of 28-digit arithmetic.
SAFE_SLACK = Decimal("1e-9")


def isolated_safe_marks(
    market: Market, margin: Decimal, qty: Decimal, cost_position: Decimal
) -> tuple[Decimal, Decimal]:
    """Marks strictly between which ``isolated_is_liquidatable`` is False: a filter that
    spares a mark tick the test for every position far from its liquidation.

    Up to ``market.floor_notional`` MMR is exactly ``base_mmr`` (``mmr`` returns the floor
    there), so the test ``margin + q*P - cost <= |q|*P*base_mmr`` is linear in the mark ``P``
    and holds on one side of ``P0 = (margin - cost)/(|q|*base_mmr - q)``: at or below it for
    a long, at or above it for a short. The interval ends short of ``P0`` and of the floor's
    mark by ``SAFE_SLACK`` of the figures' scale; outside it the exact test decides. A closed
    position gets an empty interval."""
    if qty == 0:
        return ZERO, ZERO
    size = abs(qty)
    p0 = (margin - cost_position) / (size * market.base_mmr - qty)
    floor_mark = market.floor_notional / size
    slack = SAFE_SLACK * (abs(p0) + (abs(margin) + abs(cost_position)) / size + floor_mark)
    high = floor_mark * (ONE - SAFE_SLACK)
    if qty > 0:
        return p0 + slack, high
    return ZERO, min(high, p0 - slack)


def isolated_liquidation_price(
    market: Market, margin: Decimal, qty: Decimal, cost_position: Decimal
) -> Decimal | None:
    """The mark at which the isolated position is liquidated, or ``None`` if none exists.

    Solves ``margin + qty*P - cost = |qty|*P*MMR(|qty|*P)`` exactly: the closed form
    ``(margin - cost)/(|qty|*MMR - qty)`` (js-sdk ``liquidationPriceIsolated``) with MMR taken
    at the liquidation price itself rather than at mark, found by fixed-point iteration (MMR
    is flat at ``base_mmr`` for all but very large notionals, where it moves slowly).
    """
    if qty == 0:
        return None
    numerator = margin - cost_position
    rate = market.base_mmr
    price = ZERO
    for _ in range(50):
        denominator = abs(qty) * rate - qty
        if denominator == 0:
            return None
        price = numerator / denominator
        if price <= 0:
            return None
        next_rate = mmr(market, abs(qty) * price)
        if abs(next_rate - rate) < Decimal("1e-18"):
            break
        rate = next_rate
    return price


def isolated_max_reduce(
    market: Market,
    margin: Decimal,
    qty: Decimal,
    cost_position: Decimal,
    mark: Decimal,
    leverage: int,
) -> Decimal:
    """Removable margin: ``max(0, margin - notional*IMR + min(0, unsettled_pnl))`` (§7,
    js-sdk ``maxAddReduce``): unrealized profit cannot be withdrawn, a loss reduces it."""
    notional = abs(qty) * mark
    upnl = qty * mark - cost_position
    removable = margin - notional * imr(market, notional, leverage) + min(ZERO, upnl)
    return usdc_down(max(ZERO, removable))


def isolated_fill_margin(price: Decimal, qty: Decimal, leverage: int) -> Decimal:
    """Margin an isolated fill allocates: ``|qty|*price*(1/leverage + 0.0006)`` (§7)."""
    return usdc(abs(qty) * price * (ONE / leverage + ISOLATED_FEE_BUFFER))


def cross_liquidation_price(
    market: Market,
    qty: Decimal,
    mark: Decimal,
    collateral: Decimal,
    maintenance_total: Decimal,
) -> Decimal | None:
    """Closed form for a cross position (§7): ``mark + (TCV - ΣMM)/(|q|*MMR - q)``, where
    ``collateral`` is the account's TCV and ``maintenance_total`` its Σ notional*MMR; MMR at
    mark. ``None`` when the result is not positive (no liquidation price)."""
    if qty == 0:
        return None
    denominator = abs(qty) * mmr(market, abs(qty) * mark) - qty
    if denominator == 0:
        return None
    price = mark + (collateral - maintenance_total) / denominator
    return price if price > 0 else None
