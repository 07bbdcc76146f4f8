"""``--param KEY=V1,V2``: the same config with one setting changed, to compare.

``KEY`` is ``<policy label>.<param>`` (a policy's ``name``, or its ``use``: ``topup.trigger``,
``sweep.safe``) or ``<section>.<key>`` for ``budgets``, ``poll`` and ``exchange``
(``budgets.cooldown_s``). With no ``[[policies]]`` configured, ``topup`` runs with its
defaults and ``topup.<param>`` sets one of them. Several ``--param`` give every combination.
Every variant is validated as the daemon validates its config: a bad value is a
``VariantError`` naming the key.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from guardbot.config import PolicySettings, Settings

SECTIONS = ("budgets", "poll", "exchange")


class VariantError(ValueError):
    """A ``--param`` that cannot be applied (the message names it)."""


@dataclass(frozen=True, slots=True)
class Param:
    key: str
    values: tuple[str, ...]


def parse_param(text: str) -> Param:
    """``topup.trigger=0.03,0.05`` -> ``Param("topup.trigger", ("0.03", "0.05"))``."""
    key, sep, values = text.partition("=")
    key = key.strip()
    parts = tuple(v.strip() for v in values.split(",") if v.strip())
    if not sep or "." not in key or not parts:
        raise VariantError(f"--param {text!r}: use KEY=V1,V2 with KEY like topup.trigger or "
                           "budgets.cooldown_s")  # fmt: skip
    return Param(key, parts)


def _section(settings: Settings, section: str, key: str, value: str) -> Settings:
    current: BaseModel = getattr(settings, section)
    if key not in type(current).model_fields:
        names = ", ".join(type(current).model_fields)
        raise VariantError(f"--param {section}.{key}: unknown key (one of {names})")
    try:
        changed = type(current).model_validate({**current.model_dump(), key: value})
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        raise VariantError(f"--param {section}.{key}={value}: {reason}") from None
    return settings.model_copy(update={section: changed})


def _policy(settings: Settings, label: str, key: str, value: str) -> Settings:
    policies = list(settings.policies) or [PolicySettings(use="topup")]
    if not any(p.label == label for p in policies):
        labels = ", ".join(sorted({p.label for p in policies} | set(SECTIONS)))
        raise VariantError(f"--param {label}.{key}: no policy labelled {label!r} in the config "
                           f"(known: {labels})")  # fmt: skip
    changed = [p.model_copy(update={"params": {**p.params, key: value}}) if p.label == label
               else p for p in policies]  # fmt: skip
    return settings.model_copy(update={"policies": changed})


def apply(settings: Settings, key: str, value: str) -> Settings:
    """``settings`` with one key set (validated for sections; policies validate their
    params when loaded)."""
    prefix, _, name = key.partition(".")
    if prefix in SECTIONS:
        return _section(settings, prefix, name, value)
    return _policy(settings, prefix, name, value)


def variants(settings: Settings, params: Sequence[Param]) -> list[tuple[str, Settings]]:
    """Every combination of the params' values: ``(label, settings)``."""
    if not params:
        return [("config", settings)]
    found = []
    for combination in itertools.product(*(p.values for p in params)):
        changed = settings
        for param, value in zip(params, combination, strict=True):
            changed = apply(changed, param.key, value)
        label = " ".join(f"{p.key}={v}" for p, v in zip(params, combination, strict=True))
        found.append((label, changed))
    return found
