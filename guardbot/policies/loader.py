"""Turn the ``[[policies]]`` config into policy objects, once, at start-up.

``use`` names one of (docs/architecture.md, "Policies"):

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
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

from guardbot.config import ConfigError, PolicySettings
from guardbot.policies.base import (
    Policy,
    PolicyParamError,
    Quiet,
    declared_distance,
    declared_quiet,
)
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
    # the policy's declared distances (base.py), validated at load
    add_target: Decimal | None = None
    reduce_floor: Decimal | None = None
    trigger: Decimal | None = None
    # where it promises never to act (base.py); None: evaluated on every tick
    quiet: Quiet | None = None

    @classmethod
    def of(
        cls,
        policy: Policy,
        label: str | None = None,
        *,
        accounts: Sequence[str] = ("*",),
        symbols: Sequence[str] = ("*",),
        params: Mapping[str, Any] | None = None,
    ) -> LoadedPolicy:
        """``policy`` with its declarations read and validated (``label`` defaults to its
        name). Raises ``PolicyParamError`` naming a bad declaration."""
        return cls(
            label=policy.name if label is None else label,
            policy=policy,
            accounts=tuple(accounts),
            symbols=tuple(symbols),
            params=MappingProxyType(dict(params or {})),
            add_target=declared_distance(policy, "add_target"),
            reduce_floor=declared_distance(policy, "reduce_floor"),
            trigger=declared_distance(policy, "trigger"),
            quiet=declared_quiet(policy),
        )

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
        return [LoadedPolicy.of(TopUp())]
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
                f"policies[{index + 1}].name: {item.label!r} is already used by another policy;"
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
    where = f"policies[{index + 1}]"  # 1-based, as config messages
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
    try:
        return LoadedPolicy.of(policy, settings.label, accounts=settings.accounts,
                               symbols=settings.symbols, params=params)
    except PolicyParamError as exc:
        raise ConfigError(f"{where}: policy {settings.label!r} declares {exc}") from None


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
    """A REDUCE policy whose floor is inside an ADD policy's target on the same positions
    would undo that policy's work, and it would add the margin back: ping-pong at the
    exchange's rate limit until the day's budget is gone (base.py, hysteresis)."""
    return [
        f"policies: {reducer.label!r} reduce_floor ({reducer.reduce_floor}) must be at least "
        f"{adder.label!r} add_target ({adder.add_target}): on the positions both guard, the "
        "first would remove margin the second adds straight back"
        for adder in loaded
        for reducer in loaded
        if adder.add_target is not None
        and reducer.reduce_floor is not None
        and reducer.reduce_floor < adder.add_target
        and _overlap(adder.accounts, reducer.accounts, fold_case=True)
        and _overlap(adder.symbols, reducer.symbols, fold_case=False)
    ]


def _overlap(first: Sequence[str], second: Sequence[str], *, fold_case: bool) -> bool:
    """Whether two ``accounts`` (or ``symbols``) filters can match the same thing. An account
    listed by name in one and by id in the other is not seen here: the arbiter's REDUCE
    floor still covers it."""
    if "*" in first or "*" in second:
        return True
    norm = str.lower if fold_case else str
    return not {norm(a) for a in first}.isdisjoint(norm(b) for b in second)
