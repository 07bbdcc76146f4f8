"""``guardbot top``: the live page in a terminal, for an SSH session.

It reads the running daemon's JSON (``GET /view/state``, the same ``LiveState`` the page
shows) every ``--interval`` seconds and redraws: readiness and problems, accounts with the
budget left today, every guarded position with its distance bar against the policies'
bands, and the last actions and refusals with their reasons. ``--once`` prints one screen
and exits (for scripts and tests).

Where: ``--url``, else the ``[health]`` host and port of ``--config`` (a wildcard address
is reached over loopback); the token is the config's ``[health] token``/``token_file``
(or ``GUARDBOT__HEALTH__TOKEN``). A daemon that cannot be reached is one line on stderr and
exit 4; a refused token or no page there, exit 2 (``guardbot.exits``).
"""

from __future__ import annotations

import shutil
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import httpx

from guardbot import exits
from guardbot.config import ConfigError, load_config
from guardbot.exits import CommandError, one_line

BAR = 24  # characters of the distance bar
CLEAR = "\x1b[H\x1b[2J"
ACTIONS_SHOWN = 10


def bar(position: dict[str, Any]) -> str:
    """``[!!!~~~~|~~   ...]``: ``!`` the trigger band, ``~`` up to the add target, ``-`` the
    sweep band beyond the reduce floor, ``|`` the distance."""
    bands = position["bands"]
    values = [Decimal(v) for v in (bands["trigger"], bands["add_target"],
                                   bands["reduce_floor"], position["distance"]) if v is not None]
    full = max([Decimal("0.25")] + [v * Decimal("1.25") for v in values])

    def at(value: str | None) -> int | None:
        if value is None:
            return None
        return max(0, min(BAR - 1, int(Decimal(value) / full * BAR)))

    cells = [" "] * BAR
    trigger, target, floor = (at(bands[n]) for n in ("trigger", "add_target", "reduce_floor"))
    for i in range(BAR):
        if trigger is not None and i < trigger:
            cells[i] = "!"
        elif target is not None and i < target:
            cells[i] = "~"
        elif floor is not None and i >= floor:
            cells[i] = "-"
    distance = at(position["distance"])
    if distance is not None:
        cells[distance] = "|"
    return "[" + "".join(cells) + "]"


def _clock(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ms / 1000))


def _pct(value: str | None) -> str:
    return "n/a" if value is None else f"{Decimal(value) * 100:.2f}%"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(head, *rows, strict=True)]
    return ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in [head, *rows]]  # fmt: skip


def render(state: dict[str, Any], width: int = 160) -> str:
    """One screen of ``top`` from a ``LiveState`` snapshot."""
    i = state["instance"]
    mode = "DRY-RUN" if i["dry_run"] else "LIVE"
    lines = [f"guardbot {i['version']} on {i['id']}: {mode}, guarding {i['guarded_here']} of "
             f"{i['accounts']} accounts, {'ready' if state['ready'] else 'NOT READY'} "
             f"({_clock(state['now_ms'])} UTC)"]
    lines += [f"  ! {problem}" for problem in state["problems"]]
    lines.append("")
    lines += _table(["ACCOUNT", "GUARDED", "DATA AGE", "FREE", "BUDGET LEFT TODAY"], [
        [a["name"], "here" if a["guarded_here"] else "elsewhere",
         "n/a" if a["data_age_s"] is None else f"{a['data_age_s']:.1f}s",
         a["free_balance"] or "n/a",
         f"{a['budget']['left'] or 'n/a'} / {a['budget']['per_day']}"]
        for a in state["accounts"]])  # fmt: skip
    lines.append("")
    lines += _table(
        ["ACCOUNT", "SYMBOL", "SIDE", "QTY", "MARK", "MARGIN", "LIQ", "DIST", "BANDS", "ZONE",
         "AGE", "BUDGET LEFT"],
        [[p["account"], p["symbol"], p["side"], p["qty"], p["mark"], p["margin"],
          p["liquidation_price"] or "n/a", _pct(p["distance"]), bar(p), p["zone"],
          "n/a" if p["data_age_s"] is None else
          f"{p['data_age_s']:.1f}s{' STALE' if p['stale'] else ''}",
          p["budget"]["left"] or "n/a"] for p in state["positions"]]) \
        if state["positions"] else ["(no guarded position)"]  # fmt: skip
    lines.append("")
    lines.append("LAST ACTIONS AND REFUSALS")
    for a in state["actions"][:ACTIONS_SHOWN]:
        status = "REFUSED" if a["refused"] else a["status"]
        why = a["reason"] if not a["message"] or a["message"] == a["reason"] \
            else f"{a['reason']} ({a['message']})"
        lines.append(f"  {_clock(a['time_ms'])} {a['account']} {a['symbol']} {a['kind']} "
                     f"{a['amount']} {status}: {why}")
    if not state["actions"]:
        lines.append("  (none in the last hours)")
    return "\n".join(line[:width] for line in lines)


def _where(config_path: Path | None, url: str | None) -> tuple[str, str | None]:
    """The daemon's base URL and the page's token."""
    try:
        health = load_config(config_path).health  # no file: GUARDBOT__* environment only
        token = health.view_token()
    except ConfigError as exc:
        raise CommandError(str(exc), exits.USAGE) from None
    if url is None:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(health.host,  # noqa: S104
                                                                          health.host)
        url = f"http://{f'[{host}]' if ':' in host else host}:{health.port}"
    return url.rstrip("/"), None if token is None else token.get_secret_value()


def fetch(client: httpx.Client, url: str) -> dict[str, Any]:
    """``/view/state`` of the daemon at ``url``; ``CommandError`` with the exit code."""
    try:
        response = client.get(f"{url}/view/state")
    except httpx.HTTPError as exc:
        raise CommandError(
            f"cannot reach the guard at {url}: {one_line(str(exc)) or type(exc).__name__}; is "
            "`guardbot run` running there with [health] enabled?", exits.UNREACHABLE) from None
    if response.status_code == 401:
        raise CommandError(f"the guard at {url} refused the token: give its [health] token "
                           "or token_file (in --config, or GUARDBOT__HEALTH__TOKEN)", exits.USAGE)
    if response.status_code == 404:
        raise CommandError(f"no live page at {url}: is [health] view = false there?",
                           exits.USAGE)
    try:
        response.raise_for_status()
        state: dict[str, Any] = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise CommandError(f"the guard at {url} answered {response.status_code}: "
                           f"{one_line(str(exc))}", exits.FAILURE) from None
    return state


@click.command("top")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="The daemon's TOML config: where it listens, and its token.")
@click.option("--url", default=None, help="The daemon's health server, e.g."
              " http://127.0.0.1:9108 (default: from --config).")
@click.option("--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True,
              help="Seconds between screens.")
@click.option("--once", is_flag=True, help="Print one screen and exit.")
def top(config_path: Path | None, url: str | None, interval: float, once: bool) -> None:
    """The running guard live in the terminal: positions, bands, budgets, actions."""
    base, token = _where(config_path, url)
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    with httpx.Client(headers=headers, timeout=5) as client:
        state = fetch(client, base)
        if once:
            click.echo(render(state))
            return
        problem = ""
        try:
            while True:
                width = shutil.get_terminal_size().columns
                click.echo(CLEAR + problem + render(state, width))
                time.sleep(interval)
                try:
                    state, problem = fetch(client, base), ""
                except CommandError as exc:  # the last screen stays, under the problem
                    problem = f"! {exc.format_message()} (retrying)\n"
        except KeyboardInterrupt:
            return
