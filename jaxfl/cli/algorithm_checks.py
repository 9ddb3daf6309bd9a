"""The cheap checks of the per-algorithm flags (:mod:`jaxfl.cli.algorithm_flags`), run before
any data is loaded; each failure names the flag and the allowed values. Imports no JAX at
import time (the checks that need an algorithm module import it when they run)."""

from __future__ import annotations

from jaxfl.core.names import AGGREGATIONS, FINETUNE_LAYERS, SERVER_OPTS


def validate_algorithm_flags(args, fail) -> None:
    """Cheap checks of the per-algorithm flags; ``fail(flag, value, allowed)`` raises."""
    if args.aggregation not in AGGREGATIONS:
        fail("--aggregation", args.aggregation, ", ".join(AGGREGATIONS))
    if args.server_opt not in SERVER_OPTS:
        fail("--server-opt", args.server_opt, ", ".join(SERVER_OPTS))
    if args.temperature <= 0:
        fail("--temperature", args.temperature, "a number > 0")
    if args.server_lr <= 0:
        fail("--server-lr", args.server_lr, "a number > 0")
    if args.finetune_layers not in FINETUNE_LAYERS:
        fail("--finetune-layers", args.finetune_layers, ", ".join(FINETUNE_LAYERS))
    for flag in (
        "distill_epochs",
        "public_per_round",
        "num_clusters",
        "distill_check_every",
        "fedmd_digest_batch",
    ):
        if getattr(args, flag) < 1:
            fail("--" + flag.replace("_", "-"), getattr(args, flag), "an integer >= 1")
    if args.personal_epochs is not None and args.personal_epochs < 1:
        fail("--personal-epochs", args.personal_epochs, "an integer >= 1")
    if args.personal_steps < 0:
        fail("--personal-steps", args.personal_steps, "an integer >= 0")
    for flag in (
        "prox_mu",
        "moon_mu",
        "ditto_lambda",
        "mrmtl_lambda",
        "fd_beta",
        "server_distill_steps",
        "fedmd_digest_epochs",
        "fedmd_public_epochs",
        "fedmd_private_epochs",
        "fccl_collab_steps",
        "fccl_pretrain_epochs",
        "fccl_lambda",
    ):
        if getattr(args, flag) < 0:
            fail("--" + flag.replace("_", "-"), getattr(args, flag), "a number >= 0")
    from jaxfl.algorithms import ALGORITHMS

    unseen_algos = [n for n, m in ALGORITHMS.items() if getattr(m, "SUPPORTS_UNSEEN", False)]
    if args.unseen_clients and args.algo not in unseen_algos:
        fail(
            "--unseen-clients",
            args.unseen_clients,
            f"0 for --algo {args.algo} (only "
            f"{', '.join(unseen_algos)} keep clients out of training)",
        )
    if not 0 <= args.unseen_clients < args.clients:
        fail("--unseen-clients", args.unseen_clients, f"0..--clients - 1 ({args.clients - 1})")
    if args.clients_per_round is not None and args.clients_per_round > args.clients - (
        args.unseen_clients
    ):
        fail(
            "--clients-per-round",
            args.clients_per_round,
            f"1..--clients minus --unseen-clients ({args.clients - args.unseen_clients})",
        )
    if args.incfl_tau <= 0:
        fail("--incfl-tau", args.incfl_tau, "a number > 0")
    if not 0 <= args.incfl_floor <= 1:
        fail("--incfl-floor", args.incfl_floor, "a fraction in 0..1")
    if args.incfl_c <= 0:
        fail("--incfl-c", args.incfl_c, "a number > 0")
    if args.incfl_eps < 0:
        fail("--incfl-eps", args.incfl_eps, "a number >= 0")
    if not 0 <= args.cluster_warmup <= 1:
        fail("--cluster-warmup", args.cluster_warmup, "a fraction in 0..1")
    if not 0 < args.distill_val_fraction < 1:
        fail("--distill-val-fraction", args.distill_val_fraction, "a fraction in (0, 1)")
    for flag in ("distill_temperature", "server_distill_lr", "fedmd_lr", "fccl_lr", "feddyn_alpha",
                 "moon_temperature"):  # fmt: skip
        if getattr(args, flag) <= 0:
            fail("--" + flag.replace("_", "-"), getattr(args, flag), "a number > 0")
    if args.algo == "fedbuff":
        _validate_fedbuff(args, fail)
    for flag in ("finetune_lr", "personal_lr", "meta_lr", "distill_lr"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            fail("--" + flag.replace("_", "-"), value, "a number > 0")


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
