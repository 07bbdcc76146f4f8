"""The book of positions a backtest starts from.

``load_book(spec)`` reads one of:

- ``demo``: the book of ``guardbot demo`` (guardbot/demo.py), 20,000 USDC per account;
- a TOML file (``.toml``)::

      [accounts.main]            # optional; default: 10,000 USDC free per account
      free_usdc = "10000"        # USDC left in the account's holding once the book is open

      [[positions]]
      account = "main"           # optional, default "main"
      symbol = "PERP_ETH_USDC"
      qty = "2"                  # negative, or side = "short", for a short
      entry = "3000"             # optional: the symbol's start mark
      leverage = 10
      margin = "620"             # optional: what the fill allocates at that leverage
      margin_mode = "ISOLATED"   # optional; CROSS positions are opened, never guarded

- a CSV file (``.csv``) with a header naming the same columns (``symbol``, ``qty``,
  ``leverage`` required; ``account``, ``side``, ``entry``, ``margin``, ``margin_mode``,
  ``free_usdc`` optional; ``free_usdc`` is the account's, on any of its rows);
- the JSON ``guardbot status --json`` prints (``.json``): every account's positions as they
  are, at their marks. That JSON has no entry price: each position's entry is the one that
  gives its margin the liquidation price the exchange reported (the inverse of the
  simulator's own isolated liquidation formula), so margin, equity and liquidation price are
  reproduced; the account's free collateral becomes its free USDC.

Every problem is one ``BookError`` line naming the file, the row and the field.
"""

from __future__ import annotations

import csv
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from guardbot.sim import margin as m
from guardbot.sim.margin import MARKETS

DEFAULT_FREE_USDC = Decimal("10000")
DEFAULT_ACCOUNT = "main"
MODES = ("ISOLATED", "CROSS")


class BookError(ValueError):
    """A book that cannot be read or opened (the message names where and why)."""


@dataclass(frozen=True, slots=True)
class BookPosition:
    symbol: str
    qty: Decimal  # signed: negative is short
    leverage: int
    entry: Decimal | None = None  # None: the symbol's start mark
    margin: Decimal | None = None  # None: what the fill allocates
    margin_mode: str = "ISOLATED"

    @property
    def side(self) -> str:
        return "long" if self.qty > 0 else "short"

    @property
    def isolated(self) -> bool:
        return self.margin_mode == "ISOLATED"


@dataclass(frozen=True, slots=True)
class BookAccount:
    name: str
    positions: tuple[BookPosition, ...]
    # USDC in the holding once the positions are open; or, with ``deposit_usdc``, the
    # whole deposit the positions are opened from (the demo's way).
    free_usdc: Decimal | None = DEFAULT_FREE_USDC
    deposit_usdc: Decimal | None = None
    account_id: str | None = None


@dataclass(frozen=True, slots=True)
class Book:
    name: str
    accounts: tuple[BookAccount, ...]
    # the start mark of a symbol, when the book says (status JSON: the marks it was read at)
    marks: Mapping[str, Decimal] = field(default_factory=dict)

    def isolated(self) -> list[tuple[BookAccount, BookPosition]]:
        return [(a, p) for a in self.accounts for p in a.positions if p.isolated]

    def start_mark(self, symbol: str) -> Decimal:
        """Where the symbol's path starts: the book's mark, else the first entry given,
        else the simulator's start price."""
        if symbol in self.marks:
            return self.marks[symbol]
        for account in self.accounts:
            for position in account.positions:
                if position.symbol == symbol and position.entry is not None:
                    return position.entry
        return MARKETS[symbol].start_price

    def symbols(self) -> list[str]:
        return sorted({p.symbol for a in self.accounts for p in a.positions})

    def short_only(self, symbol: str | None) -> bool:
        """Whether every isolated position on ``symbol`` (``None``: of the whole book) is
        short (a shape is mirrored)."""
        sides = {p.side for _, p in self.isolated() if symbol in (None, p.symbol)}
        return sides == {"short"}


# -- demo -----------------------------------------------------------------------------------


def demo_book() -> Book:
    from guardbot.demo import DEMO_POSITIONS, DEMO_USDC

    positions = tuple(BookPosition(symbol, Decimal(qty), leverage, margin_mode=mode)
                      for symbol, mode, qty, leverage in DEMO_POSITIONS)  # fmt: skip
    return Book("demo", (BookAccount("demo", positions, free_usdc=None,
                                     deposit_usdc=Decimal(DEMO_USDC)),))


# -- TOML and CSV ---------------------------------------------------------------------------


def _decimal(value: object, where: str, *, positive: bool = False) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise BookError(f"{where}: expected a number, got {value!r}")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise BookError(f"{where}: expected a number, got {value!r}") from None
    if not number.is_finite() or (positive and number <= 0) or number < 0:
        raise BookError(f"{where}: expected a {'positive' if positive else 'non-negative'}"
                        f" number, got {value!r}")  # fmt: skip
    return number


