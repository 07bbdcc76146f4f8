"""Loader: built-ins, strategies files, entry points, and start-up errors that name the
policy, the key and the reason."""

from __future__ import annotations

from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest

from guardbot.config import ConfigError, PolicySettings, parse_config
from guardbot.policies.base import Quiet
from guardbot.policies.loader import LoadedPolicy, load_policies, resolve
from guardbot.policies.sweep import Sweep
from guardbot.policies.topup import TopUp

REPO_STRATEGIES = Path(__file__).resolve().parents[2] / "strategies"

PLUGIN = """
from decimal import Decimal
from guardbot.domain import ActionKind


class Fixed:
    name = "fixed"

    def __init__(self, *, amount="5"):
        self.amount = Decimal(amount)

    def evaluate(self, view, ctx):
        return [view.intent(ActionKind.ADD, self.amount, self.name, "always")]


POLICY = Fixed
OTHER = Fixed
NOT_CALLABLE = 3


def not_a_policy():
    return object()
"""


def settings(*policies: dict[str, Any]) -> list[PolicySettings]:
    return list(parse_config({"policies": list(policies)}).policies)


def load(*policies: dict[str, Any], folder: Path = REPO_STRATEGIES) -> list[LoadedPolicy]:
    return load_policies(settings(*policies), folder)


def fails(*policies: dict[str, Any], folder: Path = REPO_STRATEGIES) -> str:
    with pytest.raises(ConfigError) as caught:
        load(*policies, folder=folder)
    return str(caught.value)


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    (tmp_path / "fixed.py").write_text(PLUGIN)
    (tmp_path / "broken.py").write_text("def oops(:\n")
    (tmp_path / "raises.py").write_text("raise RuntimeError('no config for me')\n")
    return tmp_path


def test_no_policy_configured_means_topup_with_defaults() -> None:
    [only] = load_policies([], REPO_STRATEGIES)
    assert only.label == "topup"
    assert isinstance(only.policy, TopUp)
    assert (only.policy.trigger, only.policy.target) == (D("0.05"), D("0.09"))
    assert only.applies_to("0xany", "PERP_ANY_USDC")


def test_built_ins_with_toml_params() -> None:
    top, sweep = load(
        {"use": "topup", "params": {"trigger": 0.04, "target": "0.12"}},
        {"use": "sweep", "name": "sweep-eth", "symbols": ["PERP_ETH_USDC"],
         "params": {"safe": 0.25, "min_amount": 20}},
    )
    assert isinstance(top.policy, TopUp) and top.policy.trigger == D("0.04")
    assert isinstance(sweep.policy, Sweep) and sweep.policy.safe == D("0.25")
    assert sweep.label == "sweep-eth"
    assert dict(sweep.params) == {"safe": 0.25, "min_amount": 20}
    assert sweep.applies_to("0xa", "PERP_ETH_USDC")
    assert not sweep.applies_to("0xa", "PERP_BTC_USDC")


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"use": "nope"}, "policies[1].use: no policy named 'nope': not a built-in"),
        (
            {"use": "topup", "params": {"trigger": "0"}},
            "policies[1].params.trigger: must be > 0, got 0 (policy 'topup')",
        ),
        (
            {"use": "topup", "name": "guard", "params": {"target": "0.01"}},
            "policies[1].params.target: must be above trigger (0.05), got 0.01 (policy 'guard')",
        ),
        (
            {"use": "topup", "params": {"trigerr": "0.1"}},
            "policies[1].params: got an unexpected keyword argument 'trigerr' "
            "(policy 'topup' accepts trigger, target, margin_ratio, reach_s, max_trigger, "
            "speed_window_s)",
        ),
        ({"use": "file:../etc/passwd"}, "policies[1].use: file:../etc/passwd: expected file:"),
        ({"use": "file:missing"}, "policies[1].use: file:missing: "),
    ],
)
def test_bad_policies_stop_start_up_with_a_clear_message(
    policy: dict[str, Any], message: str
) -> None:
    assert fails(policy).startswith(message)


