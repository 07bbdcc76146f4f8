"""Settlement: what became of each margin call, decided from evidence. Sans-I/O.

``POST /v1/position_margin`` carries no client id and answers with no data
(docs/exchange.md §9), so the only proof of a call's effect is the position's margin in a
later push or read. This module is a state machine over the calls of each position that
are not settled yet. It is fed the calls' outcomes, the snapshots the guard applies and the
time, and returns the events to record (``Settled``) and the reads to make (``Read``); the
executor does the I/O. What it keeps (docs/architecture.md, "Settlement"):

- **Evidence settles at once.** A snapshot whose margin shows a call landed settles an
  uncertain call "applied" the moment it arrives, and verifies a succeeded one.
- **Nothing is concluded too early.** An uncertain call is "not applied" only from a
  snapshot received a full ``settle_window_ms`` after its outcome became unknown (the
  exchange may still have been applying it until then).
- **Several calls are attributed together, exactly.** While one call is unsettled a rescue
  may go out, so a position can have several. A snapshot's margin is explained by the
  subsets of those calls whose amounts add up to the move from the margin before them
  (to the cent: only these calls and fills move an isolated position's margin). A call is
  concluded only when every such subset agrees on it; succeeded calls are known to have
  landed, so subsets holding more of them are preferred. The margin before them is the
  margin as it stood when the first was sent (kept per position between calls), not the
  one its decision saw: that may predate a call settled since. When calls stay
  indistinguishable past their windows, one choice is made only if every choice gives the
  same ADD and REDUCE totals; otherwise they are recorded as unknown.
- **When the margin cannot be explained, nothing is guessed.** A fill (the quantity
  changed), a close or a change made by someone else leaves the calls' effect unknowable:
  uncertain calls are recorded as outcome unknown (the budget keeps counting them),
  succeeded ones as landed but not seen. A new position on the symbol inherits none.

A call that never reached the exchange (rejected, refused, not sent) is dropped with
``not_applied``.
"""

# Size (about 430 lines, Settlement about 265): one sans-I/O state machine. Its subset
# attribution, windows and adoption of a previous run's calls all read and write the same
# per-position set of unsettled calls; keeping them in one class keeps the rules above in
# one place (the money path is under review).

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

from guardbot.domain import ZERO, ActionKind, PositionKey

# How long a succeeded call waits for a snapshot that shows it.
VERIFY_WINDOW_MS = 30_000
# After an outcome became unknown, the exchange may still apply the call for this long (the
# client's read timeout plus slack): only a snapshot received later can say "not applied".
SETTLE_WINDOW_MS = 11_000
# A snapshot received this long after a call's success answer reflects the call (REST
# reads are stamped with the time they were asked for; a push is not this late).
VISIBLE_AFTER_MS = 1_000
# Uncertain calls one position may have; beyond it no further call is sent on it.
MAX_UNCERTAIN = 4
# Margins compare to the cent: the exchange moves an isolated margin by exactly the amount.
TOLERANCE = Decimal("0.01")


class CallState(enum.Enum):
    SENDING = "sending"  # on the wire, answer not back
    UNCERTAIN = "uncertain"  # no answer: may or may not have landed
    SUCCEEDED = "succeeded"  # landed; not yet seen in a snapshot


@dataclass(slots=True)
class Call:
    """One margin call whose effect is not settled yet."""

    action_id: str
    key: PositionKey
    kind: ActionKind
    amount: Decimal
    margin_before: Decimal  # the margin the decision saw
    qty: Decimal  # the position's quantity when decided
    state: CallState
    sent_ms: int  # when it left (adopted from a previous run: when it was taken over)
    done_ms: int = 0  # when its answer came back, or when it became uncertain

    @property
    def signed(self) -> Decimal:
        return self.amount if self.kind is ActionKind.ADD else -self.amount