def _position(row: Mapping[str, Any], where: str) -> tuple[str, BookPosition]:
    known = {"account", "symbol", "qty", "side", "entry", "leverage", "margin", "margin_mode",
             "free_usdc"}  # fmt: skip
    unknown = sorted(k for k in row if k not in known and row[k] not in (None, ""))
    if unknown:
        raise BookError(f"{where}: unknown field {', '.join(unknown)}")
    for name in ("symbol", "qty", "leverage"):
        if row.get(name) in (None, ""):
            raise BookError(f"{where}: {name} is missing")
    symbol = str(row["symbol"]).strip()
    if symbol not in MARKETS:
        raise BookError(f"{where}: symbol {symbol}: the simulated exchange does not list it "
                        f"(it lists {len(MARKETS)}, from guardbot/sim/markets.csv)")  # fmt: skip
    text = str(row["qty"]).strip()
    try:
        qty = Decimal(text)
    except InvalidOperation:
        raise BookError(f"{where}: qty is not a number: {text!r}") from None
    if not qty.is_finite() or qty == 0:
        raise BookError(f"{where}: qty must be a non-zero number")
    side = str(row.get("side") or "").strip().lower()
    if side not in ("", "long", "short"):
        raise BookError(f"{where}: side must be long or short, got {side!r}")
    if side:
        if qty < 0:
            raise BookError(f"{where}: give side with a positive qty, or a signed qty alone")
        qty = -qty if side == "short" else qty
    try:
        leverage = int(str(row["leverage"]).strip())
    except ValueError:
        raise BookError(f"{where}: leverage must be a whole number") from None
    market = MARKETS[symbol]
    if not 1 <= leverage <= market.max_leverage:
        raise BookError(f"{where}: leverage must be 1 to {market.max_leverage} on {symbol}")
    mode = str(row.get("margin_mode") or "ISOLATED").strip().upper()
    if mode not in MODES:
        raise BookError(f"{where}: margin_mode must be ISOLATED or CROSS, got {mode!r}")
    entry = row.get("entry")
    margin = row.get("margin")
    return str(row.get("account") or DEFAULT_ACCOUNT).strip(), BookPosition(
        symbol, qty, leverage,
        entry=None if entry in (None, "") else _decimal(entry, f"{where}: entry", positive=True),
        margin=None if margin in (None, "") else _decimal(margin, f"{where}: margin",
                                                          positive=True),
        margin_mode=mode,
    )  # fmt: skip


def _assemble(name: str, rows: list[tuple[str, BookPosition, str]],
              balances: Mapping[str, Decimal]) -> Book:  # fmt: skip
    accounts: dict[str, list[BookPosition]] = {}
    seen: dict[tuple[str, str, str], str] = {}
    for account, position, where in rows:
        key = (account, position.symbol, position.margin_mode)
        if key in seen:
            raise BookError(f"{where}: account {account} already holds a {position.margin_mode}"
                            f" position on {position.symbol} ({seen[key]}): an account holds"
                            " one per symbol and mode; put the other in another account")
        seen[key] = where
        accounts.setdefault(account, []).append(position)
    for account in balances:
        if account not in accounts:
            raise BookError(f"{name}: account {account} has a balance but no positions")
    if not accounts:
        raise BookError(f"{name}: the book has no positions")
    return Book(name, tuple(
        BookAccount(account, tuple(positions), free_usdc=balances.get(account, DEFAULT_FREE_USDC))
        for account, positions in accounts.items()))  # fmt: skip


