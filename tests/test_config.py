from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest

from guardbot.config import ConfigError, load_config, parse_config, permission_warning
from guardbot.sim.keys import generate_key

ACCOUNT = {
    "name": "main",
    "account_id": "0x" + "ab" * 32,
    "orderly_key": "ed25519:9C6hybhQ6Aycep9jaUnP6uL9ZYvDjUp1aSkFWPUFJtpj",
    "orderly_secret": "4wBqpZM9xaSheZzJSMawUKKwhdpChKbZ5eu5ky4Vigw",
}


def test_defaults_and_presets() -> None:
    settings = parse_config({})
    assert settings.exchange.preset == "sim"
    assert settings.exchange.urls()["rest_url"] == "http://127.0.0.1:8900"
    mainnet = parse_config({"exchange": {"preset": "mainnet", "rest_url": "http://x"}})
    assert mainnet.exchange.urls()["rest_url"] == "http://x"
    assert mainnet.exchange.urls()["private_ws_url"].startswith("wss://ws-private-evm")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"exchange": {"prest": "sim"}}, "exchange.prest: unknown key"),
        ({"poll": {"interval_s": -1}}, "poll.interval_s"),
        # polls further apart than the data limit: nothing could be done between them
        ({"poll": {"interval_s": 20, "max_data_age_s": 15}},
         "poll: interval_s (20) must not exceed max_data_age_s (15)"),
        ({"budgets": {"per_action": "abc"}}, "budgets.per_action"),
        ({"accounts": [{**ACCOUNT, "account_id": "0x12"}]},
         'accounts[1] (name "main").account_id: must be 0x'),
        ({"accounts": [{**ACCOUNT, "orderly_secret_env": "X"}]}, "exactly one of"),
        ({"accounts": [ACCOUNT, {**ACCOUNT, "account_id": "0x" + "cd" * 32}]},
         'accounts[2] (name "main"): main is configured twice (also accounts[1] (name "main"))'),
    ],
)
def test_bad_values_name_the_key(data: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        parse_config(data)


def test_messages_are_one_based_named_and_free_of_pydantic_prefixes() -> None:
    second = {**ACCOUNT, "name": "hedge", "account_id": "0x" + "cd" * 32, "orderly_key": "x"}
    with pytest.raises(ConfigError) as bad:
        parse_config({"accounts": [ACCOUNT, second]})
    message = str(bad.value)
    assert message == 'accounts[2] (name "hedge").orderly_key: must be ed25519:<base58 public key>'
    assert "Value error" not in message and "accounts.1" not in message
    with pytest.raises(ConfigError, match=re.escape("policies[1] (use \"topup\").params")):
        parse_config({"policies": [{"use": "topup", "params": 3}]})


@pytest.mark.parametrize(
    ("key", "url"),
    [("rest_url", "ftp://api.example.com"), ("rest_url", "wss://api.example.com"),
     ("rest_url", "api.example.com"), ("public_ws_url", "https://ws.example.com/{account_id}"),
     ("private_ws_url", "ftp://ws.example.com")],
)
def test_url_schemes_are_checked(key: str, url: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"exchange.{key}: must be a")):
        parse_config({"exchange": {key: url}})
    good = "https://x.example" if key == "rest_url" else "wss://x.example/{account_id}"
    assert parse_config({"exchange": {key: good}}).exchange.urls()[key] == good


@pytest.mark.parametrize(
    ("url", "reason"),
    [("mysql://u:pw@h/db", "audit.url: mysql is not supported: use sqlite:///FILE or"),
     ("not a url", "audit.url: not a database URL")],
)
def test_audit_urls_are_checked(url: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(reason)) as bad:
        parse_config({"audit": {"url": url}})
    assert "pw" not in str(bad.value)


