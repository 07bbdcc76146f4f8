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


QTY = D(1)


def send(book: Settlement, action_id: str, amount: str, at_ms: int, kind: ActionKind = ADD,
         margin: str = "100") -> None:
    book.sent(action_id, KEY, kind, D(amount), D(margin), QTY, at_ms)


def seen(book: Settlement, margin: str | None, at_ms: int, qty: D = QTY) -> list[Settled]:
    return book.observe(KEY, None if margin is None else D(margin), qty, at_ms)


def test_a_success_is_verified_by_the_first_snapshot_that_shows_it() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    assert book.sending_keys() == {KEY}
    assert book.succeeded("a", 1010) == []
    assert book.known_effect(KEY) == D(50), "landed, not yet seen: the guard counts it"
    assert seen(book, "100", 1005) == [], "older than the call proves nothing"
    assert outcomes(seen(book, "150", 1020)) == [("a", "VERIFIED", True)]
    assert book.unsettled(KEY) == 0 and book.known_effect(KEY) == 0


def test_a_push_that_overtakes_the_answer_verifies_it_when_the_answer_comes() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    assert seen(book, "150", 1004) == [], "nothing is concluded while on the wire"
    assert outcomes(book.succeeded("a", 1010)) == [("a", "VERIFIED", True)]


def test_a_margin_nothing_explains_drops_the_known_effect_once_the_change_must_show() -> None:
    """Something else moved the margin too (the owner added 80): the success can no longer
    be seen in it, so the guard stops adding it and decides on the margin as it is."""
    book = settlement()
    send(book, "a", "50", 1000)
    book.succeeded("a", 1010)
    assert seen(book, "230", 1500) == [], "a push this early may predate the change"
    assert book.known_effect(KEY) == D(50)
    [settled] = seen(book, "230", 2011)
    assert (settled.event, settled.applied) == ("VERIFIED", False)
    assert book.known_effect(KEY) == 0


def test_a_fill_changes_the_position_under_the_calls() -> None:
    """The quantity moved (a fill, a partial close): the margin no longer tells what the
    calls did. Uncertain ones are unknown (the budget keeps them), succeeded ones landed."""
    book = settlement()
    send(book, "a", "100", 1000)
    book.uncertain("a", 1010)
    send(book, "b", "100", 1020)
    book.succeeded("b", 1030)
    settled = seen(book, "800", 1040, qty=D("0.6"))
    assert outcomes(settled) == [("a", "RECONCILED", None), ("b", "VERIFIED", False)]
    assert book.unsettled(KEY) == 0 and book.known_effect(KEY) == 0


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
    assert outcomes(seen(book, "150", 1030)) == [("a", "RECONCILED", True)]
    assert book.evidence_after(KEY) is None


def test_a_lost_answer_seen_before_it_timed_out_settles_at_once() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    seen(book, "150", 1003)  # the exchange pushed the change, then the answer was lost
    settled, _ = book.uncertain("a", 1500)
    assert outcomes(settled) == [("a", "RECONCILED", True)]


def test_not_applied_needs_a_snapshot_from_after_the_window() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.uncertain("a", 1020)
    assert seen(book, "100", 5000) == [], "it may still land"
    assert seen(book, "100", 1020 + 11_000) == []
    [settled] = seen(book, "100", 1020 + 11_001)
    assert (settled.event, settled.applied) == ("RECONCILED", False)
    assert settled.detail() == {"margin_before": "100", "margin_expected": "150",
                                "margin_seen": "100", "applied": "false"}


def test_a_further_rescue_while_one_is_uncertain_and_both_land() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.uncertain("a", 1020)
    seen(book, "100", 1040)  # fresh data: not landed (yet): a rescue goes out
    send(book, "b", "80", 1050)
    book.succeeded("b", 1060)
    assert book.known_effect(KEY) == D(80)
    # the late first call and the second both show: 100 + 50 + 80
    assert sorted(outcomes(seen(book, "230", 1070))) == [
        ("a", "RECONCILED", True), ("b", "VERIFIED", True)]
    assert book.unsettled(KEY) == 0


def test_a_further_rescue_when_the_uncertain_one_never_landed() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.uncertain("a", 1020)
    send(book, "b", "80", 1050)
    book.succeeded("b", 1060)
    assert outcomes(seen(book, "180", 1070)) == [("b", "VERIFIED", True)]
    assert book.unsettled(KEY) == 1, "a may still land until its window has passed"
    assert outcomes(seen(book, "180", 1020 + 11_001)) == [("a", "RECONCILED", False)]


def test_equal_amounts_a_succeeded_call_is_taken_as_the_one_shown() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.uncertain("a", 1020)
    send(book, "b", "50", 1050)
    book.succeeded("b", 1060)
    assert outcomes(seen(book, "150", 1070)) == [("b", "VERIFIED", True)]
    assert outcomes(seen(book, "200", 1080)) == [("a", "RECONCILED", True)]