def test_every_problem_is_reported_at_once() -> None:
    text = fails({"use": "nope"}, {"use": "topup", "params": {"trigger": "2"}})
    assert text.splitlines()[0].startswith("policies[1].use:")
    assert text.splitlines()[1].startswith("policies[2].params.trigger: must be < 1")


def test_labels_must_be_unique() -> None:
    text = fails({"use": "topup"}, {"use": "topup"})
    assert text.startswith("policies[2].name: 'topup' is already used")
    assert len(load({"use": "topup"}, {"use": "topup", "name": "topup-btc"})) == 2


def test_sweep_safe_must_clear_the_topup_target() -> None:
    text = fails(
        {"use": "topup", "params": {"target": "0.3", "reach_s": "0"}},
        {"use": "sweep", "params": {"safe": "0.2"}},
    )
    assert text.startswith("policies: 'sweep' reduce_floor (0.2) must be at least 'topup' "
                           "add_target (0.3)")
    # looking ahead, topup restores up to max_trigger plus its band: 0.15 + 0.25
    text = fails({"use": "topup", "params": {"target": "0.3"}},
                 {"use": "sweep", "params": {"safe": "0.2"}})
    assert "add_target (0.40)" in text


@pytest.mark.parametrize("sweep", ["sweep", "file:profit_sweep"])
def test_any_reducer_below_any_adders_target_is_refused(sweep: str) -> None:
    """Review #8: vol_target tops up to as far as max_target (0.50); a sweep down to 0.2
    would take that margin straight back, over and over."""
    text = fails({"use": "file:vol_target"}, {"use": sweep, "params": {"safe": "0.2"}})
    assert f"{sweep!r} reduce_floor (0.2) must be at least 'file:vol_target' add_target" in text


@pytest.mark.parametrize(
    "scope",
    [{"symbols": ["PERP_BTC_USDC"]}, {"accounts": ["other"]}],
)
def test_reducer_and_adder_on_different_positions_load(scope: dict[str, Any]) -> None:
    vol, sweep = load(
        {"use": "file:vol_target", "symbols": ["PERP_ETH_USDC"], "accounts": ["main"]},
        {"use": "sweep", "params": {"safe": "0.2"}, **scope},
    )
    assert (vol.add_target, sweep.reduce_floor) == (D("0.50"), D("0.2"))


def test_a_bad_hysteresis_declaration_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "floaty.py").write_text(PLUGIN.replace('name = "fixed"',
                                                       'name = "fixed"\n    add_target = 0.5'))
    text = fails({"use": "file:floaty"}, folder=tmp_path)
    assert text == ("policies[1]: policy 'file:floaty' declares add_target: must be a Decimal "
                    "in [0, 1), got 0.5")


def test_file_plugin(plugins: Path) -> None:
    [fixed] = load({"use": "file:fixed", "params": {"amount": "7"}}, folder=plugins)
    assert fixed.label == "file:fixed"
    assert fixed.policy.name == "fixed"
    [other] = load({"use": "file:fixed:OTHER", "name": "other"}, folder=plugins)
    assert other.label == "other"


@pytest.mark.parametrize(
    ("use", "message"),
    [
        ("file:broken", "failed to load: SyntaxError"),
        ("file:raises", "failed to load: RuntimeError: no config for me"),
        ("file:fixed:MISSING", "defines no 'MISSING'"),
        ("file:fixed:NOT_CALLABLE", "is a int, not a policy class or factory"),
        ("file:fixed:not_a_policy", "made a object, which is not a policy"),
    ],
)
def test_bad_file_plugins(plugins: Path, use: str, message: str) -> None:
    text = fails({"use": use}, folder=plugins)
    assert text.startswith("policies[1].")
    assert message in text


def test_plugin_refusing_its_params_is_named(plugins: Path) -> None:
    text = fails({"use": "file:fixed", "params": {"amount": "lots"}}, folder=plugins)
    assert text.startswith(
        "policies[1].params: policy 'file:fixed' refused its parameters: InvalidOperation"
    )


