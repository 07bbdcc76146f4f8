"""Typed settings: a TOML file plus ``GUARDBOT__SECTION__KEY`` environment overrides.

Validated once, at start-up; unknown keys are errors; secrets are ``SecretStr`` (redacted in
``repr``, logs and errors) and may come from the file, another environment variable or a file
of their own (Docker/systemd secrets). ``load_config`` turns every problem into one
``ConfigError`` whose text names the key and the reason.

Example (every key is listed in docs/config.md, generated from these models by
``python -m guardbot.config_reference``)::

    [exchange]
    preset = "sim"                       # mainnet | testnet | sim
    rest_url = "http://127.0.0.1:8900"   # optional: overrides the preset

    [audit]
    url = "sqlite:///guardbot-audit.db"

    [[accounts]]
    name = "main"
    account_id = "0x..."
    orderly_key = "ed25519:..."
    orderly_secret_env = "GUARDBOT_MAIN_SECRET"

    [[policies]]
    use = "topup"
    params = { trigger = "0.05", target = "0.09" }
"""

# Size (about 420 lines): every setting carries its plain-words description here, because
# docs/config.md is generated from these models (guardbot/config_reference.py); the models
# and their loading are one job.

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ACCOUNT_ID_RE = re.compile(r"^0x[0-9a-fA-F]{64}$")
KEY_RE = re.compile(r"^ed25519:[1-9A-HJ-NP-Za-km-z]{32,50}$")
# The live page's bearer token: long enough not to be guessed over the network.
MIN_TOKEN_CHARS = 16

# The hosts of docs/exchange.md §1.
PRESETS: dict[str, dict[str, str]] = {
    "mainnet": {
        "rest_url": "https://api.orderly.org",
        "public_ws_url": "wss://ws-evm.orderly.org/ws/stream/{account_id}",
        "private_ws_url": "wss://ws-private-evm.orderly.org/v2/ws/private/stream/{account_id}",
    },
    "testnet": {
        "rest_url": "https://testnet-api.orderly.org",
        "public_ws_url": "wss://testnet-ws-evm.orderly.org/ws/stream/{account_id}",
        "private_ws_url": (
            "wss://testnet-ws-private-evm.orderly.org/v2/ws/private/stream/{account_id}"
        ),
    },
    "sim": {
        "rest_url": "http://127.0.0.1:8900",
        "public_ws_url": "ws://127.0.0.1:8900/ws/stream/{account_id}",
        "private_ws_url": "ws://127.0.0.1:8900/v2/ws/private/stream/{account_id}",
    },
}

Money = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]


class ConfigError(Exception):
    """Bad configuration: the message names the key and the reason, one line per problem."""


def _url_with_scheme(value: str | None, schemes: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"must be a {' or '.join(schemes)} URL, got {value!r}")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExchangeSettings(_Section):
    """Which Orderly network to talk to, and how long to wait for its answers."""

    preset: Literal["mainnet", "testnet", "sim"] = Field(
        default="sim", description="Whose URLs to use: Orderly mainnet, Orderly testnet, or the"
        " built-in simulator (`guardbot sim`) on 127.0.0.1:8900.")
    rest_url: str | None = Field(
        default=None, description="REST base URL instead of the preset's; `http://` or"
        " `https://`.")
    public_ws_url: str | None = Field(
        default=None, description="Public WebSocket URL instead of the preset's;"
        " `{account_id}` is replaced by the account id; `ws://` or `wss://`.")
    private_ws_url: str | None = Field(
        default=None, description="Private WebSocket URL instead of the preset's;"
        " `{account_id}` is replaced by the account id; `ws://` or `wss://`.")
    timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="Seconds to wait for a REST answer (reads are"
        " retried a few times on transient failures).")
    # POST /v1/position_margin answers in well under a second when the exchange is healthy;
    # waiting the general timeout for it delays the next rescue of a position in danger
    # (docs/architecture.md, "Rescues"). A call that times out is uncertain and is settled
    # from evidence, never retried blindly.
    margin_timeout_s: float = Field(
        default=2.0, gt=0, le=60, description="Seconds to wait for the answer to a margin call."
        " A call without an answer is never repeated blindly: the position is read to see"
        " whether it was applied.")

    @field_validator("rest_url")
    @classmethod
    def _rest_scheme(cls, value: str | None) -> str | None:
        return _url_with_scheme(value, ("http", "https"))

    @field_validator("public_ws_url", "private_ws_url")
    @classmethod
    def _ws_scheme(cls, value: str | None) -> str | None:
        return _url_with_scheme(value, ("ws", "wss"))

    def urls(self) -> dict[str, str]:
        """The preset's URLs with any explicit override applied. WS URLs keep the
        ``{account_id}`` placeholder."""
        urls = dict(PRESETS[self.preset])
        for name in ("rest_url", "public_ws_url", "private_ws_url"):
            value = getattr(self, name)
            if value:
                urls[name] = value
        return urls


