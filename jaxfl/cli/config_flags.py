"""The flags made from the settings (:mod:`jaxfl.configs`): one ``--name`` per config field,
with its help, allowed values and default read from the field, never written here.

Every setting flag parses to None when it is not given; :func:`jaxfl.configs.resolve.resolve`
then fills the chosen algorithm's settings with its config's defaults (so ``--local-epochs`` is
5 for DS-FL and 1 for FedAvg unless given) and clears the settings it does not read. ``--help``
states each flag's default (the chosen algorithm's with ``--algo X --help``) and which
algorithms read it. Imports no JAX.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import sys

from jaxfl.configs import SPECS
from jaxfl.configs.fields import flag_name, value_type
from jaxfl.configs.resolve import (  # noqa: F401  (the command line's names for them)
    ALGORITHM_SETTINGS,
    FAULT_SETTINGS,
    SETTINGS_OF,
    check_capabilities,
    check_settings,
    for_algorithm,
    foreign_settings,
    resolve,
)
from jaxfl.configs.run import RUN_SETTINGS


def _default_text(field: dataclasses.Field, value) -> str:
    if value is None:
        return field.metadata.get("default_help") or "none"
    return str(value)


def help_text(name: str, algo: str | None = None) -> str:
    """A setting's ``--help`` line: which algorithms read it (when not all), what it does, its
    allowed values and its default (``algo``'s, or each algorithm's where they differ)."""
    if name in RUN_SETTINGS:
        field = RUN_SETTINGS[name]
        text = field.metadata["help"]
        if field.metadata.get("choices"):
            text += f"; one of {', '.join(field.metadata['choices'])}"
        if value_type(field) is not bool:
            text += f" (default {_default_text(field, field.default)})"
        return text.replace("%", "%%")
    if name in FAULT_SETTINGS:
        field, defaults = FAULT_SETTINGS[name], {None: FAULT_SETTINGS[name].default}
    else:
        field, defaults = ALGORITHM_SETTINGS[name]
    text = field.metadata["help"]
    if algo is None and name not in FAULT_SETTINGS and len(defaults) < len(SPECS):
        if 2 * len(defaults) > len(SPECS):
            text = f"all but {', '.join(a for a in SPECS if a not in defaults)}: {text}"
        else:
            text = f"{', '.join(defaults)}: {text}"
    if field.metadata.get("choices"):
        text += f"; one of {', '.join(field.metadata['choices'])}"
    if algo in defaults:
        shown = _default_text(field, defaults[algo])
    else:
        counts = collections.Counter(map(repr, defaults.values()))
        common = next(v for v in defaults.values() if repr(v) == counts.most_common(1)[0][0])
        others = [f"{a} {_default_text(field, v)}" for a, v in defaults.items() if v != common]
        shown = _default_text(field, common)
        if others:
            shown = f"{', '.join(others)}, else {shown}"
    return f"{text} (default {shown})".replace("%", "%%")  # argparse formats help with %


def add_setting_flags(a, names, algo: str | None = None) -> None:
    """Add the flags of the settings ``names`` with ``a = parser.add_argument``; each parses to
    None when not given, but a run-level setting to its default."""
    for name in names:
        if name in RUN_SETTINGS:
            field = RUN_SETTINGS[name]
            kind = value_type(field)
            extra = (
                {"action": "store_true"}
                if kind is bool
                else {"type": None if kind is str else kind}
            )
            extra.update(field.metadata["cli"])
            if extra.get("action") in ("append", "store_true"):
                extra.pop("type", None)
            a(flag_name(name), default=field.default, help=help_text(name), **extra)
            continue
        field = FAULT_SETTINGS.get(name) or ALGORITHM_SETTINGS[name][0]
        kind = value_type(field)
        a(flag_name(name), type=None if kind is str else kind, default=None,
          help=help_text(name, algo))  # fmt: skip


def warn_foreign(args: argparse.Namespace, given: set[str]) -> None:
    """A note on stderr for each flag given on the command line that the chosen algorithm does
    not read (``--temperature`` with ``--algo fedavg``): it is ignored, as when one command is
    reused for several algorithms, but the user should know."""
    if "," in args.algo or args.algo not in SPECS:
        return
    for name in foreign_settings(args, args.algo):
        if name in given:
            readers = ", ".join(ALGORITHM_SETTINGS[name][1])
            print(
                f"note: {flag_name(name)} is ignored: --algo {args.algo} does not read it "
                f"(read by {readers})",
                file=sys.stderr,
            )
