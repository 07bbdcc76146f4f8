"""An account's per-symbol settings: leverage and the default margin mode (docs/exchange.md §4).

Choice where docs/exchange.md marks the real behaviour unconfirmed (a documented best guess):
leverage on an open isolated position: raising it keeps ``margin``; lowering it is refused
with -1101 unless ``margin + unsettled_pnl`` covers ``notional * IMR`` at the new leverage.
"""

from __future__ import annotations

from guardbot.sim import margin as m
from guardbot.sim.journal import Journal
from guardbot.sim.margin import Market
from guardbot.sim.params import (
    CROSS,
    ISOLATED,
    MARGIN_MODES,
    EngineError,
    bad_param,
    parse_leverage,
    parse_margin_mode,
    parse_symbol,
)
from guardbot.sim.records import Account
from guardbot.sim.reports import Markets, Marks, account_figures, upnl

MAX_LEVERAGE = 100


def set_leverage(
    journal: Journal,
    account: Account,
    markets: Markets,
    marks: Marks,
    leverage: object,
    symbol: object,
    margin_mode: object,
) -> list[tuple[str, str, int]]:
    """``POST /v1/client/leverage(s)``. With a symbol: that symbol and mode. Without:
    every symbol gets ``min(leverage, symbol max)``; cross symbols all update or none do,
    isolated symbols with a position or resting order are skipped (§4). Returns
    ``(symbol, margin_mode, leverage)`` for every symbol set."""
    mode = parse_margin_mode(margin_mode)
    if (
        isinstance(leverage, bool)
        or not isinstance(leverage, int)
        or not 1 <= leverage <= MAX_LEVERAGE
    ):
        raise bad_param(f"leverage must be an integer from 1 to {MAX_LEVERAGE}")
    if symbol is not None:
        market = parse_symbol(symbol, markets)
        parse_leverage(leverage, market)
        targets = [(market, leverage)]
    else:
        targets = [(mk, min(leverage, mk.max_leverage)) for mk in markets.values()]
        if mode == ISOLATED:
            targets = [(mk, lv) for mk, lv in targets if not account.busy(mk.symbol, mode)]
    for market, value in targets:  # validate all before changing any
        _check_change(account, market, mode, value, markets, marks)
    changed: list[tuple[str, str, int]] = []
    for market, value in targets:
        account.leverages[(market.symbol, mode)] = value
        position = account.positions.get((market.symbol, mode))
        if position is not None:
            position.leverage = value
            if position.qty != 0:
                journal.position_changed(account.account_id, position)
        changed.append((market.symbol, mode, value))
    journal.changes.accounts.add(account.account_id)
    return changed


def _check_change(
    account: Account, market: Market, mode: str, leverage: int, markets: Markets, marks: Marks
) -> None:
    position = account.positions.get((market.symbol, mode))
    if position is None or position.qty == 0:
        return
    mark = marks[market.symbol]
    notional = abs(position.qty) * mark
    if leverage > m.max_leverage_for(market, notional):
        raise EngineError(-1101, "Risk exposure is too high for this leverage.")
    if leverage >= position.leverage:
        return
    required = notional * m.imr(market, notional, leverage)
    if mode == ISOLATED:
        if position.margin + upnl(position, marks) < required:
            raise EngineError(-1101, "Insufficient margin after the operation.")
    else:
        current = notional * m.imr(market, notional, position.leverage)
        if account_figures(account, markets, marks).free_collateral < required - current:
            raise EngineError(-1101, "Insufficient margin after the operation.")


def set_default_margin_mode(
    account: Account, markets: Markets, symbol: object, mode: object
) -> None:
    """``POST /v1/client/margin_mode``: refused (-1012) while the current default mode has
    a position or resting order on the symbol (§4)."""
    market = parse_symbol(symbol, markets)
    if mode not in MARGIN_MODES:
        raise bad_param(f"default_margin_mode must be CROSS or ISOLATED, got {mode!r}")
    current = account.default_modes.get(market.symbol, CROSS)
    if account.busy(market.symbol, current) and mode != current:
        raise EngineError(-1012, f"{market.symbol} has a position or open order in {current} mode")
    account.default_modes[market.symbol] = str(mode)
