"""One algorithm's complete settings from what was given: the resolution the command line and the
library share (no argparse here, no JAX).

A run's settings arrive as an object with one attribute per flag (an ``argparse.Namespace``
from the command line); a setting left None was not given. :func:`resolve` fills the chosen
algorithm's settings from its config's defaults and clears those only other algorithms read;
:func:`check_capabilities` refuses a capability (DP, the clock, unseen clients) asked of an
algorithm whose spec lacks it; :func:`check_settings` checks each setting against the values its
field declares.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses

from jaxfl.configs.fields import check_value, flag_name, settings
from jaxfl.configs.shared import ClockFields, DPFields, FaultFields, ParticipationFields
from jaxfl.configs.specs import SPECS, with_capability
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


def foreign_settings(args: argparse.Namespace, algo: str) -> list[str]:
    """The algorithm settings set in ``args`` (not None) that ``algo`` does not read."""
    own = set(SETTINGS_OF[algo])
    return [n for n in ALGORITHM_SETTINGS if n not in own and getattr(args, n, None) is not None]


# settings that switch on a capability: given to an algorithm without it, they are an error
# (a run asked to be private, timed or to hold clients out must not silently be none of these)
CAPABILITY_SETTINGS = {
    "dp": (
        *(f.name for f in dataclasses.fields(DPFields)),
        "dp_epsilon",
        "dp_delta",
        "dp_accountant",
    ),
    "clock": tuple(f.name for f in dataclasses.fields(ClockFields)),
    "unseen": ("unseen_clients",),
    "participation": tuple(f.name for f in dataclasses.fields(ParticipationFields)),
}
_CAPABILITY_DEFAULTS = (
    {f.name: f.default for f in dataclasses.fields(DPFields)}
    | {f.name: f.default for f in dataclasses.fields(ClockFields)}
    | {f.name: f.default for f in dataclasses.fields(ParticipationFields)}
    | {"unseen_clients": 0}
)
_WHAT = {
    "dp": "does not support differential privacy yet",
    "clock": "keeps no virtual clock",
    "unseen": "trains every client",
    "participation": "draws a fixed number of clients each round",
}


def check_capabilities(args: argparse.Namespace) -> None:
    """ConfigError when ``args`` asks one algorithm for a capability its spec does not declare
    (``--dp-clip`` with ``--algo fccl``, ``--round-deadline`` with ``--algo dsfl``, ...)."""
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
