"""``--param``: one config key changed, validated as the daemon validates it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from backtest.conftest import written_config
from guardbot.backtest.variants import VariantError, apply, parse_param, variants
from guardbot.config import ConfigError, parse_config
from guardbot.daemon import load_policies


def test_every_combination_of_several_params() -> None:
    params = [parse_param("topup.trigger=0.04,0.05"), parse_param("budgets.cooldown_s=0,30")]
    found = variants(written_config(), params)
    assert [label for label, _ in found] == [
        "topup.trigger=0.04 budgets.cooldown_s=0", "topup.trigger=0.04 budgets.cooldown_s=30",
        "topup.trigger=0.05 budgets.cooldown_s=0", "topup.trigger=0.05 budgets.cooldown_s=30"]
    first = found[0][1]
    assert first.budgets.cooldown_s == 0
    assert load_policies(first)[0].trigger == Decimal("0.04")
    assert written_config().budgets.cooldown_s == 30, "the loaded config is left alone"


def test_the_default_topup_can_be_varied_when_no_policy_is_configured() -> None:
    settings = apply(parse_config({}), "topup.target", "0.2")
    assert [(p.use, p.params) for p in settings.policies] == [("topup", {"target": "0.2"})]


@pytest.mark.parametrize(("text", "message"), [
    ("trigger=0.03", "KEY=V1,V2"),
    ("topup.trigger", "KEY=V1,V2"),
    ("budgets.colour=1", "unknown key"),
    ("budgets.cooldown_s=-1", "greater than or equal"),
    ("magic.trigger=1", "no policy labelled 'magic'"),
])
def test_a_bad_param_names_itself(text: str, message: str) -> None:
    with pytest.raises(VariantError, match=message):
        variants(written_config(), [parse_param(text)])


def test_a_bad_policy_value_fails_where_the_daemon_would() -> None:
    settings = apply(written_config(), "topup.trigger", "0.5")  # above the target
    with pytest.raises(ConfigError, match="target"):
        load_policies(settings)
