"""The live state model: what the running daemon holds, as one JSON-able dict.

The page (``guardbot.view.server``), ``guardbot top`` and the Telegram commands read this
one model, so they cannot disagree. ``await LiveState.snapshot()`` returns::

    {"version": 1, "now_ms": ..., "instance": {...}, "ready": bool, "problems": [...],
     "budgets": {...}, "accounts": [...], "positions": [...], "actions": [...],
     "observations": [...]}

Everything comes from memory: the guard's position book, the policies' declared distances,
the budget ledger (the audit log's, so a restart never resets it), the guard's trail of
recent decisions (routine refusals included), the audit records the daemon wrote since it
started (``AuditLog.listen``) and, once at start, those of the last ``hours`` from the
database (``seed``). Building it does no I/O once the ledger is loaded.

Money, prices, quantities and distances are strings of their ``Decimal`` (never a float;
liquidation prices rounded to the symbol's price step and distances to six places, for
people: the guard decides on its own unrounded figures);
times are milliseconds since the epoch, ages seconds. Nothing secret is in it: no key, no
secret, no token, no database URL; free texts (reasons, exchange messages, notes) go
through ``logs.redact`` like log lines.

Bands. Each position carries the distances its policies declare (``trigger``: they act
below it; ``add_target``: how far a top-up takes it; ``reduce_floor``: how close a sweep
leaves it) and a ``zone``: ``"trigger"`` below the trigger, ``"target"`` between the
trigger and the add target, ``"safe"`` beyond it, ``"unknown"`` without a liquidation price.

Charts. ``sample`` keeps a point (mark, margin, liquidation price) per position every
``sample_s``, for ``hours``; actions are marked from the recorded actions. ``chart`` hands
these plain series to ``guardbot.view.chart``.
"""

# Size (about 400 lines): the model and the two small memories it reads (recent audit
# records, chart samples) stay together: they are one concern, the live view's data.

from __future__ import annotations

import asyncio
import logging
import socket
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from guardbot import __version__, risk
from guardbot.audit import queries
from guardbot.audit.errors import AuditError
from guardbot.audit.ledger import utc_day_start_ms
from guardbot.audit.records import EventKind, Record
from guardbot.book import Held
from guardbot.config import Settings
from guardbot.domain import ZERO, MarginMode, Position, PositionKey, SymbolRules
from guardbot.guard import Guard
from guardbot.health import Readiness
from guardbot.logs import redact
from guardbot.view import chart

log = logging.getLogger(__name__)

VERSION = 1
RECENT_ACTIONS = 200  # recorded actions kept (with their events)
SHOWN_ACTIONS = 50  # the newest shown in the snapshot
RECENT_OBSERVATIONS = 50
SHOWN_OBSERVATIONS = 20
# Shown distances have six places (a ten-thousandth of a percent); the zone is read unrounded.
DISTANCE_SHOWN = Decimal("0.000001")


def text(value: Decimal | None) -> str | None:
    """A ``Decimal`` as the JSON carries it (``None`` stays ``None``)."""
    return None if value is None else str(value)


def position_id(key: PositionKey) -> str:
    """The id of a position in URLs and the page: ``account_id/symbol``."""
    return f"{key[0]}/{key[1]}"


def parse_position_id(value: str) -> PositionKey:
    """The key of ``position_id``; raises ``ValueError`` when it is not one."""
    account_id, sep, symbol = value.partition("/")
    if not sep or not account_id or not symbol:
        raise ValueError(f"not a position id: {value!r}")
    return (account_id.lower(), symbol, MarginMode.ISOLATED)


@dataclass(frozen=True, slots=True)
class Bands:
    """The distances the policies on one position declare (``None``: none declares it)."""

    trigger: Decimal | None
    add_target: Decimal | None
    reduce_floor: Decimal | None
    policies: tuple[str, ...]

    def zone(self, distance: Decimal | None) -> str:
        if distance is None:
            return "unknown"
        if self.trigger is not None and distance < self.trigger:
            return "trigger"
        if self.add_target is not None and distance < self.add_target:
            return "target"
        return "safe"

    def as_json(self) -> dict[str, Any]:
        return {"trigger": text(self.trigger), "add_target": text(self.add_target),
                "reduce_floor": text(self.reduce_floor), "policies": list(self.policies)}


@dataclass(slots=True)
class _Action:
    """One recorded action and its events, as the view keeps it."""

    record: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return str(self.events[-1]["kind"]) if self.events else EventKind.INTENT.value

    def message(self) -> str | None:
        for event in reversed(self.events):
            if event.get("message"):
                return redact(str(event["message"]))
        return None


