"""Turn the ``[[policies]]`` config into policy objects, once, at start-up.

``use`` names one of (style.md §7, plugins are explicit):

- a built-in: ``topup`` or ``sweep``;
- ``file:<name>`` or ``file:<name>:<attr>``: ``<strategies_dir>/<name>.py``, whose module
  attribute ``<attr>`` (default ``POLICY``) is the policy class or factory;
- an installed entry point in the group ``guardbot.policies`` (a package's
  ``[project.entry-points."guardbot.policies"]``). Built-in names win over entry points
  of the same name, so an installed package cannot silently replace ``topup``.

The factory is called with the configured ``params`` as keyword arguments; an unknown
parameter, a bad value, a file that does not load or an object that is not a policy stops
start-up with a ``ConfigError`` naming the policy, the key and the reason. With no policy
configured, ``topup`` runs with its defaults: a guard that guards nothing by default would
surprise its users.

Reading the plugin files here is the only I/O of the decision layer.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from guardbot.config import ConfigError, PolicySettings
from guardbot.policies.base import Policy, PolicyParamError
from guardbot.policies.sweep import Sweep
from guardbot.policies.topup import TopUp

ENTRY_POINT_GROUP = "guardbot.policies"
BUILT_INS: Mapping[str, Callable[..., Policy]] = MappingProxyType(
    {"topup": TopUp, "sweep": Sweep}
)
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    """A configured, validated policy and where it applies."""

    label: str
    policy: Policy
    accounts: tuple[str, ...] = ("*",)
    symbols: tuple[str, ...] = ("*",)
    params: Mapping[str, Any] = field(default_factory=dict)

    def applies_to(self, account_id: str, symbol: str, account_name: str | None = None) -> bool:
        """Whether this policy guards that position; ``accounts`` may list account names or
        ids, ``"*"`` meaning all."""
        account_ok = "*" in self.accounts or any(
            a.lower() == account_id.lower() or a == account_name for a in self.accounts
        )
        return account_ok and ("*" in self.symbols or symbol in self.symbols)


def load_policies(
    configured: Sequence[PolicySettings], strategies_dir: Path
) -> list[LoadedPolicy]:
    """Build every configured policy, or ``[topup with defaults]`` if none is configured.
    Raises ``ConfigError`` with every problem found."""
    if not configured:
        return [LoadedPolicy(label=TopUp.name, policy=TopUp())]
    loaded: list[LoadedPolicy] = []
    problems: list[str] = []
    for index, settings in enumerate(configured):
        try:
            loaded.append(_load_one(index, settings, strategies_dir))
        except ConfigError as exc:
            problems.append(str(exc))
    seen: dict[str, int] = {}
    for index, item in enumerate(loaded):
        if item.label in seen:
            problems.append(
                f"policies.{index}.name: {item.label!r} is already used by another policy;"
                " give each instance its own name (audit rows are labelled with it)"
            )
        seen[item.label] = index
    problems.extend(_hysteresis_problems(loaded))
    if problems:
        raise ConfigError("\n".join(problems))
    return loaded


def resolve(use: str, strategies_dir: Path) -> Callable[..., Policy]:
    """The policy factory ``use`` names. Raises ``ConfigError`` (key ``use``) if none."""
    if use in BUILT_INS:
        return BUILT_INS[use]
    if use.startswith("file:"):
        return _from_file(use.removeprefix("file:"), strategies_dir)
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=use)
    if not found:
        raise ConfigError(
            f"no policy named {use!r}: not a built-in ({', '.join(sorted(BUILT_INS))}), "
            f"not file:<name> and no installed {ENTRY_POINT_GROUP!r} entry point"
        )
    entry_point = next(iter(found))
    try:
        factory = entry_point.load()
    except Exception as exc:
        raise ConfigError(
            f"entry point {use!r} ({entry_point.value}) failed to load: {_describe(exc)}"
        ) from None
    return _callable(factory, f"entry point {use!r}")


def _load_one(index: int, settings: PolicySettings, strategies_dir: Path) -> LoadedPolicy:
    where = f"policies.{index}"
    try:
        factory = resolve(settings.use, strategies_dir)
    except ConfigError as exc:
        raise ConfigError(f"{where}.use: {exc}") from None
    params = dict(settings.params)
    try:
        inspect.signature(factory).bind(**params)
    except TypeError as exc:
        raise ConfigError(
            f"{where}.params: {exc} (policy {settings.label!r} accepts "
            f"{_accepted(factory)})"
        ) from None
    except ValueError:
        pass  # no introspectable signature: let the call below tell
    try:
        policy = factory(**params)
    except PolicyParamError as exc:
        raise ConfigError(
            f"{where}.params.{exc.param}: {exc.reason} (policy {settings.label!r})"
        ) from None
    except Exception as exc:
        raise ConfigError(
            f"{where}.params: policy {settings.label!r} refused its parameters: "
            f"{_describe(exc)}"
        ) from None
    if not isinstance(policy, Policy) or not isinstance(getattr(policy, "name", None), str):
        raise ConfigError(
            f"{where}.use: {settings.use!r} made a {type(policy).__name__}, which is not a "
            "policy (it needs a str 'name' and an evaluate(view, ctx) method)"
        )
    return LoadedPolicy(
        label=settings.label,
        policy=policy,
        accounts=tuple(settings.accounts),
        symbols=tuple(settings.symbols),
        params=MappingProxyType(params),
    )


def _from_file(spec: str, strategies_dir: Path) -> Callable[..., Policy]:
    name, _, attr = spec.partition(":")
    attr = attr or "POLICY"
    if not _MODULE_NAME.match(name) or not _MODULE_NAME.match(attr):
        raise ConfigError(
            f"file:{spec}: expected file:<module name>[:<attribute>], e.g. file:vol_target"
        )
    path = strategies_dir / f"{name}.py"
    if not path.is_file():
        raise ConfigError(f"file:{spec}: {path} does not exist")
    module_name = f"guardbot_strategies.{name}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ConfigError(f"file:{spec}: {path} cannot be loaded as Python")
    module = importlib.util.module_from_spec(loader_spec)
    # Registered before running so dataclasses and pickling inside the plugin work.
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ConfigError(f"file:{spec}: {path} failed to load: {_describe(exc)}") from None
    if not hasattr(module, attr):
        raise ConfigError(f"file:{spec}: {path} defines no {attr!r}")
    return _callable(getattr(module, attr), f"file:{spec}")


def _callable(factory: object, what: str) -> Callable[..., Policy]:
    if not callable(factory):
        raise ConfigError(f"{what} is a {type(factory).__name__}, not a policy class or factory")
    return factory


def _accepted(factory: Callable[..., Policy]) -> str:
    try:
        names = [
            p.name
            for p in inspect.signature(factory).parameters.values()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except ValueError:
        return "unknown parameters"
    return ", ".join(names) if names else "no parameters"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _hysteresis_problems(loaded: Sequence[LoadedPolicy]) -> list[str]:
    """A sweep whose safe distance is inside a top-up's target would undo that top-up's
    work, and the top-up would add it back: margin ping-pong at the exchange's rate limit."""
    tops = [(p.label, p.policy) for p in loaded if isinstance(p.policy, TopUp)]
    sweeps = [(p.label, p.policy) for p in loaded if isinstance(p.policy, Sweep)]
    return [
        f"policies: sweep {sweep_label!r} safe ({sweep.safe}) must be at least "
        f"topup {top_label!r} target ({top.target})"
        for top_label, top in tops
        for sweep_label, sweep in sweeps
        if sweep.safe < top.target
    ]
