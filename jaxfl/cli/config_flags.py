"""The flags made from the settings (:mod:`jaxfl.configs`): one ``--name`` per config field,
with its help, allowed values and default read from the field, never written here.

Every setting flag parses to None when it is not given; :func:`for_algorithm` then fills the
chosen algorithm's settings with its config's defaults (so ``--local-epochs`` is 5 for DS-FL and
1 for FedAvg unless given) and clears the settings it does not read. ``--help`` states each
flag's default (the chosen algorithm's with ``--algo X --help``) and which algorithms read it.
Imports no JAX.
"""

from __future__ import annotations

import argparse
import collections
import copy
import dataclasses
import sys

from jaxfl.configs import SPECS, settings, with_capability
from jaxfl.configs.fields import check_value, flag_name, value_type
from jaxfl.configs.shared import ClockFields, DPFields, FaultFields
from jaxfl.core.errors import ConfigError


def _collect() -> dict[str, tuple[dataclasses.Field, dict[str, object]]]:
    """Every algorithm setting: name -> (its field, {algorithm: its default})."""
    found: dict[str, tuple[dataclasses.Field, dict]] = {}
    for algo, spec in SPECS.items():
        for name, field in settings(spec.config).items():
            found.setdefault(name, (field, {}))[1][algo] = field.default
    return found


ALGORITHM_SETTINGS = _collect()
FAULT_SETTINGS = settings(FaultFields)
# the settings each algorithm reads (what `--algo X --help` shows among the per-algorithm flags)
SETTINGS_OF = {algo: tuple(settings(spec.config)) for algo, spec in SPECS.items()}


def _default_text(field: dataclasses.Field, value) -> str:
    if value is None:
        return field.metadata.get("default_help") or "none"
    return str(value)


def help_text(name: str, algo: str | None = None) -> str:
    """A setting's ``--help`` line: which algorithms read it (when not all), what it does, its
    allowed values and its default (``algo``'s, or each algorithm's where they differ)."""
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
    return f"{text} (default {shown})".replace("%", "%%").replace("%%%%", "%%")


def add_setting_flags(a, names, algo: str | None = None) -> None:
    """Add the flags of the settings ``names`` with ``a = parser.add_argument``; each parses to
    None when not given."""
    for name in names:
        field = FAULT_SETTINGS.get(name) or ALGORITHM_SETTINGS[name][0]
        kind = value_type(field)
        a(flag_name(name), type=None if kind is str else kind, default=None,
          help=help_text(name, algo))  # fmt: skip


def foreign_settings(args: argparse.Namespace, algo: str) -> list[str]:
    """The algorithm settings set in ``args`` (not None) that ``algo`` does not read."""
    own = set(SETTINGS_OF[algo])
    return [n for n in ALGORITHM_SETTINGS if n not in own and getattr(args, n, None) is not None]


# settings that switch on a capability: given to an algorithm without it, they are an error
# (a run asked to be private, timed or to hold clients out must not silently be none of these)
CAPABILITY_SETTINGS = {
    "dp": (*(f.name for f in dataclasses.fields(DPFields)), "dp_epsilon", "dp_delta"),
    "clock": tuple(f.name for f in dataclasses.fields(ClockFields)),
    "unseen": ("unseen_clients",),
}
_CAPABILITY_DEFAULTS = (
    {f.name: f.default for f in dataclasses.fields(DPFields)}
    | {f.name: f.default for f in dataclasses.fields(ClockFields)}
    | {"unseen_clients": 0}
)
_WHAT = {
    "dp": "does not support differential privacy yet",
    "clock": "keeps no virtual clock",
    "unseen": "trains every client",
}


def check_capabilities(args: argparse.Namespace) -> None:
    """ConfigError when ``args`` asks one algorithm for a capability its spec does not declare
    (``--dp-clip`` with ``--algo fedmd``, ``--round-deadline`` with ``--algo dsfl``, ...)."""
    spec = SPECS[args.algo]
    for capability, names in CAPABILITY_SETTINGS.items():
        if getattr(spec, capability):
            continue
        for name in names:
            value = getattr(args, name, None)
            if value is not None and value != _CAPABILITY_DEFAULTS.get(name):
                raise ConfigError(
                    f"{flag_name(name)} {value!r} is not allowed; allowed: only with --algo "
                    f"{', '.join(with_capability(capability))} (--algo {args.algo} "
                    f"{_WHAT[capability]})"
                )


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


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Make ``args`` (one algorithm's) complete, in place: the algorithm's settings not given
    take its config's defaults, the fault settings FaultFields', and the settings only other
    algorithms read are cleared (None). Idempotent; returns ``args``. A capability the algorithm
    lacks that ``args`` asks for is a ConfigError first (:func:`check_capabilities`)."""
    check_capabilities(args)
    own = settings(SPECS[args.algo].config)
    for name in ALGORITHM_SETTINGS:
        if name not in own:
            setattr(args, name, None)
        elif getattr(args, name, None) is None:
            setattr(args, name, own[name].default)
    for name, field in FAULT_SETTINGS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, field.default)
    return args


def for_algorithm(args: argparse.Namespace, algo: str) -> argparse.Namespace:
    """A copy of ``args`` with ``--algo algo``, resolved for it (:func:`resolve`): how a run of
    several algorithms gives each its own defaults."""
    args = copy.copy(args)
    args.algo = algo
    return resolve(args)


def check_settings(args: argparse.Namespace) -> None:
    """Each of the algorithm's settings and the fault settings against its allowed values."""
    own = settings(SPECS[args.algo].config)
    for name, field in {**own, **FAULT_SETTINGS}.items():
        check_value(field, getattr(args, name, None))
