"""The flags of individual algorithms (DS-FL's temperature, FedAvg's server optimizer, the
personalization baselines' penalties, ...), made from their configs' fields.

Nothing is declared here: every per-algorithm flag is a field of some algorithm's config
(:mod:`jaxfl.configs`), with its help, default and allowed values there; the flags shown in
other ``--help`` groups (training, privacy, clock, scale) are added by those groups. An
algorithm's config class takes the values of the flags of the same names
(:func:`jaxfl.experiments.builder.config_from_args`).
"""

from __future__ import annotations

from jaxfl.cli.config_flags import ALGORITHM_SETTINGS, add_setting_flags
from jaxfl.cli.flag_help import GROUPS

_ELSEWHERE = {dest for dests in GROUPS.values() for dest in dests}
# the per-algorithm flags, in the order the algorithms first declare them
PER_ALGORITHM = tuple(name for name in ALGORITHM_SETTINGS if name not in _ELSEWHERE)


def add_algorithm_arguments(a, algo: str | None = None) -> None:
    """Add the per-algorithm flags with ``a = parser.add_argument`` (``algo``: its defaults)."""
    add_setting_flags(a, PER_ALGORITHM, algo)
