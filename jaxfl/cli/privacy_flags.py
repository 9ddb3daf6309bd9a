"""The differential-privacy flags (``--dp-*``) and their cheap checks; imports no JAX.

The mechanism is :mod:`jaxfl.mechanisms.privacy`, the accounting
:mod:`jaxfl.mechanisms.accounting`. The flags that shape the round (clip, noise, adaptive
clipping) are fields of every DP-capable algorithm's config
(:class:`jaxfl.configs.shared.DPFields`, which holds their help and allowed values);
``--dp-epsilon`` and ``--dp-delta`` are the accountant's: the first calibrates ``--dp-noise``
before the run, the second fixes the delta of every epsilon reported.
"""

from __future__ import annotations

import dataclasses

from jaxfl.cli.config_flags import add_setting_flags
from jaxfl.configs.shared import DPFields

# every --dp-* flag's dest and its default: the settings' and the accountant's two
DP_FLAGS = {f.name: f.default for f in dataclasses.fields(DPFields)} | {
    "dp_epsilon": None,
    "dp_delta": None,
}


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
    add_setting_flags(a, ("dp_clip_quantile", "dp_clip_lr", "dp_clip_count_noise"), algo)


def dp_requested(args) -> list[str]:
    """The --dp-* flags given a value other than their default (None: not given)."""
    return [
        "--" + dest.replace("_", "-")
        for dest, default in DP_FLAGS.items()
        if getattr(args, dest, None) not in (None, default)
    ]


def validate_privacy_flags(args, fail) -> None:
    """Cheap checks of the --dp-* flags (``fail(flag, value, allowed)`` raises)."""
    given = dp_requested(args)
    if not given:
        return
    if args.dp_clip is None:
        fail(given[0], getattr(args, given[0][2:].replace("-", "_")), "only with --dp-clip")
    if args.dp_epsilon is not None:
        if args.dp_noise != 0.0:
            fail("--dp-epsilon", args.dp_epsilon, "--dp-epsilon or --dp-noise, not both")
        if not args.dp_epsilon > 0:
            fail("--dp-epsilon", args.dp_epsilon, "a target epsilon > 0")
        if any(item.split("=")[0].strip().lstrip("-") in ("dp-noise", "dp_noise")
               for item in getattr(args, "sweep", None) or ()):  # fmt: skip
            fail("--dp-epsilon", args.dp_epsilon, "a fixed target; to compare noise levels, "
                 "--sweep dp-noise=... without --dp-epsilon")  # fmt: skip
    if args.dp_delta is not None and not 0 < args.dp_delta < 1:
        fail("--dp-delta", args.dp_delta, "0 < delta < 1")
    adaptive_only = ("--dp-clip-count-noise",) if args.dp_clip_count_noise is not None else ()
    if adaptive_only and args.dp_clip_quantile is None:
        fail(adaptive_only[0], args.dp_clip_count_noise, "only with --dp-clip-quantile")
