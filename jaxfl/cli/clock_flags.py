"""The virtual-clock flags' checks that need more than one setting (which algorithms keep a
clock, a speed file's values); the flags themselves are the settings of
:class:`jaxfl.configs.shared.ClockFields`. Imports no JAX (the clock itself is
:mod:`jaxfl.mechanisms.clock`)."""

from __future__ import annotations

import dataclasses

from jaxfl.configs.shared import ClockFields

# the clock settings (jaxfl.configs.shared.ClockFields) and their defaults
CLOCK_FLAGS = {f.name: f.default for f in dataclasses.fields(ClockFields)}
CLOCK_SETTINGS = tuple(CLOCK_FLAGS)


def clock_requested(args) -> list[str]:
    """The clock flags given a non-default value."""
    return [
        "--" + dest.replace("_", "-")
        for dest, default in CLOCK_FLAGS.items()
        if getattr(args, dest, None) not in (None, default)
    ]


def validate_clock_flags(args, fail) -> None:
    """Cheap checks of the clock flags (``fail(flag, value, allowed)`` raises); a speed file is
    read here, so a bad value in it stops the run before any data is loaded."""
    given = clock_requested(args)
    if not given:
        return
    from jaxfl.mechanisms.clock import ClockSpecError, parse

    try:
        parse(args.client_speed, "--client-speed", args.clients)
        parse(args.client_latency, "--client-latency", args.clients, positive=False)
    except ClockSpecError as err:
        from jaxfl.core.errors import ConfigError

        raise ConfigError(str(err)) from None
    if args.algo == "fedbuff":
        for flag in ("round_deadline", "round_first"):
            if getattr(args, flag) is not None:
                fail(
                    "--" + flag.replace("_", "-"),
                    getattr(args, flag),
                    "only with a synchronous --algo (fedavg); FedBuff moves on after --buffer "
                    "arrivals",
                )
    m = args.clients_per_round or args.clients
    if args.round_first is not None and not 1 <= args.round_first <= m:
        fail("--round-first", args.round_first, f"1..--clients-per-round ({m})")
