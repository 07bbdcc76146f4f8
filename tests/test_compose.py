"""The deployment files, checked without a Docker engine: every ``guardbot`` command they run
must parse in the real CLI, and the services and ports must be the ones README.md documents.
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
import yaml
from click.testing import CliRunner
from conftest import PG_URL
from prometheus_client.metrics import MetricWrapperBase
from sqlalchemy import create_engine, text

from guardbot import cli, logs
from guardbot import metrics as metrics_module
from guardbot.config import load_config, parse_config
from guardbot.sim.cli import open_demo_accounts
from guardbot.sim.server import SimServer

ROOT = Path(__file__).resolve().parents[1]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
README = (ROOT / "README.md").read_text()
OPERATIONS = "".join(re.findall(r"\n## Operations\n.*?(?=\n## |\Z)", README, re.DOTALL))
CONTAINER_CONFIG = "/etc/guardbot/guardbot.toml"
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Parsing ``--log-format`` runs its callback, which configures logging: undo that."""
    monkeypatch.delenv(logs.LEVEL_ENV, raising=False)
    monkeypatch.delenv(logs.FORMAT_ENV, raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def interpolate(text: str) -> str:
    """Compose's ``${VAR:-default}`` with nothing set in the environment: the default."""
    return INTERPOLATION.sub(lambda m: (m.group(3) or "") if m.group(2) == "-" else "", text)


def resolve(argv: list[str]) -> click.Context:
    """Parse ``guardbot <argv>`` down to the leaf command, as click would before running it.
    Unknown commands or options, missing required options and bad values raise
    ``click.UsageError``; nothing is invoked."""
    ctx = cli.main.make_context("guardbot", list(argv))
    while isinstance(ctx.command, click.Group):
        # What the group left for its sub-command (click keeps it in _protected_args + args).
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            raise click.UsageError(f"{ctx.command_path} needs a sub-command", ctx)
        name, command, rest = ctx.command.resolve_command(ctx, rest)
        assert command is not None and name is not None
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = interpolate(volume).split(":")
        if source.startswith((".", "/")):
            found[target] = ROOT / source
    return found


def guardbot_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in SERVICES.items() if "build" in s or "guardbot" in s.get(
        "image", "")}


def argv_of(service: dict[str, Any]) -> list[str]:
    """The guardbot arguments of a service (the image's entrypoint is ``guardbot``), with bind
    mounted container paths mapped back to the files in this repository."""
    command = service["command"]
    assert isinstance(command, list), "use the exec form: a list, no shell"
    assert service.get("entrypoint") in (None, ["guardbot"])
    paths = mounts(service)
    return [str(paths.get(arg, arg)) for arg in (interpolate(a) for a in command)]


