"""The checks of a run's settings, before any data is loaded: each failure is a ConfigError that
names the flag and the allowed values. The command line runs them on its flags, and the library
(:func:`jaxfl.experiments.builder.build`, the sweep runner) on the settings it is given, so a
bad value is refused the same way whichever door it came in by. Imports no JAX at import time
(a speed file or a staleness spec is parsed by the modules that use them, when checked).

A single setting's allowed values are its config field's (:mod:`jaxfl.configs`: the
algorithms' configs and :class:`jaxfl.configs.run.RunConfig`'s groups); what is checked here is
what involves more than one value: a setting against ``--clients``, FedBuff's M and K,
the DP and clock flags together, the multi-host flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

from jaxfl.configs import ALGORITHMS, SPECS, with_capability
from jaxfl.configs.fields import check_value
from jaxfl.configs.resolve import check_settings, resolve
from jaxfl.configs.run import RUN_SETTINGS
from jaxfl.configs.shared import ClockFields, DPFields
from jaxfl.core.errors import ConfigError
from jaxfl.core.names import (
    DATASETS,
    EMBEDDED_DATASETS,
    FILE_NATURAL_DATASETS,
    MODEL_NAMES_HELP,
    NATURAL_DATASETS,
    SEQUENCE_DATASETS,
    SEQUENCE_MODELS,
    is_model_name,
    is_sequence_model,
)

# every --dp-* flag's dest and its default: the settings' and the accountant's two
DP_FLAGS = {f.name: f.default for f in dataclasses.fields(DPFields)} | {
    "dp_epsilon": None,
    "dp_delta": None,
    "dp_accountant": None,
}
# the clock settings and their defaults
CLOCK_FLAGS = {f.name: f.default for f in dataclasses.fields(ClockFields)}


def _fail(flag: str, value, allowed) -> None:
    raise ConfigError(f"{flag} {value!r} is not allowed; allowed: {allowed}")


def validate(args: argparse.Namespace) -> None:
    """Cheap checks, before any data is loaded. With one algorithm, ``args`` is first completed
    in place with that algorithm's defaults (:func:`jaxfl.configs.resolve.resolve`), then each
    of its settings is checked against the allowed values its config field declares."""
    for name, value in vars(args).items():  # NaN passes every comparison below: refuse it here
        if isinstance(value, float) and not math.isfinite(value):
            _fail("--" + name.replace("_", "-"), value, "a finite number")
    for name, field in RUN_SETTINGS.items():  # each run-level setting's own allowed values
        check_value(field, getattr(args, name, None))
    if args.dataset in FILE_NATURAL_DATASETS:  # its files (downloaded), before any other work
        from jaxfl.data.natural.datasets import locate

        locate(args.dataset, getattr(args, "data_dir", None))
    elif getattr(args, "data_dir", None) is not None and args.dataset not in EMBEDDED_DATASETS:
        from jaxfl.data.sources import check_data_dir

        check_data_dir(args.data_dir, args.dataset)
    for algo in args.algo.split(","):
        if algo.strip() not in ALGORITHMS:
            _fail(
                "--algo", args.algo, f"{', '.join(ALGORITHMS)}, or several of them, comma separated"
            )
    if "," in args.algo:  # each algorithm's own flags are checked as it is run
        return
    resolve(args)
    check_settings(args)
    for name in (args.domains or "").split(","):
        if name.strip() and name.partition(":")[0].strip() not in DATASETS:
            _fail("--domains", args.domains, f"data sets from {', '.join(DATASETS)}")
    if args.model is not None and not is_model_name(args.model):
        _fail("--model", args.model, MODEL_NAMES_HELP)
    if args.models is not None:
        if not SPECS[args.algo].groups:
            groups_algos = ", ".join(with_capability("groups"))
            _fail("--models", args.models, f"only with --algo {groups_algos}")
        if args.model is not None:
            raise ConfigError("give --model (one architecture) or --models (groups), not both")
    natural_only = [  # given a value other than "no filter"
        f for f, off in (("min_client_examples", 1), ("max_client_examples", None))
        if getattr(args, f, None) not in (None, off)
    ]  # fmt: skip
    if natural_only and args.dataset not in NATURAL_DATASETS:
        flag = "--" + natural_only[0].replace("_", "-")
        _fail(
            flag,
            getattr(args, natural_only[0]),
            f"only with --dataset {', '.join(NATURAL_DATASETS)}",
        )
    if args.clients_per_round is not None and not 1 <= args.clients_per_round <= args.clients:
        _fail("--clients-per-round", args.clients_per_round, f"1..--clients ({args.clients})")
    validate_algorithm_flags(args, _fail)
    validate_sequence_task(args, _fail)
    if getattr(args, "data_placement", "auto") == "host":
        validate_host_placement(args, _fail)
    validate_privacy_flags(args, _fail)
    validate_clock_flags(args, _fail)
    validate_scale_flags(args, _fail)


def validate_sequence_task(args, fail) -> None:
    """The language tasks (next-token targets, :data:`SEQUENCE_DATASETS`) against what is not
    written for token positions: an algorithm without the ``sequences`` capability, a
    non-sequence model (and a sequence model on other data), label flipping, label-based
    partitions, --domains, --public-dataset, --models; --sequence-length elsewhere."""
    sequence_data = args.dataset in SEQUENCE_DATASETS
    if not sequence_data:
        if getattr(args, "sequence_length", None) is not None:
            fail(
                "--sequence-length",
                args.sequence_length,
                f"only with --dataset {', '.join(SEQUENCE_DATASETS)}",
            )
        if args.model is not None and is_sequence_model(args.model):
            fail(
                "--model",
                args.model,
                f"with --dataset {', '.join(SEQUENCE_DATASETS)} only (it reads token sequences)",
            )
        return
    able = with_capability("sequences")
    if args.algo not in able:
        fail(
            "--algo",
            args.algo,
            f"{', '.join(able)} with --dataset {args.dataset} (next-token "
            f"prediction; {args.algo}'s losses are per example and class, not per token)",
        )
    if args.model is not None and not is_sequence_model(args.model):
        fail(
            "--model",
            args.model,
            f"{', '.join(SEQUENCE_MODELS)} or charlstm-H with --dataset "
            f"{args.dataset} (token sequences)",
        )
    if getattr(args, "attack", "none") == "label_flip":
        fail(
            "--attack",
            "label_flip",
            f"none or scaled_update with --dataset {args.dataset} "
            "(label flipping permutes classes, not tokens)",
        )
    if args.partition not in (None, "natural"):
        fail(
            "--partition",
            args.partition,
            f"natural with --dataset {args.dataset} (its clients are its speaking roles)",
        )
    for flag in ("domains", "public_dataset", "models"):
        if getattr(args, flag, None):
            fail(
                "--" + flag.replace("_", "-"),
                getattr(args, flag),
                f"not with --dataset {args.dataset}",
            )


def validate_host_placement(args, fail) -> None:
    """``--data-placement host``: an algorithm whose cohort the host can draw before the round,
    one federation (no --domains), no validation split (it indexes the training split)."""
    able = with_capability("host_data")
    if args.algo not in able:
        fail(
            "--data-placement",
            "host",
            f"device or auto with --algo {args.algo}; host only with --algo "
            f"{', '.join(able)} (a cohort drawn from the round key alone)",
        )
    if args.domains:
        fail("--data-placement", "host", "device or auto with --domains")
    if args.client_val_fraction:
        fail("--data-placement", "host", "device or auto with --client-val-fraction > 0 (a "
             "validation split indexes the whole training split)")  # fmt: skip


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


def requested(args, defaults: dict) -> list[str]:
    """The flags among ``defaults`` ({dest: default}) given a value other than their default
    (None: not given)."""
    return [
        "--" + dest.replace("_", "-")
        for dest, default in defaults.items()
        if getattr(args, dest, None) not in (None, default)
    ]


def validate_privacy_flags(args, fail) -> None:
    """Cheap checks of the --dp-* flags (``fail(flag, value, allowed)`` raises)."""
    given = requested(args, DP_FLAGS)
    if not given:
        return
    if args.dp_clip is None:
        fail(given[0], getattr(args, given[0][2:].replace("-", "_")), "only with --dp-clip")
    if args.dp_epsilon is not None:
        if args.dp_noise != 0.0:
            fail("--dp-epsilon", args.dp_epsilon, "--dp-epsilon or --dp-noise, not both")
        if any(item.split("=")[0].strip().lstrip("-") in ("dp-noise", "dp_noise")
               for item in getattr(args, "sweep", None) or ()):  # fmt: skip
            fail("--dp-epsilon", args.dp_epsilon, "a fixed target; to compare noise levels, "
                 "--sweep dp-noise=... without --dp-epsilon")  # fmt: skip
    poisson = getattr(args, "participation", None) == "poisson"
    if getattr(args, "dp_accountant", None) == "pld" and not poisson:
        fail("--dp-accountant", "pld", "rdp with fixed participation (dp-accounting has no PLD "
             "of fixed-size sampling); pld with --participation poisson")  # fmt: skip
    if poisson and getattr(args, "min_received", None) not in (None, 1):
        fail("--min-received", args.min_received, "1 with --participation poisson and "
             "--dp-clip (every private round is applied, an empty cohort's update being the "
             "noise alone: skipping rounds by the cohort's size would release it)")  # fmt: skip
    adaptive_only = ("--dp-clip-count-noise",) if args.dp_clip_count_noise is not None else ()
    if adaptive_only and args.dp_clip_quantile is None:
        fail(adaptive_only[0], args.dp_clip_count_noise, "only with --dp-clip-quantile")


def validate_clock_flags(args, fail) -> None:
    """Cheap checks of the clock flags (``fail(flag, value, allowed)`` raises); a speed file is
    read here, so a bad value in it stops the run before any data is loaded."""
    given = requested(args, CLOCK_FLAGS)
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


def validate_scale_flags(args: argparse.Namespace, fail) -> None:
    distributed = (args.coordinator_address, args.num_processes, args.process_id)
    if any(v is not None for v in distributed):
        if any(v is None for v in distributed):
            fail(
                "--coordinator-address/--num-processes/--process-id",
                distributed,
                "all three together, or none",
            )
        if not 0 <= args.process_id < args.num_processes:
            fail("--process-id", args.process_id, f"0..{args.num_processes - 1}")