class Recent:
    """The newest audit records (actions with their events, observations), fed by
    ``AuditLog.listen`` and seeded from the database at start."""

    def __init__(self) -> None:
        self.actions: OrderedDict[str, _Action] = OrderedDict()
        self.observations: deque[dict[str, Any]] = deque(maxlen=RECENT_OBSERVATIONS)
        # bumped on every action or event: what a chart's revision counts
        self.revision = 0

    def note(self, record: Record) -> None:
        kind = record.get("t")
        if kind == "action":
            self._add(record["id"], {
                "time_ms": record["time_ms"], "account_id": record["account_id"],
                "symbol": record["symbol"], "kind": record["kind"], "amount": record["amount"],
                "policy": record["policy"], "reason": record["reason"],
                "dry_run": record["dry_run"], "mark_price": record["mark_price"],
                "margin": record["margin"], "liquidation_price": record["liquidation_price"],
                "distance": record["distance"], "data_age_ms": record["data_age_ms"],
            }, [{"kind": EventKind.INTENT.value, "time_ms": record["time_ms"],
                 "latency_ms": None, "code": None, "message": None}])  # fmt: skip
        elif kind == "event":
            action = self.actions.get(record["action_id"])
            if action is not None:
                action.events.append({name: record.get(name) for name in
                                      ("kind", "time_ms", "latency_ms", "code", "message")})
                self.revision += 1
        elif kind == "observation":
            self.observations.append({
                "time_ms": record["time_ms"], "account_id": record["account_id"],
                "symbol": record["symbol"], "kind": record["kind"],
                "detail": dict(record.get("detail") or {})})  # fmt: skip

    def _add(self, action_id: str, record: dict[str, Any], events: list[dict[str, Any]]) -> None:
        self.actions[action_id] = _Action(record, events)
        self.actions.move_to_end(action_id)
        while len(self.actions) > RECENT_ACTIONS:
            self.actions.popitem(last=False)
        self.revision += 1

    def seed(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Actions read back from the database (``queries.export_actions`` rows, oldest
        first), before anything this run recorded."""
        known = self.actions
        self.actions = OrderedDict()
        for row in rows:
            time_ms = epoch_ms(row["time"])
            record = {name: row[name] for name in (
                "account_id", "symbol", "kind", "policy", "reason", "dry_run", "data_age_ms")}
            for name in ("amount", "mark_price", "margin", "liquidation_price", "distance"):
                record[name] = text(row[name])
            record["time_ms"] = time_ms
            status = str(row["status"] or EventKind.INTENT.value)
            self._add(str(row["id"]), record, [{"kind": status, "time_ms": time_ms,
                                                "latency_ms": None, "code": None,
                                                "message": None}])
        for action_id, action in known.items():
            self._add(action_id, action.record, action.events)

    def of(self, key: PositionKey, since_ms: int) -> list[_Action]:
        return [a for a in self.actions.values()
                if a.record["account_id"] == key[0] and a.record["symbol"] == key[1]
                and a.record["time_ms"] >= since_ms]  # fmt: skip


class Samples:
    """Chart points of one position: time, mark, margin, liquidation price (NaN: none).
    Floats: they only place pixels; the amounts shown are the snapshot's strings."""

    __slots__ = ("liquidation", "margin", "mark", "time_ms")

    def __init__(self) -> None:
        self.time_ms = array("q")
        self.mark = array("d")
        self.margin = array("d")
        self.liquidation = array("d")

    def add(self, at_ms: int, mark: float, margin: float, liquidation: float | None,
            keep: int) -> None:  # fmt: skip
        self.time_ms.append(at_ms)
        self.mark.append(mark)
        self.margin.append(margin)
        self.liquidation.append(float("nan") if liquidation is None else liquidation)
        if len(self.time_ms) > 2 * keep:  # amortized: drop the oldest half at once
            for series in (self.time_ms, self.mark, self.margin, self.liquidation):
                del series[: len(series) - keep]

    def since(self, since_ms: int) -> range:
        start = next((i for i, t in enumerate(self.time_ms) if t >= since_ms), len(self.time_ms))
        return range(start, len(self.time_ms))


@dataclass(frozen=True, slots=True)
class _Row:
    """One guarded position as the snapshot and the sampler read it."""

    key: PositionKey
    position: Position  # as the exchange last confirmed it, with the known effect
    mark: Decimal  # the symbol's latest mark
    liquidation: Decimal | None
    distance: Decimal | None
    age_ms: int | None
    tick: Decimal  # the symbol's price step: liquidation prices are shown to it


class LiveState:
    """The live state of one daemon, built on demand from what it holds."""

    def __init__(
        self,
        guard: Guard,
        settings: Settings,
        readiness: Callable[[], Readiness],
        *,
        instance_id: str | None = None,
        live_instances: Callable[[], int] | None = None,
        hours: float = 6.0,
        sample_s: float = 30.0,
    ) -> None:
        self.guard = guard
        self.settings = settings
        self.readiness = readiness
        self.instance_id = instance_id or socket.gethostname()
        self.live_instances = live_instances
        self.hours = hours
        self.sample_ms = int(sample_s * 1000)
        self.recent = Recent()
        self.samples: dict[PositionKey, Samples] = {}
        self._sampled_ms: int | None = None
        self._bands: dict[PositionKey, Bands] = {}
        self._liquidations: dict[
            PositionKey, tuple[Held, Decimal, SymbolRules | None, Position, Decimal | None]] = {}
        self.started_ms = guard.clock.now_ms()
        guard.audit.listen(self.recent.note)

    @property
    def window_ms(self) -> int:
        return int(self.hours * 3_600_000)

    async def seed(self) -> None:
        """Read the actions of the last ``hours`` from the audit database (their snapshots
        mark the charts); a database that cannot be read leaves the view with this run's."""
        since = datetime.fromtimestamp((self.guard.clock.now_ms() - self.window_ms) / 1000, UTC)

        def read() -> list[dict[str, Any]]:
            rows = queries.export_actions(self.guard.audit.engine,
                                          queries.ActionFilter(since=since))
            return list(deque(rows, maxlen=RECENT_ACTIONS))

        try:
            self.recent.seed(await asyncio.to_thread(read))
        except Exception as exc:  # the view must never stop the guard
            log.warning("live view: cannot read recent actions from the audit log: %s",
                        redact(str(exc)))

    # -- reading the guard ----------------------------------------------------------------

    def bands(self, key: PositionKey) -> Bands:
        """The declared distances of the policies that apply to the position."""
        found = self._bands.get(key)
        if found is None:
            name = self.guard.account_names.get(key[0])
            applying = [p for p in self.guard.policies if p.applies_to(key[0], key[1], name)]
            triggers = [p.trigger for p in applying if p.trigger is not None]
            targets = [p.add_target for p in applying if p.add_target is not None]
            floors = [p.reduce_floor for p in applying if p.reduce_floor is not None]
            found = self._bands[key] = Bands(
                max(triggers, default=None), max(targets, default=None),
                min(floors, default=None), tuple(p.label for p in applying))
        return found

    def _rows(self, account_id: str, now_ms: int) -> list[_Row]:
        guard = self.guard
        known = guard.executor.settlement.known_effect
        rows = []
        for held, mark in guard.book.isolated_marks(account_id):
            key = held.key
            effect = known(key)
            rules = guard.rules.get(key[1])
            # The liquidation price does not move with the mark: computed once per confirmed
            # version, known effect and rules (a tick then costs a subtraction per position).
            cached = self._liquidations.get(key)
            if (cached is None or cached[0] is not held or cached[1] != effect
                    or cached[2] is not rules):
                cached = self._liquidations[key] = (held, effect, rules,
                                                    *self._liquidation(held, effect, rules))
            position, liquidation = cached[3], cached[4]
            distance = None
            if liquidation is not None:
                try:
                    distance = risk.liquidation_distance(mark, liquidation, position.qty)
                except ArithmeticError:
                    distance = None
            tick = DISTANCE_SHOWN if rules is None else rules.quote_tick
            rows.append(_Row(key, position, mark, liquidation, distance,
                             now_ms - held.confirmed_ms, tick))
        return rows

    @staticmethod
    def _liquidation(held: Held, effect: Decimal, rules: SymbolRules | None
                     ) -> tuple[Position, Decimal | None]:  # fmt: skip
        position = held.position
        if effect:  # succeeded calls no snapshot shows yet, as the guard counts them
            position = replace(position, margin=position.margin + effect)
        if rules is None:
            return position, None
        try:
            return position, risk.liquidation_price(position, rules)
        except (ArithmeticError, ValueError):
            return position, None

    def sample(self, now_ms: int | None = None) -> None:
        """Keep a chart point of every guarded position, at most once per ``sample_s``."""
        now = self.guard.clock.now_ms() if now_ms is None else now_ms
        if self._sampled_ms is not None and now - self._sampled_ms < self.sample_ms:
            return
        self._sampled_ms = now
        keep = max(self.window_ms // max(self.sample_ms, 1), 2)
        seen = set()
        for account_id in sorted(self.guard.owned):
            for row in self._rows(account_id, now):
                seen.add(row.key)
                series = self.samples.get(row.key)
                if series is None:
                    series = self.samples[row.key] = Samples()
                series.add(now, float(row.mark), float(row.position.margin),
                           None if row.liquidation is None else float(row.liquidation), keep)
        for key in [k for k, s in self.samples.items()
                    if k not in seen and (not s.time_ms or s.time_ms[-1] < now - self.window_ms)]:
            del self.samples[key]

    # -- the snapshot -----------------------------------------------------------------------

    async def snapshot(self) -> dict[str, Any]:
        """The whole live state (see the module docstring)."""
        guard, settings = self.guard, self.settings
        now = guard.clock.now_ms()
        day = utc_day_start_ms(now)
        budgets = settings.budgets
        dry_run = settings.guard.dry_run
        try:
            readiness = self.readiness()
            problems = readiness.problems()
            ready_accounts = {a.account: a for a in readiness.accounts}
        except Exception as exc:  # a broken probe is reported, never raised into the view
            problems = [redact(f"readiness check failed: {type(exc).__name__}: {exc}")]
            ready_accounts = {}
        kill_file = settings.guard.kill_switch_file
        kill_switch = kill_file is not None and kill_file.exists()
        if kill_switch:
            problems.append(f"kill switch engaged ({kill_file} exists): no new action")
        accounts, positions = [], []
        for account_id in guard.exchanges:
            name = guard.name(account_id)
            here = account_id in guard.owned
            rows = self._rows(account_id, now) if here else []
            added = left = by_symbol = None
            if here:
                try:
                    by_symbol = await guard.ledger.added_by_symbol(account_id, day, now,
                                                                   dry_run=dry_run)
                    added = sum(by_symbol.values(), ZERO)
                    left = max(budgets.per_account_per_day - added, ZERO)
                except AuditError as exc:
                    problems.append(f"account {name}: budget unknown ({redact(str(exc))})")
            ready = ready_accounts.get(name)
            accounts.append({
                "name": name, "account_id": account_id, "guarded_here": here,
                "data_age_s": None if ready is None else ready.data_age_s,
                "ws_connected": guard.ws_connected.get(account_id, False),
                "free_balance": text(guard.free_balance.get(account_id)) if here else None,
                "positions": len(rows),
                "budget": {"per_day": text(budgets.per_account_per_day), "added": text(added),
                           "left": text(left)},
            })  # fmt: skip
            for row in rows:
                positions.append(self._position(row, name, by_symbol))
        return {
            "version": VERSION,
            "now_ms": now,
            "instance": {
                "id": self.instance_id, "version": __version__, "started_ms": self.started_ms,
                "dry_run": dry_run, "kill_switch": kill_switch, "acting": guard.acting,
                "live_instances": None if self.live_instances is None
                else self.live_instances(),
                "guarded_here": len(guard.owned), "accounts": len(guard.exchanges),
            },
            "ready": not problems,
            "problems": problems,
            "budgets": {
                "per_action": text(budgets.per_action),
                "per_position_per_day": text(budgets.per_position_per_day),
                "per_account_per_day": text(budgets.per_account_per_day),
                "min_amount": text(budgets.min_amount), "reserve": text(budgets.reserve),
                "cooldown_s": budgets.cooldown_s,
            },
            "accounts": accounts,
            "positions": positions,
            "actions": [self._action(action_id, action) for action_id, action
                        in reversed(list(self.recent.actions.items())[-SHOWN_ACTIONS:])],
            "observations": [
                {**o, "account": guard.name(o["account_id"]),
                 "detail": {k: redact(str(v)) for k, v in o["detail"].items()}}
                for o in reversed(list(self.recent.observations)[-SHOWN_OBSERVATIONS:])],
        }  # fmt: skip

    def _position(self, row: _Row, name: str, added_today: Mapping[str, Decimal] | None
                  ) -> dict[str, Any]:  # fmt: skip
        """One position of the snapshot; ``added_today`` by symbol (``None``: unknown, the
        account's line says why)."""
        budgets = self.settings.budgets
        key, position = row.key, row.position
        bands = self.bands(key)
        added = left = None
        if added_today is not None:
            added = added_today.get(key[1], ZERO)
            left = max(budgets.per_position_per_day - added, ZERO)
        age_s = None if row.age_ms is None else row.age_ms / 1000
        samples = self.samples.get(key)
        return {
            "id": position_id(key), "account": name, "account_id": key[0], "symbol": key[1],
            "side": "LONG" if position.qty > 0 else "SHORT", "qty": text(position.qty),
            "mark": text(row.mark), "margin": text(position.margin),
            "leverage": position.leverage,
            "liquidation_price": text(_shown(row.liquidation, row.tick)),
            "distance": text(_shown(row.distance, DISTANCE_SHOWN)),
            "zone": bands.zone(row.distance), "bands": bands.as_json(),
            "data_age_s": age_s,
            "stale": age_s is not None and age_s > self.settings.poll.max_data_age_s,
            "budget": {"per_day": text(budgets.per_position_per_day), "added": text(added),
                       "left": text(left)},
            "notes": [{**n, "what": redact(n["what"])} for n in self.guard.trail.notes(key)],
            "chart_rev": f"{0 if samples is None else len(samples.time_ms)}"
                         f".{self.recent.revision}",
        }  # fmt: skip

    def _action(self, action_id: str, action: _Action) -> dict[str, Any]:
        record = action.record
        status = action.status
        return {
            "id": action_id, "time_ms": record["time_ms"],
            "account": self.guard.name(record["account_id"]),
            "account_id": record["account_id"], "symbol": record["symbol"],
            "kind": record["kind"], "amount": record["amount"], "policy": record["policy"],
            "reason": redact(str(record["reason"])), "dry_run": record["dry_run"],
            "status": status, "refused": status == EventKind.SKIPPED.value,
            "message": action.message(),
            "distance": record["distance"], "mark_price": record["mark_price"],
            "events": [{**e, "message": None if e["message"] is None
                        else redact(str(e["message"]))} for e in action.events],
            "url": f"/view/actions/{action_id}",
        }  # fmt: skip

    # -- charts -----------------------------------------------------------------------------

    def chart(self, key: PositionKey) -> str:
        """The SVG chart of one position over the last ``hours`` (``KeyError``: no such
        position is known to the view)."""
        now = self.guard.clock.now_ms()
        since = now - self.window_ms
        samples = self.samples.get(key)
        actions = self.recent.of(key, since)
        if samples is None and not actions and self.guard.book.get(key) is None:
            raise KeyError(key)
        mark: list[tuple[float, float]] = []
        margin: list[tuple[float, float]] = []
        liquidation: list[tuple[float, float]] = []
        if samples is not None:
            for i in samples.since(since):
                t = float(samples.time_ms[i])
                mark.append((t, samples.mark[i]))
                margin.append((t, samples.margin[i]))
                if samples.liquidation[i] == samples.liquidation[i]:  # not NaN
                    liquidation.append((t, samples.liquidation[i]))
        for row in self._rows(key[0], now) if key[0] in self.guard.owned else []:
            if row.key == key:  # the live point
                mark.append((float(now), float(row.mark)))
                margin.append((float(now), float(row.position.margin)))
                if row.liquidation is not None:
                    liquidation.append((float(now), float(row.liquidation)))
        markers = []
        for action in actions:
            record = action.record
            status = action.status
            if status == EventKind.SKIPPED.value or record["margin"] is None:
                continue
            markers.append(chart.Marker(
                float(record["time_ms"]), float(record["margin"]), record["kind"],
                applied=status in (EventKind.SUCCEEDED.value, EventKind.VERIFIED.value),
                title=f"{chart.clock_label(record['time_ms'])} {record['kind']} "
                      f"{record['amount']} ({status}): {redact(str(record['reason']))}"))
        # From the first point (at most ``hours`` ago; at least ten seconds) up to now.
        first = min([t for t, _ in mark[:1]] + [m.t for m in markers] + [float(now)])
        start = max(float(since), min(first, float(now - 10_000)))
        return chart.position_chart(chart.Series(
            start=start, end=float(now), mark=mark, liquidation=liquidation,
            margin=margin, markers=markers), chart.CLOCK)


def _shown(value: Decimal | None, step: Decimal) -> Decimal | None:
    """A derived figure rounded for people (the guard decides on its own, unrounded)."""
    if value is None:
        return None
    try:
        return value.quantize(step)
    except ArithmeticError:
        return value


def epoch_ms(value: Any) -> int:
    """Milliseconds since the epoch of a ``datetime`` or a number of them (0: ``None``)."""
    if value is None:
        return 0
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)