def container_ports(service: dict[str, Any]) -> set[int]:
    ports = {int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports", [])}
    return ports | {int(p) for p in service.get("expose", [])}


def readme_services() -> dict[str, set[int]]:
    """``| `service` | port ... |`` rows of the Operations section's service table."""
    assert OPERATIONS, "README.md has no Operations section"
    rows = re.findall(r"^\| `([\w-]+)` \| ([^|]*)\|", OPERATIONS, re.MULTILINE)
    return {name: {int(p) for p in re.findall(r"\b(\d{4,5})\b", ports)} for name, ports in rows}


@pytest.mark.parametrize("name", sorted(guardbot_services()))
def test_every_command_the_compose_file_runs_exists_in_the_cli(name: str) -> None:
    ctx = resolve(argv_of(SERVICES[name]))
    if "config_path" in ctx.params or "config_file" in ctx.params:
        config = ctx.params.get("config_path") or ctx.params.get("config_file")
        assert config is not None and Path(config).is_file(), f"{name}: config not mounted"


def test_the_check_is_strict() -> None:
    with pytest.raises(click.UsageError, match="No such command 'rnu'"):
        resolve(["rnu"])
    with pytest.raises(click.UsageError, match=r"No such option.*--confg"):
        resolve(["db", "upgrade", "--confg", "x.toml"])
    with pytest.raises(click.UsageError, match="'xml' is not one of"):
        resolve(["--log-format", "xml", "db", "current"])
    with pytest.raises(click.UsageError, match="COMMAND"):
        resolve(["db"])  # a group without its sub-command


def test_services_and_ports_match_the_readme() -> None:
    documented = readme_services()
    assert set(documented) == set(SERVICES)
    for name, service in SERVICES.items():
        assert documented[name] == container_ports(service), name


def test_postgres_keeps_its_data_and_reports_health() -> None:
    postgres = SERVICES["postgres"]
    assert re.fullmatch(r"postgres:\d+\.\d+(-\w+)?", postgres["image"]), "pin the version"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "ports" not in postgres, "the database stays on the compose network"


def test_the_database_is_migrated_before_the_guard_starts() -> None:
    migrate, guard = SERVICES["migrate"], SERVICES["guardbot"]
    assert resolve(argv_of(migrate)).command_path == "guardbot db upgrade"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate.get("restart", "no") == "no"
    assert guard["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert resolve(argv_of(guard)).command_path == "guardbot run"
    both = {interpolate(migrate["environment"]["GUARDBOT__AUDIT__URL"]),
            interpolate(guard["environment"]["GUARDBOT__AUDIT__URL"])}
    assert len(both) == 1 and "@postgres:5432/" in both.pop()


def test_the_guard_restarts_reads_config_read_only_and_keeps_its_spool() -> None:
    guard = SERVICES["guardbot"]
    assert guard["restart"] in ("unless-stopped", "always", "on-failure")
    config_mount = next(v for v in guard["volumes"] if f":{CONTAINER_CONFIG}" in v)
    assert config_mount.endswith(":ro")
    assert any(interpolate(v).endswith(":/var/lib/guardbot") for v in guard["volumes"])
    assert guard["ports"] == ["127.0.0.1:9108:9108"], "health is published on loopback only"
    # Relative paths are taken from the config's folder, the read-only mount: the shipped
    # config puts its spool in the volume.
    data = tomllib.loads((ROOT / "deploy" / "guardbot.toml").read_text(), parse_float=Decimal)
    settings = parse_config(data).anchored(Path(CONTAINER_CONFIG).parent)
    assert settings.audit.spool_dir.is_relative_to("/var/lib/guardbot")


def test_no_secret_is_written_in_the_deployment_files() -> None:
    key_shaped = re.compile(r"(?<![0-9A-Za-z])[1-9A-HJ-NP-Za-km-z]{43,44}(?![0-9A-Za-z])")
    for path in ("docker-compose.yml", "Dockerfile", "deploy/guardbot.service"):
        text = (ROOT / path).read_text()
        assert not key_shaped.search(text), path
        assert "orderly_secret =" not in text, path
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"^(ENV|ARG)\s+\S*SECRET", dockerfile, re.MULTILINE | re.IGNORECASE)
    # Secrets reach the guard from the environment (or .env), never from a literal value.
    for name, value in SERVICES["guardbot"]["environment"].items():
        if "SECRET" in name:
            assert re.fullmatch(r"\$\{\w+(:?[-?][^}]*)?\}", value), name


def test_dockerfile_is_pinned_slim_and_non_root() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"python:3\.11\.\d+-slim", dockerfile)
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and not users[-1].startswith(("root", "0"))
    assert re.search(r'^ENTRYPOINT \["guardbot"\]$', dockerfile, re.MULTILINE)
    assert "pip install" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[next(i for i, line in enumerate(ignored) if not line.startswith("#"))] == "*"


def test_the_sim_profile_is_a_complete_paper_setup() -> None:
    sim = SERVICES["sim"]
    assert sim["profiles"] == ["sim"]
    assert all("profiles" not in s for n, s in SERVICES.items() if n != "sim")
    ctx = resolve(argv_of(sim))
    assert ctx.command_path == "guardbot sim"
    assert {ctx.params["port"]} == container_ports(sim)
    assert SERVICES["guardbot"]["depends_on"]["sim"]["required"] is False
    settings = load_config(mounts(SERVICES["guardbot"])[CONTAINER_CONFIG])
    assert settings.exchange.urls()["rest_url"] == f"http://sim:{ctx.params['port']}"
    assert settings.health.host == "0.0.0.0"  # the container's port is published instead
    assert {settings.health.port} == container_ports(SERVICES["guardbot"])


def test_the_systemd_unit_runs_a_real_command_and_is_hardened() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "deploy" / "guardbot.service")
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert service["EnvironmentFile"].startswith("/etc/guardbot/")
    assert service["User"] != "root"
    for option in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "ProtectHome"):
        assert service[option] in ("yes", "strict"), option
    program, *argv = shlex.split(service["ExecStart"])
    assert program.endswith("/bin/guardbot")
    assert resolve(argv).command_path == "guardbot run"


