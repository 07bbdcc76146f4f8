"""Clock skew beyond the exchange's timestamp window (docs/exchange.md §2: 300 s).

The daemon runs with ``clockshim/sitecustomize.py`` on its PYTHONPATH, so ``SIGUSR1`` moves
its wall clock 400 s ahead and back, as a drifting host clock would.
"""

from __future__ import annotations

import re
import signal
import time
from decimal import Decimal
from pathlib import Path

import pytest

from .harness import Daemon, Sim, compare, write_config
from .test_faults import SYMBOLS, assert_clean, drive_down, record, settle, wait_all_safe

HERE = Path(__file__).parent

pytestmark = pytest.mark.slow


def test_clock_skew_beyond_the_window_is_a_clear_error_then_recovers(
    tmp_path: Path, audit_url: str
) -> None:
    """The host clock jumps 400 s ahead (the exchange accepts 300 s): every signed call is
    refused. The guard must say it is the clock, keep running, and act again once the clock
    is back."""
    with Sim(tmp_path, accounts=1, symbols=",".join(SYMBOLS)) as sim:
        config = write_config(tmp_path, sim, audit_url)
        env = {"PYTHONPATH": str(HERE / "clockshim"), "GUARDBOT_TEST_CLOCK_SKEW_S": "400"}
        with Daemon(config, tmp_path, env=env) as daemon:
            daemon.wait_ready()
            drive_down(sim, steps=3)
            daemon.signal(signal.SIGUSR1)  # skew on
            # Slowly enough that the positions outlive the skew: the guard cannot act then.
            drive_down(sim, steps=8, factor=Decimal("0.997"))
            assert daemon.alive(), daemon.log_text()[-3000:]
            # The refusal names the cause: the timestamp (or our clock), not "bad key".
            assert re.search(r"timestamp.*window|clock", daemon.log_text(), re.IGNORECASE)
            skewed_until = time.time() * 1000
            daemon.signal(signal.SIGUSR1)  # skew off
            wait_all_safe(sim)  # the positions are inside the trigger band: act now
            drive_down(sim, steps=4)
            wait_all_safe(sim)
            actions = settle(audit_url, daemon)
        state = sim.state()
    row = record(compare("clock skew 400 s", state, actions, daemon.worst_age_s))
    assert any(c["time_ms"] > skewed_until for c in state["margin_changes"])
    assert state["liquidations"] == []
    assert_clean(row, min_actions=5)
