"""The simulated exchange's state machine: accounts, holdings, positions, orders, margin and
liquidation. Sans-I/O: no sockets, no sleeping, no clock reads except the injected ``clock``;
the server feeds it requests and new marks and drains the changes it must push.

Choices where docs/exchange.md marks the real behaviour unconfirmed (each is a documented best
guess, so tests and the bot can rely on it):

- ``holding`` excludes isolated margin: ADD moves USDC from ``holding`` to the position's
  ``margin``, REDUCE moves it back (js-sdk ``totalValue``, §4).
- Isolated fills allocate ``|qty|*price*(1/leverage + 0.0006)``; a partial close releases
  margin pro rata, a full close releases all of it, a flip re-allocates for the new side (§7).
- Fees (taker 0.06 %, maker 0.03 %) and realized PnL always settle to ``holding`` at once; no
  funding is charged, so ``last_sum_unitary_funding`` stays 0 and ``cost_position`` is
  ``qty * average_open_price``.
- ``position_margin`` errors: no isolated position -> -1006; bad symbol, type or amount
  (not a positive number with at most 6 decimals) -> -1005; ADD beyond the free balance ->
  -1101 "Insufficient balance."; REDUCE beyond the removable maximum (margin.py) -> -1101
  "Insufficient margin after the operation.".
- Leverage on an open isolated position: raising it keeps ``margin``; lowering it is refused
  with -1101 unless ``margin + unsettled_pnl`` covers ``notional * IMR`` at the new leverage.
- Isolated liquidation closes the position at mark; its whole margin is lost to the account
  and the remaining equity (negative after a gap: a payout) goes to the insurance fund. The
  holding, cross positions and other isolated positions are untouched.
- Cross liquidation (``TCV <= Σ cross notional*MMR``) closes every cross position at mark,
  realizes the PnL into ``holding``, and charges ``std_liquidation_fee * notional`` (capped by
  what is left) to the insurance fund, which also absorbs any negative balance.
- ``seq`` is one exchange-wide counter (starting above 2**53, like the real one); a position
  takes a new ``seq`` whenever anything it reports changes, mark re-pricing included.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from guardbot.sim import margin as m
from guardbot.sim.margin import MARKETS, ZERO, Market, usdc

CROSS = "CROSS"
ISOLATED = "ISOLATED"
MARGIN_MODES = (CROSS, ISOLATED)
SCOPES = frozenset({"read", "trading", "asset"})
DEFAULT_LEVERAGE = 10
TAKER_FEE = Decimal("0.0006")
MAKER_FEE = Decimal("0.0003")
SEQ_START = 1_700_000_000_000_000_000
MAX_AMOUNT_DECIMALS = 6

PositionKey = tuple[str, str]  # (symbol, margin_mode)
log = logging.getLogger(__name__)


class EngineError(Exception):
    """A request the exchange refuses, with the documented code and HTTP status (§3)."""

    def __init__(self, code: int, message: str, http_status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status


def bad_param(message: str) -> EngineError:
    return EngineError(-1005, message)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An Orderly key registered to one account."""

    orderly_key: str
    account_id: str
    scopes: frozenset[str]
    expires_ms: int | None = None


@dataclass(slots=True)
class PositionState:
    symbol: str
    margin_mode: str
    leverage: int
    qty: Decimal = ZERO
    cost_position: Decimal = ZERO
    average_open_price: Decimal = ZERO
    margin: Decimal = ZERO
    fee_24h: Decimal = ZERO
    pnl_24h: Decimal = ZERO
    seq: int = 0
    updated_ms: int = 0