class AuditSettings(_Section):
    """Where every decision and margin call is recorded."""

    url: str = Field(
        default="sqlite:///guardbot-audit.db", description="The audit database:"
        " `sqlite:///FILE` or `postgresql+psycopg://USER@HOST/DB`. Several instances sharing"
        " accounts need PostgreSQL.")
    spool_dir: Path = Field(
        default=Path("guardbot-spool"), description="Local folder where records are written"
        " to disk before anything is acted on, and wait while the database is unreachable."
        " One per instance.")

    @field_validator("url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        from sqlalchemy import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            backend = make_url(value).get_backend_name()
        except ArgumentError:
            raise ValueError("not a database URL: use sqlite:///FILE or"
                             " postgresql+psycopg://USER@HOST/DB") from None
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"{backend} is not supported: use sqlite:///FILE or"
                             " postgresql+psycopg://USER@HOST/DB")
        return value


class PollSettings(_Section):
    """How often positions are read over REST, besides the WebSocket pushes.
    `fast_interval_s` must not exceed `interval_s`, nor `interval_s` `max_data_age_s`."""

    interval_s: float = Field(
        default=5.0, gt=0, description="Seconds between reads of an account's positions.")
    fast_interval_s: float = Field(
        default=1.0, gt=0, description="Seconds between reads while one of the account's"
        " positions is close to its trigger.")
    # Nothing acts on a snapshot older than this (docs/architecture.md, "Invariants").
    max_data_age_s: float = Field(
        default=15.0, gt=0, description="Nothing is done on position data older than this"
        " many seconds, and `/readyz` reports the account not ready.")

    @model_validator(mode="after")
    def _fast_not_slower(self) -> PollSettings:
        if self.fast_interval_s > self.interval_s:
            raise ValueError("fast_interval_s must not exceed interval_s")
        if self.interval_s > self.max_data_age_s:
            # With quiet streams, every position's data would age past the limit between two
            # polls, and nothing would be done on it until the next.
            raise ValueError(f"interval_s ({self.interval_s:g}) must not exceed max_data_age_s "
                             f"({self.max_data_age_s:g}): between two polls nothing could be "
                             "done on data the streams do not refresh")
        return self


class BudgetSettings(_Section):
    """Limits on the margin the guard moves, in USDC. They are counted from the audit log,
    so a restart does not reset them; "per day" is the UTC day."""

    per_action: Money = Field(
        default=Decimal("1000"), description="Most one action moves (top-up or sweep).")
    per_position_per_day: Money = Field(
        default=Decimal("5000"), description="Most added to one position in a day.")
    per_account_per_day: Money = Field(
        default=Decimal("20000"), description="Most added to all positions of one account"
        " in a day.")
    cooldown_s: float = Field(
        default=30.0, ge=0, description="Seconds after a position's last action before the"
        " next one. A rescue (a top-up of a position below its trigger) never waits, nor does"
        " a top-up right after a sweep.")
    min_amount: Money = Field(
        default=Decimal("1"), description="Smaller actions are not made.")
    reserve: Money = Field(
        default=Decimal("0"), description="Free balance that top-ups never spend.")


