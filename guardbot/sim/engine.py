"""The simulated exchange's state machine: accounts, keys, marks, margin, leverage and orders.
Sans-I/O: no sockets, no sleeping, no clock reads except the injected ``clock``; the server
feeds it requests and new marks and drains the changes it must push. How trades fill is in
``fills``, liquidation in ``liquidation``, leverage and margin-mode settings in ``settings``,
what it reports in ``reports``, the ``seq`` counter and the change set in ``journal``.

Choices where docs/exchange.md marks the real behaviour unconfirmed (each is a documented best
guess, so tests and the bot can rely on it):

- ``holding`` excludes isolated margin: ADD moves USDC from ``holding`` to the position's
  ``margin``, REDUCE moves it back (js-sdk ``totalValue``, §4).
- ``position_margin`` errors: no isolated position -> -1006; bad symbol, type or amount
  (not a positive number with at most 6 decimals) -> -1005; ADD beyond the free balance ->
  -1101 "Insufficient balance."; REDUCE beyond the removable maximum (margin.py) -> -1101
  "Insufficient margin after the operation.".
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from decimal import Decimal

from guardbot.sim import margin as m
from guardbot.sim import reports, settings
from guardbot.sim.fills import (
    TAKER_FEE,
    crossed,
    fill,
    fill_resting,
    mark_filled,
    reduce_only_quantity,
)
from guardbot.sim.journal import Changes, Journal
from guardbot.sim.liquidation import SafeMarks, liquidate
from guardbot.sim.margin import MARKETS, ZERO, Market, usdc
from guardbot.sim.params import (
    CROSS,
    ISOLATED,
    EngineError,
    bad_param,
    parse_account_id,
    parse_amount,
    parse_leverage,
    parse_margin_mode,
    parse_order,
    parse_scopes,
    parse_symbol,
)
from guardbot.sim.records import Account, ApiKey, Liquidation, Order, PositionState
from guardbot.sim.reports import AccountFigures, HoldingRow, PositionRow


class Engine:
    """The whole exchange state. Every public method either applies completely or raises
    ``EngineError`` having changed nothing."""

    def __init__(
        self,
        clock: Callable[[], int],
        markets: Mapping[str, Market] = MARKETS,
        marks: Mapping[str, Decimal] | None = None,
    ) -> None:
        self.clock = clock
        self.markets = dict(markets)
        self.scenario_marks = dict(marks or {s: mk.start_price for s, mk in self.markets.items()})
        self.marks = dict(self.scenario_marks)
        self.pinned: dict[str, Decimal] = {}
        self.accounts: dict[str, Account] = {}
        self.keys: dict[str, ApiKey] = {}
        self.liquidations: list[Liquidation] = []
        self.insurance_fund = ZERO
        self.journal = Journal(clock)
        self._order_ids = 0
        # Spares a mark tick the test of far positions; None tests every one (the reference
        # tests/sim/test_liquidation.py compares with).
        self._safe: SafeMarks | None = SafeMarks()

    # ----------------------------------------------------------------- admin
    def create_account(
        self,
        orderly_key: str,
        scopes: str = "read,trading",
        usdc_amount: Decimal = ZERO,
        account_id: str | None = None,
        expires_ms: int | None = None,
    ) -> str:
        """Open an account funded with ``usdc_amount`` and register its first key."""
        if account_id is None:
            digest = hashlib.sha256(f"{len(self.accounts)}:{orderly_key}".encode()).hexdigest()
            account_id = "0x" + digest
        account_id = parse_account_id(account_id)
        if account_id in self.accounts:
            raise EngineError(-1007, f"account {account_id} already exists", 409)
        if usdc_amount < 0:
            raise bad_param("usdc must not be negative")
        key = self._new_key(orderly_key, account_id, scopes, expires_ms)
        self.accounts[account_id] = Account(account_id, usdc(usdc_amount), updated_ms=self.clock())
        self.keys[orderly_key] = key
        return account_id

    def add_key(
        self,
        account_id: str,
        orderly_key: str,
        scopes: str = "read,trading",
        expires_ms: int | None = None,
    ) -> None:
        """Register another key to an existing account."""
        self.account(account_id)
        self.keys[orderly_key] = self._new_key(orderly_key, account_id, scopes, expires_ms)

    def remove_key(self, orderly_key: str) -> None:
        """Revoke a key: every later request signed with it is refused (-1002)."""
        if self.keys.pop(orderly_key, None) is None:
            raise EngineError(-1006, "this orderly_key is not registered", 404)

    def _new_key(
        self, orderly_key: str, account_id: str, scopes: str, expires_ms: int | None
    ) -> ApiKey:
        if not orderly_key.startswith("ed25519:"):
            raise bad_param("orderly_key must be ed25519:<base58 public key>")
        if orderly_key in self.keys:
            raise EngineError(-1007, "this orderly_key is already registered", 409)
        return ApiKey(orderly_key, account_id, parse_scopes(scopes), expires_ms)

    def account(self, account_id: str) -> Account:
        try:
            return self.accounts[account_id.lower()]
        except KeyError:
            raise EngineError(-1006, f"account {account_id} not found") from None

    def market(self, symbol: object) -> Market:
        return parse_symbol(symbol, self.markets)

    def open_position(
        self,
        account_id: str,
        symbol: str,
        margin_mode: str,
        qty: Decimal,
        leverage: int | None = None,
    ) -> PositionRow:
        """Admin: trade ``qty`` at mark as if a market order filled (taker fee charged),
        first setting the symbol's leverage for that mode if ``leverage`` is given (refused
        if it differs from an open position's: change that with ``set_leverage``)."""
        account = self.account(account_id)
        market = self.market(symbol)
        margin_mode = parse_margin_mode(margin_mode)
        if qty == 0 or qty % market.base_tick != 0:
            raise bad_param(f"qty must be a non-zero multiple of {market.base_tick}")
        key = (market.symbol, margin_mode)
        previous = account.leverages.get(key)
        if leverage is not None:
            parse_leverage(leverage, market)
            held = account.positions.get(key)
            if held is not None and held.qty != 0 and held.leverage != leverage:
                raise bad_param(
                    f"the open {margin_mode} position on {symbol} has leverage {held.leverage}"
                )
            account.leverages[key] = leverage
        try:
            self._fill(account, market, margin_mode, qty, self.marks[symbol])
        except EngineError:
            if previous is None:
                account.leverages.pop(key, None)
            else:
                account.leverages[key] = previous
            raise
        return self.position_view(account, symbol, margin_mode)

    # ----------------------------------------------------------------- marks
    def advance(self, scenario_marks: Mapping[str, Decimal]) -> None:
        """One simulated second: new scenario marks (pins win), resting orders that the mark
        crossed fill, then liquidation runs, and every open position is re-priced."""
        self.scenario_marks.update(scenario_marks)
        for symbol in scenario_marks:
            if symbol not in self.pinned:
                self.marks[symbol] = self.scenario_marks[symbol]
        self._after_mark_change(set(scenario_marks))

    def pin_mark(self, symbol: str, price: Decimal | None) -> None:
        """Hold a symbol's mark at ``price`` (``None`` releases it to the scenario); the
        consequences (fills, liquidations, pushes) happen at once."""
        market = self.market(symbol)
        if price is None:
            self.pinned.pop(symbol, None)
            self.marks[symbol] = self.scenario_marks[symbol]
        else:
            if price <= 0:
                raise bad_param("price must be positive")
            self.pinned[symbol] = price.quantize(market.quote_tick)
            self.marks[symbol] = self.pinned[symbol]
        self._after_mark_change({symbol})

    def _after_mark_change(self, symbols: set[str]) -> None:
        markets, marks, safe = self.markets, self.marks, self._safe
        for account in self.accounts.values():
            if account.orders:
                for order in list(account.resting_orders()):
                    if order.symbol in symbols and crossed(order, marks):
                        fill_resting(self.journal, account, order, markets, marks)
            # Most ticks liquidate nobody: an account with no open cross position whose
            # isolated ones on these symbols are all inside their safe marks is only
            # re-priced (``liquidate`` would find nothing, SafeMarks).
            repriced: list[PositionState] = []
            test = safe is None
            for position in account.positions.values():
                if not position.qty:
                    continue
                if position.margin_mode != ISOLATED:
                    test = True
                if position.symbol in symbols:
                    repriced.append(position)
                    if not test and safe is not None and not safe.holds(
                            account.account_id, position, markets[position.symbol],
                            marks[position.symbol]):
                        test = True
            if test:
                events, to_fund = liquidate(self.journal, account, symbols, markets, marks, safe)
                if events:
                    self.insurance_fund += to_fund
                    self.liquidations.extend(events)
                    repriced = [p for p in repriced if p.qty]
            self.journal.repriced(account.account_id, repriced)

    # ----------------------------------------------------------- margin (§4)
    def adjust_margin(self, account_id: str, symbol: object, kind: object, amount: object) -> None:
        """``POST /v1/position_margin``: move ``amount`` USDC into (ADD) or out of (REDUCE)
        the account's isolated position on ``symbol``."""
        account = self.account(account_id)
        if symbol is None or kind is None or amount is None:
            missing = [
                n for n, v in (("symbol", symbol), ("amount", amount), ("type", kind)) if v is None
            ]
            raise bad_param(f"missing required parameter {', '.join(missing)}")
        market = self.market(symbol)
        if kind not in ("ADD", "REDUCE"):
            raise bad_param(f"type must be ADD or REDUCE, got {kind!r}")
        value = parse_amount(amount)
        position = account.positions.get((market.symbol, ISOLATED))
        if position is None or position.qty == 0:
            raise EngineError(-1006, f"no isolated position on {market.symbol}")
        if kind == "ADD":
            if value > self.max_add(account):
                raise EngineError(-1101, "Insufficient balance.")
            position.margin += value
            account.holding -= value
        else:
            if value > self.max_reduce(account, position):
                raise EngineError(-1101, "Insufficient margin after the operation.")
            position.margin -= value
            account.holding += value
        self.journal.position_changed(account.account_id, position)
        self.journal.balance_changed(account)

    def max_add(self, account: Account) -> Decimal:
        """The most ``position_margin`` ADD accepts (``reports.max_add``)."""
        return reports.max_add(account, self.markets, self.marks)

    def max_reduce(self, account: Account, position: PositionState) -> Decimal:
        """The most ``position_margin`` REDUCE accepts (``reports.max_reduce``)."""
        return reports.max_reduce(position, self.markets, self.marks)

    # --------------------------------------------------------- leverage (§4)
    def leverage(self, account: Account, symbol: str, margin_mode: str) -> int:
        return account.leverage(symbol, margin_mode)

    def set_leverage(
        self, account_id: str, leverage: object, symbol: object = None, margin_mode: object = None
    ) -> list[tuple[str, str, int]]:
        """``POST /v1/client/leverage(s)`` (``settings.set_leverage``)."""
        account = self.account(account_id)
        return settings.set_leverage(
            self.journal, account, self.markets, self.marks, leverage, symbol, margin_mode
        )

    def set_default_margin_mode(self, account_id: str, symbol: object, mode: object) -> None:
        """``POST /v1/client/margin_mode`` (``settings.set_default_margin_mode``)."""
        settings.set_default_margin_mode(self.account(account_id), self.markets, symbol, mode)

    # ----------------------------------------------------------- orders (§4)
    def place_order(
        self,
        account_id: str,
        symbol: object,
        order_type: object,
        side: object,
        quantity: object,
        price: object = None,
        margin_mode: object = None,
        reduce_only: object = False,
        client_order_id: object = None,
    ) -> Order:
        """``POST /v1/order``: MARKET fills at mark (taker); LIMIT fills at mark if it already
        crosses (taker), otherwise rests until the mark crosses it and fills at its price
        (maker). Other order types are refused with -1005."""
        account = self.account(account_id)
        market = self.market(symbol)
        request = parse_order(
            market,
            account.default_modes.get(market.symbol, CROSS),
            order_type,
            side,
            quantity,
            price,
            margin_mode,
            reduce_only,
            client_order_id,
        )
        mode, limit, reduce = request.margin_mode, request.price, request.reduce_only
        signed = request.quantity if request.side == "BUY" else -request.quantity
        if reduce:
            reducing = reduce_only_quantity(account, market.symbol, mode, signed)
            if reducing is None:
                raise bad_param("reduce_only order would not reduce the position")
            signed = reducing
        mark = self.marks[market.symbol]
        if abs(signed) * (limit or mark) < market.min_notional and not reduce:
            raise EngineError(-1102, f"order notional is below the minimum {market.min_notional}")
        self._order_ids += 1
        now = self.clock()
        order = Order(
            self._order_ids,
            account.account_id,
            market.symbol,
            request.side,
            request.order_type,
            abs(signed),
            limit,
            mode,
            reduce,
            request.client_order_id,
            now,
            updated_ms=now,
        )
        if limit is None or crossed(order, self.marks):
            self._fill(account, market, mode, signed, mark)
            mark_filled(order, mark, self.clock())
        else:
            if mode == ISOLATED and not reduce:
                order.frozen = m.isolated_fill_margin(
                    limit or mark, signed, self.leverage(account, market.symbol, mode)
                )
                if order.frozen > self.max_add(account):
                    raise EngineError(-1101, "Insufficient balance.")
            self._pending_changed(account, market.symbol, mode)
            self.journal.balance_changed(account)
        account.orders[order.order_id] = order
        return order

    def cancel_order(self, account_id: str, order_id: object, symbol: object = None) -> Order:
        """``DELETE /v1/order``: cancel a resting order (-1006 if there is none)."""
        account = self.account(account_id)
        try:
            number = int(str(order_id))
        except ValueError:
            raise bad_param("order_id must be an integer") from None
        order = account.orders.get(number)
        if order is None or order.status != "NEW" or (symbol and order.symbol != symbol):
            raise EngineError(-1006, f"order {order_id} not found or already closed")
        order.status = "CANCELLED"
        order.frozen = ZERO
        order.updated_ms = self.clock()
        self._pending_changed(account, order.symbol, order.margin_mode)
        self.journal.balance_changed(account)
        return order

    def _fill(
        self, account: Account, market: Market, mode: str, delta: Decimal, price: Decimal
    ) -> None:
        """A taker fill (``open_position`` and crossing orders)."""
        fill(self.journal, account, market, mode, delta, price, TAKER_FEE, self.markets, self.marks)

    def _pending_changed(self, account: Account, symbol: str, mode: str) -> None:
        """An open position's pending quantities changed: it takes a new ``seq``."""
        position = account.positions.get((symbol, mode))
        if position is not None and position.qty != 0:
            self.journal.figures_changed(account.account_id, position)

    # ------------------------------------------------------------- views
    def position_view(self, account: Account, symbol: str, margin_mode: str) -> PositionRow:
        """The position as the exchange reports it; a zero position if there is none."""
        return reports.position_row(account, symbol, margin_mode, self.markets, self.marks)

    def positions(self, account: Account) -> list[PositionRow]:
        """Every position the account holds or held (closed ones report qty 0)."""
        return [self.position_view(account, s, mode) for (s, mode) in account.positions]

    def account_view(self, account: Account) -> AccountFigures:
        return reports.account_figures(account, self.markets, self.marks)

    def holding_view(self, account: Account) -> HoldingRow:
        return reports.holding_row(account)

    # ----------------------------------------------------------- changes
    @property
    def changes(self) -> Changes:
        """What changed since the last drain (still collecting)."""
        return self.journal.changes

    def drain_changes(self) -> Changes:
        """Hand over (and forget) what changed since the last call."""
        return self.journal.drain()