@dataclass(frozen=True, slots=True)
class Settled:
    """An outcome to record: ``event`` is ``"VERIFIED"`` (a succeeded call: ``applied``
    says whether a snapshot showed it) or ``"RECONCILED"`` (an uncertain call: ``applied``
    True, False or ``None`` for unknown)."""

    call: Call
    event: str
    message: str
    applied: bool | None
    margin_seen: Decimal | None

    def detail(self) -> dict[str, str]:
        detail = {
            "margin_before": str(self.call.margin_before),
            "margin_expected": str(self.call.margin_before + self.call.signed),
        }
        if self.margin_seen is not None:
            detail["margin_seen"] = str(self.margin_seen)
        if self.event == "RECONCILED":
            detail["applied"] = "unknown" if self.applied is None else str(self.applied).lower()
        else:
            detail["verified"] = str(bool(self.applied)).lower()
        return detail


@dataclass(frozen=True, slots=True)
class Read:
    """Read ``key``'s position at ``at_ms`` (or as soon after as the exchange allows)."""

    key: PositionKey
    at_ms: int


@dataclass(frozen=True, slots=True)
class _Seen:
    margin: Decimal
    received_ms: int


@dataclass(slots=True)
class _Chain:
    """The unsettled calls of one position, in the order they were sent. Kept once they are
    all settled, while the position lives: its ``base`` is then the margin as it stands,
    which the next call is weighed against (its decision may have seen an older one)."""

    base: Decimal  # the margin before any of them, plus those settled as applied since
    qty: Decimal  # the position's quantity they were sent on (as the newest snapshot shows)
    calls: list[Call] = field(default_factory=list)
    seen: _Seen | None = None  # the newest snapshot