@dataclass(slots=True)
class Order:
    order_id: int
    account_id: str
    symbol: str
    side: str  # BUY | SELL
    order_type: str  # LIMIT | MARKET
    quantity: Decimal
    price: Decimal | None
    margin_mode: str
    reduce_only: bool
    client_order_id: str | None
    created_ms: int
    status: str = "NEW"  # NEW | FILLED | CANCELLED
    executed: Decimal = ZERO
    average_executed_price: Decimal = ZERO
    frozen: Decimal = ZERO  # isolated margin held for a resting isolated order
    updated_ms: int = 0

    @property
    def signed_quantity(self) -> Decimal:
        return self.quantity if self.side == "BUY" else -self.quantity


@dataclass(slots=True)
class Account:
    account_id: str
    holding: Decimal
    positions: dict[PositionKey, PositionState] = field(default_factory=dict)
    leverages: dict[PositionKey, int] = field(default_factory=dict)
    default_modes: dict[str, str] = field(default_factory=dict)
    orders: dict[int, Order] = field(default_factory=dict)
    updated_ms: int = 0

    def open_positions(self) -> Iterator[PositionState]:
        return (p for p in self.positions.values() if p.qty != 0)

    def resting_orders(self) -> Iterator[Order]:
        return (o for o in self.orders.values() if o.status == "NEW")


@dataclass(frozen=True, slots=True)
class Liquidation:
    """One liquidated position. ``margin_lost``: collateral the account lost (an isolated
    position's margin; for cross, the account's loss split over its positions by notional).
    ``to_insurance_fund``: what the fund received (negative: what it paid out)."""

    account_id: str
    symbol: str
    margin_mode: str
    qty: Decimal
    price: Decimal
    margin_lost: Decimal
    to_insurance_fund: Decimal
    time_ms: int


@dataclass(frozen=True, slots=True)
class PositionView:
    """Everything ``Position`` reports (§4), computed at the current mark."""

    symbol: str
    margin_mode: str
    qty: Decimal
    cost_position: Decimal
    average_open_price: Decimal
    mark_price: Decimal
    margin: Decimal
    leverage: int
    unsettled_pnl: Decimal
    imr: Decimal
    mmr: Decimal
    imr_with_orders: Decimal
    mmr_with_orders: Decimal
    est_liq_price: Decimal | None
    pending_long_qty: Decimal
    pending_short_qty: Decimal
    fee_24h: Decimal
    pnl_24h: Decimal
    seq: int
    updated_ms: int


@dataclass(frozen=True, slots=True)
class AccountView:
    """The account-level figures of ``GET /v1/positions`` and ``/v1/account_info`` (§4, §7):
    cross collateral only, as js-sdk computes it."""

    total_collateral_value: Decimal
    free_collateral: Decimal
    account_value: Decimal
    margin_ratio: Decimal
    initial_margin_ratio: Decimal
    maintenance_margin_ratio: Decimal
    total_pnl_24h: Decimal


@dataclass(frozen=True, slots=True)
class HoldingView:
    holding: Decimal
    frozen: Decimal
    pending_short: Decimal
    isolated_margin: Decimal
    isolated_order_frozen: Decimal
    updated_ms: int


@dataclass(slots=True)
class Changes:
    """What changed since the last drain: the server pushes these over the private WS."""

    positions: dict[str, set[PositionKey]] = field(default_factory=dict)
    balances: set[str] = field(default_factory=set)
    accounts: set[str] = field(default_factory=set)