def test_installed_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package installed with a ``guardbot.policies`` entry point (a real dist-info
    directory on sys.path, as pip would leave it)."""
    (tmp_path / "acme_guard.py").write_text(PLUGIN)
    info = tmp_path / "acme_guard-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-guard\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[guardbot.policies]\nacme = acme_guard:Fixed\nacme_broken = acme_guard:Nope\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    [acme] = load({"use": "acme", "params": {"amount": "3"}})
    assert acme.policy.name == "fixed"
    assert "entry point 'acme_broken' (acme_guard:Nope) failed to load" in fails(
        {"use": "acme_broken"}
    )


def test_built_ins_are_also_entry_points() -> None:
    assert resolve("topup", Path("nowhere")) is TopUp


def test_the_shipped_strategies_load() -> None:
    vol, profit = load(
        {"use": "file:vol_target", "params": {"k": 2}},
        {"use": "file:profit_sweep", "params": {"safe": "0.5"}},
    )
    assert (vol.policy.name, profit.policy.name) == ("vol_target", "profit_sweep")
    assert (vol.add_target, vol.reduce_floor) == (D("0.50"), None)
    assert (profit.add_target, profit.reduce_floor) == (None, D("0.5"))
    # vol_target never acts at its trigger (max_target x trigger_ratio) or farther;
    # profit_sweep overrides sweep's evaluate without promising: evaluated on every tick
    assert vol.quiet is not None and (vol.quiet.low, vol.quiet.high) == (D("0.250"), None)
    assert profit.quiet is None


def test_where_policies_never_act_is_read_at_load() -> None:
    top, ratio, sweep = load(
        {"use": "topup", "params": {"trigger": "0.04", "target": "0.2", "reach_s": "0"}},
        {"use": "topup", "name": "ratio", "params": {"margin_ratio": 2}},
        {"use": "sweep", "params": {"safe": "0.25"}},
    )
    assert (top.quiet, ratio.quiet) == (Quiet(low=D("0.04")), None)
    assert sweep.quiet == Quiet(high=D("0.25"))
    [default] = load_policies([], REPO_STRATEGIES)
    assert default.quiet == Quiet(low=D("0.05"), calm=((D("0.05") / D("1.5"), D(5)),))


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ("acts_below = 0.05", "declares acts_below: must be a Decimal in [0, 1), got 0.05"),
        ("acts_above = Decimal(1)", "declares acts_above: must be a Decimal in [0, 1), got "
         "Decimal('1')"),
        ("acts_below = Decimal('0.3')\n    acts_above = Decimal('0.2')",
         "declares acts_below: must be at most acts_above (0.2), got 0.3"),
    ],
)
def test_a_bad_quiet_declaration_is_a_config_error(
    tmp_path: Path, declaration: str, message: str
) -> None:
    (tmp_path / "loud.py").write_text(PLUGIN.replace('name = "fixed"',
                                                     f'name = "fixed"\n    {declaration}'))
    text = fails({"use": "file:loud"}, folder=tmp_path)
    assert text == f"policies[1]: policy 'file:loud' {message}"


@pytest.mark.parametrize(
    ("accounts", "symbols", "account_id", "name", "symbol", "applies"),
    [
        (["*"], ["*"], "0xA", None, "S", True),
        (["main"], ["*"], "0xA", "main", "S", True),
        (["main"], ["*"], "0xA", "other", "S", False),
        (["0xa"], ["*"], "0xA", None, "S", True),
        (["*"], ["S", "T"], "0xA", None, "T", True),
        (["*"], ["S"], "0xA", None, "T", False),
    ],
)
def test_applies_to(
    accounts: list[str], symbols: list[str], account_id: str, name: str | None, symbol: str,
    applies: bool,
) -> None:
    loaded = LoadedPolicy("p", TopUp(), tuple(accounts), tuple(symbols))
    assert loaded.applies_to(account_id, symbol, name) is applies
