"""Settlement, fed outcomes, snapshots and the time directly (no I/O, no clock)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from guardbot.domain import ActionKind, MarginMode, PositionKey
from guardbot.settlement import Read, Settled, Settlement

KEY: PositionKey = ("0xabc", "PERP_ETH_USDC", MarginMode.ISOLATED)
ADD, REDUCE = ActionKind.ADD, ActionKind.REDUCE
D = Decimal


def settlement() -> Settlement:
    return Settlement(verify_window_ms=30_000, settle_window_ms=11_000)


def outcomes(settled: list[Settled]) -> list[tuple[str, str, bool | None]]:
    return [(s.call.action_id, s.event, s.applied) for s in settled]


def send(book: Settlement, action_id: str, amount: str, at_ms: int, kind: ActionKind = ADD,
         margin: str = "100") -> None:
    book.sent(action_id, KEY, kind, D(amount), D(margin), at_ms)


def test_a_success_is_verified_by_the_first_snapshot_that_shows_it() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    assert book.sending(KEY)
    assert book.succeeded("a", 1010) == []
    assert book.known_effect(KEY) == D(50), "landed, not yet seen: the guard counts it"
    assert book.observe(KEY, D(100), 1005) == [], "older than the call proves nothing"
    assert outcomes(book.observe(KEY, D(150), 1020)) == [("a", "VERIFIED", True)]
    assert book.unsettled(KEY) == 0 and book.known_effect(KEY) == 0


def test_a_push_that_overtakes_the_answer_verifies_it_when_the_answer_comes() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    assert book.observe(KEY, D(150), 1004) == [], "nothing is concluded while on the wire"
    assert outcomes(book.succeeded("a", 1010)) == [("a", "VERIFIED", True)]


def test_halfway_is_enough_a_fill_may_move_margin_too() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.succeeded("a", 1010)
    assert book.observe(KEY, D(124), 1020) == []
    assert outcomes(book.observe(KEY, D(140), 1030)) == [("a", "VERIFIED", True)]


def test_a_success_never_seen_is_settled_after_the_verify_window() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.succeeded("a", 1010)
    assert book.expire(31_010) == []
    [settled] = book.expire(31_011)
    assert (settled.event, settled.applied) == ("VERIFIED", False)
    assert settled.detail()["verified"] == "false"


def test_an_uncertain_call_is_settled_applied_by_the_first_push_showing_it() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    settled, reads = book.uncertain("a", 1020)
    assert settled == []
    assert reads == [Read(KEY, 1020), Read(KEY, 1020 + 11_001)], "evidence now, final later"
    assert book.evidence_after(KEY) == 1020
    assert outcomes(book.observe(KEY, D(150), 1030)) == [("a", "RECONCILED", True)]
    assert book.evidence_after(KEY) is None


def test_a_lost_answer_seen_before_it_timed_out_settles_at_once() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.observe(KEY, D(150), 1003)  # the exchange pushed the change, then the answer was lost
    settled, _ = book.uncertain("a", 1500)
    assert outcomes(settled) == [("a", "RECONCILED", True)]


def test_not_applied_needs_a_snapshot_from_after_the_window() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.uncertain("a", 1020)
    assert book.observe(KEY, D(100), 5000) == [], "it may still land"
    assert book.observe(KEY, D(100), 1020 + 11_000) == []
    [settled] = book.observe(KEY, D(100), 1020 + 11_001)
    assert (settled.event, settled.applied) == ("RECONCILED", False)
    assert settled.detail() == {"margin_before": "100", "margin_expected": "150",
                                "margin_seen": "100", "applied": "false"}


def test_a_further_rescue_while_one_is_uncertain_and_both_land() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.uncertain("a", 1020)
    book.observe(KEY, D(100), 1040)  # fresh data: not landed (yet): a rescue goes out
    send(book, "b", "80", 1050)
    book.succeeded("b", 1060)
    assert book.known_effect(KEY) == D(80)
    # the late first call and the second both show: 100 + 50 + 80
    assert sorted(outcomes(book.observe(KEY, D(230), 1070))) == [
        ("a", "RECONCILED", True), ("b", "VERIFIED", True)]
    assert book.unsettled(KEY) == 0


def test_a_further_rescue_when_the_uncertain_one_never_landed() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.uncertain("a", 1020)
    send(book, "b", "80", 1050)
    book.succeeded("b", 1060)
    assert outcomes(book.observe(KEY, D(180), 1070)) == [("b", "VERIFIED", True)]
    assert book.unsettled(KEY) == 1, "a may still land until its window has passed"
    assert outcomes(book.observe(KEY, D(180), 1020 + 11_001)) == [("a", "RECONCILED", False)]


def test_equal_amounts_a_succeeded_call_is_taken_as_the_one_shown() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.uncertain("a", 1020)
    send(book, "b", "50", 1050)
    book.succeeded("b", 1060)
    assert outcomes(book.observe(KEY, D(150), 1070)) == [("b", "VERIFIED", True)]
    assert outcomes(book.observe(KEY, D(200), 1080)) == [("a", "RECONCILED", True)]


def test_two_uncertain_calls_of_equal_amount_one_landed_totals_stay_right() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.uncertain("a", 1020)
    send(book, "b", "50", 1050)
    book.uncertain("b", 1060)
    assert book.observe(KEY, D(150), 2000) == [], "which one landed is unknown"
    settled = book.observe(KEY, D(150), 1060 + 11_001)
    applied = [s.applied for s in settled]
    assert sorted(applied) == [False, True], "one landed: exactly one is recorded applied"
    assert book.unsettled(KEY) == 0


def test_amounts_that_differ_tell_which_call_landed() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.uncertain("a", 1020)
    send(book, "b", "120", 1050)
    book.uncertain("b", 1060)
    assert outcomes(book.observe(KEY, D(220), 1100)) == [("b", "RECONCILED", True)]
    assert outcomes(book.observe(KEY, D(220), 1020 + 11_001)) == [("a", "RECONCILED", False)]


def test_a_reduce_then_a_rescue_add() -> None:
    book = settlement()
    send(book, "r", "30", 1000, kind=REDUCE)
    book.uncertain("r", 1020)
    send(book, "a", "60", 1100, margin="100")
    book.succeeded("a", 1110)
    assert sorted(outcomes(book.observe(KEY, D(130), 1120))) == [
        ("a", "VERIFIED", True), ("r", "RECONCILED", True)]


def test_a_closed_position_takes_its_calls_with_it() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.uncertain("a", 1020)
    send(book, "b", "50", 1050)
    book.succeeded("b", 1060)
    send(book, "c", "50", 1070)  # still on the wire when the position closes
    settled = book.observe(KEY, None, 1080)
    assert outcomes(settled) == [("a", "RECONCILED", None), ("b", "VERIFIED", False)]
    assert settled[0].detail()["applied"] == "unknown"
    assert book.sending(KEY)
    assert outcomes(book.succeeded("c", 1090)) == [("c", "VERIFIED", False)]
    assert book.unsettled(KEY) == 0 and book.known_effect(KEY) == 0
    assert book.evidence_after(KEY) is None


def test_an_adopted_call_is_uncertain_from_when_it_was_taken_over() -> None:
    book = settlement()
    reads = book.adopt("old", KEY, ADD, D(40), D(100), 5000)
    assert reads == [Read(KEY, 5000), Read(KEY, 16_001)]
    assert book.observe(KEY, D(100), 9000) == []
    assert outcomes(book.observe(KEY, D(140), 9500)) == [("old", "RECONCILED", True)]


def test_not_applied_calls_are_forgotten() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.not_applied("a")
    assert book.unsettled(KEY) == 0 and not book.sending(KEY)


def test_drop_account_forgets_its_calls() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.uncertain("a", 1010)
    book.drop_account(KEY[0])
    assert book.unsettled_keys() == frozenset()


@pytest.mark.parametrize(
    ("kind", "seen", "applied"),
    [(ADD, "150", True), (ADD, "125.01", True), (ADD, "124.99", None), (ADD, "100", None),
     (REDUCE, "50", True), (REDUCE, "100", None), (REDUCE, "150", None)],
)
def test_one_uncertain_call_against_the_margin_seen(
    kind: ActionKind, seen: str, applied: bool | None
) -> None:
    book = settlement()
    send(book, "a", "50", 1000, kind=kind)
    book.uncertain("a", 1010)
    result = outcomes(book.observe(KEY, D(seen), 1020))
    assert result == ([] if applied is None else [("a", "RECONCILED", applied)])


def test_when_nothing_explains_the_margin_each_call_is_judged_alone_after_its_window() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.uncertain("a", 1020)
    # the owner added 300 by hand meanwhile: no subset of our calls explains +350
    assert book.observe(KEY, D(450), 2000) == []
    assert outcomes(book.observe(KEY, D(450), 1020 + 11_001)) == [("a", "RECONCILED", True)]
