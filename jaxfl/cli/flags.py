"""Every command-line flag of scripts/run.py: definitions with help, validation, config files.

:func:`parse` reads flags, optionally on top of a config file (``--config FILE``, TOML or JSON,
keys named like the flags); :func:`validate` checks the cheap things before any data is loaded;
:func:`resume_args` rebuilds a stopped run's flags from its results folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from jaxfl.cli.algorithm_flags import add_algorithm_arguments
from jaxfl.cli.config_flags import (
    FAULT_SETTINGS,
    add_setting_flags,
    check_capabilities,
    resolve,
    warn_foreign,
)
from jaxfl.cli.execution import EXECUTION_FLAGS, add_scale_arguments
from jaxfl.cli.flag_help import Grouped, help_algo
from jaxfl.cli.privacy_flags import add_privacy_arguments
from jaxfl.configs import ALGORITHMS, PERSONALIZATION, SPECS
from jaxfl.configs.shared import ClockFields
from jaxfl.core.errors import ConfigError as ConfigError  # noqa: E402  (raised by the library too)
from jaxfl.core.names import (
    DATASETS,
    LOWERING_CHOICES,
    MODEL_NAMES_HELP,
    PARTITIONS,
)
from jaxfl.experiments.validation import validate as validate  # the checks the library runs too


def add_arguments(
    parser: argparse.ArgumentParser, algo: str | None = None
) -> argparse.ArgumentParser:
    """Add the flags; ``algo`` (one algorithm) makes the settings' help show its defaults."""
    a = parser.add_argument
    a(
        "--algo",
        default="dsfl",
        help=f"federated algorithm: {', '.join(ALGORITHMS)} (default dsfl); several, comma "
        "separated (fedavg,dsfl), run one after another on the same partitions and seeds and "
        "compared in comparison.md",
    )
    a(
        "--seeds",
        default=None,
        help="run several seeds side by side in one compiled call (the experiments axis): a count "
        "(5: seeds --seed .. --seed+4) or a list (0,3,7); each seed has its own partition, "
        "sampling and initialisation; results report mean, std and 95%% CI over seeds",
    )
    a(
        "--sweep",
        action="append",
        default=None,
        metavar="NAME=V1,V2,...",
        help="sweep a float hyperparameter (repeatable: the grid of all values, times --seeds), "
        "e.g. --sweep lr=0.01,0.1 --sweep temperature=0.1,0.5; learning rates, temperatures, "
        "penalties and fault probabilities run in one compiled call; a float that fixes a shape "
        "(e.g. --distill-val-fraction) runs one compiled group per value",
    )
    a(
        "--experiment-chunk",
        type=int,
        default=None,
        help="experiments vmapped at once per device in a sweep (default: on accelerators all "
        "of a device's, or the most that fit in its memory by XLA's analysis of the compiled "
        "round; on a CPU as many as keep a training step in cache)",
    )
    a("--clients", type=int, default=100, help="number of simulated clients C (default 100)")
    add_setting_flags(a, ("clients_per_round", "participation"), algo)
    a(
        "--dataset",
        default="mnist",
        help=f"data set: {', '.join(DATASETS)} (default mnist, through tensorflow-datasets or "
        "--data-dir). Embedded, no download: 'blobs' (10 classes of Gaussian blobs in 60-d, one "
        "labelling function, split by --partition: learnable from non-IID clients), 'synthetic' "
        "(FedProx's Synthetic(1,1): every client its own labelling function, for "
        "personalization), 'synthetic_iid' and 'leaf_synthetic' (LEAF's synthetic federation: "
        "1000 clients of heavy-tailed sizes, 5 classes). Natural federations from their "
        "published files in --data-dir: emnist62_federated (EMNIST-62 by writer; FedJAX's or "
        "TFF's SQLite, or LEAF's JSON) and cifar100_federated (TFF's Pachinko split); --clients "
        "N takes the first N of a fixed shuffled order of their clients",
    )
    a(
        "--domains",
        default=None,
        help="a multi-domain federation instead of --dataset: DATASET[:TRANSFORM],... e.g. "
        "mnist,mnist:invert,mnist:rot90 (transforms: none, invert, rot90, flip); the clients are "
        "split evenly over the domains, each partitioned with --partition",
    )
    a(
        "--data-dir",
        default=None,
        help="folder of MNIST-family IDX files (train-images-idx3-ubyte[.gz], ...) to read instead "
        "of downloading; otherwise passed to TFDS as its data_dir",
    )
    a(
        "--min-client-examples",
        type=int,
        default=1,
        help="natural federations: keep only the clients with at least this many train examples "
        "(default 1)",
    )
    a(
        "--max-client-examples",
        type=int,
        default=None,
        help="natural federations: use at most each client's first M train examples, as TFF's "
        "max_elements and Reddi et al.'s StackOverflow cap (default: all)",
    )
    a(
        "--partition",
        default=None,
        help=f"how to split data over clients: {', '.join(PARTITIONS)} (default: natural for "
        "synthetic, dirichlet otherwise)",
    )
    a(
        "--alpha",
        type=float,
        default=1.0,
        help="Dirichlet concentration for --partition dirichlet/quantity; smaller is more skewed "
        "(default 1.0)",
    )
    a("--shards-per-client", type=int, default=2, help="shards per client for --partition shards")
    a(
        "--classes-per-client",
        type=int,
        default=2,
        help="labels per client for --partition classes (DS-FL's non-IID setting; default 2)",
    )
    a(
        "--rare-labels",
        type=int,
        default=2,
        help="for --partition rare (FD's non-IID setting): IID shares in which each client keeps "
        "only --rare-examples of this many labels, drawn per client (default 2)",
    )
    a(
        "--rare-examples",
        type=int,
        default=2,
        help="examples a client keeps of each of its --rare-labels (default 2)",
    )
    a(
        "--model",
        default=None,
        help=f"model: {MODEL_NAMES_HELP} (default: lenet5 for 28x28 images, resnet8 for 32x32, "
        "mlp (hidden 200-200, FedAvg's 2NN) for vectors)",
    )
    a(
        "--models",
        default=None,
        help="clients with different architectures: MODEL:WEIGHT,... e.g. lenet5:40,mlp:30,"
        "logreg:30 splits the clients (and each round's sample) into groups of those sizes, "
        "each with its model (algorithms: dsfl, fd, feddf, fedmd, fccl, local; instead of --model)",
    )
    a(
        "--conv-lowering",
        default=None,
        help=f"how conv layers are computed: {', '.join(LOWERING_CHOICES)} (default auto: each "
        "layer's fastest, measured once per layer shape on this machine and cached in "
        "$JAXFL_CACHE/conv_lowerings.json; any other value forces that lowering everywhere)",
    )
    a("--rounds", type=int, default=20, help="communication rounds (default 20)")
    add_setting_flags(a, ("local_epochs", "batch_size", "lr"), algo)
    a(
        "--public-size",
        type=int,
        default=None,
        help="unlabeled public (open) set size, drawn from the train split disjoint from all "
        "clients (default: one sixth of the train split, 10,000 on MNIST)",
    )
    a(
        "--public-dataset",
        default=None,
        help="take the public set from this data set's train split instead (labels dropped)",
    )
    a(
        "--client-test-size",
        type=int,
        default=None,
        help="examples in each client's own test split, drawn from the test set with the client's "
        "label distribution (default: test size / C)",
    )
    a("--eval-every", type=int, default=1, help="evaluate every N rounds (default 1)")
    add_setting_flags(a, ("client_chunk",), algo)
    a(
        "--client-val-fraction",
        type=float,
        default=None,
        help="fraction of each client's training data held out as its own validation split "
        "(default: 0.1 for the personalization algorithms "
        f"({', '.join(PERSONALIZATION)}), 0 otherwise)",
    )
    a("--seed", type=int, default=0, help="seed for data partition, init and every round")
    add_algorithm_arguments(a, algo)
    add_setting_flags(a, tuple(FAULT_SETTINGS), algo)
    add_privacy_arguments(a, algo)
    add_setting_flags(a, tuple(f.name for f in dataclasses.fields(ClockFields)), algo)
    add_scale_arguments(a)
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of the host loop: results folder, checkpoints, resuming, stopping, logging."""
    a = parser.add_argument
    a(
        "--config",
        default=None,
        help="TOML or JSON file of flag values (keys named like the flags, e.g. dropout = 0.2 or "
        "'clients-per-round' = 10); flags on the command line override it",
    )
    a(
        "--out",
        default=None,
        help="results folder (default results/ALGO-DATASET-TIMESTAMP); must not exist or be empty",
    )
    a(
        "--checkpoint-every",
        type=int,
        default=10,
        help="write an Orbax checkpoint of the whole simulation every N rounds and at the end, "
        "under OUT/checkpoints, for --resume (default 10; 0: no checkpoints)",
    )
    a(
        "--keep-checkpoints",
        type=int,
        default=3,
        help="how many of the newest checkpoints to keep (default 3)",
    )
    a(
        "--resume",
        default=None,
        metavar="RESULTS_DIR",
        help="continue the stopped run in RESULTS_DIR from its newest checkpoint, with its saved "
        "flags (only --rounds may be given with it, to extend the run)",
    )
    a(
        "--early-stop-patience",
        type=int,
        default=0,
        help="stop after this many evaluations without a better --early-stop-metric (default 0: "
        "off; in a sweep each experiment stops on its own)",
    )
    a(
        "--early-stop-metric",
        default=None,
        help="the metric (larger is better) that --early-stop-patience, --target and the "
        "progress bar watch (default: test_acc, or client_acc_mean for algorithms without a "
        "global model: local, hypcluster)",
    )
    a(
        "--target",
        type=float,
        default=None,
        help="stop once --early-stop-metric reaches this value (default: off)",
    )
    a(
        "--time-budget",
        type=float,
        default=None,
        help="stop after the first round that ends past this many seconds (a sweep: after the "
        "first compiled block past it, checkpointed; default: off)",
    )
    a(
        "--compare-local",
        action="store_true",
        help="also train the local-only baseline on the same split (cached) and report the "
        "fraction of clients worse off than training alone (frac_worse_than_local)",
    )
    a(
        "--tensorboard",
        action="store_true",
        help="also log evaluated metrics to OUT/tensorboard (a sweep: one TensorBoard run per "
        "experiment, OUT/tensorboard/ALGO/SETTING-seedS; pip install 'jaxfl[tensorboard]')",
    )
    return parser


def _parser(description: str = "", algo: str | None = None, **kwargs) -> argparse.ArgumentParser:
    """All flags, grouped for --help; ``algo`` (one known algorithm) shows only its own flags."""
    epilog = (
        None
        if algo
        else "python scripts/run.py --algo NAME --help lists only that algorithm's own flags"
    )
    kwargs.setdefault("usage", "%(prog)s [--algo NAME] [--dataset NAME] [--clients C] [FLAG ...]")
    parser = argparse.ArgumentParser(description=description, epilog=epilog, **kwargs)
    algo = algo if algo in SPECS else None
    grouped = Grouped(parser, algo)
    add_arguments(grouped, algo)
    add_run_arguments(grouped)
    return parser


def load_config_file(path: str | Path, parser: argparse.ArgumentParser) -> dict:
    """Flag values from a TOML/JSON file, keyed by argparse dest; unknown keys are an error."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--config {path} does not exist")
    text = path.read_text()
    if path.suffix == ".json":
        raw = json.loads(text)
    else:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        raw = tomllib.loads(text)
    dests = {action.dest for action in parser._actions} - {"help", "config", "resume"}
    values = {}
    for key, value in raw.items():
        dest = key.lstrip("-").replace("-", "_")
        if dest not in dests:
            raise ConfigError(
                f"--config {path}: unknown key {key!r}; allowed: the flags of run.py "
                f"({', '.join(sorted(dests))})"
            )
        values[dest] = value
    return values


