"""Exit codes shared by every ``guardbot`` command, and the one error that carries them.

    0  done
    1  the command ran and failed: the guard stopped on an error, a broken audit chain
    2  bad usage or bad configuration: arguments, config file, secrets, URLs, ports, paths
    3  the exchange refused the key: unregistered, expired, missing scope, clock
    4  the exchange could not be reached: check the URL and the network
    5  the exchange answered with another error
    6  the audit database is unusable: missing, schema out of date, unreachable, or held
       by another guard

Click's own usage errors already exit 2. README.md lists these codes too.
"""

from __future__ import annotations

from typing import IO, Any

import click

OK = 0
FAILURE = 1
USAGE = 2
AUTH = 3
UNREACHABLE = 4
EXCHANGE = 5
DATABASE = 6


class CommandError(click.ClickException):
    """An ``Error: ...`` line on stderr per problem in ``message`` (one a line), and the exit
    ``code``; never a traceback."""

    def __init__(self, message: str, code: int = FAILURE) -> None:
        lines = [line.strip() for line in str(message).splitlines() if line.strip()]
        super().__init__("\n".join(lines) or "failed")
        # click declares exit_code a class variable; this error's code is per instance.
        setattr(self, "exit_code", code)  # noqa: B010

    def show(self, file: IO[Any] | None = None) -> None:
        for line in self.format_message().splitlines():
            click.echo(f"Error: {line}", err=True, file=file)


def one_line(text: str) -> str:
    """The lines of a message joined into one."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())