def parse_decimal(value: object, name: str) -> Decimal:
    """A finite number from a JSON string or number; bools and junk are ``-1005``."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise bad_param(f"{name} must be a number")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise bad_param(f"{name} must be a number, got {value!r}") from None
    if not number.is_finite():
        raise bad_param(f"{name} must be a finite number")
    return number


def parse_margin_mode(value: object, default: str = CROSS) -> str:
    if value is None or value == "":
        return default
    if value not in MARGIN_MODES:
        raise bad_param(f"margin_mode must be CROSS or ISOLATED, got {value!r}")
    return str(value)


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
        self.changes = Changes()
        self._seq = SEQ_START
        self._order_ids = 0

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
        account_id = account_id.lower()
        if len(account_id) != 66 or not account_id.startswith("0x") or not _is_hex(account_id[2:]):
            raise bad_param("account_id must be 0x followed by 64 hex characters")
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

    def _new_key(
        self, orderly_key: str, account_id: str, scopes: str, expires_ms: int | None
    ) -> ApiKey:
        if not orderly_key.startswith("ed25519:"):
            raise bad_param("orderly_key must be ed25519:<base58 public key>")
        if orderly_key in self.keys:
            raise EngineError(-1007, "this orderly_key is already registered", 409)
        scope_set = frozenset(s.strip() for s in scopes.split(",") if s.strip())
        if not scope_set or not scope_set <= SCOPES:
            raise bad_param(f"scopes must be a comma-separated subset of {sorted(SCOPES)}")
        return ApiKey(orderly_key, account_id, scope_set, expires_ms)

    def account(self, account_id: str) -> Account:
        try:
            return self.accounts[account_id.lower()]
        except KeyError:
            raise EngineError(-1006, f"account {account_id} not found") from None

    def market(self, symbol: object) -> Market:
        if not isinstance(symbol, str) or symbol not in self.markets:
            raise bad_param(f"symbol {symbol!r} is invalid")
        return self.markets[symbol]

    def open_position(
        self,
        account_id: str,
        symbol: str,
        margin_mode: str,
        qty: Decimal,
        leverage: int | None = None,
    ) -> PositionView:
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
            self._check_leverage_value(market, leverage)
            held = account.positions.get(key)
            if held is not None and held.qty != 0 and held.leverage != leverage:
                raise bad_param(
                    f"the open {margin_mode} position on {symbol} has leverage {held.leverage}"
                )
            account.leverages[key] = leverage
        try:
            self._fill(account, market, margin_mode, qty, self.marks[symbol], TAKER_FEE)
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
        for account in self.accounts.values():
            if account.orders:
                for order in list(account.resting_orders()):
                    if order.symbol in symbols and self._crossed(order):
                        self._fill_resting(account, order)
            if not any(p.qty for p in account.positions.values()):
                continue
            self._liquidate_isolated(account, symbols)
            self._liquidate_cross(account)
            for position in account.positions.values():
                if position.qty and position.symbol in symbols:
                    position.seq = self._next_seq()
                    self._touched(account.account_id, position)

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
        value = parse_decimal(amount, "amount")
        if value <= 0:
            raise bad_param("amount must be a positive number")
        exponent = value.normalize().as_tuple().exponent
        if isinstance(exponent, int) and exponent < -MAX_AMOUNT_DECIMALS:
            raise bad_param(f"amount has more than {MAX_AMOUNT_DECIMALS} decimals")
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
        position.seq = self._next_seq()
        position.updated_ms = self.clock()
        self._touched(account.account_id, position)
        self._balance_changed(account)

    def max_add(self, account: Account) -> Decimal:
        """The most ``position_margin`` ADD accepts: USDC the account can spare,
        ``max(0, min(holding - frozen, free_collateral - max(Σ cross upnl, 0)))`` (§7 formula A)."""
        figures = self.account_view(account)
        cross_upnl = sum(
            (self._upnl(p) for p in account.open_positions() if p.margin_mode == CROSS), ZERO
        )
        spare = min(
            account.holding - self._isolated_order_frozen(account),
            figures.free_collateral - max(cross_upnl, ZERO),
        )
        return m.usdc_down(max(ZERO, spare))

    def max_reduce(self, account: Account, position: PositionState) -> Decimal:
        market = self.markets[position.symbol]
        return m.isolated_max_reduce(
            market,
            position.margin,
            position.qty,
            position.cost_position,
            self.marks[position.symbol],
            position.leverage,
        )

    # --------------------------------------------------------- leverage (§4)
    def leverage(self, account: Account, symbol: str, margin_mode: str) -> int:
        return account.leverages.get((symbol, margin_mode), DEFAULT_LEVERAGE)

    def _check_leverage_value(self, market: Market, leverage: object) -> int:
        if isinstance(leverage, bool) or not isinstance(leverage, int):
            raise bad_param("leverage must be an integer")
        if not 1 <= leverage <= market.max_leverage:
            raise bad_param(
                f"leverage must be between 1 and {market.max_leverage} for {market.symbol}"
            )
        return leverage

    def set_leverage(
        self, account_id: str, leverage: object, symbol: object = None, margin_mode: object = None
    ) -> list[tuple[str, str, int]]:
        """``POST /v1/client/leverage(s)``. With a symbol: that symbol and mode. Without:
        every symbol gets ``min(leverage, symbol max)``; cross symbols all update or none do,
        isolated symbols with a position or resting order are skipped (§4)."""
        account = self.account(account_id)
        mode = parse_margin_mode(margin_mode)
        if isinstance(leverage, bool) or not isinstance(leverage, int) or not 1 <= leverage <= 100:
            raise bad_param("leverage must be an integer from 1 to 100")
        if symbol is not None:
            market = self.market(symbol)
            self._check_leverage_value(market, leverage)
            targets = [(market, leverage)]
        else:
            targets = [(mk, min(leverage, mk.max_leverage)) for mk in self.markets.values()]
            if mode == ISOLATED:
                targets = [(mk, lv) for mk, lv in targets if not self._isolated_busy(account, mk)]
        for market, value in targets:  # validate all before changing any
            self._check_leverage_change(account, market, mode, value)
        changed: list[tuple[str, str, int]] = []
        for market, value in targets:
            account.leverages[(market.symbol, mode)] = value
            position = account.positions.get((market.symbol, mode))
            if position is not None:
                position.leverage = value
                if position.qty != 0:
                    position.seq = self._next_seq()
                    position.updated_ms = self.clock()
                    self._touched(account.account_id, position)
            changed.append((market.symbol, mode, value))
        self.changes.accounts.add(account.account_id)
        return changed

    def _isolated_busy(self, account: Account, market: Market) -> bool:
        position = account.positions.get((market.symbol, ISOLATED))
        return (position is not None and position.qty != 0) or any(
            o.symbol == market.symbol and o.margin_mode == ISOLATED
            for o in account.resting_orders()
        )

    def _check_leverage_change(
        self, account: Account, market: Market, mode: str, leverage: int
    ) -> None:
        position = account.positions.get((market.symbol, mode))
        if position is None or position.qty == 0:
            return
        mark = self.marks[market.symbol]
        notional = abs(position.qty) * mark
        if leverage > m.max_leverage_for(market, notional):
            raise EngineError(-1101, "Risk exposure is too high for this leverage.")
        if leverage >= position.leverage:
            return
        required = notional * m.imr(market, notional, leverage)
        if mode == ISOLATED:
            if position.margin + self._upnl(position) < required:
                raise EngineError(-1101, "Insufficient margin after the operation.")
        else:
            current = notional * m.imr(market, notional, position.leverage)
            if self.account_view(account).free_collateral < required - current:
                raise EngineError(-1101, "Insufficient margin after the operation.")

    def set_default_margin_mode(self, account_id: str, symbol: object, mode: object) -> None:
        """``POST /v1/client/margin_mode``: refused (-1012) while the current default mode has
        a position or resting order on the symbol (§4)."""
        account = self.account(account_id)
        market = self.market(symbol)
        if mode not in MARGIN_MODES:
            raise bad_param(f"default_margin_mode must be CROSS or ISOLATED, got {mode!r}")
        current = account.default_modes.get(market.symbol, CROSS)
        position = account.positions.get((market.symbol, current))
        busy = (position is not None and position.qty != 0) or any(
            o.symbol == market.symbol and o.margin_mode == current for o in account.resting_orders()
        )
        if busy and mode != current:
            raise EngineError(
                -1012, f"{market.symbol} has a position or open order in {current} mode"
            )
        account.default_modes[market.symbol] = str(mode)

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
        if order_type not in ("LIMIT", "MARKET"):
            raise bad_param(f"order_type {order_type!r} is not supported (LIMIT, MARKET)")
        if side not in ("BUY", "SELL"):
            raise bad_param(f"side must be BUY or SELL, got {side!r}")
        if quantity is None:
            raise bad_param("missing required parameter order_quantity")
        qty = parse_decimal(quantity, "order_quantity")
        if qty <= 0 or qty % market.base_tick != 0:
            raise bad_param(f"order_quantity must be a positive multiple of {market.base_tick}")
        if not isinstance(reduce_only, bool):
            raise bad_param("reduce_only must be a boolean")
        if client_order_id is not None and (
            not isinstance(client_order_id, str) or len(client_order_id) > 36
        ):
            raise bad_param("client_order_id must be a string of at most 36 characters")
        mode = parse_margin_mode(margin_mode, account.default_modes.get(market.symbol, CROSS))
        limit: Decimal | None = None
        if order_type == "LIMIT":
            if price is None:
                raise bad_param("missing required parameter order_price")
            limit = parse_decimal(price, "order_price")
            if limit <= 0 or limit % market.quote_tick != 0:
                raise EngineError(-1103, f"order_price must be a multiple of {market.quote_tick}")
        signed = qty if side == "BUY" else -qty
        position = account.positions.get((market.symbol, mode))
        held = position.qty if position is not None else ZERO
        if reduce_only:
            if held == 0 or (held > 0) == (signed > 0):
                raise bad_param("reduce_only order would not reduce the position")
            signed = max(-abs(held), min(abs(held), signed))
        mark = self.marks[market.symbol]
        if abs(signed) * (limit or mark) < market.min_notional and not reduce_only:
            raise EngineError(-1102, f"order notional is below the minimum {market.min_notional}")
        self._order_ids += 1
        now = self.clock()
        order = Order(
            self._order_ids,
            account.account_id,
            market.symbol,
            str(side),
            str(order_type),
            abs(signed),
            limit,
            mode,
            reduce_only,
            client_order_id,
            now,
            updated_ms=now,
        )
        crosses = limit is None or self._crossed(order)
        if crosses:
            self._fill(account, market, mode, signed, mark, TAKER_FEE)
            self._mark_filled(order, mark)
        else:
            if mode == ISOLATED and not reduce_only:
                order.frozen = m.isolated_fill_margin(
                    limit or mark, signed, self.leverage(account, market.symbol, mode)
                )
                if order.frozen > self.max_add(account):
                    raise EngineError(-1101, "Insufficient balance.")
            if position is not None and position.qty != 0:
                position.seq = self._next_seq()
                self._touched(account.account_id, position)
            self._balance_changed(account)
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
        position = account.positions.get((order.symbol, order.margin_mode))
        if position is not None and position.qty != 0:  # its pending quantities changed
            position.seq = self._next_seq()
            self._touched(account.account_id, position)
        self._balance_changed(account)
        return order

    def _crossed(self, order: Order) -> bool:
        mark = self.marks[order.symbol]
        assert order.price is not None
        return mark <= order.price if order.side == "BUY" else mark >= order.price

    def _fill_resting(self, account: Account, order: Order) -> None:
        assert order.price is not None
        market = self.markets[order.symbol]
        order.frozen = ZERO
        signed = order.signed_quantity
        position = account.positions.get((order.symbol, order.margin_mode))
        if order.reduce_only:
            held = position.qty if position is not None else ZERO
            if held == 0 or (held > 0) == (signed > 0):
                order.status = "CANCELLED"
                return
            signed = max(-abs(held), min(abs(held), signed))
        try:
            self._fill(account, market, order.margin_mode, signed, order.price, MAKER_FEE)
        except EngineError:
            # The balance went elsewhere while it rested (the exchange would reject it too).
            order.status = "CANCELLED"
            self._balance_changed(account)
            return
        self._mark_filled(order, order.price)

    def _mark_filled(self, order: Order, price: Decimal) -> None:
        order.status = "FILLED"
        order.executed = order.quantity
        order.average_executed_price = price
        order.updated_ms = self.clock()

    # ------------------------------------------------------------- fills
    def _fill(
        self,
        account: Account,
        market: Market,
        mode: str,
        delta: Decimal,
        price: Decimal,
        fee_rate: Decimal,
    ) -> None:
        """Trade ``delta`` (signed) at ``price``: validate first, then apply in full."""
        key = (market.symbol, mode)
        position = account.positions.get(key) or PositionState(
            market.symbol, mode, self.leverage(account, market.symbol, mode)
        )
        if position.qty == 0:  # a new position takes the symbol's current leverage setting
            position.leverage = self.leverage(account, market.symbol, mode)
        before = position.qty
        closing = ZERO
        if before != 0 and (before > 0) != (delta > 0):
            closing = min(abs(delta), abs(before))
        opening = abs(delta) - closing
        fee = usdc(abs(delta) * price * fee_rate)
        new_margin = ZERO
        if mode == ISOLATED and opening:
            new_margin = m.isolated_fill_margin(price, opening, position.leverage)
        if opening:
            self._check_opening(
                account, market, mode, opening, price, position.leverage, new_margin + fee
            )
        released = ZERO
        realized = ZERO
        if closing:
            sign = 1 if before > 0 else -1
            realized = usdc(closing * (price - position.average_open_price) * sign)
            remaining = abs(before) - closing
            if mode == ISOLATED:
                released = (
                    position.margin
                    if remaining == 0
                    else usdc(position.margin * closing / abs(before))
                )
                position.margin -= released
            position.cost_position = usdc(position.cost_position * remaining / abs(before))
            position.qty = before - closing * sign
            if position.qty == 0:
                position.cost_position = ZERO
                position.average_open_price = ZERO
        if opening:
            signed_open = opening if delta > 0 else -opening
            position.qty += signed_open
            position.cost_position = usdc(position.cost_position + signed_open * price)
            position.average_open_price = (position.cost_position / position.qty).quantize(
                Decimal("0.00000001")
            )
            position.margin += new_margin
        account.holding += released + realized - new_margin - fee
        position.fee_24h += fee
        position.pnl_24h += realized - fee
        position.seq = self._next_seq()
        position.updated_ms = self.clock()
        account.positions[key] = position
        self._touched(account.account_id, position)
        self._balance_changed(account)

    def _check_opening(
        self,
        account: Account,
        market: Market,
        mode: str,
        opening: Decimal,
        price: Decimal,
        leverage: int,
        cash_needed: Decimal,
    ) -> None:
        if mode == ISOLATED:
            if cash_needed > self.max_add(account):
                raise EngineError(-1101, "Insufficient balance.")
            return
        notional = opening * price
        required = notional * m.imr(market, notional, leverage) + cash_needed
        if required > self.account_view(account).free_collateral:
            raise EngineError(-1101, "Risk exposure is too high.")

    # -------------------------------------------------------- liquidation
    def _liquidate_isolated(self, account: Account, symbols: set[str]) -> None:
        for position in list(account.open_positions()):
            if position.margin_mode != ISOLATED or position.symbol not in symbols:
                continue
            market = self.markets[position.symbol]
            mark = self.marks[position.symbol]
            if not m.isolated_is_liquidatable(
                market, position.margin, position.qty, position.cost_position, mark
            ):
                continue
            remainder = m.isolated_equity(
                position.margin, position.qty, position.cost_position, mark
            )
            self.insurance_fund += remainder
            self._record(
                account, position.symbol, ISOLATED, position.qty, mark, position.margin, remainder
            )
            for order in account.resting_orders():
                if order.symbol == position.symbol and order.margin_mode == ISOLATED:
                    order.status, order.frozen = "CANCELLED", ZERO
            self._close(account, position)

    def _liquidate_cross(self, account: Account) -> None:
        cross = [p for p in account.open_positions() if p.margin_mode == CROSS]
        if not cross:
            return
        collateral = self.account_view(account).total_collateral_value
        maintenance = ZERO
        for position in cross:
            notional = abs(position.qty) * self.marks[position.symbol]
            maintenance += notional * m.mmr(self.markets[position.symbol], notional)
        if collateral > maintenance:
            return
        holding_before = account.holding
        closed: list[tuple[PositionState, Decimal, Decimal]] = []  # (position, qty, mark)
        fee_due = ZERO
        for position in cross:
            market = self.markets[position.symbol]
            mark = self.marks[position.symbol]
            account.holding += usdc(self._upnl(position))
            fee_due += abs(position.qty) * mark * market.std_liquidation_fee
            closed.append((position, position.qty, mark))
            self._close(account, position)
        fee = usdc(min(fee_due, max(account.holding, ZERO)))
        account.holding -= fee
        to_fund = fee
        if account.holding < 0:  # the fund absorbs the deficit
            to_fund += account.holding
            account.holding = ZERO
        self.insurance_fund += to_fund
        # The event's figures, split over its positions by notional.
        lost = holding_before - account.holding
        total_notional = sum((abs(q) * p for _, q, p in closed), ZERO)
        for position, qty, mark in closed:
            share = abs(qty) * mark / total_notional
            self._record(account, position.symbol, CROSS, qty, mark, lost * share, to_fund * share)
        for order in account.resting_orders():
            if order.margin_mode == CROSS:
                order.status = "CANCELLED"
        self._balance_changed(account)

    def _record(
        self,
        account: Account,
        symbol: str,
        mode: str,
        qty: Decimal,
        price: Decimal,
        lost: Decimal,
        to_fund: Decimal,
    ) -> None:
        event = Liquidation(
            account.account_id, symbol, mode, qty, price, usdc(lost), usdc(to_fund), self.clock()
        )
        self.liquidations.append(event)
        log.warning(
            "liquidated %s %s %s qty %s at %s: account lost %s, insurance fund got %s",
            account.account_id,
            symbol,
            mode,
            qty,
            price,
            event.margin_lost,
            event.to_insurance_fund,
        )

    def _close(self, account: Account, position: PositionState) -> None:
        position.qty = position.cost_position = position.average_open_price = ZERO
        position.margin = ZERO
        position.seq = self._next_seq()
        position.updated_ms = self.clock()
        self._touched(account.account_id, position)
        self._balance_changed(account)

    # ------------------------------------------------------------- views
    def _upnl(self, position: PositionState) -> Decimal:
        return position.qty * self.marks[position.symbol] - position.cost_position

    def _isolated_order_frozen(self, account: Account) -> Decimal:
        return sum((o.frozen for o in account.resting_orders()), ZERO)

    def _pending(self, account: Account, symbol: str, mode: str) -> tuple[Decimal, Decimal]:
        long_qty = short_qty = ZERO
        for order in account.resting_orders():
            if order.symbol == symbol and order.margin_mode == mode:
                if order.side == "BUY":
                    long_qty += order.quantity
                else:
                    short_qty -= order.quantity
        return long_qty, short_qty

    def position_view(self, account: Account, symbol: str, margin_mode: str) -> PositionView:
        """The position as the exchange reports it; a zero position if there is none."""
        position = account.positions.get((symbol, margin_mode)) or PositionState(
            symbol, margin_mode, self.leverage(account, symbol, margin_mode)
        )
        market = self.markets[symbol]
        mark = self.marks[symbol]
        notional = abs(position.qty) * mark
        pending_long, pending_short = self._pending(account, symbol, margin_mode)
        with_orders = notional + (pending_long - pending_short) * mark
        liq: Decimal | None = None
        if position.qty != 0:
            if margin_mode == ISOLATED:
                liq = m.isolated_liquidation_price(
                    market, position.margin, position.qty, position.cost_position
                )
            else:
                figures = self.account_view(account)
                maintenance = sum(
                    (
                        abs(p.qty)
                        * self.marks[p.symbol]
                        * m.mmr(self.markets[p.symbol], abs(p.qty) * self.marks[p.symbol])
                        for p in account.open_positions()
                        if p.margin_mode == CROSS
                    ),
                    ZERO,
                )
                liq = m.cross_liquidation_price(
                    market, position.qty, mark, figures.total_collateral_value, maintenance
                )
        return PositionView(
            symbol=symbol,
            margin_mode=margin_mode,
            qty=position.qty,
            cost_position=position.cost_position,
            average_open_price=position.average_open_price,
            mark_price=mark,
            margin=position.margin,
            leverage=position.leverage,
            unsettled_pnl=usdc(self._upnl(position)),
            imr=m.imr(market, notional, position.leverage),
            mmr=m.mmr(market, notional),
            imr_with_orders=m.imr(market, with_orders, position.leverage),
            mmr_with_orders=m.mmr(market, with_orders),
            est_liq_price=None if liq is None else liq.quantize(market.quote_tick),
            pending_long_qty=pending_long,
            pending_short_qty=pending_short,
            fee_24h=position.fee_24h,
            pnl_24h=position.pnl_24h,
            seq=position.seq,
            updated_ms=position.updated_ms,
        )

    def positions(self, account: Account) -> list[PositionView]:
        """Every position the account holds or held (closed ones report qty 0)."""
        return [self.position_view(account, s, mode) for (s, mode) in account.positions]

    def account_view(self, account: Account) -> AccountView:
        collateral = account.holding - self._isolated_order_frozen(account)
        notional_total = initial = maintenance = ZERO
        isolated_equity = ZERO
        pnl = ZERO
        for position in account.open_positions():
            market = self.markets[position.symbol]
            mark = self.marks[position.symbol]
            pnl += position.pnl_24h
            if position.margin_mode == ISOLATED:
                isolated_equity += position.margin + self._upnl(position)
                continue
            notional = abs(position.qty) * mark
            collateral += self._upnl(position)
            notional_total += notional
            pending_long, pending_short = self._pending(account, position.symbol, CROSS)
            with_orders = notional + (pending_long - pending_short) * mark
            initial += with_orders * m.imr(market, with_orders, position.leverage)
            maintenance += notional * m.mmr(market, notional)
        collateral = usdc(collateral)
        return AccountView(
            total_collateral_value=collateral,
            free_collateral=usdc(max(ZERO, collateral - initial)),
            account_value=usdc(collateral + isolated_equity),
            # §7: 1000 % with no positions.
            margin_ratio=collateral / notional_total if notional_total else Decimal(10),
            initial_margin_ratio=initial / notional_total if notional_total else ZERO,
            maintenance_margin_ratio=maintenance / notional_total if notional_total else ZERO,
            total_pnl_24h=pnl,
        )

    def holding_view(self, account: Account) -> HoldingView:
        return HoldingView(
            holding=account.holding,
            frozen=ZERO,
            pending_short=ZERO,
            isolated_margin=sum(
                (p.margin for p in account.positions.values() if p.margin_mode == ISOLATED),
                ZERO,
            ),
            isolated_order_frozen=self._isolated_order_frozen(account),
            updated_ms=account.updated_ms,
        )

    # ----------------------------------------------------------- changes
    def drain_changes(self) -> Changes:
        """Hand over (and forget) what changed since the last call."""
        changes, self.changes = self.changes, Changes()
        return changes

    def _touched(self, account_id: str, position: PositionState) -> None:
        self.changes.positions.setdefault(account_id, set()).add(
            (position.symbol, position.margin_mode)
        )

    def _balance_changed(self, account: Account) -> None:
        account.updated_ms = self.clock()
        self.changes.balances.add(account.account_id)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True
