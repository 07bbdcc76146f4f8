"""The ledger: the one home of budgets (docs/architecture.md, "Where things live").

It knows, per account, the guard's recent actions and what became of them, and answers
what the arbiter needs: margin added today per position and per account, each position's
last action (for cooldowns) and the net margin the guard added to it since it opened, and
the UTC day the daily budgets count. It is fed every record by the audit store (before the
record is durable, so budgets count actions still in the spool: conservative) and loads
each account's recent history from the database once, through ``SqlHistory``; the backtest
feeds it from memory with no database at all.

An action's status follows its events:

- *applied*: ``SUCCEEDED``, or ``RECONCILED`` as applied;
- *not applied*: ``REJECTED``, ``SKIPPED``, ``FAILED``, ``DRY_RUN``, or ``RECONCILED`` as not
  applied: it never moved money and leaves the budgets;
- *unknown* otherwise (decided, on the wire, uncertain, or reconciled as unknown): it counts
  as spent, since it may have moved money.

A position closed or liquidated (``position_closed`` or ``position_liquidated``
observation) starts over: actions before the close
count for neither cooldowns nor the net margin added of a position opened later.

Dry runs never count in a live guard's budgets (``may_have_added``). A dry-run guard keeps a
shadow of what it would have sent: a dry-run action recorded ``DRY_RUN`` (or still queued)
*would have moved* its amount. Its budgets count those amounts on top of the real ones, and
each open position's shadow effect (``dry_run_effects``: the dry-run ADDs minus REDUCEs
since it opened) is added to the margin its policies see and taken from the free balance,
so a dry run decides what the live guard would have, refusals included, and does not repeat
an ADD whose effect live would already show. A close resets the shadow with the rest.
"""

# Size (about 410 lines): the in-memory ledger and ``SqlHistory``, the query that fills it
# from the database, stay together so that the rules of what counts (status, closes, the
# window) and the SQL that reads them back are checked side by side.

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from guardbot.arbiter import ArbiterState, LastAction
from guardbot.audit import chain
from guardbot.audit.errors import AuditUnavailable, first_line
from guardbot.audit.tables import Action, ActionEvent, Observation
from guardbot.domain import ZERO, ActionKind, PositionKey

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
# Budgets look back at most a day; keep two in memory so a window never straddles a gap.
WINDOW_MS = 2 * DAY_MS
# Observations that end a position: the ledger starts over after either.
CLOSES = ("position_closed", "position_liquidated")


class Status(enum.Enum):
    UNKNOWN = "unknown"
    APPLIED = "applied"
    NOT_APPLIED = "not_applied"


# Events that end an action without moving money.
_NOT_APPLIED_EVENTS = frozenset({"REJECTED", "SKIPPED", "FAILED", "DRY_RUN"})
# Events that tell what happened to an action (the rest are steps along the way).
_TELLING_EVENTS = (*_NOT_APPLIED_EVENTS, "SUCCEEDED", "RECONCILED")


def status_after(status: Status, event: str, detail: Mapping[str, str] | None) -> Status:
    """An action's status once ``event`` happened to it."""
    if event == "SUCCEEDED":
        return Status.APPLIED
    if event in _NOT_APPLIED_EVENTS:
        return Status.NOT_APPLIED if status is not Status.APPLIED else status
    if event == "RECONCILED":
        said = (detail or {}).get("applied")
        if said == "true":
            return Status.APPLIED
        if said == "false":
            return Status.NOT_APPLIED
    return status


def utc_day_start_ms(at_ms: int) -> int:
    """Midnight UTC of the day ``at_ms`` falls in: daily budgets count from here."""
    day = datetime.fromtimestamp(at_ms / 1000, UTC).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    return int(day.timestamp() * 1000)


