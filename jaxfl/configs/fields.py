"""A setting is a dataclass field that carries its help, its allowed values and whether it is a
flag: the single source the command line, ``--help``, TOML configs and the checks are made from.

A config dataclass (``FedAvgConfig``, ``FaultConfig``, ...) declares each setting once::

    lr: float = setting(0.1, "client SGD learning rate", check="> 0")

:func:`check` tests every setting of a config against its ``check`` (a bound such as ``"> 0"``,
``">= 1"``, an interval ``"[0, 1)"``, or ``choices``), raising a
:class:`jaxfl.core.errors.ConfigError` that names the flag and the allowed values, so the library
and the command line refuse a bad value with the same message. The command line
(:mod:`jaxfl.cli.config_flags`) turns every setting with ``flag=True`` into ``--name-with-dashes``.
Imports no JAX: ``--help`` is built from these.
"""

from __future__ import annotations

import dataclasses
import math
import re

from jaxfl.core.errors import ConfigError

_BOUND = re.compile(r"^(>=|>|<=|<)\s*(-?[0-9.e-]+)$")
_INTERVAL = re.compile(r"^([\[(])\s*(-?[0-9.e-]+)\s*,\s*(-?[0-9.e-]+)\s*([\])])$")


def setting(
    default,
    help: str,
    *,
    check: str | None = None,
    choices: tuple[str, ...] | None = None,
    allowed: str | None = None,
    default_help: str | None = None,
    flag: bool = True,
    cli: dict | None = None,
):
    """A config field with its command-line description.

    Args:
      default: the value when the setting is not given (each config may give its own).
      help: what the setting does, for ``--help`` (without the default: it is added).
      check: the allowed values of a number: ``"> 0"``, ``">= 1"``, ``"[0, 1)"`` (None is always
        allowed where the default is None).
      choices: the allowed values of a string.
      allowed: the words the error uses for the allowed values (default: made from ``check``).
      default_help: what ``--help`` says for the default (e.g. ``"--lr"`` for a None that means
        "the client learning rate").
      flag: whether the command line has a flag of this name (False: filled by the library,
        e.g. HypCluster's ``rounds`` from ``--rounds``).
      cli: further ``argparse`` arguments of its flag (``{"action": "append"}``, a
        ``metavar``); a bool setting's flag is ``store_true``.
    """
    metadata = {
        "help": help,
        "check": check,
        "choices": choices,
        "allowed": allowed,
        "default_help": default_help,
        "flag": flag,
        "cli": cli or {},
    }
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(name: str) -> str:
    """``"local_epochs"`` -> ``"--local-epochs"``."""
    return "--" + name.replace("_", "-")


def value_type(field: dataclasses.Field) -> type:
    """The Python type of a setting's value (int, float, bool or str), from its annotation."""
    annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    for kind in (bool, int, float):
        if re.search(rf"\b{kind.__name__}\b", str(annotation)):
            return kind
    return str


def allowed_text(field: dataclasses.Field) -> str | None:
    """The allowed values in words, for an error or ``--help``: ``"an integer >= 1"``."""
    meta = field.metadata
    if meta.get("allowed"):
        return meta["allowed"]
    if meta.get("choices"):
        return ", ".join(meta["choices"])
    rule = meta.get("check")
    if rule is None:
        return None
    what = "an integer" if value_type(field) is int else "a number"
    if _BOUND.match(rule):
        return f"{what} {rule}"
    low_bracket, low, high, high_bracket = _INTERVAL.match(rule).groups()
    if (low, high) == ("0", "1") and what == "a number":
        what = "a fraction"
    return f"{what} in {low_bracket}{low}, {high}{high_bracket}"


def satisfies(rule: str, value) -> bool:
    """Whether the number ``value`` satisfies ``rule`` (a bound or an interval)."""
    if not math.isfinite(value):
        return False
    bound = _BOUND.match(rule)
    if bound:
        op, limit = bound.group(1), float(bound.group(2))
        return {">": value > limit, ">=": value >= limit, "<": value < limit, "<=": value <= limit}[
            op
        ]
    match = _INTERVAL.match(rule)
    if match is None:
        raise ValueError(f"not a check: {rule!r}")
    low_bracket, low, high, high_bracket = match.groups()
    low_ok = value >= float(low) if low_bracket == "[" else value > float(low)
    high_ok = value <= float(high) if high_bracket == "]" else value < float(high)
    return low_ok and high_ok


def check_value(field: dataclasses.Field, value) -> None:
    """ConfigError naming the flag unless ``value`` is allowed for ``field``; None, and a value
    that is not a Python number or string (a traced array in a sweep), pass."""
    meta = field.metadata
    if value is None or not isinstance(value, (int, float, str)) or isinstance(value, bool):
        return
    ok = True
    if meta.get("choices") and isinstance(value, str):
        ok = value in meta["choices"]
    elif meta.get("check") and isinstance(value, (int, float)):
        ok = satisfies(meta["check"], value)
    if not ok:
        raise ConfigError(
            f"{flag_name(field.name)} {value!r} is not allowed; allowed: {allowed_text(field)}"
        )


def check(config) -> None:
    """Check every setting of the dataclass instance ``config`` (see :func:`check_value`)."""
    for field in dataclasses.fields(config):
        check_value(field, getattr(config, field.name))


def settings(config_cls) -> dict[str, dataclasses.Field]:
    """The fields of ``config_cls`` that are command-line settings, by name, in field order."""
    return {f.name: f for f in dataclasses.fields(config_cls) if f.metadata.get("flag", False)}
