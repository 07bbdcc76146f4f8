"""Request parameters as the simulated exchange reads them, and ``EngineError``, its refusal.

Every refusal carries the documented code and HTTP status (docs/exchange.md §3); a parameter
that is missing, malformed or out of range is ``-1005``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from guardbot.sim.margin import Market

CROSS = "CROSS"
ISOLATED = "ISOLATED"
MARGIN_MODES = (CROSS, ISOLATED)
SCOPES = frozenset({"read", "trading", "asset"})
MAX_AMOUNT_DECIMALS = 6
MAX_CLIENT_ORDER_ID = 36


class EngineError(Exception):
    """A request the exchange refuses, with the documented code and HTTP status (§3)."""

    def __init__(self, code: int, message: str, http_status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status


def bad_param(message: str) -> EngineError:
    return EngineError(-1005, message)


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


def parse_symbol(symbol: object, markets: Mapping[str, Market]) -> Market:
    """The market of a listed symbol."""
    if not isinstance(symbol, str) or symbol not in markets:
        raise bad_param(f"symbol {symbol!r} is invalid")
    return markets[symbol]


def parse_account_id(account_id: str) -> str:
    """``0x`` and 64 hex digits, lower-cased."""
    account_id = account_id.lower()
    if len(account_id) != 66 or not account_id.startswith("0x") or not _is_hex(account_id[2:]):
        raise bad_param("account_id must be 0x followed by 64 hex characters")
    return account_id


def parse_scopes(scopes: str) -> frozenset[str]:
    """A comma-separated, non-empty subset of ``SCOPES``."""
    scope_set = frozenset(s.strip() for s in scopes.split(",") if s.strip())
    if not scope_set or not scope_set <= SCOPES:
        raise bad_param(f"scopes must be a comma-separated subset of {sorted(SCOPES)}")
    return scope_set


def parse_amount(value: object) -> Decimal:
    """A ``position_margin`` amount: positive, with at most 6 decimals."""
    amount = parse_decimal(value, "amount")
    if amount <= 0:
        raise bad_param("amount must be a positive number")
    exponent = amount.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_AMOUNT_DECIMALS:
        raise bad_param(f"amount has more than {MAX_AMOUNT_DECIMALS} decimals")
    return amount


def parse_leverage(value: object, market: Market) -> int:
    """An integer leverage the symbol allows (1 to its ``max_leverage``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_param("leverage must be an integer")
    if not 1 <= value <= market.max_leverage:
        raise bad_param(f"leverage must be between 1 and {market.max_leverage} for {market.symbol}")
    return value


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """The checked parameters of ``POST /v1/order`` (``price`` only for LIMIT)."""

    order_type: str
    side: str
    quantity: Decimal
    price: Decimal | None
    margin_mode: str
    reduce_only: bool
    client_order_id: str | None


def parse_order(
    market: Market,
    default_mode: str,
    order_type: object,
    side: object,
    quantity: object,
    price: object,
    margin_mode: object,
    reduce_only: object,
    client_order_id: object,
) -> OrderRequest:
    """Check ``POST /v1/order``'s parameters, in the order the exchange reports them: only
    LIMIT and MARKET orders; quantity a positive multiple of ``base_tick``; a LIMIT price a
    positive multiple of ``quote_tick`` (-1103)."""
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
        not isinstance(client_order_id, str) or len(client_order_id) > MAX_CLIENT_ORDER_ID
    ):
        raise bad_param(
            f"client_order_id must be a string of at most {MAX_CLIENT_ORDER_ID} characters"
        )
    mode = parse_margin_mode(margin_mode, default_mode)
    limit: Decimal | None = None
    if order_type == "LIMIT":
        if price is None:
            raise bad_param("missing required parameter order_price")
        limit = parse_decimal(price, "order_price")
        if limit <= 0 or limit % market.quote_tick != 0:
            raise EngineError(-1103, f"order_price must be a multiple of {market.quote_tick}")
    return OrderRequest(str(order_type), str(side), qty, limit, mode, reduce_only, client_order_id)


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True
