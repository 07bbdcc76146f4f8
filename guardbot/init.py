"""``guardbot init``: write a commented starting config for mainnet, testnet or the simulator.

The file carries the steps an operator takes before the guard can act on a real account:
an Orderly key with the ``read`` and ``trading`` scopes registered for the account, its
secret kept out of the file (an environment variable or a file of its own, never in git),
and a dry run first. The ``sim`` config guards the first demo account of ``guardbot sim
--demo-accounts 1`` (its key is deterministic), so it passes ``check-config`` as written and
``guardbot run`` works against a local simulator at once.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

HEADER = """\
# guardbot configuration ({preset}), written by `guardbot init --preset {preset}`.
# Every key, its default and its meaning: docs/config.md. Relative paths below are read
# against this file's folder. Any key can be set from the environment as
# GUARDBOT__SECTION__KEY (e.g. GUARDBOT__AUDIT__URL), which wins over this file.
#
# Check it without connecting anywhere:  guardbot check-config --config {path}
"""

LIVE_STEPS = """\
#
# Before the first run on {network}:
#  1. An Orderly account: connect your wallet on a front end built on Orderly{account}.
#     The account id is shown there: `0x` and 64 hex digits, one per wallet and front end
#     (broker).
#  2. An Orderly API key for that account with the `read` and `trading` scopes (`trading`
#     is what lets the guard move margin; do not grant `asset`, the guard never withdraws).
#     Create it in the front end's API key settings, or register a key pair of your own
#     with the account by signing Orderly's add-key message with the wallet. A key lives
#     at most 365 days: note when it expires. You get the public key (`ed25519:...`) and
#     its secret; the secret is shown once.
#  3. Put the secret where only the guard reads it, never in this file nor in git: in an
#     environment variable (orderly_secret_env below, e.g.
#     `export GUARDBOT_MAIN_SECRET='ed25519:...'` in the service's environment), or in a
#     file readable by the guard's user only (orderly_secret_file below, mode 600).
#  4. Fill in [[accounts]] below, then check the secret against the key, the ports, the
#     policies; and, signing one read per account, that the key is registered with its
#     scopes:
#       guardbot check-config --config {path}
#       guardbot check-config --online --config {path}
#  5. Run with dry_run = true (as written below), and read what it would have done:
#       guardbot run --config {path}
#       guardbot audit summary --config {path}
#     Then set dry_run = false and run it again.{next}
"""

ACCOUNT = {
    "testnet": ", switched to Orderly's testnet, and\n#     get test USDC from its faucet",
    "mainnet": ", and deposit USDC",
}
NEXT = {
    "testnet": "\n#  Once testnet behaved as you expect, `guardbot init --preset mainnet`.",
    "mainnet": "\n#  Try the same config on testnet first (`guardbot init --preset testnet`).",
}

LIVE_BODY = """
[exchange]
preset = "{preset}"           # mainnet | testnet | sim: whose URLs to use

[audit]
# Every decision and margin call. SQLite is one guard per database; several instances
# sharing accounts need PostgreSQL (postgresql+psycopg://USER@HOST/DB).
url = "sqlite:///guardbot-audit.db"
spool_dir = "guardbot-spool"

[guard]
dry_run = true               # decide and record every action, send none: start here
# kill_switch_file = "STOP"  # while this file exists, no new action is taken

[budgets]                    # USDC; counted from the audit log, so restarts do not reset them
per_action = "1000"
per_position_per_day = "5000"
per_account_per_day = "20000"
reserve = "0"                # free balance a top-up never goes below

[health]                     # /healthz, /readyz, /metrics (Prometheus)
host = "127.0.0.1"
port = 9108

# [[alerts.webhooks]]        # actions, rejections, exhausted budgets, liquidations, stale data
# url = "https://hooks.slack.com/services/..."   # a secret: better GUARDBOT__ALERTS__... env
# format = "slack"