class PolicySettings(_Section):
    """One policy instance. With no `[[policies]]` at all, `topup` runs with its defaults.
    The policies and their parameters are described in README.md, "Policies"."""

    use: str = Field(
        description="The policy: a built-in (`topup`, `sweep`), a file in the strategies"
        " folder (`file:vol_target`) or the name of an installed entry point.")
    name: str | None = Field(
        default=None, description="Label in the audit log and metrics (default: `use`);"
        " unique.")
    accounts: list[str] = Field(
        default_factory=lambda: ["*"], description="Account names or ids it applies to;"
        " `*` is every account.")
    symbols: list[str] = Field(
        default_factory=lambda: ["*"], description="Symbols it applies to (`PERP_ETH_USDC`);"
        " `*` is every symbol.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="The policy's own parameters (an inline table).")

    @property
    def label(self) -> str:
        return self.name or self.use


class AccountSettings(_Section):
    """One guarded account and its Orderly key. Give exactly one of `orderly_secret`,
    `orderly_secret_env` and `orderly_secret_file`; names and ids must be unique."""

    _position: int = PrivateAttr(default=1)

    name: str = Field(description="Label in logs, alerts, metrics and `/readyz`.")
    account_id: str = Field(description="The Orderly account id: `0x` and 64 hex digits.")
    orderly_key: str = Field(
        description="The account's Orderly public key, `ed25519:...`, with the `read` and"
        " `trading` scopes.")
    orderly_secret: SecretStr | None = Field(
        default=None, description="The key's secret written in the file itself: for paper"
        " accounts only.")
    orderly_secret_env: str | None = Field(
        default=None, description="Name of the environment variable that holds the secret.")
    orderly_secret_file: Path | None = Field(
        default=None, description="File that holds the secret (a Docker or systemd secret).")

    @field_validator("account_id")
    @classmethod
    def _account_id(cls, value: str) -> str:
        if not ACCOUNT_ID_RE.match(value):
            raise ValueError("must be 0x followed by 64 hex characters")
        return value.lower()

    @field_validator("orderly_key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not KEY_RE.match(value):
            raise ValueError("must be ed25519:<base58 public key>")
        return value

    @model_validator(mode="after")
    def _one_secret_source(self) -> AccountSettings:
        given = [
            n
            for n in ("orderly_secret", "orderly_secret_env", "orderly_secret_file")
            if getattr(self, n) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of orderly_secret, orderly_secret_env, orderly_secret_file"
                f" (got {', '.join(given) or 'none'})"
            )
        return self

    @property
    def where(self) -> str:
        """How messages name this account: ``accounts[2] (name "main")``, 1-based."""
        return f'accounts[{self._position}] (name "{self.name}")'

    def secret(self) -> SecretStr:
        """Resolve the secret from wherever it is configured. Raises ``ConfigError``."""
        if self.orderly_secret is not None:
            return self.orderly_secret
        if self.orderly_secret_env is not None:
            value = os.environ.get(self.orderly_secret_env)
            if not value:
                raise ConfigError(
                    f"{self.where}.orderly_secret_env: environment variable "
                    f"{self.orderly_secret_env} is not set"
                )
            return SecretStr(value.strip())
        assert self.orderly_secret_file is not None
        try:
            return SecretStr(self.orderly_secret_file.read_text().strip())
        except OSError as exc:
            raise ConfigError(
                f"{self.where}.orderly_secret_file: cannot read "
                f"{self.orderly_secret_file}: {exc.strerror}"
            ) from None

    def check_secret(self) -> None:
        """Resolve the secret and check that it is an ed25519 secret whose public key is
        ``orderly_key``, the check signing makes (``exchange.signing.Signer``). Raises
        ``ConfigError`` naming the account; the text never holds the secret."""
        from guardbot.exchange.errors import AuthError
        from guardbot.exchange.signing import Signer

        source = next(n for n in ("orderly_secret", "orderly_secret_env", "orderly_secret_file")
                      if getattr(self, n) is not None)
        try:
            Signer(self.orderly_key, self.secret())
        except AuthError as exc:
            raise ConfigError(f"{self.where}.{source}: {exc.message}") from None


class GuardSettings(_Section):
    """Switches of the guard itself."""

    dry_run: bool = Field(
        default=False, description="Decide and record every action, send none.")
    kill_switch_file: Path | None = Field(
        default=None, description="While this file exists no new action is taken and none"
        " still queued is sent (an operator's emergency brake).")
    strategies_dir: Path = Field(
        default=Path("strategies"), description="Folder of the `file:` policies.")


class HealthSettings(_Section):
    """The HTTP server of `/healthz`, `/readyz` and `/metrics`, and of the live page `/view`
    (positions, budgets, actions; read-only). Beyond loopback the page requires a bearer
    token (`token` or `token_file`): `guardbot run` and `check-config` refuse to start
    without one. `/healthz`, `/readyz` and `/metrics` stay open for probes and scrapers."""

    enabled: bool = Field(default=True, description="Serve them at all.")
    host: str = Field(
        default="127.0.0.1", description="Address to listen on (loopback: this machine only).")
    port: int = Field(
        default=9108, ge=0, le=65535, description="Port to listen on (0: any free port).")
    view: bool = Field(
        default=True, description="Serve the live page `/view`, its JSON `/view/state` and"
        " its pushed updates (what `guardbot top` reads).")
    token: SecretStr | None = Field(
        default=None, description="Bearer token the page requires (`Authorization: Bearer"
        " ...`, or typed once into the page); required beyond loopback. Prefer `token_file`"
        " or `GUARDBOT__HEALTH__TOKEN`.")
    token_file: Path | None = Field(
        default=None, description="File that holds the page's token (a Docker or systemd"
        " secret).")
    push_s: float = Field(
        default=1.0, gt=0, le=60, description="Seconds between the page's pushed updates.")
    chart_hours: float = Field(
        default=6.0, gt=0, le=48, description="Hours of history each position's chart shows.")
    chart_sample_s: float = Field(
        default=30.0, gt=0, le=3600, description="Seconds between the points the charts keep"
        " (memory: about 32 bytes per position and point).")

    @model_validator(mode="after")
    def _one_token_source(self) -> HealthSettings:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give token or token_file, not both")
        return self

    @property
    def loopback(self) -> bool:
        """Whether ``host`` is this machine only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False  # a host name: may resolve anywhere

    def view_token(self) -> SecretStr | None:
        """The page's token from wherever it is configured (``None``: none). Raises
        ``ConfigError`` naming the key; the text never holds the token."""
        if self.token is not None:
            value = self.token.get_secret_value().strip()
            where = "health.token"
        elif self.token_file is not None:
            where = "health.token_file"
            try:
                value = self.token_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"{where}: cannot read {self.token_file}: {exc.strerror}"
                                  ) from None
        else:
            return None
        if len(value) < MIN_TOKEN_CHARS:
            raise ConfigError(f"{where}: the token must be at least {MIN_TOKEN_CHARS}"
                              " characters")
        return SecretStr(value)


class WebhookSettings(_Section):
    """One webhook that alerts are posted to."""

    # Slack and Telegram URLs embed their token: secret like an orderly key (alerts.py
    # unwraps it only to post).
    url: SecretStr = Field(
        description="Where to post; kept secret (Slack and Telegram URLs hold a token).")
    format: Literal["json", "slack", "telegram"] = Field(
        default="json", description="The body: guardbot's own JSON, a Slack message or a"
        " Telegram `sendMessage`.")
    chat_id: str | None = Field(
        default=None, description="The Telegram chat to post to (needed for `telegram`);"
        " with `[telegram] commands`, also the chat whose commands are taken.")
    min_interval_s: float = Field(
        default=60.0, ge=0, description="After an alert, further alerts of the same kind,"
        " account and symbol for this many seconds are sent as one digest.")


class AlertSettings(_Section):
    """Alerts to operators: actions taken, rejections, uncertain calls, exhausted budgets,
    liquidations and stale data."""

    webhooks: list[WebhookSettings] = Field(
        default_factory=list, description="The webhooks, as `[[alerts.webhooks]]`.")


class TelegramSettings(_Section):
    """Commands from the operators' Telegram chats: `/status`, `/budget`, `/pause` and
    `/resume`. They are read through the bot of every `format = "telegram"` webhook and
    taken from that webhook's `chat_id` only; messages from any other chat get no answer.
    `/pause` creates `[guard] kill_switch_file`, `/resume` removes it; every command is
    recorded in the audit log."""

    commands: bool = Field(
        default=False, description="Take the commands (needs `[guard] kill_switch_file` and a"
        " Telegram webhook). A bot has one reader: with several instances, turn it on in one"
        " (`GUARDBOT__TELEGRAM__COMMANDS=false` in the others).")
    long_poll_s: int = Field(
        default=50, ge=1, le=300, description="Seconds each request for new messages waits"
        " for one to arrive (long polling): a command is seen at once, and an idle bot asks"
        " about once a minute.")


class LogSettings(_Section):
    """The log on stderr (`--log-level` and `--log-format` override these)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="The least important messages shown; `DEBUG` adds every"
        " read from the exchange.")
    format: Literal["text", "json"] = Field(
        default="text", description="Lines for people, or one JSON object per line.")


class Settings(BaseSettings):
    """The whole configuration. Build it with ``load_config``."""

    model_config = SettingsConfigDict(
        env_prefix="GUARDBOT__",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    exchange: ExchangeSettings = Field(default_factory=ExchangeSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    poll: PollSettings = Field(default_factory=PollSettings)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    guard: GuardSettings = Field(default_factory=GuardSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    telegram: TelegramSettings = Field(default_factory=TelegramSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    accounts: list[AccountSettings] = Field(default_factory=list)
    policies: list[PolicySettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_accounts(self) -> Settings:
        seen: dict[str, str] = {}
        for position, account in enumerate(self.accounts, start=1):
            account._position = position
            for ident in (account.name, account.account_id):
                if ident in seen:
                    raise ValueError(f"{account.where}: {ident} is configured twice (also"
                                     f" {seen[ident]})")
                seen[ident] = account.where
        return self

    @model_validator(mode="after")
    def _commands_have_a_bot(self) -> Settings:
        if not self.telegram.commands:
            return self
        from guardbot.telegram.api import bot_url

        bots = [(i, w) for i, w in enumerate(self.alerts.webhooks, start=1)
                if w.format == "telegram"]  # fmt: skip
        if not bots:
            raise ValueError('telegram.commands: no [[alerts.webhooks]] with format = "telegram"'
                             " to take commands through: its bot reads them, from its chat_id")
        for index, webhook in bots:
            if not webhook.chat_id:
                raise ValueError(f"alerts.webhooks[{index}].chat_id: required by telegram")
            try:
                bot_url(webhook.url)
            except ValueError as exc:
                raise ValueError(f"alerts.webhooks[{index}].url: {exc}") from None
        if self.guard.kill_switch_file is None:
            raise ValueError("telegram.commands: needs guard.kill_switch_file: /pause creates"
                             " it and /resume removes it")
        return self

    def anchored(self, folder: Path) -> Settings:
        """These settings with every relative path made absolute against ``folder`` (the
        config file's): the SQLite audit database, the spool, the strategies folder, the
        kill-switch file, secret files and the page's token file. The working directory then
        never matters."""

        def absolute(path: Path) -> Path:
            return path if path.is_absolute() else folder / path

        guard = self.guard.model_copy(update={
            "strategies_dir": absolute(self.guard.strategies_dir),
            "kill_switch_file": self.guard.kill_switch_file
            and absolute(self.guard.kill_switch_file),
        })  # fmt: skip
        audit = self.audit.model_copy(update={
            "url": _anchored_sqlite_url(self.audit.url, folder),
            "spool_dir": absolute(self.audit.spool_dir),
        })  # fmt: skip
        accounts = [
            account if account.orderly_secret_file is None
            else account.model_copy(
                update={"orderly_secret_file": absolute(account.orderly_secret_file)})
            for account in self.accounts
        ]  # fmt: skip
        health = self.health if self.health.token_file is None else self.health.model_copy(
            update={"token_file": absolute(self.health.token_file)})
        return self.model_copy(update={"guard": guard, "audit": audit, "accounts": accounts,
                                       "health": health})

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (passed as init kwargs by load_config).
        return (env_settings, init_settings)


def _anchored_sqlite_url(url: str, folder: Path) -> str:
    """A ``sqlite:///relative.db`` URL made absolute against ``folder``; others unchanged."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return url  # reported by whoever opens it
    database = parsed.database
    if (parsed.get_backend_name() != "sqlite" or not database or database == ":memory:"
            or database.startswith("file:") or Path(database).is_absolute()):  # fmt: skip
        return url
    return parsed.set(database=str(folder / database)).render_as_string(hide_password=False)


_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")


def _where(loc: tuple[int | str, ...], data: dict[str, Any]) -> str:
    """A pydantic location in the config's terms: ``accounts[1] (name "main").account_id``,
    list positions 1-based and named when the entry has a name."""
    parts: list[str] = []
    node: Any = data
    for part in loc:
        if isinstance(part, int):
            entry = node[part] if isinstance(node, list) and part < len(node) else None
            label = f"[{part + 1}]"
            if isinstance(entry, dict):
                for key in ("name", "use"):
                    if isinstance(entry.get(key), str):
                        label += f' ({key} "{entry[key]}")'
                        break
            parts[-1] = (parts[-1] if parts else "") + label
            node = entry
        else:
            parts.append(part)
            node = node.get(part) if isinstance(node, dict) else None
    return ".".join(parts)


def _describe(error: ValidationError, data: dict[str, Any]) -> str:
    lines = []
    for item in error.errors():
        reason = item["msg"]
        for prefix in _PYDANTIC_PREFIXES:
            reason = reason.removeprefix(prefix)
        if item["type"] == "extra_forbidden":
            reason = "unknown key"
        # A check of the whole (an empty location) names what it is about itself.
        lines.append(f"{_where(item['loc'], data)}: {reason}" if item["loc"] else reason)
    return "\n".join(lines)


def parse_config(data: dict[str, Any]) -> Settings:
    """Validate an already-parsed TOML document (plus the environment)."""
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, data)) from None


def load_config(path: Path | str | None) -> Settings:
    """Read, validate and return the settings. ``None`` means defaults plus environment.
    Relative paths in them are taken from the config file's folder (without a file, from
    the working directory): ``Settings.anchored``."""
    data: dict[str, Any] = {}
    folder = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
        try:
            # Money must never pass through a binary float; float fields take a Decimal.
            data = tomllib.loads(raw.decode("utf-8"), parse_float=Decimal)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        folder = path.resolve().parent
    return parse_config(data).anchored(folder)


def permission_warning(path: Path | str) -> str | None:
    """A warning if a config file that may hold secrets is readable by others."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"{path} is readable by group or others (mode {stat.filemode(mode)}); "
            "it may hold secrets: chmod 600 it"
        )
    return None