def parse(argv: list[str] | None = None, description: str = "") -> argparse.Namespace:
    """Parse ``argv``; values from ``--config FILE`` act as defaults the command line overrides."""
    parser = _parser(description, algo=help_algo(argv))
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**load_config_file(pre.config, parser))
    args = parser.parse_args(argv)
    if args.algo in SPECS:  # one algorithm: its settings' defaults; several: as each is run
        check_capabilities(args)  # an error before the notes on flags it does not read
        warn_foreign(args, given_flags(argv))
        resolve(args)
    return args


def given_flags(argv: list[str] | None) -> set[str]:
    """The dests of the flags that ``argv`` sets explicitly."""
    parser = _parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def resume_args(argv: list[str] | None, results_dir: str | Path) -> argparse.Namespace:
    """The flags of the run in ``results_dir`` (its config.json), for ``--resume``.

    Only ``--rounds`` (to extend the run) and the flags that change how, not what, the run
    computes (``--devices``, ``--rounds-per-call``, the multi-host flags) may be given; any other
    flag is an error, since it could make the resumed run differ from the one that was stopped.
    """
    results_dir = Path(results_dir)
    config_file = results_dir / "config.json"
    if not config_file.exists():
        raise ConfigError(f"--resume {results_dir}: no config.json, not a jaxfl results folder")
    saved = json.loads(config_file.read_text()).get("flags")
    if saved is None:
        raise ConfigError(f"--resume {results_dir}: config.json has no 'flags' record")
    given = given_flags(argv)
    allowed = {"rounds", *EXECUTION_FLAGS}
    extra = given - {"resume"} - allowed
    if extra:
        raise ConfigError(
            "--resume takes only --rounds, --devices, --rounds-per-call and the multi-host flags "
            f"besides it; got {', '.join(sorted(extra))}"
        )
    args = _parser().parse_args([])
    vars(args).update(saved)
    fresh = parse(argv)
    for flag in given & allowed:
        setattr(args, flag, getattr(fresh, flag))
    args.resume = str(results_dir)
    args.out = str(results_dir)
    return resolve(args) if args.algo in SPECS else args
