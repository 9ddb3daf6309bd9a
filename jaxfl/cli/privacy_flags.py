"""The differential-privacy flags (``--dp-*``) and their cheap checks; imports no JAX.

The mechanism is :mod:`jaxfl.mechanisms.privacy`, the accounting
:mod:`jaxfl.mechanisms.accounting`. The flags that shape the round (clip, noise, adaptive clipping)
are fields of every DP-capable algorithm's config (:class:`jaxfl.mechanisms.privacy.DPFields`);
``--dp-epsilon`` and ``--dp-delta`` are the accountant's: the first calibrates ``--dp-noise``
before the run, the second fixes the delta of every epsilon reported.
"""

from __future__ import annotations

from jaxfl.core.names import DP_ALGORITHMS, DP_FLAGS


def add_privacy_arguments(a) -> None:
    """Add the --dp-* flags with ``a = parser.add_argument``."""
    a(
        "--dp-clip",
        type=float,
        default=None,
        help="user-level DP (DP-FedAvg): clip each client's upload (model update, or soft "
        "labels/logits) to this L2 norm S, weigh every client the same, add Gaussian noise to "
        f"the sum; for {', '.join(DP_ALGORITHMS)} (default: no DP)",
    )
    a(
        "--dp-noise",
        type=float,
        default=0.0,
        help="DP noise multiplier z: noise std z*S on the sum of the clipped uploads, divided "
        "by the clients per round (default 0: clipping only, epsilon infinite)",
    )
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
        "--dp-clip-quantile",
        type=float,
        default=None,
        help="adaptive clipping (Andrew et al. 2021): the clip norm follows this quantile of "
        "the clients' upload norms, estimated privately (e.g. 0.5; default: fixed --dp-clip)",
    )
    a(
        "--dp-clip-lr",
        type=float,
        default=0.2,
        help="adaptive clipping: learning rate of the geometric clip update (default 0.2)",
    )
    a(
        "--dp-clip-count-noise",
        type=float,
        default=None,
        help="adaptive clipping: noise std of the clipped-count query (default: clients per "
        "round / 20); part of --dp-noise's budget, so it must exceed --dp-noise / 2",
    )


def dp_requested(args) -> list[str]:
    """The --dp-* flags given a non-default value."""
    return [
        "--" + dest.replace("_", "-")
        for dest, default in DP_FLAGS.items()
        if getattr(args, dest, default) != default
    ]


def validate_privacy_flags(args, fail) -> None:
    """Cheap checks of the --dp-* flags (``fail(flag, value, allowed)`` raises)."""
    given = dp_requested(args)
    if not given:
        return
    if args.algo not in DP_ALGORITHMS:
        fail(
            given[0],
            getattr(args, given[0][2:].replace("-", "_")),
            f"only with --algo {', '.join(DP_ALGORITHMS)} (--algo {args.algo} does not support "
            "differential privacy yet)",
        )
    if args.dp_clip is None:
        fail(given[0], getattr(args, given[0][2:].replace("-", "_")), "only with --dp-clip")
    if not args.dp_clip > 0:
        fail("--dp-clip", args.dp_clip, "a clip norm > 0")
    if args.dp_noise < 0:
        fail("--dp-noise", args.dp_noise, "a noise multiplier >= 0")
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
    if args.dp_clip_quantile is not None and not 0 < args.dp_clip_quantile < 1:
        fail("--dp-clip-quantile", args.dp_clip_quantile, "0 < quantile < 1")
    if not args.dp_clip_lr > 0:
        fail("--dp-clip-lr", args.dp_clip_lr, "a learning rate > 0")
    if args.dp_clip_count_noise is not None and not args.dp_clip_count_noise > 0:
        fail("--dp-clip-count-noise", args.dp_clip_count_noise, "a noise std > 0")
    adaptive_only = ("--dp-clip-count-noise",) if args.dp_clip_count_noise is not None else ()
    if adaptive_only and args.dp_clip_quantile is None:
        fail(adaptive_only[0], args.dp_clip_count_noise, "only with --dp-clip-quantile")
