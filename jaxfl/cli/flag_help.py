"""How ``run.py --help`` lays out the flags: groups in a reader's order, and one algorithm's own
flags only when ``--algo X --help`` names one. Imports nothing heavy (see
:mod:`jaxfl.core.names`)."""

from __future__ import annotations

import argparse
import sys

from jaxfl.cli.config_flags import ALGORITHM_SETTINGS, SETTINGS_OF

RUN_DESCRIPTION = "Run one federated-learning simulation and write its results folder."

# --help's groups, in order, and the flags each holds; every setting not named here is a
# per-algorithm flag (jaxfl.cli.algorithm_flags)
GROUPS = {
    "essentials": (
        "algo",
        "dataset",
        "data_dir",
        "clients",
        "clients_per_round",
        "participation",
        "rounds",
        "model",
        "seed",
        "config",
        "out",
    ),
    "experiments axis (seeds and sweeps side by side in one compiled call)": (
        "seeds",
        "sweep",
        "experiment_chunk",
    ),
    "data": (
        "domains",
        "partition",
        "alpha",
        "shards_per_client",
        "classes_per_client",
        "rare_labels",
        "rare_examples",
        "min_client_examples",
        "max_client_examples",
        "sequence_length",
        "data_placement",
        "public_size",
        "public_dataset",
        "client_test_size",
        "client_val_fraction",
    ),
    "model": ("models", "conv_lowering", "compute_dtype"),
    "training": ("local_epochs", "batch_size", "lr", "eval_every"),
    "faults (dropout, stragglers, adversaries)": (
        "dropout",
        "min_received",
        "straggler_fraction",
        "straggler_work",
        "adversary_fraction",
        "attack",
        "attack_scale",
    ),
    "differential privacy (jaxfl.mechanisms.privacy; epsilon by dp-accounting)": (
        "dp_clip",
        "dp_noise",
        "dp_epsilon",
        "dp_delta",
        "dp_accountant",
        "dp_clip_quantile",
        "dp_clip_lr",
        "dp_clip_count_noise",
    ),
    "virtual clock (jaxfl.mechanisms.clock: simulated time, client speeds, when a round ends)": (
        "client_speed",
        "client_latency",
        "round_deadline",
        "round_first",
    ),
    "scale (devices, hosts, memory)": (
        "client_chunk",
        "devices",
        "rounds_per_call",
        "coordinator_address",
        "num_processes",
        "process_id",
    ),
    "output, checkpoints and stopping": (
        "checkpoint_every",
        "keep_checkpoints",
        "resume",
        "early_stop_patience",
        "early_stop_metric",
        "target",
        "time_budget",
        "compare_local",
        "tensorboard",
    ),
}
ALGORITHM_GROUP = "per-algorithm flags (each names the algorithms that read it)"


class Grouped:
    """Stands in for the parser while the flags are added: each flag goes to its --help group
    (:data:`GROUPS`); with ``algo``, the settings only other algorithms read parse but are not
    shown."""

    def __init__(self, parser: argparse.ArgumentParser, algo: str | None):
        self.parser = parser
        algo_title = f"{algo}'s own flags" if algo else ALGORITHM_GROUP
        self.groups = {t: parser.add_argument_group(t) for t in (*GROUPS, algo_title)}
        self.group_of = {dest: title for title, dests in GROUPS.items() for dest in dests}
        self.algo_title = algo_title
        self.shown = set(SETTINGS_OF[algo]) if algo else None

    def add_argument(self, *names, **kwargs):
        dest = names[0].lstrip("-").replace("-", "_")
        title = self.group_of.get(dest, self.algo_title)
        if self.shown is not None and dest in ALGORITHM_SETTINGS and dest not in self.shown:
            kwargs["help"] = argparse.SUPPRESS
        return self.groups[title].add_argument(*names, **kwargs)


def help_algo(argv: list[str] | None) -> str | None:
    """The one algorithm ``--algo`` names when ``argv`` asks for --help (else None)."""
    argv = list(argv) if argv is not None else sys.argv[1:]
    if not {"-h", "--help"} & set(argv):
        return None
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--algo", default=None)
    return pre.parse_known_args(argv)[0].algo