[[accounts]]
name = "main"                # how logs, alerts and metrics name the account
account_id = "0x<the account id: 0x and 64 hex digits>"
orderly_key = "ed25519:<the API key's public key>"
orderly_secret_env = "GUARDBOT_MAIN_SECRET"           # the variable holding the secret, or:
# orderly_secret_file = "/etc/guardbot/main.secret"   # a file holding it (mode 600)
"""

SIM_STEPS = """\
#
# The account below is the first demo account of the simulator (`guardbot sim`, seed 7).
# In one terminal start the simulator, in another the guard:
#   guardbot sim --demo-accounts 1 --scenario crash --speed 30
#   guardbot run --config {path}
# It is a paper account, so its secret is written here; for real accounts never do that:
# `guardbot init --preset testnet` writes a config with the steps for a real key.
"""

SIM_BODY = """
[exchange]
preset = "sim"               # mainnet | testnet | sim: the simulator on 127.0.0.1:8900

[audit]
url = "sqlite:///guardbot-audit.db"
spool_dir = "guardbot-spool"

[guard]
dry_run = false              # true: decide and record every action, send none

[health]                     # /healthz, /readyz, /metrics (Prometheus)
host = "127.0.0.1"
port = 9108

[[accounts]]
name = "{name}"
account_id = "{account_id}"
orderly_key = "{orderly_key}"
orderly_secret = "{orderly_secret}"   # paper account only
"""


POLICIES = """
# Distances are fractions of the mark: 0.05 = the liquidation price is 5 % away.
[[policies]]
use = "topup"                # below `trigger`, add what puts liquidation `target` away
params = { trigger = "0.05", target = "0.09" }

[[policies]]
use = "sweep"                # beyond `safe`, take the excess back to the free balance
params = { safe = "0.20", min_amount = "10" }
"""


def config_text(preset: str, path: Path) -> str:
    """The commented config for ``preset`` (``mainnet``, ``testnet`` or ``sim``), naming
    ``path`` in its instructions."""
    head = HEADER.format(preset=preset, path=path)
    if preset == "sim":
        from guardbot.sim.cli import open_demo_accounts
        from guardbot.sim.server import SimServer

        (demo,) = open_demo_accounts(SimServer(seed=7), 1, 7)  # the sim's own demo1
        return head + SIM_STEPS.format(path=path) + SIM_BODY.format(
            name=demo.name, account_id=demo.account_id, orderly_key=demo.orderly_key,
            orderly_secret=demo.orderly_secret) + POLICIES  # fmt: skip
    network = {"mainnet": "Orderly mainnet", "testnet": "Orderly testnet"}[preset]
    steps = LIVE_STEPS.format(network=network, account=ACCOUNT[preset], path=path,
                              next=NEXT[preset])
    return head + steps + LIVE_BODY.format(preset=preset) + POLICIES


def write_config(path: Path, text: str, force: bool) -> None:
    """Write ``text`` to ``path``, readable by its owner only; refuse an existing file
    unless ``force``. Raises ``click.ClickException`` with one line."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        descriptor = os.open(path, flags, 0o600)
    except FileExistsError:
        raise click.ClickException(
            f"{path} already exists; pass --force to overwrite it") from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


@click.command("init")
@click.option("--preset", type=click.Choice(["mainnet", "testnet", "sim"]), default="sim",
              show_default=True, help="Which network the config is for.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("guardbot.toml"), show_default=True, help="Where to write it.")
@click.option("--force", is_flag=True, help="Overwrite the file if it exists.")
def init(preset: str, output: Path, force: bool) -> None:
    """Write a commented starting config, with the steps to set up an Orderly key."""
    write_config(output, config_text(preset, output), force)
    click.echo(f"wrote {output} ({preset})")
    if preset == "sim":
        click.echo(f"next: guardbot sim --demo-accounts 1, then guardbot run --config {output}")
    else:
        click.echo(f"next: follow the steps at the top of {output}, then "
                   f"guardbot check-config --config {output}")