@dataclass(slots=True)
class Entry:
    """One action of the guard, as the ledger counts it."""

    symbol: str
    mode: str
    kind: ActionKind
    amount: Decimal
    time_ms: int
    dry_run: bool
    status: Status = Status.UNKNOWN
    # When the exchange answered that it applied the action (its SUCCEEDED event): it was
    # in every balance read after that. None: not applied, or applied at an unknown moment.
    answered_ms: int | None = None
    # When the call was last known to be open (sent, or its answer lost): while the outcome
    # is unknown it may land until a settle window after this.
    open_ms: int | None = None
    # A dry run that reached the point of sending (its DRY_RUN event): live would have sent it.
    simulated: bool = False

    @property
    def last_open_ms(self) -> int:
        """The last time the call was known to be open (decided, sent, answer lost), while
        its outcome is unknown; once known, when it was decided."""
        if self.status is Status.UNKNOWN and self.open_ms is not None:
            return max(self.time_ms, self.open_ms)
        return self.time_ms

    @property
    def may_have_added(self) -> bool:
        """An ADD that may have moved money: not a dry run, not known to be unapplied."""
        return (self.kind is ActionKind.ADD and not self.dry_run
                and self.status is not Status.NOT_APPLIED)

    @property
    def would_have_moved(self) -> bool:
        """A dry-run action live would have sent: recorded ``DRY_RUN``, or still queued."""
        return self.dry_run and (self.simulated or self.status is Status.UNKNOWN)

    def counts_as_added(self, dry_run: bool) -> bool:
        """Whether this counts in the daily budgets of a guard that is (``dry_run``) or is not
        a dry run: real ADDs always (``may_have_added``), the shadow's only in a dry run."""
        return self.may_have_added or (dry_run and self.kind is ActionKind.ADD
                                       and self.would_have_moved)

    @property
    def signed(self) -> Decimal:
        return self.amount if self.kind is ActionKind.ADD else -self.amount


@dataclass(frozen=True, slots=True)
class AccountHistory:
    """An account's recent actions (by id) and when each of its symbols last closed."""

    entries: dict[str, Entry]
    closed_ms: dict[str, int]


class History(Protocol):
    """Where the ledger reads what happened before it started listening."""

    def account(self, account_id: str, since_ms: int) -> AccountHistory: ...

    def net_added_before(self, key: PositionKey, closed_ms: int | None, before_ms: int
                         ) -> Decimal: ...  # fmt: skip


