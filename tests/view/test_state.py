"""The live state model: what the daemon holds, as one JSON-able dict without secrets."""

from __future__ import annotations

import json

from factories import ACCOUNT, LONG

from guardbot.audit.store import AuditLog
from guardbot.clock import ManualClock
from guardbot.view.state import LiveState, parse_position_id, position_id
from view.helpers import ALT, KEY, SECRET, Watched, view_settings

# A long of 10 at cost 1000 with margin 200 liquidates at 800 / 9.5 = 84.2105...: at mark
# 100 it is 0.158 away (below the 0.19 topup declares as its farthest add target: a
# looked-ahead rescue restores up to that), at 86 only 0.021 (below its trigger 0.05).


async def test_a_guarded_position_with_its_figures_bands_and_budgets(watched: Watched) -> None:
    await watched.snapshot(LONG)
    state = await watched.state.snapshot()
    (position,) = state["positions"]
    assert position["id"] == f"{ACCOUNT}/{ALT}"
    assert (position["account"], position["symbol"], position["side"]) == ("main", ALT, "LONG")
    assert (position["qty"], position["mark"], position["margin"]) == ("10", "100", "200")
    # shown to the symbol's price step (0.01) and six places
    assert (position["liquidation_price"], position["distance"]) == ("84.21", "0.157895")
    assert position["zone"] == "target"
    assert position["bands"] == {"trigger": "0.05", "add_target": "0.19",
                                 "reduce_floor": "0.20", "policies": ["topup", "sweep"]}
    assert position["data_age_s"] == 0 and not position["stale"]
    assert position["budget"] == {"per_day": "300", "added": "0", "left": "300"}
    (account,) = state["accounts"]
    assert account["guarded_here"] and account["budget"]["left"] == "1000"
    assert account["free_balance"] == "10000"
    assert state["instance"]["id"] == "test-1" and state["ready"] and state["problems"] == []
    assert state["budgets"]["per_action"] == "50"


async def test_a_fall_into_the_trigger_band_shows_the_zone_the_action_and_the_budget_spent(
    watched: Watched,
) -> None:
    await watched.snapshot(LONG)
    watched.clock.advance(1)
    await watched.mark("86")
    await watched.guard.audit.flush()
    state = await watched.state.snapshot()
    (position,) = state["positions"]
    assert position["mark"] == "86" and position["zone"] == "trigger"
    assert position["data_age_s"] == 1.0
    (action,) = state["actions"]
    assert (action["kind"], action["amount"], action["policy"]) == ("ADD", "50", "topup")
    assert action["reason"].startswith("distance 0.0208 below trigger 0.05: add 56.53")
    assert action["url"] == f"/view/actions/{action['id']}" and not action["refused"]
    assert action["events"][0]["kind"] == "INTENT"
    # the ADD counts in the budgets at once (in flight counts as spent)
    assert position["budget"]["left"] == "250"
    assert state["accounts"][0]["budget"] == {"per_day": "1000", "added": "50", "left": "950"}
    assert [n["kind"] for n in position["notes"]] == ["decided"]


async def test_stale_data_and_a_kill_switch_are_problems(
    timed_audit: AuditLog, guard_clock: ManualClock, tmp_path: object,
) -> None:
    from pathlib import Path

    stop = Path(str(tmp_path)) / "STOP"
    watched = Watched(timed_audit, guard_clock,
                      view_settings(guard={"kill_switch_file": str(stop)}))
    await watched.snapshot(LONG)
    guard_clock.advance(6)
    stop.touch()
    state = await watched.state.snapshot()
    assert not state["ready"] and state["instance"]["kill_switch"]
    assert any("data is 6.0 s old" in p for p in state["problems"]), state["problems"]
    assert any("kill switch engaged" in p for p in state["problems"])
    assert state["positions"][0]["stale"]


async def test_an_account_another_instance_guards_is_listed_without_positions(
    watched: Watched,
) -> None:
    await watched.snapshot(LONG)
    watched.guard.owned = frozenset()
    state = await watched.state.snapshot()
    assert state["positions"] == []
    assert state["accounts"][0]["guarded_here"] is False
    assert state["accounts"][0]["budget"]["left"] is None
    assert state["instance"]["guarded_here"] == 0


async def test_the_snapshot_is_plain_json_and_carries_no_secret(watched: Watched) -> None:
    await watched.snapshot(LONG)
    watched.clock.advance(1)
    await watched.mark("86")
    text = json.dumps(await watched.state.snapshot())  # no default=: plain JSON values only
    assert SECRET not in text and SECRET.removeprefix("ed25519:") not in text
    assert KEY not in text and KEY.removeprefix("ed25519:") not in text
    assert "sqlite://" not in text


async def test_actions_recorded_before_a_restart_are_read_back(watched: Watched) -> None:
    await watched.snapshot(LONG)
    watched.clock.advance(1)
    await watched.mark("86")
    await watched.guard.audit.flush()
    (before,) = (await watched.state.snapshot())["actions"]
    again = LiveState(watched.guard, watched.daemon.settings, watched.daemon.readiness)
    assert (await again.snapshot())["actions"] == []
    await again.seed()
    (seeded,) = (await again.snapshot())["actions"]
    assert {k: seeded[k] for k in ("id", "kind", "amount", "reason", "status")} == {
        k: before[k] for k in ("id", "kind", "amount", "reason", "status")}


async def test_a_chart_shows_the_samples_and_the_action(watched: Watched) -> None:
    await watched.snapshot(LONG)
    key = parse_position_id(position_id(LONG.key))
    assert key == LONG.key
    for price in ("100", "95", "90"):
        watched.clock.advance(10)
        await watched.mark(price)
        watched.state.sample()
    watched.clock.advance(1)
    watched.state.sample()  # within sample_s of the last: not kept
    assert len(watched.state.samples[key].time_ms) == 3
    watched.clock.advance(10)
    await watched.snapshot(LONG)  # fresh data: the guard acts on nothing older than 5 s
    await watched.mark("86")
    svg = watched.state.chart(key)
    assert svg.startswith("<svg") and svg.count("<polyline") >= 3
    assert svg.count('class="action"') == 1 and "ADD 50" in svg