class Settlement:
    """The unsettled calls of every position, and the evidence about them."""

    def __init__(
        self,
        *,
        verify_window_ms: int = VERIFY_WINDOW_MS,
        settle_window_ms: int = SETTLE_WINDOW_MS,
    ) -> None:
        self.verify_window_ms = verify_window_ms
        self.settle_window_ms = settle_window_ms
        self._chains: dict[PositionKey, _Chain] = {}
        self._calls: dict[str, Call] = {}
        # Calls still on the wire when their position changed: settled when they answer.
        self._orphans: dict[str, str] = {}  # action id -> why
        # When a call on each position last went out or answered (ms): a margin move seen
        # by a snapshot asked before this plus VISIBLE_AFTER_MS may be the guard's own.
        self._touched: dict[PositionKey, int] = {}

    # -- questions ------------------------------------------------------------------------

    def sending_keys(self) -> frozenset[PositionKey]:
        """Positions with a call on the wire (nothing more is decided for them)."""
        return frozenset(c.key for c in self._calls.values() if c.state is CallState.SENDING)

    def unsettled(self, key: PositionKey) -> int:
        """How many calls on this position are not settled."""
        chain = self._chains.get(key)
        return 0 if chain is None else len(chain.calls)

    def uncertain_calls(self, key: PositionKey) -> int:
        """How many calls on this position have an unknown outcome."""
        chain = self._chains.get(key)
        if chain is None:
            return 0
        return sum(1 for c in chain.calls if c.state is CallState.UNCERTAIN)

    def unsettled_keys(self) -> frozenset[PositionKey]:
        return frozenset(k for k, chain in self._chains.items() if chain.calls)

    def known_effect(self, key: PositionKey) -> Decimal:
        """Margin that succeeded calls moved but no snapshot shows yet: the guard adds it to
        the book's margin, or it would decide on margin it knows is out of date."""
        chain = self._chains.get(key)
        if chain is None:
            return ZERO
        return sum((c.signed for c in chain.calls if c.state is CallState.SUCCEEDED), ZERO)

    def evidence_after(self, key: PositionKey) -> int | None:
        """While a call on this position is uncertain: only data received after this time
        (ms) can say the call did not land yet, so a further rescue waits for such data."""
        chain = self._chains.get(key)
        if chain is None:
            return None
        times = [c.done_ms for c in chain.calls if c.state is CallState.UNCERTAIN]
        return max(times, default=None)

    def last_touched(self, key: PositionKey) -> int | None:
        """When a call of the guard on this position last went out or answered (ms), if
        ever: any margin move up to ``VISIBLE_AFTER_MS`` after it may be that call's."""
        return self._touched.get(key)

    def calls(self) -> Iterator[Call]:
        for chain in self._chains.values():
            yield from chain.calls

    # -- inputs ---------------------------------------------------------------------------

    def sent(self, action_id: str, key: PositionKey, kind: ActionKind, amount: Decimal,
             margin_before: Decimal, qty: Decimal, now_ms: int) -> None:  # fmt: skip
        """A call goes on the wire."""
        self._add(Call(action_id, key, kind, amount, margin_before, qty, CallState.SENDING,
                       now_ms))  # fmt: skip

    def adopt(self, action_id: str, key: PositionKey, kind: ActionKind, amount: Decimal,
              margin_before: Decimal, qty: Decimal, unknown_since_ms: int
              ) -> tuple[list[Settled], list[Read]]:  # fmt: skip
        """Take over a call a previous run or another instance sent and never settled: it is
        uncertain from ``unknown_since_ms`` (it may still be landing). Adopt a position's
        calls oldest first. An older adopted call decided on another margin than this one
        cannot be told apart from what happened in between: it is settled as unknown."""
        settled = []
        chain = self._chains.get(key)
        if chain is not None and (chain.base != margin_before or chain.qty != qty):
            for older in [c for c in chain.calls if c.state is CallState.UNCERTAIN]:
                settled.append(self._settle(older, "RECONCILED", "outcome unknown: taken over "
                                            "with later calls decided on another margin", None))
            if not chain.calls:
                del self._chains[key]  # this call's margin is the newest word
        call = Call(action_id, key, kind, amount, margin_before, qty, CallState.UNCERTAIN,
                    unknown_since_ms, unknown_since_ms)  # fmt: skip
        self._add(call)
        return settled, self._reads(call)

    def succeeded(self, action_id: str, now_ms: int) -> list[Settled]:
        """The exchange confirmed the call. May verify it at once from a snapshot that
        overtook the answer."""
        call = self._calls.get(action_id)
        if call is None:
            return []
        call.state, call.done_ms = CallState.SUCCEEDED, now_ms
        self._touch(call.key, now_ms)
        if action_id in self._orphans:
            return [self._settle(call, *_gone(call, self._orphans[action_id]))]
        return self._match(call.key, now_ms)

    def uncertain(self, action_id: str, now_ms: int) -> tuple[list[Settled], list[Read]]:
        """No answer: the call may have landed. Returns what a snapshot already received
        proves, and the reads to make: one at once (evidence) and one once the settle window
        has passed (the final word)."""
        call = self._calls.get(action_id)
        if call is None:
            return [], []
        call.state, call.done_ms = CallState.UNCERTAIN, now_ms
        self._touch(call.key, now_ms)
        if action_id in self._orphans:
            return [self._settle(call, *_gone(call, self._orphans[action_id]))], []
        return self._match(call.key, now_ms), self._reads(call)

    def not_applied(self, action_id: str) -> None:
        """The call never moved money (rejected, refused, not sent): forget it."""
        call = self._calls.pop(action_id, None)
        self._orphans.pop(action_id, None)
        if call is not None:
            self._remove(call, self._chain_of(call))

    def observe(self, key: PositionKey, margin: Decimal | None, qty: Decimal,
                received_ms: int) -> list[Settled]:  # fmt: skip
        """A snapshot of the position (``margin`` ``None``: it is closed or gone)."""
        chain = self._chains.get(key)
        if chain is None:
            return []
        if margin is None:
            return self.closed(key, "position closed")
        if not chain.calls:
            # Nothing unsettled: a version the book took is the margin as it is.
            chain.base, chain.qty, chain.seen = margin, qty, _Seen(margin, received_ms)
            return []
        if qty != chain.qty:
            return self.closed(key, "position changed (its quantity moved)")
        if chain.seen is None or received_ms >= chain.seen.received_ms:
            chain.seen = _Seen(margin, received_ms)
        return self._match(key, received_ms)

    def expire(self, now_ms: int) -> list[Settled]:
        """Succeeded calls no snapshot showed within the verify window are settled as not
        seen (they did land: the exchange said so), and the evidence is weighed again."""
        settled: list[Settled] = []
        for key in list(self._chains):
            settled.extend(self._match(key, now_ms))
        return settled

    def closed(self, key: PositionKey, why: str = "position closed") -> list[Settled]:
        """The position closed, was liquidated or changed under the calls: their effect can
        no longer be read from its margin. They are settled now (a call still on the wire,
        when its answer comes), so a new position on the symbol inherits none."""
        chain = self._chains.pop(key, None)
        if chain is None:
            return []
        settled = []
        for call in chain.calls:
            if call.state is CallState.SENDING:
                self._orphans[call.action_id] = why
            else:
                settled.append(self._settle(call, *_gone(call, why)))
        return settled

    def drop_account(self, account_id: str) -> None:
        """Another instance guards the account now: it settles what is left (from the audit
        log, as unfinished actions)."""
        for key in [k for k in self._touched if k[0] == account_id]:
            del self._touched[key]
        for key in [k for k in self._chains if k[0] == account_id]:
            del self._chains[key]
        # Every call of the account, also those on the wire when their position closed
        # (in no chain any more).
        for action_id in [a for a, c in self._calls.items() if c.key[0] == account_id]:
            del self._calls[action_id]
            self._orphans.pop(action_id, None)

    # -- internals ------------------------------------------------------------------------

    def _add(self, call: Call) -> None:
        chain = self._chains.get(call.key)
        if chain is None:
            chain = self._chains[call.key] = _Chain(base=call.margin_before, qty=call.qty)
        # A chain with nothing unsettled holds the position as the newest snapshot shows
        # it (every one replaces it), also a fill seen after this call was decided: the call
        # lands on that, so it is weighed against that margin and quantity.
        chain.calls.append(call)
        self._calls[call.action_id] = call
        self._touch(call.key, call.sent_ms)

    def _touch(self, key: PositionKey, at_ms: int) -> None:
        self._touched[key] = max(self._touched.get(key, 0), at_ms)

    def _chain_of(self, call: Call) -> _Chain | None:
        """The chain ``call`` is in: none once its position closed (an orphan's answer), and
        then a new position's chain on the symbol is not its own."""
        chain = self._chains.get(call.key)
        return chain if chain is not None and any(c is call for c in chain.calls) else None

    def _remove(self, call: Call, chain: _Chain | None) -> None:
        if chain is None:
            return
        chain.calls = [c for c in chain.calls if c is not call]
        if not chain.calls and chain.seen is not None:
            # Nothing unsettled: the newest snapshot is the margin as it is, and the base of
            # the next call. ``base`` alone may miss what moved it meanwhile: a call settled
            # without the margin showing it (unknown, landed unseen), or a change by someone
            # else seen while a call that was then refused was on the wire.
            chain.base = chain.seen.margin

    def _reads(self, call: Call) -> list[Read]:
        final = call.done_ms + self.settle_window_ms + 1
        return [Read(call.key, call.done_ms), Read(call.key, final)]

    def _settle(
        self, call: Call, event: str, message: str, applied: bool | None,
        margin: Decimal | None = None,
    ) -> Settled:
        self._calls.pop(call.action_id, None)
        self._orphans.pop(call.action_id, None)
        chain = self._chain_of(call)
        if chain is not None and (event == "VERIFIED" or applied):
            chain.base += call.signed  # it landed (a succeeded call, seen or not)
        self._remove(call, chain)
        return Settled(call, event, message, applied, margin)

    def _match(self, key: PositionKey, now_ms: int) -> list[Settled]:
        """Weigh the newest snapshot against the position's unsettled calls."""
        settled: list[Settled] = []
        chain = self._chains.get(key)
        if chain is None:
            return settled
        seen = chain.seen
        margin = None if seen is None else seen.margin
        # Succeeded calls past the verify window: settled, shown or not.
        for call in list(chain.calls):
            if call.state is CallState.SUCCEEDED and now_ms - call.done_ms > self.verify_window_ms:
                settled.append(self._settle(call, "VERIFIED", "no snapshot showed the change",
                                            False, margin))
        chain = self._chains.get(key)
        if chain is None or seen is None:
            return settled
        # A REST read is stamped with the time it was asked for and may show a call sent up
        # to VISIBLE_AFTER_MS later, or not: nothing is concluded from it (the next one will).
        received = seen.received_ms
        if any(received < c.sent_ms <= received + VISIBLE_AFTER_MS for c in chain.calls):
            return settled
        # Calls sent later than that cannot be in it.
        candidates = [c for c in chain.calls if c.sent_ms <= received]
        if not candidates:
            return settled
        explanations = _explanations(chain.base, seen.margin, candidates)
        if not explanations:
            return settled + self._unexplained(chain, seen)
        in_all = set.intersection(*explanations)
        in_any = set.union(*explanations)
        for call in candidates:
            index = id(call)
            if call.state is CallState.SUCCEEDED and index in in_all:
                settled.append(self._settle(call, "VERIFIED", "margin shows the change", True,
                                            seen.margin))
            elif call.state is CallState.UNCERTAIN and index in in_all:
                settled.append(self._settle(call, "RECONCILED", "applied", True, seen.margin))
            elif (call.state is CallState.UNCERTAIN and index not in in_any
                  and _final(call, seen, self.settle_window_ms)):
                settled.append(self._settle(call, "RECONCILED", "not applied", False,
                                            seen.margin))
        if settled:
            return settled + self._match(key, now_ms)
        finals = [c for c in candidates if _final(c, seen, self.settle_window_ms)]
        if not finals or any(c.state is CallState.SENDING for c in candidates):
            return settled
        # Calls that stay indistinguishable past their windows (equal amounts).
        if len({_totals(candidates, e) for e in explanations}) == 1:
            chosen = explanations[0]  # every choice moves the same money
            for call in finals:
                applied = id(call) in chosen
                settled.append(self._settle(
                    call, "RECONCILED", "applied" if applied else "not applied", applied,
                    seen.margin))
        else:
            for call in finals:
                settled.append(self._settle(call, "RECONCILED", "outcome unknown: other "
                                            "calls' amounts explain the margin as well", None,
                                            seen.margin))
        return settled + self._match(key, now_ms)

    def _unexplained(self, chain: _Chain, seen: _Seen) -> list[Settled]:
        """No subset of the calls explains the margin: something else moved it too (the
        owner, another bot). Succeeded calls a snapshot would show by now are settled as
        not seen (the guard then decides on the margin as it is); uncertain ones past their
        window as unknown."""
        settled = []
        for call in list(chain.calls):
            if call.state is CallState.SUCCEEDED and (
                    seen.received_ms > call.done_ms + VISIBLE_AFTER_MS):
                settled.append(self._settle(call, "VERIFIED", "margin does not show the "
                                            "change: moved by something else too", False,
                                            seen.margin))
            elif _final(call, seen, self.settle_window_ms):
                settled.append(self._settle(call, "RECONCILED", "outcome unknown: the margin "
                                            "was moved by something else too", None,
                                            seen.margin))
        return settled


