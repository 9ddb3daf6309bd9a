"""The checks of the per-algorithm settings that involve more than one value (a setting against
``--clients``, FedBuff's M and K, a staleness spec), run before any data is loaded; each failure
names the flag and the allowed values. A single setting's allowed values are its config field's
(:mod:`jaxfl.configs`) and checked with them. Imports no JAX at import time."""

from __future__ import annotations


def validate_algorithm_flags(args, fail) -> None:
    """Cross-setting checks of ``args`` (resolved for one algorithm); ``fail(flag, value,
    allowed)`` raises."""
    unseen = args.unseen_clients or 0
    if not 0 <= unseen < args.clients:
        fail("--unseen-clients", unseen, f"0..--clients - 1 ({args.clients - 1})")
    if args.clients_per_round is not None and args.clients_per_round > args.clients - unseen:
        fail(
            "--clients-per-round",
            args.clients_per_round,
            f"1..--clients minus --unseen-clients ({args.clients - unseen})",
        )
    if args.algo == "fedbuff":
        _validate_fedbuff(args, fail)


def _validate_fedbuff(args, fail) -> None:
    m = args.concurrency or args.clients_per_round or args.clients
    if not 1 <= m <= args.clients:
        fail("--concurrency", m, f"1..--clients ({args.clients}): a client trains one model at "
             "a time")  # fmt: skip
    if args.buffer is not None and not 1 <= args.buffer <= m:
        fail("--buffer", args.buffer, f"1..--concurrency ({m}): a server step waits for K of "
             "the M clients in flight")  # fmt: skip
    from jaxfl.mechanisms.clock import ClockSpecError, parse_staleness

    try:
        parse_staleness(args.staleness)
    except ClockSpecError as err:
        from jaxfl.core.errors import ConfigError

        raise ConfigError(str(err)) from None