def toml_book(path: Path) -> Book:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BookError(f"{path}: cannot read the book: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BookError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"accounts", "positions"})
    if unknown:
        raise BookError(f"{path}: unknown table {', '.join(unknown)}")
    balances: dict[str, Decimal] = {}
    accounts = data.get("accounts", {})
    if not isinstance(accounts, dict):
        raise BookError(f"{path}: accounts must be a table of [accounts.NAME]")
    for account, values in accounts.items():
        if not isinstance(values, dict) or set(values) - {"free_usdc"}:
            raise BookError(f"{path}: accounts.{account}: only free_usdc is allowed")
        if "free_usdc" in values:
            balances[account] = _decimal(values["free_usdc"], f"{path}: accounts.{account}"
                                         ".free_usdc")  # fmt: skip
    positions = data.get("positions", [])
    if not isinstance(positions, list) or not all(isinstance(p, dict) for p in positions):
        raise BookError(f"{path}: positions must be an array of [[positions]] tables")
    rows = []
    for index, item in enumerate(positions, start=1):
        where = f"{path}: positions[{index}]"
        if "free_usdc" in item:
            raise BookError(f"{where}: free_usdc belongs in [accounts.NAME]")
        account, position = _position(item, where)
        rows.append((account, position, where))
    return _assemble(str(path), rows, balances)


def csv_book(path: Path) -> Book:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            items = list(reader)
            header = reader.fieldnames or []
    except OSError as exc:
        raise BookError(f"{path}: cannot read the book: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BookError(f"{path}: not a readable CSV file: {exc}") from None
    if not header:
        raise BookError(f"{path}: the CSV file needs a header (symbol,qty,leverage,...)")
    rows: list[tuple[str, BookPosition, str]] = []
    balances: dict[str, Decimal] = {}
    for number, item in enumerate(items, start=2):
        where = f"{path}:{number}"
        cleaned = {k.strip().lower(): (v or "").strip() for k, v in item.items() if k}
        account, position = _position(cleaned, where)
        if cleaned.get("free_usdc"):
            free = _decimal(cleaned["free_usdc"], f"{where}: free_usdc")
            if balances.setdefault(account, free) != free:
                raise BookError(f"{where}: free_usdc of account {account} differs from an "
                                "earlier row")  # fmt: skip
        rows.append((account, position, where))
    return _assemble(str(path), rows, balances)


# -- guardbot status --json -----------------------------------------------------------------


def _entry_for(symbol: str, qty: Decimal, margin: Decimal, liquidation: Decimal | None,
               mark: Decimal) -> Decimal:  # fmt: skip
    """The entry price that gives ``margin`` the reported liquidation price: solves the
    simulator's ``margin + qty*P - cost = |qty|*P*MMR(|qty|*P)`` for ``cost`` at ``P`` = the
    liquidation price. Without one (no risk reported), the mark."""
    if liquidation is None:
        return mark
    market = MARKETS[symbol]
    rate = m.mmr(market, abs(qty) * liquidation)
    cost = margin + qty * liquidation - abs(qty) * liquidation * rate
    entry = (cost / qty).quantize(market.quote_tick)
    if entry <= 0:
        raise BookError(f"{symbol}: no entry price gives margin {margin} the liquidation "
                        f"price {liquidation}")  # fmt: skip
    return entry


def status_book(path: Path) -> Book:
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    except OSError as exc:
        raise BookError(f"{path}: cannot read the book: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BookError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("accounts"), list):
        raise BookError(f"{path}: expected the JSON of `guardbot status --json` "
                        '({"accounts": [...]})')  # fmt: skip
    accounts: list[BookAccount] = []
    marks: dict[str, Decimal] = {}
    for index, item in enumerate(data["accounts"], start=1):
        where = f"{path}: accounts[{index}]"
        if not isinstance(item, dict) or not item.get("name"):
            raise BookError(f"{where}: expected an account with a name")
        if not item.get("ok", True) or "positions" not in item:
            continue  # status could not read it: nothing to replay
        positions = []
        for number, row in enumerate(item["positions"], start=1):
            at = f"{where}.positions[{number}]"
            if not isinstance(row, dict):
                raise BookError(f"{at}: expected an object")
            _, position = _position({k: row.get(k) for k in
                                     ("symbol", "qty", "leverage", "margin_mode")}, at)
            mark = _decimal(row.get("mark_price"), f"{at}: mark_price", positive=True)
            marks.setdefault(position.symbol, mark)  # accounts read a moment apart
            if position.isolated:
                margin = _decimal(row.get("margin"), f"{at}: margin", positive=True)
                liq = row.get("liquidation_price")
                liquidation = None if liq in (None, "") else _decimal(liq, f"{at}: "
                                                                      "liquidation_price")
                entry = _entry_for(position.symbol, position.qty, margin, liquidation or None,
                                   mark)
                position = BookPosition(position.symbol, position.qty, position.leverage,
                                        entry, margin, position.margin_mode)
            else:
                position = BookPosition(position.symbol, position.qty, position.leverage,
                                        mark, None, position.margin_mode)
            positions.append(position)
        if positions:
            free = _decimal(item.get("free_collateral", "0"), f"{where}: free_collateral")
            accounts.append(BookAccount(str(item["name"]), tuple(positions), free_usdc=free,
                                        account_id=item.get("account_id")))
    if not accounts:
        raise BookError(f"{path}: no account with open positions")
    return Book(str(path), tuple(accounts), marks)


def load_book(spec: str) -> Book:
    """``demo``, or a ``.toml``, ``.csv`` or ``.json`` (``guardbot status --json``) file."""
    if spec == "demo":
        return demo_book()
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return toml_book(path)
    if suffix == ".csv":
        return csv_book(path)
    if suffix == ".json":
        return status_book(path)
    raise BookError(f"book {spec!r}: use demo, or a .toml, .csv or .json file")