def _explanations(base: Decimal, margin: Decimal, calls: list[Call]) -> list[set[int]]:
    """The subsets of ``calls`` (as sets of ``id``) whose amounts explain the move from
    ``base`` to ``margin`` to the cent: those holding the most succeeded calls first (they
    are known to have landed), then those holding the earliest calls."""
    moved = margin - base
    found: list[tuple[int, tuple[int, ...]]] = []
    for size in range(len(calls) + 1):
        for subset in itertools.combinations(range(len(calls)), size):
            if abs(moved - sum((calls[i].signed for i in subset), ZERO)) <= TOLERANCE:
                succeeded = sum(1 for i in subset if calls[i].state is CallState.SUCCEEDED)
                found.append((-succeeded, subset))
    if not found:
        return []
    best = min(rank for rank, _ in found)
    preferred = sorted(subset for rank, subset in found if rank == best)
    return [{id(calls[i]) for i in subset} for subset in preferred]


def _totals(calls: list[Call], chosen: set[int]) -> tuple[Decimal, Decimal]:
    """The ADD and REDUCE money a choice of landed calls moves."""
    landed = [c for c in calls if id(c) in chosen]
    return (sum((c.amount for c in landed if c.kind is ActionKind.ADD), ZERO),
            sum((c.amount for c in landed if c.kind is ActionKind.REDUCE), ZERO))


def _final(call: Call, seen: _Seen, settle_window_ms: int) -> bool:
    """An uncertain call that ``seen`` has the last word on (received after its window)."""
    return call.state is CallState.UNCERTAIN and seen.received_ms > call.done_ms + settle_window_ms


def _gone(call: Call, why: str) -> tuple[str, str, bool | None]:
    if call.state is CallState.SUCCEEDED:
        return "VERIFIED", f"{why} before a snapshot showed the change", False
    return "RECONCILED", f"outcome unknown: {why} before it could be read", None