def metric_names() -> set[str]:
    """Every series name the guardbot metrics expose (counters gain ``_total``, ...)."""
    suffixes = {"counter": ("_total",), "gauge": ("",),
                "histogram": ("_bucket", "_sum", "_count")}
    names = set()
    for metric in vars(metrics_module).values():
        if isinstance(metric, MetricWrapperBase):
            for family in metric.describe():
                names |= {family.name + s for s in suffixes[family.type]}
    return names


def test_dashboard_rules_and_readme_queries_name_real_metrics() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus-alerts.yml").read_text())
    queries += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    queries.append(OPERATIONS)
    used = {name for q in queries for name in re.findall(r"\bguardbot_\w+", q)}
    known = metric_names()
    assert used, "no query names a metric"
    assert used <= known, f"unknown metrics: {sorted(used - known)}"
    on_dashboard = {n for panel in dashboard["panels"] for t in panel["targets"]
                    for n in re.findall(r"\bguardbot_\w+", t["expr"])}
    for family in known:  # every metric has a panel
        stem = re.sub(r"_(bucket|sum|count)$", "", family)
        assert any(n.startswith(stem) for n in on_dashboard), family


def test_the_paper_config_guards_the_sims_demo_accounts(monkeypatch: pytest.MonkeyPatch) -> None:
    sim = resolve(argv_of(SERVICES["sim"])).params
    demo = open_demo_accounts(SimServer(seed=sim["seed"]), sim["demo_accounts"], sim["seed"])
    guard = SERVICES["guardbot"]
    paper_env(monkeypatch)
    settings = load_config(mounts(guard)[CONTAINER_CONFIG])
    assert [(a.name, a.account_id, a.orderly_key, a.secret().get_secret_value())
            for a in settings.accounts] == [
        (d.name, d.account_id, d.orderly_key, d.orderly_secret) for d in demo]


def paper_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set the environment the guardbot service gets from its env_file."""
    (env_file,) = SERVICES["guardbot"]["env_file"]
    for line in (ROOT / interpolate(env_file)).read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            monkeypatch.setenv(name, value)


@pytest.mark.postgres
def test_the_compose_commands_run_against_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    """migrate's command, then `db current` and the guard's config check, for real."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY migrations /opt/guardbot/migrations" in dockerfile
    assert "GUARDBOT_MIGRATIONS=/opt/guardbot/migrations" in dockerfile
    monkeypatch.setenv("GUARDBOT_MIGRATIONS", str(ROOT / "migrations"))
    paper_env(monkeypatch)
    name = f"compose_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{name}"'))
    try:
        monkeypatch.setenv("GUARDBOT__AUDIT__URL", f"{PG_URL}?options=-csearch_path%3D{name}")
        runner = CliRunner()
        migrated = runner.invoke(cli.main, argv_of(SERVICES["migrate"]))
        assert migrated.exit_code == 0, migrated.output
        assert "is at revision" in migrated.output
        current = runner.invoke(cli.main, ["db", "current", "--config",
                                           str(mounts(SERVICES["migrate"])[CONTAINER_CONFIG])])
        assert "up to date" in current.output, current.output
        checked = runner.invoke(cli.main, ["check-config", *argv_of(SERVICES["guardbot"])[-2:]])
        assert checked.exit_code == 0, checked.output
        assert "configuration OK" in checked.output
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


# -- the paper setup, run without Docker ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def answer(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return None