class Ledger:
    """Budget accounting for every account the guard records actions on."""

    def __init__(self, history: History | None = None) -> None:
        self._history = history
        self._entries: dict[str, dict[str, Entry]] = {}
        self._closed_ms: dict[str, dict[str, int]] = {}
        self._loaded_from: dict[str, int] = {}
        self._loading: dict[str, asyncio.Event] = {}  # reads of an account's history out
        self._older_net: dict[PositionKey, Decimal] = {}

    # -- fed by the store ------------------------------------------------------------------

    def note(self, record: Mapping[str, Any]) -> Callable[[], None] | None:
        """Count one audit record; returns how to forget it if it never becomes durable."""
        kind = record["t"]
        if kind == "action":
            entries = self._entries.setdefault(record["account_id"], {})
            action_id = record["id"]
            entries[action_id] = Entry(
                record["symbol"], record["margin_mode"], ActionKind(record["kind"]),
                Decimal(record["amount"]), record["time_ms"], record["dry_run"])  # fmt: skip

            def forget() -> None:
                entries.pop(action_id, None)

            return forget
        if kind == "event":
            entry = self._entries.get(record["account_id"], {}).get(record["action_id"])
            if entry is None:
                return None
            before, answered, opened = entry.status, entry.answered_ms, entry.open_ms
            simulated = entry.simulated
            entry.status = status_after(before, record["kind"], record["detail"])
            if record["kind"] == "SUCCEEDED":
                entry.answered_ms = record.get("time_ms")
            elif record["kind"] in ("SENT", "UNCERTAIN"):
                entry.open_ms = record.get("time_ms")
            elif record["kind"] == "DRY_RUN":
                entry.simulated = True
            if (entry.status, entry.answered_ms, entry.open_ms, entry.simulated) == (
                    before, answered, opened, simulated):
                return None

            def undo() -> None:
                entry.status, entry.answered_ms, entry.open_ms = before, answered, opened
                entry.simulated = simulated

            return undo
        if kind == "observation" and record["kind"] in CLOSES and record["symbol"]:
            return self.position_closed(record["account_id"], record["symbol"],
                                        record["time_ms"])
        return None

    def position_closed(self, account_id: str, symbol: str, at_ms: int
                        ) -> Callable[[], None]:  # fmt: skip
        """The isolated position on ``symbol`` closed at ``at_ms``: actions before count no
        more for a position opened later (told at once by the guard, and again by the close
        record; the later of the two times wins). Returns how to forget it."""
        closes = self._closed_ms.setdefault(account_id, {})
        previous = closes.get(symbol)
        closes[symbol] = max(previous or 0, at_ms)
        for key in [k for k in self._older_net if k[:2] == (account_id, symbol)]:
            del self._older_net[key]

        def reopen() -> None:
            if previous is None:
                closes.pop(symbol, None)
            else:
                closes[symbol] = previous

        return reopen

    # -- loading -------------------------------------------------------------------------

    async def load(self, account_id: str, now_ms: int, *, again: bool = False) -> None:
        """Read the account's recent history (once; ``again`` after another instance guarded
        it). A question asked while the read is out waits for it: it is never answered from
        a ledger still empty. Raises ``AuditUnavailable`` if the database cannot be read
        (the next question reads it again)."""
        while not again and (loading := self._loading.get(account_id)) is not None:
            await loading.wait()
        start = now_ms - WINDOW_MS
        if not again and account_id in self._loaded_from:
            self._prune(account_id, now_ms)
            return
        self._loaded_from[account_id] = start
        self._prune(account_id, now_ms, now=True)
        if self._history is None:
            return
        loading = self._loading[account_id] = asyncio.Event()
        merged = False
        try:
            found = await asyncio.to_thread(self._history.account, account_id, start)
        except SQLAlchemyError as exc:
            raise AuditUnavailable(
                f"cannot read the audit log for account {account_id}: {first_line(exc)}"
            ) from None
        else:
            self._merge(account_id, found, start)
            merged = True
        finally:
            # However the read ended without its history (a database error, a cancelled
            # caller, a bug), the account is not read: the next question reads it again.
            if not merged and self._loaded_from.get(account_id) == start:
                del self._loaded_from[account_id]
            if self._loading.get(account_id) is loading:
                del self._loading[account_id]
            loading.set()

    def _merge(self, account_id: str, found: AccountHistory, start: int) -> None:
        """Take the history read from ``start`` into what the store noted meanwhile."""
        entries = self._entries.setdefault(account_id, {})
        for action_id, entry in found.entries.items():
            known = entries.setdefault(action_id, entry)
            if known.status is Status.UNKNOWN:
                known.status = entry.status
            known.simulated = known.simulated or entry.simulated
        closes = self._closed_ms.setdefault(account_id, {})
        for symbol, at_ms in found.closed_ms.items():
            closes[symbol] = max(closes.get(symbol, 0), at_ms)
        for key in [k for k in self._older_net if k[0] == account_id]:
            del self._older_net[key]
        self._loaded_from[account_id] = start

    def forget(self, account_id: str) -> None:
        """Another instance guards the account now: read it again if it comes back."""
        self._loaded_from.pop(account_id, None)
        for key in [k for k in self._older_net if k[0] == account_id]:
            del self._older_net[key]

    def _prune(self, account_id: str, now_ms: int, *, now: bool = False) -> None:
        """Forget actions older than the window (past any cooldown and daily budget); by
        default only once they are a whole window older than that (amortized)."""
        keep_from = now_ms - WINDOW_MS
        if not now and self._loaded_from[account_id] > keep_from - WINDOW_MS:
            return
        entries = self._entries.get(account_id, {})
        for action_id in [a for a, e in entries.items() if e.time_ms < keep_from]:
            del entries[action_id]
        self._loaded_from[account_id] = keep_from
        for key in [k for k in self._older_net if k[0] == account_id]:
            del self._older_net[key]

    # -- questions -----------------------------------------------------------------------

    async def added_since(
        self, account_id: str, since_ms: int, now_ms: int, symbol: str | None = None,
        *, dry_run: bool = False,
    ) -> Decimal:
        """Margin added to the account (or one symbol of it) since ``since_ms`` by ADDs that
        are not dry-run and not known to be unapplied (in flight and uncertain ones
        included: budgets hold under any failure); for a dry-run guard (``dry_run``), the
        dry-run ADDs that would have been sent as well."""
        by_symbol = await self.added_by_symbol(account_id, since_ms, now_ms, dry_run=dry_run)
        if symbol is not None:
            return by_symbol.get(symbol, ZERO)
        return sum(by_symbol.values(), ZERO)

    async def added_by_symbol(self, account_id: str, since_ms: int, now_ms: int, *,
                              dry_run: bool = False) -> dict[str, Decimal]:
        """``added_since`` of every symbol of the account with any, in one pass (a round of
        the arbiter and the live view read them all at once)."""
        await self.load(account_id, now_ms)
        totals: dict[str, Decimal] = {}
        for e in self._entries.get(account_id, {}).values():
            if e.counts_as_added(dry_run) and e.time_ms >= since_ms:
                totals[e.symbol] = totals.get(e.symbol, ZERO) + e.amount
        return totals

    async def dry_run_effects(self, account_id: str, keys: Iterable[PositionKey], now_ms: int
                              ) -> dict[PositionKey, Decimal]:  # fmt: skip
        """The shadow of a dry run: per open position of ``keys``, the margin the dry-run
        actions that would have been sent since it opened would have moved (ADDs minus
        REDUCEs); positions without any are left out."""
        await self.load(account_id, now_ms)
        effects = {}
        for key in keys:
            effect = sum((e.signed for e in self._since_open(key) if e.would_have_moved), ZERO)
            if effect:
                effects[key] = effect
        return effects

    def added_after_read(self, account_id: str, read_ms: int, settle_window_ms: int
                         ) -> Decimal:  # fmt: skip
        """Margin ADDs may have taken from the free balance after a read asked at
        ``read_ms``: every ADD last known open (decided, sent, or its answer lost) since
        ``read_ms - settle_window_ms`` (a call may land until a settle window after that)
        that is not known to be unapplied, except those the exchange confirmed before the
        read: the balance read already shows those."""
        return sum(
            (e.amount for e in self._entries.get(account_id, {}).values()
             if e.may_have_added and e.last_open_ms >= read_ms - settle_window_ms
             and not (e.answered_ms is not None and e.answered_ms < read_ms)),
            ZERO,
        )  # fmt: skip

    def _since_open(self, key: PositionKey) -> Iterable[Entry]:
        account_id, symbol, mode = key
        closed = self._closed_ms.get(account_id, {}).get(symbol, -1)
        return (
            e for e in self._entries.get(account_id, {}).values()
            if e.symbol == symbol and e.mode == mode.value and e.time_ms > closed
        )  # fmt: skip

    def last_action(
        self, key: PositionKey, since_ms: int, dry_run: bool = False
    ) -> LastAction | None:
        """The newest action since ``since_ms`` on the position as it is now open that may
        have moved money (in a dry run: the newest dry-run decision, for pacing): what a
        cooldown counts from (a restart changes nothing)."""
        moved = [
            e for e in self._since_open(key)
            if e.time_ms >= since_ms and e.dry_run is dry_run
            and (dry_run or e.status is not Status.NOT_APPLIED)
        ]  # fmt: skip
        newest = max(moved, key=lambda e: e.time_ms, default=None)
        return None if newest is None else LastAction(newest.time_ms, newest.kind)

    async def net_added(self, key: PositionKey, now_ms: int) -> Decimal | None:
        """Margin the guard added minus margin it swept on this position since it opened
        (applied, not dry-run); ``None`` when older history cannot be read."""
        account_id = key[0]
        await self.load(account_id, now_ms)
        recent = sum((e.signed for e in self._since_open(key)
                      if e.status is Status.APPLIED and not e.dry_run), ZERO)  # fmt: skip
        older = self._older_net.get(key)
        if older is None:
            if self._history is None:
                older = ZERO
            else:
                closed = self._closed_ms.get(account_id, {}).get(key[1])
                start = self._loaded_from[account_id]
                try:
                    older = await asyncio.to_thread(self._history.net_added_before, key,
                                                    closed, start)
                except SQLAlchemyError as exc:
                    log.warning("cannot read %s history from the audit log: %s", key[1],
                                first_line(exc))
                    return None
                # A close (or a prune, or a release) while the read was out: what it read
                # is not the history of the position open now; keep it for no one.
                if (self._closed_ms.get(account_id, {}).get(key[1]) != closed
                        or self._loaded_from.get(account_id) != start):
                    return older + recent
            self._older_net[key] = older
        return older + recent

    async def arbiter_state(
        self,
        account_id: str,
        keys: Iterable[PositionKey],
        now_ms: int,
        *,
        cooldown_s: float,
        free_balance: Decimal | None = None,
        balance_read_ms: int = 0,
        settle_window_ms: int = 0,
        blocked: frozenset[PositionKey] = frozenset(),
        held: Mapping[PositionKey, frozenset[ActionKind]] | None = None,
        unsettled: Mapping[PositionKey, int] | None = None,
        uncertain: Mapping[PositionKey, int] | None = None,
        kill_switch: bool = False,
        dry_run: bool = False,
        dry_run_effects: Mapping[PositionKey, Decimal] | None = None,
    ) -> ArbiterState:
        """What the arbiter needs for one round of ``account_id``. The free balance is only
        re-read on polls (asked at ``balance_read_ms``): ADDs that may have landed after it
        was read are not in it yet, and must not spend the reserve twice; ADDs the exchange
        had confirmed before it was read are in it, and must not be counted twice. A dry
        run counts its shadow too: its ADDs in the budgets, and ``dry_run_effects`` (the
        shadow margin of the open positions) taken from the free balance."""
        day = utc_day_start_ms(now_ms)
        keys = list(keys)
        since_cooldown = now_ms - int(cooldown_s * 1000)
        by_symbol = await self.added_by_symbol(account_id, day, now_ms, dry_run=dry_run)
        added_today = sum(by_symbol.values(), ZERO)
        by_position = {key: by_symbol.get(key[1], ZERO) for key in keys}
        last_action = {key: last for key in keys
                       if (last := self.last_action(key, since_cooldown, dry_run)) is not None}
        balances = {}
        if free_balance is not None:
            spent = self.added_after_read(account_id, balance_read_ms, settle_window_ms)
            if dry_run and dry_run_effects:
                spent += sum(dry_run_effects.values(), ZERO)
            balances[account_id] = free_balance - spent
        return ArbiterState(
            now_ms=now_ms, free_balance=balances, blocked=blocked, held=dict(held or {}),
            unsettled=dict(unsettled or {}), uncertain=dict(uncertain or {}),
            last_action=last_action,
            added_today_by_position=by_position,
            added_today_by_account={account_id: added_today}, kill_switch=kill_switch,
        )  # fmt: skip


