"""The ``guardbot`` command line.

Each command lives with the part of the system it drives and is loaded only when invoked, so
``guardbot --help`` stays fast and one broken area cannot stop the others from starting.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from guardbot import __version__
from guardbot.logs import log_options

# command name -> "module:attribute" of a click.Command
COMMANDS: dict[str, str] = {
    "audit": "guardbot.audit.cli:audit",
    "backtest": "guardbot.backtest.cli:backtest",
    "db": "guardbot.audit.cli:db",
    "check-config": "guardbot.commands:check_config",
    "demo": "guardbot.commands:demo",
    "init": "guardbot.init:init",
    "run": "guardbot.commands:run",
    "sim": "guardbot.sim.cli:sim",
    "status": "guardbot.status:status",
    "top": "guardbot.view.top:top",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="guardbot")
@log_options
def main(**_: Any) -> None:
    """Keeps isolated-margin positions on Orderly Network out of liquidation."""
