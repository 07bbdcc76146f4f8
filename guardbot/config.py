"""Typed settings: a TOML file plus ``GUARDBOT__SECTION__KEY`` environment overrides.

Validated once, at start-up; unknown keys are errors; secrets are ``SecretStr`` (redacted in
``repr``, logs and errors) and may come from the file, another environment variable or a file
of their own (Docker/systemd secrets). ``load_config`` turns every problem into one
``ConfigError`` whose text names the key and the reason.

Example (the full reference is in README.md)::

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
    params = { trigger = "0.05", target = "0.10" }
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
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

PRESETS: dict[str, dict[str, str]] = {
    # docs/exchange.md §1
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


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExchangeSettings(_Section):
    preset: Literal["mainnet", "testnet", "sim"] = "sim"
    rest_url: str | None = None
    public_ws_url: str | None = None
    private_ws_url: str | None = None
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    # POST /v1/position_margin answers in well under a second when the exchange is healthy;
    # waiting the general timeout for it delays the next rescue of a position in danger
    # (docs/architecture.md, "Rescues"). A call that times out is uncertain and is settled
    # from evidence, never retried blindly.
    margin_timeout_s: float = Field(default=2.0, gt=0, le=60)

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
    url: str = "sqlite:///guardbot-audit.db"
    spool_dir: Path = Path("guardbot-spool")


class PollSettings(_Section):
    interval_s: float = Field(default=5.0, gt=0)
    fast_interval_s: float = Field(default=1.0, gt=0)
    # Nothing acts on a snapshot older than this (docs/architecture.md, "Invariants").
    max_data_age_s: float = Field(default=15.0, gt=0)

    @model_validator(mode="after")
    def _fast_not_slower(self) -> PollSettings:
        if self.fast_interval_s > self.interval_s:
            raise ValueError("fast_interval_s must not exceed interval_s")
        return self


class BudgetSettings(_Section):
    """Limits the arbiter enforces on ADD (top-up) actions; derived from the audit log."""

    per_action: Money = Decimal("1000")
    per_position_per_day: Money = Decimal("5000")
    per_account_per_day: Money = Decimal("20000")
    cooldown_s: float = Field(default=30.0, ge=0)
    min_amount: Money = Decimal("1")
    # Free balance (USDC) the guard never spends on top-ups.
    reserve: Money = Decimal("0")


class PolicySettings(_Section):
    """One policy instance. ``use`` names a built-in (``topup``, ``sweep``), a file in the
    strategies folder (``file:vol_target``) or an installed entry point."""

    use: str
    name: str | None = None
    accounts: list[str] = Field(default_factory=lambda: ["*"])
    symbols: list[str] = Field(default_factory=lambda: ["*"])
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name or self.use


class AccountSettings(_Section):
    name: str
    account_id: str
    orderly_key: str
    orderly_secret: SecretStr | None = None
    orderly_secret_env: str | None = None
    orderly_secret_file: Path | None = None
    symbols: list[str] = Field(default_factory=lambda: ["*"])

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

    def secret(self) -> SecretStr:
        """Resolve the secret from wherever it is configured. Raises ``ConfigError``."""
        if self.orderly_secret is not None:
            return self.orderly_secret
        if self.orderly_secret_env is not None:
            value = os.environ.get(self.orderly_secret_env)
            if not value:
                raise ConfigError(
                    f"accounts.{self.name}.orderly_secret_env: environment variable "
                    f"{self.orderly_secret_env} is not set"
                )
            return SecretStr(value.strip())
        assert self.orderly_secret_file is not None
        try:
            return SecretStr(self.orderly_secret_file.read_text().strip())
        except OSError as exc:
            raise ConfigError(
                f"accounts.{self.name}.orderly_secret_file: cannot read "
                f"{self.orderly_secret_file}: {exc.strerror}"
            ) from None


class GuardSettings(_Section):
    dry_run: bool = False
    # Present file = no new actions at all (an operator's emergency brake).
    kill_switch_file: Path | None = None
    strategies_dir: Path = Path("strategies")


class HealthSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)


class WebhookSettings(_Section):
    # Slack and Telegram URLs embed their token: secret like an orderly key (alerts.py
    # unwraps it only to post).
    url: SecretStr
    format: Literal["json", "slack", "telegram"] = "json"
    # Telegram needs a chat id in the body.
    chat_id: str | None = None
    min_interval_s: float = Field(default=60.0, ge=0)


class AlertSettings(_Section):
    webhooks: list[WebhookSettings] = Field(default_factory=list)


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


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
    log: LogSettings = Field(default_factory=LogSettings)
    accounts: list[AccountSettings] = Field(default_factory=list)
    policies: list[PolicySettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_accounts(self) -> Settings:
        seen: set[str] = set()
        for account in self.accounts:
            for ident in (account.name, account.account_id):
                if ident in seen:
                    raise ValueError(f"account {ident} is configured twice")
                seen.add(ident)
        return self

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


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        reason = item["msg"]
        if item["type"] == "extra_forbidden":
            reason = "unknown key"
        lines.append(f"{where}: {reason}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any]) -> Settings:
    """Validate an already-parsed TOML document (plus the environment)."""
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def load_config(path: Path | str | None) -> Settings:
    """Read, validate and return the settings. ``None`` means defaults plus environment."""
    data: dict[str, Any] = {}
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
    return parse_config(data)


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