class SqlHistory:
    """``History`` from the audit database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def account(self, account_id: str, since_ms: int) -> AccountHistory:
        actions = select(
            Action.id, Action.symbol, Action.margin_mode, Action.kind, Action.amount,
            Action.time, Action.dry_run,
        ).where(Action.account_id == account_id, Action.time >= chain.from_ms(since_ms))
        telling = (
            select(ActionEvent.action_id, ActionEvent.kind, ActionEvent.detail)
            .join(Action, Action.id == ActionEvent.action_id)
            .where(Action.account_id == account_id, Action.time >= chain.from_ms(since_ms),
                   ActionEvent.kind.in_(_TELLING_EVENTS))
            .order_by(ActionEvent.seq)
        )
        closes = (
            select(Observation.symbol, func.max(Observation.time))
            .where(Observation.account_id == account_id, Observation.kind.in_(CLOSES))
            .group_by(Observation.symbol)
        )
        with self._engine.connect() as connection:
            entries = {
                row.id: Entry(row.symbol, row.margin_mode, ActionKind(row.kind), row.amount,
                              chain.to_ms(row.time), row.dry_run)
                for row in connection.execute(actions)
            }  # fmt: skip
            for row in connection.execute(telling):
                entry = entries.get(row.action_id)
                if entry is not None:  # None: written between the two reads, noted anyway
                    entry.status = status_after(entry.status, row.kind, row.detail)
                    entry.simulated = entry.simulated or row.kind == "DRY_RUN"
            closed = {row[0]: chain.to_ms(row[1]) for row in connection.execute(closes)
                      if row[0] is not None}  # fmt: skip
        return AccountHistory(entries, closed)

    def net_added_before(self, key: PositionKey, closed_ms: int | None, before_ms: int
                         ) -> Decimal:  # fmt: skip
        """Net margin applied to the position between its opening (after ``closed_ms``)
        and ``before_ms``, where the in-memory window starts."""
        account_id, symbol, mode = key
        query = (
            select(Action.id, Action.kind, Action.amount, ActionEvent.kind.label("event"),
                   ActionEvent.detail)
            .join(ActionEvent, ActionEvent.action_id == Action.id)
            .where(Action.account_id == account_id, Action.symbol == symbol,
                   Action.margin_mode == mode.value, Action.dry_run.is_(False),
                   Action.time < chain.from_ms(before_ms),
                   ActionEvent.kind.in_(["SUCCEEDED", "RECONCILED"]))
        )
        if closed_ms is not None:
            query = query.where(Action.time > chain.from_ms(closed_ms))
        moved: dict[str, Decimal] = {}
        with self._engine.connect() as connection:
            for row in connection.execute(query):
                if status_after(Status.UNKNOWN, row.event, row.detail) is Status.APPLIED:
                    moved[row.id] = row.amount if row.kind == "ADD" else -row.amount
        return sum(moved.values(), ZERO)
