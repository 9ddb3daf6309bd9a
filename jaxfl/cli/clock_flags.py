"""The virtual-clock flags (``--client-speed``, ``--client-latency``, ``--round-deadline``,
``--round-first``) and their checks; imports no JAX (the clock itself is
:mod:`jaxfl.mechanisms.clock`)."""

from __future__ import annotations

from jaxfl.core.names import CLOCK_ALGORITHMS

# every clock flag's dest and the value that means "not given"
CLOCK_FLAGS = {
    "client_speed": "constant:1",
    "client_latency": "0",
    "round_deadline": None,
    "round_first": None,
}
SPEC_HELP = (
    "constant:V, lognormal:SIGMA (median 1), two-tier:FRACTION:FACTOR (that fraction of the "
    "clients FACTOR times slower than 1), uniform:LO:HI, a number, or a file of one value per "
    "client (.npy or text)"
)


def add_clock_arguments(a) -> None:
    """Add the clock flags with ``a = parser.add_argument``."""
    a(
        "--client-speed",
        default="constant:1",
        help="each client's virtual seconds per local SGD step, drawn once from the seed: "
        f"{SPEC_HELP}; a dispatch lasts steps x this + --client-latency (default constant:1; "
        f"for {', '.join(CLOCK_ALGORITHMS)})",
    )
    a(
        "--client-latency",
        default="0",
        help=f"each client's network latency per dispatch, virtual seconds: {SPEC_HELP} "
        "(values >= 0; default 0)",
    )
    a(
        "--round-deadline",
        type=float,
        default=None,
        help="synchronous rounds (fedavg): move on at this virtual time; clients not back by "
        "then count as dropped (default: wait for every sampled client)",
    )
    a(
        "--round-first",
        type=int,
        default=None,
        help="synchronous rounds (fedavg): over-selection, move on when the first K sampled "
        "clients are back; the rest count as dropped (default: wait for all)",
    )


def clock_requested(args) -> list[str]:
    """The clock flags given a non-default value."""
    return [
        "--" + dest.replace("_", "-")
        for dest, default in CLOCK_FLAGS.items()
        if getattr(args, dest, default) != default
    ]


def validate_clock_flags(args, fail) -> None:
    """Cheap checks of the clock flags (``fail(flag, value, allowed)`` raises); a speed file is
    read here, so a bad value in it stops the run before any data is loaded."""
    given = clock_requested(args)
    if not given:
        return
    value = getattr(args, given[0][2:].replace("-", "_"))
    if args.algo not in CLOCK_ALGORITHMS:
        fail(given[0], value, f"only with --algo {', '.join(CLOCK_ALGORITHMS)}")
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
    if args.round_deadline is not None and not args.round_deadline > 0:
        fail("--round-deadline", args.round_deadline, "a virtual time > 0")
    m = args.clients_per_round or args.clients
    if args.round_first is not None and not 1 <= args.round_first <= m:
        fail("--round-first", args.round_first, f"1..--clients-per-round ({m})")
