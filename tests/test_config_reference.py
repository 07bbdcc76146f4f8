"""docs/config.md is generated from the settings models and must match them."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field, SecretStr

from guardbot import config_reference
from guardbot.config import BudgetSettings, ExchangeSettings, PolicySettings, Settings
from guardbot.config_reference import DOCUMENT, default_text, reference, type_text


def test_docs_config_md_is_up_to_date() -> None:
    assert DOCUMENT.read_text() == reference(), (
        "docs/config.md is out of date: run python -m guardbot.config_reference")


def test_every_key_of_every_section_is_listed_with_its_type_and_default() -> None:
    text = reference()
    for section in ("[exchange]", "[audit]", "[poll]", "[budgets]", "[guard]", "[health]",
                    "[alerts]", "[[alerts.webhooks]]", "[telegram]", "[log]", "[[accounts]]",
                    "[[policies]]"):
        assert f"## `{section}`" in text
    assert len(Settings.model_fields) == 11
    assert ("| `timeout_s` | number (> 0, <= 120) | `10` | Seconds to wait for a REST answer"
            in text)
    assert '| `preset` | `"mainnet"`, `"testnet"` or `"sim"` | `"sim"` |' in text
    assert "| `per_action` | decimal (>= 0) | `1000` |" in text
    assert '| `accounts` | list of strings | `["*"]` |' in text
    assert "| `use` | string | required |" in text
    assert "| `url` | secret string | required |" in text


def test_types_and_defaults_in_words() -> None:
    assert type_text(str | None) == "string"
    assert type_text(Literal["a"]) == '`"a"`'
    assert type_text(list[int]) == "list of integers"
    assert type_text(SecretStr) == "secret string"
    assert default_text(BudgetSettings.model_fields["reserve"]) == "`0`"
    assert default_text(ExchangeSettings.model_fields["rest_url"]) == "not set"
    assert default_text(PolicySettings.model_fields["params"]) == "`{}`"
    assert default_text(PolicySettings.model_fields["use"]) == "required"


def test_a_key_without_a_description_stops_the_generator(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:  # fmt: skip
    class Undocumented(BaseModel):
        """A section."""

        limit: Decimal = Field(default=Decimal(1), description="Documented.")
        silent: int = 0

    class Whole(BaseModel):
        extra: Undocumented = Field(default_factory=Undocumented)

    monkeypatch.setattr(config_reference, "Settings", Whole)
    with pytest.raises(ValueError, match=r"extra\.silent has no description"):
        reference()


def test_check_says_whether_the_file_is_current(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "config.md"
    assert config_reference.main(["--check", "--output", str(target)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert config_reference.main(["--output", str(target)]) == 0
    assert target.read_text() == reference()
    assert config_reference.main(["--check", "--output", str(target)]) == 0
    target.write_text(target.read_text().replace("Seconds", "Minutes", 1))
    assert config_reference.main(["--check", "--output", str(target)]) == 1