def test_secret_format_and_key_match_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    parse_config({"accounts": [ACCOUNT]}).accounts[0].check_secret()
    malformed = parse_config({"accounts": [{**ACCOUNT, "orderly_secret": "not-base58!"}]})
    with pytest.raises(ConfigError) as bad:
        malformed.accounts[0].check_secret()
    assert str(bad.value).startswith('accounts[1] (name "main").orderly_secret: ')
    assert "not-base58" not in str(bad.value) and "code None" not in str(bad.value)
    other = generate_key()[1]  # a well-formed secret of another key
    foreign = parse_config({"accounts": [{**ACCOUNT, "orderly_secret": other}]})
    with pytest.raises(ConfigError, match="does not belong to key ed25519:9C6h") as bad:
        foreign.accounts[0].check_secret()
    assert other not in str(bad.value)


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "secret").write_text(ACCOUNT["orderly_secret"])
    path = folder / "guardbot.toml"
    account = {k: v for k, v in ACCOUNT.items() if k != "orderly_secret"}
    path.write_text(
        '[audit]\nurl = "sqlite:///data/audit.db"\nspool_dir = "spool"\n'
        '[guard]\nkill_switch_file = "STOP"\n'
        "[[accounts]]\n" + "".join(f'{k} = "{v}"\n' for k, v in account.items())
        + 'orderly_secret_file = "secret"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_config(Path("..") / "etc" / "guardbot.toml")
    assert settings.audit.url == f"sqlite:///{folder / 'data' / 'audit.db'}"
    assert settings.audit.spool_dir == folder / "spool"
    assert settings.guard.strategies_dir == folder / "strategies"
    assert settings.guard.kill_switch_file == folder / "STOP"
    assert settings.accounts[0].secret().get_secret_value() == ACCOUNT["orderly_secret"]
    absolute = tmp_path / "abs.db"
    monkeypatch.setenv("GUARDBOT__AUDIT__URL", f"sqlite:///{absolute}")
    assert load_config(path).audit.url == f"sqlite:///{absolute}"
    monkeypatch.setenv("GUARDBOT__AUDIT__URL", "postgresql+psycopg://u@h/db")
    assert load_config(path).audit.url == "postgresql+psycopg://u@h/db"


def test_secrets_never_in_repr_and_resolve_from_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = parse_config({"accounts": [ACCOUNT]})
    assert ACCOUNT["orderly_secret"] not in repr(settings)
    assert ACCOUNT["orderly_secret"] not in str(settings.model_dump())
    monkeypatch.setenv("MY_SECRET", "s3cr3t")
    env_acc = parse_config(
        {"accounts": [{**{k: v for k, v in ACCOUNT.items() if k != "orderly_secret"},
                       "orderly_secret_env": "MY_SECRET"}]}
    )
    assert env_acc.accounts[0].secret().get_secret_value() == "s3cr3t"
    secret_file = tmp_path / "secret"
    secret_file.write_text("fromfile\n")
    file_acc = parse_config(
        {"accounts": [{**{k: v for k, v in ACCOUNT.items() if k != "orderly_secret"},
                       "orderly_secret_file": str(secret_file)}]}
    )
    assert file_acc.accounts[0].secret().get_secret_value() == "fromfile"
    missing = parse_config(
        {"accounts": [{**{k: v for k, v in ACCOUNT.items() if k != "orderly_secret"},
                       "orderly_secret_env": "NOT_SET_ANYWHERE"}]}
    )
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE is not set"):
        missing.accounts[0].secret()


def test_webhook_urls_are_secret() -> None:
    """Slack and Telegram webhook URLs carry their token: never in a repr, dump or error."""
    token = "bot123456:SECRET-TOKEN"
    hook = {"url": f"https://api.telegram.org/{token}/sendMessage", "format": "telegram",
            "chat_id": "1"}
    settings = parse_config({"alerts": {"webhooks": [hook]}})
    url = settings.alerts.webhooks[0].url
    assert url.get_secret_value() == hook["url"]
    for shown in (repr(settings), str(settings), str(settings.model_dump()),
                  settings.model_dump_json()):
        assert token not in shown
    with pytest.raises(ConfigError) as bad:
        parse_config({"alerts": {"webhooks": [{**hook, "format": "sms"}]}})
    assert "alerts.webhooks[1].format" in str(bad.value) and token not in str(bad.value)


def test_telegram_commands_need_a_bot_a_chat_and_the_kill_switch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = "123456:SECRET-TOKEN_abc"
    hook = {"url": f"https://api.telegram.org/bot{token}/sendMessage", "format": "telegram",
            "chat_id": "-1001"}
    kill = {"kill_switch_file": "STOP"}
    on = {"commands": True}
    settings = parse_config({"alerts": {"webhooks": [hook]}, "guard": kill, "telegram": on})
    assert settings.telegram.commands and settings.telegram.long_poll_s == 50
    cases = [
        ({"guard": kill, "telegram": on}, 'no [[alerts.webhooks]] with format = "telegram"'),
        ({"alerts": {"webhooks": [hook]}, "telegram": on}, "needs guard.kill_switch_file"),
        ({"alerts": {"webhooks": [{"url": "https://x.example/h"}, {**hook, "chat_id": None}]},
          "guard": kill, "telegram": on}, "alerts.webhooks[2].chat_id: required by telegram"),
        ({"alerts": {"webhooks": [{**hook, "url": f"https://tg.example/{token}"}]},
          "guard": kill, "telegram": on},
         "alerts.webhooks[1].url: must be <Bot API>/bot<token>/sendMessage"),
        ({"telegram": {"long_poll_s": 0}}, "telegram.long_poll_s: Input should be greater"),
    ]
    for data, expected in cases:
        with pytest.raises(ConfigError) as bad:
            parse_config(data)
        assert expected in str(bad.value)
        assert token not in str(bad.value)
    # Without commands a Telegram webhook needs neither (alerts only).
    parse_config({"alerts": {"webhooks": [hook]}})
    monkeypatch.setenv("GUARDBOT__TELEGRAM__COMMANDS", "false")
    assert not parse_config({"alerts": {"webhooks": [hook]}, "telegram": on}).telegram.commands


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "guardbot.toml"
    path.write_text('[audit]\nurl = "sqlite:///a.db"\n[poll]\ninterval_s = 3\n')
    monkeypatch.setenv("GUARDBOT__AUDIT__URL", "sqlite:///b.db")
    settings = load_config(path)
    assert settings.audit.url == f"sqlite:///{tmp_path / 'b.db'}"
    assert settings.poll.interval_s == 3


def test_toml_floats_are_exact_decimals_and_float_fields_still_validate(
    tmp_path: Path,
) -> None:
    path = tmp_path / "guardbot.toml"
    path.write_text(
        "[budgets]\nper_action = 123456789.123456789\nreserve = 0.1\ncooldown_s = 2.5\n"
        "[poll]\ninterval_s = 1.5\nfast_interval_s = 0.25\n"
        "[exchange]\ntimeout_s = 7.5\n"
        '[[policies]]\nuse = "topup"\nparams = { trigger = 0.05, target = 0.1 }\n'
    )
    settings = load_config(path)
    assert settings.budgets.per_action == Decimal("123456789.123456789")
    assert settings.budgets.reserve == Decimal("0.1")
    assert (settings.budgets.cooldown_s, settings.poll.interval_s) == (2.5, 1.5)
    assert (settings.poll.fast_interval_s, settings.exchange.timeout_s) == (0.25, 7.5)
    assert settings.policies[0].params == {"trigger": Decimal("0.05"), "target": Decimal("0.1")}


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[exchange\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_permission_warning(tmp_path: Path) -> None:
    path = tmp_path / "guardbot.toml"
    path.write_text("")
    path.chmod(0o600)
    assert permission_warning(path) is None
    path.chmod(0o644)
    warning = permission_warning(path)
    assert warning is not None and "chmod 600" in warning


def test_the_settings_cite_only_documents_in_the_repository() -> None:
    """config.py's comments and descriptions (docs/config.md is generated from them) name
    only files that exist here."""
    root = Path(__file__).resolve().parents[1]
    for module in ("guardbot/config.py", "guardbot/config_reference.py"):
        text = (root / module).read_text()
        cited = set(re.findall(r"[\w./-]+\.md\b", text))
        assert cited, module
        for name in cited:
            found = (root / name).is_file() or (root / "docs" / name).is_file()
            assert found, f"{module} cites {name}, which is not in the repository"