def test_two_uncertain_calls_of_equal_amount_one_landed_totals_stay_right() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.uncertain("a", 1020)
    send(book, "b", "50", 1050)
    book.uncertain("b", 1060)
    assert seen(book, "150", 2000) == [], "which one landed is unknown"
    settled = seen(book, "150", 1060 + 11_001)
    applied = [s.applied for s in settled]
    assert sorted(applied) == [False, True], "one landed: exactly one is recorded applied"
    assert book.unsettled(KEY) == 0


def test_amounts_that_differ_tell_which_call_landed() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.uncertain("a", 1020)
    send(book, "b", "120", 1050)
    book.uncertain("b", 1060)
    assert outcomes(seen(book, "220", 1100)) == [("b", "RECONCILED", True)]
    assert outcomes(seen(book, "220", 1020 + 11_001)) == [("a", "RECONCILED", False)]


def test_a_reduce_then_a_rescue_add() -> None:
    book = settlement()
    send(book, "r", "30", 1000, kind=REDUCE)
    book.uncertain("r", 1020)
    send(book, "a", "60", 1100, margin="100")
    book.succeeded("a", 1110)
    assert sorted(outcomes(seen(book, "130", 1120))) == [
        ("a", "VERIFIED", True), ("r", "RECONCILED", True)]


def test_a_rescue_decided_before_the_uncertain_one_settled_is_attributed_from_the_margin_after_it(
) -> None:
    """The second rescue was decided on data that did not show the first (a push sent before
    it landed), and the first settled applied before the second went out: the second is
    weighed against the margin the first left (100 + 50), not the one it was decided on."""
    book = settlement()
    send(book, "a", "50", 1000)
    book.uncertain("a", 1020)
    assert outcomes(seen(book, "150", 1030)) == [("a", "RECONCILED", True)]
    send(book, "b", "50", 1040, margin="100")  # decided on the push without a
    book.uncertain("b", 1060)
    assert outcomes(seen(book, "200", 1070)) == [("b", "RECONCILED", True)]
    send(book, "c", "30", 1080, margin="150")  # decided on the margin without b
    book.succeeded("c", 1090)
    assert outcomes(seen(book, "230", 1100)) == [("c", "VERIFIED", True)]


def test_a_margin_moved_between_calls_is_the_next_calls_base() -> None:
    """With nothing unsettled every snapshot is the margin as it is (the owner added 20)."""
    book = settlement()
    send(book, "a", "50", 1000)
    book.succeeded("a", 1010)
    assert outcomes(seen(book, "150", 1020)) == [("a", "VERIFIED", True)]
    assert seen(book, "170", 1030) == []
    send(book, "b", "40", 1040, margin="150")  # decided before the owner's change showed
    book.uncertain("b", 1050)
    assert outcomes(seen(book, "210", 1060)) == [("b", "RECONCILED", True)]


def test_a_new_position_inherits_no_base() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.succeeded("a", 1010)
    seen(book, "150", 1020)
    seen(book, None, 1030)  # closed
    send(book, "b", "40", 1040, margin="300")  # a new position
    book.uncertain("b", 1050)
    assert outcomes(seen(book, "340", 1060)) == [("b", "RECONCILED", True)]


def test_a_closed_position_takes_its_calls_with_it() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.uncertain("a", 1020)
    send(book, "b", "50", 1050)
    book.succeeded("b", 1060)
    send(book, "c", "50", 1070)  # still on the wire when the position closes
    settled = seen(book, None, 1080)
    assert outcomes(settled) == [("a", "RECONCILED", None), ("b", "VERIFIED", False)]
    assert settled[0].detail()["applied"] == "unknown"
    assert book.sending_keys() == {KEY}
    assert outcomes(book.succeeded("c", 1090)) == [("c", "VERIFIED", False)]
    assert book.unsettled(KEY) == 0 and book.known_effect(KEY) == 0
    assert book.evidence_after(KEY) is None


def test_an_adopted_call_is_uncertain_from_when_it_was_taken_over() -> None:
    book = settlement()
    settled, reads = book.adopt("old", KEY, ADD, D(40), D(100), QTY, 5000)
    assert settled == []
    assert reads == [Read(KEY, 5000), Read(KEY, 16_001)]
    assert seen(book, "100", 9000) == []
    assert outcomes(seen(book, "140", 9500)) == [("old", "RECONCILED", True)]


def test_not_applied_calls_are_forgotten() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.not_applied("a")
    assert book.unsettled(KEY) == 0 and book.sending_keys() == frozenset()


def test_drop_account_forgets_its_calls() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.uncertain("a", 1010)
    book.drop_account(KEY[0])
    assert book.unsettled_keys() == frozenset()


@pytest.mark.parametrize(
    ("kind", "margin", "applied"),
    [(ADD, "150", True), (ADD, "150.01", True), (ADD, "149.98", None), (ADD, "100", None),
     (REDUCE, "50", True), (REDUCE, "100", None), (REDUCE, "150", None)],
)
def test_one_uncertain_call_against_the_margin_seen(
    kind: ActionKind, margin: str, applied: bool | None
) -> None:
    """To the cent: only our calls and fills move an isolated margin."""
    book = settlement()
    send(book, "a", "50", 1000, kind=kind)
    book.uncertain("a", 1010)
    result = outcomes(seen(book, margin, 1020))
    assert result == ([] if applied is None else [("a", "RECONCILED", applied)])


