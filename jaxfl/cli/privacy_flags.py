"""The differential-privacy flags (``--dp-*``); imports no JAX (their checks across settings are
:mod:`jaxfl.experiments.validation`'s).

The mechanism is :mod:`jaxfl.mechanisms.privacy`, the accounting
:mod:`jaxfl.mechanisms.accounting`. The flags that shape the round (clip, noise, adaptive
clipping) are fields of every DP-capable algorithm's config
(:class:`jaxfl.configs.shared.DPFields`, which holds their help and allowed values);
``--dp-epsilon``, ``--dp-delta`` and ``--dp-accountant`` are the accountant's: the first
calibrates ``--dp-noise`` before the run, the second fixes the delta of every epsilon reported,
the third picks dp-accounting's RDP or PLD accountant.
"""

from __future__ import annotations

from jaxfl.cli.config_flags import add_setting_flags


def add_privacy_arguments(a, algo: str | None = None) -> None:
    """Add the --dp-* flags with ``a = parser.add_argument``: the settings of
    :class:`jaxfl.configs.shared.DPFields`, and the accountant's settings
    (:class:`jaxfl.configs.run.AccountingConfig`)."""
    add_setting_flags(a, ("dp_clip", "dp_noise"), algo)
    add_setting_flags(a, ("dp_epsilon", "dp_delta", "dp_accountant"), algo)
    add_setting_flags(a, ("dp_clip_quantile", "dp_clip_lr", "dp_clip_count_noise"), algo)
