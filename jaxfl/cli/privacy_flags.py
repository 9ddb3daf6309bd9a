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
from jaxfl.core.names import DP_ACCOUNTANTS


def add_privacy_arguments(a, algo: str | None = None) -> None:
    """Add the --dp-* flags with ``a = parser.add_argument``: the settings of
    :class:`jaxfl.configs.shared.DPFields`, and the accountant's epsilon and delta."""
    add_setting_flags(a, ("dp_clip", "dp_noise"), algo)
    a(
        "--dp-epsilon",
        type=float,
        default=None,
        help="instead of --dp-noise: the epsilon to reach after --rounds rounds; the noise "
        "multiplier is calibrated to it with dp-accounting before the run",
    )
    a(
        "--dp-delta",
        type=float,
        default=None,
        help="DP delta of every epsilon reported, 0 < delta < 1 (default C^-1.1, C the clients "
        "that may be sampled)",
    )
    a(
        "--dp-accountant",
        default=None,
        choices=DP_ACCOUNTANTS,
        help="dp-accounting's accountant of every epsilon: rdp (Renyi DP) or pld (privacy loss "
        "distributions, tighter; Poisson participation only, as the library has no PLD of "
        "fixed-size sampling) (default pld with --participation poisson, else rdp)",
    )
    add_setting_flags(a, ("dp_clip_quantile", "dp_clip_lr", "dp_clip_count_noise"), algo)