def test_when_nothing_explains_the_margin_an_uncertain_call_is_unknown_after_its_window() -> None:
    book = settlement()
    send(book, "a", "50", 1000)
    book.uncertain("a", 1020)
    # the owner added 80 by hand meanwhile: no subset of our calls explains +80, and a
    # guess could record money that never moved
    assert seen(book, "180", 2000) == []
    assert outcomes(seen(book, "180", 1020 + 11_001)) == [("a", "RECONCILED", None)]


def test_a_reduce_and_an_add_whose_landing_cancels_out_are_not_guessed() -> None:
    """A sweep of 100 is uncertain, a rescue of 100 is uncertain too, the margin did not
    move: both landed or neither did; choosing would record money wrongly either way."""
    book = settlement()
    send(book, "r", "100", 1000, kind=REDUCE)
    book.uncertain("r", 1010)
    send(book, "a", "100", 1020, margin="100")
    book.uncertain("a", 1030)
    settled = seen(book, "100", 1030 + 11_001)
    assert sorted(outcomes(settled)) == [("a", "RECONCILED", None), ("r", "RECONCILED", None)]


def test_adopted_calls_decided_on_different_margins_are_not_attributed_blindly() -> None:
    """Before a crash: U1 (margin 1000) uncertain, then a verified call, then U3 (margin
    1100). What came between is not in the chain: U1 cannot be told apart."""
    book = settlement()
    book.adopt("u1", KEY, ADD, D(100), D(1000), QTY, 5000)
    settled, _ = book.adopt("u3", KEY, ADD, D(100), D(1100), QTY, 5000)
    assert outcomes(settled) == [("u1", "RECONCILED", None)]
    assert outcomes(seen(book, "1200", 6000)) == [("u3", "RECONCILED", True)]


def test_a_refused_call_leaves_the_margin_seen_meanwhile_as_the_next_calls_base() -> None:
    """The owner added 20 while a call was on the wire; the exchange then refused the call.
    The next call is decided on (and lands on) 120: it is weighed against 120, not against
    the 100 the refused call was decided on."""
    book = settlement()
    send(book, "a", "50", 1000)
    assert seen(book, "120", 1005) == []  # the owner's change, a on the wire
    book.not_applied("a")  # rejected: it never moved money
    send(book, "b", "40", 2000, margin="120")  # decided on the book's 120
    book.uncertain("b", 2010)
    assert outcomes(seen(book, "160", 2020)) == [("b", "RECONCILED", True)]


def test_drop_account_forgets_a_call_on_the_wire_when_its_position_closed() -> None:
    """A close takes the position's calls with it, but one on the wire stays known until it
    answers; handing the account over must forget it too, or its position stays busy."""
    book = settlement()
    send(book, "a", "50", 1000)
    seen(book, None, 1010)  # closed while a is on the wire
    book.drop_account(KEY[0])
    assert book.sending_keys() == frozenset(), "the next holder settles it"


def test_a_fill_seen_between_a_decision_and_its_send_is_the_calls_base() -> None:
    """Nothing unsettled; the rescue was decided on quantity 1, then a fill (0.6, margin
    unchanged) showed before it went out: it lands on the position as the fill left it,
    and is weighed against that."""
    book = settlement()
    send(book, "a", "50", 1000)
    book.succeeded("a", 1010)
    assert outcomes(seen(book, "150", 1020)) == [("a", "VERIFIED", True)]
    assert seen(book, "150", 1030, qty=D("0.6")) == []  # the fill, nothing unsettled
    send(book, "b", "40", 1040, margin="150")  # decided on the version before the fill
    book.uncertain("b", 1050)
    assert outcomes(seen(book, "190", 1060, qty=D("0.6"))) == [("b", "RECONCILED", True)]


def test_a_rest_read_asked_before_a_rescue_went_out_may_show_it() -> None:
    """A REST read is stamped with the time it was asked for and may answer after a call
    sent since has landed. The first call (uncertain, never landed) must not be taken for
    the second (the same amount): 50 would be recorded twice (a applied, b landed unseen)
    for 50 moved."""
    book = settlement()
    send(book, "a", "50", 1000)
    book.uncertain("a", 1010)
    assert seen(book, "100", 1020) == []  # fresh: a not landed (yet): a rescue goes out
    send(book, "b", "50", 1100)
    # A read asked at 1050 answers at 1200, after b landed at 1150.
    assert seen(book, "150", 1050) == [], "the read may show b: a cannot be told from it"
    settled = book.succeeded("b", 1210)
    settled += seen(book, "150", 1300)
    settled += seen(book, "150", 1010 + 11_001)
    assert sorted(outcomes(settled)) == [("a", "RECONCILED", False), ("b", "VERIFIED", True)]