@pytest.mark.slow
@pytest.mark.postgres
def test_paper_setup_runs_and_readyz_turns_not_ready_when_the_sim_stops_pushing(
    tmp_path: Path,
) -> None:
    """Each compose service's own command as a process (loopback instead of the compose
    network, a throwaway PostgreSQL schema, a short staleness bound): the guard becomes ready
    on the sim's demo accounts, turns not-ready when the simulator freezes, recovers when it
    resumes, logs JSON lines without secrets, and stops cleanly on SIGTERM."""
    sim_port, health_port = free_port(), free_port()
    sim_argv = argv_of(SERVICES["sim"])
    sim_argv[sim_argv.index("--port") + 1] = str(sim_port)
    sim_argv[sim_argv.index("--host") + 1] = "127.0.0.1"
    schema_name = f"paper_test_{uuid.uuid4().hex[:12]}"
    env = {
        **os.environ,
        "GUARDBOT_MIGRATIONS": str(ROOT / "migrations"),
        "GUARDBOT__AUDIT__URL": f"{PG_URL}?options=-csearch_path%3D{schema_name}",
        "GUARDBOT__EXCHANGE__REST_URL": f"http://127.0.0.1:{sim_port}",
        "GUARDBOT__EXCHANGE__PUBLIC_WS_URL": f"ws://127.0.0.1:{sim_port}/ws/stream/{{account_id}}",
        "GUARDBOT__EXCHANGE__PRIVATE_WS_URL":
            f"ws://127.0.0.1:{sim_port}/v2/ws/private/stream/{{account_id}}",
        "GUARDBOT__EXCHANGE__TIMEOUT_S": "1",
        "GUARDBOT__HEALTH__HOST": "127.0.0.1",
        "GUARDBOT__HEALTH__PORT": str(health_port),
        "GUARDBOT__POLL__INTERVAL_S": "0.5",
        "GUARDBOT__POLL__FAST_INTERVAL_S": "0.25",
        "GUARDBOT__POLL__MAX_DATA_AGE_S": "2",
        "GUARDBOT__GUARD__KILL_SWITCH_FILE": str(tmp_path / "STOP"),
    }
    (env_file,) = SERVICES["guardbot"]["env_file"]
    secrets = []
    for line in (ROOT / interpolate(env_file)).read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
            secrets.append(value.removeprefix("ed25519:"))
    guardbot = str(Path(sys.executable).parent / "guardbot")
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema_name}"'))
    sim_log, guard_log = tmp_path / "sim.log", tmp_path / "guardbot.log"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with sim_log.open("wb") as out:
            sim = subprocess.Popen([guardbot, *sim_argv], stdout=out, stderr=subprocess.STDOUT,
                                   cwd=tmp_path, env=env)
        processes.append(sim)
        system_info = f"http://127.0.0.1:{sim_port}/v1/public/system_info"
        wait_until(lambda: (r := answer(system_info)) is not None and r.status_code == 200,
                   "the simulator")

        migrated = subprocess.run([guardbot, *argv_of(SERVICES["migrate"])], cwd=tmp_path,
                                  env=env, capture_output=True, text=True, timeout=60)
        assert migrated.returncode == 0, migrated.stderr

        with guard_log.open("wb") as out:
            guard = subprocess.Popen([guardbot, *argv_of(SERVICES["guardbot"])], stdout=out,
                                     stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
        processes.append(guard)
        base = f"http://127.0.0.1:{health_port}"

        def readyz() -> httpx.Response | None:
            assert guard.poll() is None, guard_log.read_text()[-3000:]
            return answer(f"{base}/readyz")

        def ready_with_both() -> bool:
            r = readyz()
            return r is not None and r.status_code == 200 and len(r.json()["accounts"]) == 2

        wait_until(ready_with_both, "/readyz 200 with both demo accounts")
        assert [a["account"] for a in readyz().json()["accounts"]] == ["demo1", "demo2"]  # type: ignore[union-attr]
        scraped = httpx.get(f"{base}/metrics").text
        assert "guardbot_ready 1.0" in scraped
        # metric labels name accounts by their config names (ids stay in the audit log)
        assert re.search(r'guardbot_snapshots_total\{account="demo1",source="REST"\} [1-9]',
                         scraped)

        sim.send_signal(signal.SIGSTOP)  # the exchange freezes: no pushes, no answers
        try:
            wait_until(lambda: (r := readyz()) is not None and r.status_code == 503,
                       "/readyz 503 after the simulator stopped", timeout_s=15)
            problems = readyz().json()["problems"]  # type: ignore[union-attr]
            assert any(re.fullmatch(r"account demo1: data is \d+\.\d s old \(bound 2 s\)", p)
                       for p in problems), problems
            assert "guardbot_ready 0.0" in httpx.get(f"{base}/metrics").text
        finally:
            sim.send_signal(signal.SIGCONT)
        wait_until(ready_with_both, "/readyz 200 again after the simulator resumed")

        guard.send_signal(signal.SIGTERM)
        assert guard.wait(30) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema_name}" CASCADE'))
        admin.dispose()

    logged = guard_log.read_text()
    # Every log record is one JSON line. The CLI's start-up warning about the config file's
    # mode is a plain click.echo, not a log record (the mounted example holds no secret).
    lines = [line for line in logged.splitlines() if not line.startswith("warning: ")]
    entries = [json.loads(line) for line in lines]
    assert len(entries) > 5
    assert all({"ts", "level", "logger", "message"} <= set(entry) for entry in entries)
    assert {"guardbot.daemon", "guardbot.health"} <= {entry["logger"] for entry in entries}
    for secret in secrets:
        assert secret not in logged
