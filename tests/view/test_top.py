"""``guardbot top``: the daemon's JSON in a terminal, and one clean line when it is away."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from click.testing import CliRunner, Result
from factories import LONG
from pydantic import SecretStr

from guardbot import cli, exits
from guardbot.health import HealthServer
from guardbot.view.server import View
from guardbot.view.top import bar, render
from view.helpers import Watched

TOKEN = "top-token-0123456789abcdef"


async def fallen(watched: Watched) -> None:
    await watched.snapshot(LONG)
    watched.clock.advance(1)
    await watched.mark("86")
    await watched.guard.audit.flush()


async def test_a_screen_shows_positions_bands_budgets_and_the_last_actions(
    watched: Watched,
) -> None:
    await fallen(watched)
    state = await watched.state.snapshot()
    screen = render(state)
    assert "LIVE, guarding 1 of 1 accounts, ready" in screen
    (row,) = [line for line in screen.splitlines() if line.startswith("main  ") and "LONG" in line]
    assert "86" in row and "84.21" in row and "2.08%" in row and "trigger" in row
    assert bar(state["positions"][0]) in row
    assert "950 / 1000" in screen, "the account's budget left today"
    assert "ADD 50 INTENT: distance 0.0208 below trigger 0.05" in screen


def test_the_bar_marks_the_bands_and_the_distance() -> None:
    position = {"bands": {"trigger": "0.05", "add_target": "0.10", "reduce_floor": "0.20"},
                "distance": "0.02"}
    # full scale 0.25 over 24 cells: the trigger band is cells 0-3, the target band 4-8,
    # the sweep band 19-23; the distance 0.02 falls in cell 1
    assert bar(position) == "[!|!!~~~~~" + " " * 10 + "-----]"
    assert bar({**position, "distance": None}) == "[!!!!~~~~~" + " " * 10 + "-----]"


async def invoke(*args: str) -> Result:
    """The command line, off the loop (the daemon's server runs on it meanwhile)."""
    return await asyncio.to_thread(CliRunner().invoke, cli.main, ["top", *args])


async def test_top_once_reads_the_daemon_with_the_token_of_its_config(
    watched: Watched, tmp_path: Path,
) -> None:
    await fallen(watched)
    async with HealthServer("127.0.0.1", 0, watched.daemon.readiness,
                            view=View(watched.state, token=SecretStr(TOKEN))) as server:
        config = tmp_path / "guardbot.toml"
        config.write_text(f'[health]\nport = {server.port}\ntoken_file = "token"\n')
        (tmp_path / "token").write_text(TOKEN)
        shown = await invoke("--config", str(config), "--once")
        assert shown.exit_code == 0, shown.output
        assert "PERP_ALT_USDC" in shown.output and "trigger" in shown.output
        refused = await invoke("--url", server.url, "--once")
        assert refused.exit_code == exits.USAGE
        assert refused.output.startswith(f"Error: the guard at {server.url} refused the token")
        assert TOKEN not in shown.output + refused.output


async def test_a_daemon_that_is_not_there_is_one_line_and_exit_4() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await invoke("--url", f"http://127.0.0.1:{port}", "--once")
    assert result.exit_code == exits.UNREACHABLE
    (line,) = result.output.splitlines()
    assert line.startswith(f"Error: cannot reach the guard at http://127.0.0.1:{port}: ")
    assert "Traceback" not in result.output
