"""The groups of a run's settings besides the algorithm's own: the data, the model, the DP
accountant, the experiments axis, the execution and the host loop's output. Each is a frozen
dataclass whose fields are settings (:func:`jaxfl.configs.fields.setting`: default, help,
allowed values), the single source of the run-level flags; :class:`jaxfl.configs.run.RunConfig`
holds one of each. Imports no JAX.
"""

from __future__ import annotations

import dataclasses

from jaxfl.configs.fields import setting
from jaxfl.core.names import (
    COMPUTE_DTYPES,
    DATA_PLACEMENTS,
    DATASETS,
    DP_ACCOUNTANTS,
    LOWERING_CHOICES,
    MODEL_NAMES_HELP,
    PARTITIONS,
)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The data set, how it is split over the clients, and the public and held-out splits."""

    dataset: str = setting(
        "mnist",
        "data set, through tensorflow-datasets or --data-dir. Embedded, no download: 'blobs' "
        "(10 classes of Gaussian blobs in 60-d, one labelling function, split by --partition: "
        "learnable from non-IID clients), 'synthetic' (FedProx's Synthetic(1,1): every client "
        "its own labelling function, for personalization), 'synthetic_iid' and 'leaf_synthetic' "
        "(LEAF's synthetic federation: 1000 clients of heavy-tailed sizes, 5 classes). Natural "
        "federations from their published files in --data-dir: emnist62_federated (EMNIST-62 "
        "by writer; FedJAX's or TFF's SQLite, or LEAF's JSON) and cifar100_federated (TFF's "
        "Pachinko split), shakespeare (next-character prediction, one client per speaking "
        "role; FedJAX's or TFF's SQLite, or LEAF's JSON) and stackoverflow (next-word "
        "prediction, one client per user; FedJAX's or TFF's SQLite with the word counts); "
        "--clients N takes the first N of a "
        "fixed shuffled order of their clients. 'shakespeare_synthetic': generated roles' "
        "lines, the shakespeare task without a download",
        choices=DATASETS,
    )
    clients: int = setting(100, "number of simulated clients C", check=">= 1")
    data_dir: str | None = setting(
        None,
        "folder of MNIST-family IDX files (train-images-idx3-ubyte[.gz], ...) or of a natural "
        "federation's files to read instead of downloading; otherwise passed to TFDS as its "
        "data_dir",
        default_help="download",
    )
    domains: str | None = setting(
        None,
        "a multi-domain federation instead of --dataset: DATASET[:TRANSFORM],... e.g. "
        "mnist,mnist:invert,mnist:rot90 (transforms: none, invert, rot90, flip); the clients "
        "are split evenly over the domains, each partitioned with --partition",
    )
    min_client_examples: int = setting(
        1,
        "natural federations: keep only the clients with at least this many train examples",
        check=">= 1",
    )
    max_client_examples: int | None = setting(
        None,
        "natural federations: use at most each client's first M train examples, as TFF's "
        "max_elements and Reddi et al.'s StackOverflow cap",
        check=">= 1",
        default_help="all",
    )
    sequence_length: int | None = setting(
        None,
        "language tasks: tokens per input and target row (shakespeare: each role's text cut "
        "into rows of this length; stackoverflow: each sentence cut or padded to it)",
        check=">= 1",
        default_help="80 for shakespeare (McMahan et al.'s), 20 for stackoverflow (Reddi et al.'s)",
    )
    data_placement: str = setting(
        "auto",
        "where the training split lives: device (on the device once; each round indexes it) "
        "or host (in host memory; each round only the sampled cohort's examples are gathered "
        "and sent, the next round's while this one computes: a federation larger than the "
        "device; algorithms whose cohort depends on the round's key alone: fedavg, fedprox, "
        "scaffold, fednova, feddyn, moon); auto: host where the split exceeds half the "
        "device's memory",
        choices=DATA_PLACEMENTS,
    )
    partition: str | None = setting(
        None,
        "how to split data over clients",
        choices=PARTITIONS,
        default_help="natural for the natural federations and synthetic, dirichlet otherwise",
    )
    alpha: float = setting(
        1.0,
        "Dirichlet concentration for --partition dirichlet/quantity; smaller is more skewed",
        check="> 0",
    )
    shards_per_client: int = setting(2, "shards per client for --partition shards", check=">= 1")
    classes_per_client: int = setting(
        2, "labels per client for --partition classes (DS-FL's non-IID setting)", check=">= 1"
    )
    rare_labels: int = setting(
        2,
        "for --partition rare (FD's non-IID setting): IID shares in which each client keeps "
        "only --rare-examples of this many labels, drawn per client",
        check=">= 0",
    )
    rare_examples: int = setting(
        2, "examples a client keeps of each of its --rare-labels", check=">= 0"
    )
    public_size: int | None = setting(
        None,
        "unlabeled public (open) set size, drawn from the train split disjoint from all clients",
        check=">= 0",
        default_help="one sixth of the train split, 10,000 on MNIST",
    )
    public_dataset: str | None = setting(
        None,
        "take the public set from this data set's train split instead (labels dropped)",
        choices=DATASETS,
        default_help="--dataset",
    )
    client_test_size: int | None = setting(
        None,
        "examples in each client's own test split, drawn from the test set with the client's "
        "label distribution",
        check=">= 1",
        default_help="test size / C",
    )
    client_val_fraction: float | None = setting(
        None,
        "fraction of each client's training data held out as its own validation split",
        check="[0, 1)",
        allowed="0 <= fraction < 1",
        default_help="0.1 for the personalization algorithms, 0 otherwise",
    )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The clients' architecture (or architectures) and how it is computed."""

    model: str | None = setting(
        None,
        f"model: {MODEL_NAMES_HELP}",
        default_help="lenet5 for 28x28 images, resnet8 for 32x32, mlp (hidden 200-200, "
        "FedAvg's 2NN) for vectors",
    )
    models: str | None = setting(
        None,
        "clients with different architectures: MODEL:WEIGHT,... e.g. lenet5:40,mlp:30,"
        "logreg:30 splits the clients (and each round's sample) into groups of those sizes, "
        "each with its model (algorithms: dsfl, fd, feddf, fedmd, fccl, local; instead of "
        "--model)",
    )
    conv_lowering: str | None = setting(
        None,
        "how conv layers are computed: auto is each layer's fastest, measured once per layer "
        "shape on this machine and cached in $JAXFL_CACHE/conv_lowerings.json; any other value "
        "forces that lowering everywhere",
        choices=LOWERING_CHOICES,
        default_help="auto",
    )
    compute_dtype: str = setting(
        "float32",
        "dtype of the forward and backward passes; parameters, optimizer states and "
        "aggregation stay float32 (bfloat16 pays off on GPUs and TPUs, not on CPUs)",
        choices=COMPUTE_DTYPES,
    )


@dataclasses.dataclass(frozen=True)
class AccountingConfig:
    """The DP accountant's settings (the mechanism's are the algorithm config's
    :class:`jaxfl.configs.shared.DPFields`)."""

    dp_epsilon: float | None = setting(
        None,
        "instead of --dp-noise: the epsilon to reach after --rounds rounds; the noise "
        "multiplier is calibrated to it with dp-accounting before the run",
        check="> 0",
        allowed="a target epsilon > 0",
    )
    dp_delta: float | None = setting(
        None,
        "DP delta of every epsilon reported, 0 < delta < 1",
        check="(0, 1)",
        allowed="0 < delta < 1",
        default_help="C^-1.1, C the clients that may be sampled",
    )
    dp_accountant: str | None = setting(
        None,
        "dp-accounting's accountant of every epsilon: rdp (Renyi DP) or pld (privacy loss "
        "distributions, tighter; Poisson participation only, as the library has no PLD of "
        "fixed-size sampling)",
        choices=DP_ACCOUNTANTS,
        default_help="pld with --participation poisson, else rdp",
    )


@dataclasses.dataclass(frozen=True)
class AxisConfig:
    """The experiments axis: seeds and hyperparameter grids side by side in one compiled call
    (:mod:`jaxfl.experiments.axis`)."""

    seeds: str | None = setting(
        None,
        "run several seeds side by side in one compiled call (the experiments axis): a count "
        "(5: seeds --seed .. --seed+4) or a list (0,3,7); each seed has its own partition, "
        "sampling and initialisation; results report mean, std and 95% CI over seeds",
        default_help="--seed alone",
    )
    sweep: tuple[str, ...] | None = setting(
        None,
        "sweep a float hyperparameter (repeatable: the grid of all values, times --seeds), "
        "e.g. --sweep lr=0.01,0.1 --sweep temperature=0.1,0.5; learning rates, temperatures, "
        "penalties and fault probabilities run in one compiled call; a float that fixes a "
        "shape (e.g. --distill-val-fraction) runs one compiled group per value",
        cli={"action": "append", "metavar": "NAME=V1,V2,..."},
        default_help="no sweep",
    )
    experiment_chunk: int | None = setting(
        None,
        "experiments vmapped at once per device in a sweep",
        check=">= 1",
        default_help="on accelerators all of a device's, or the most that fit in its memory "
        "by XLA's analysis of the compiled round; on a CPU as many as keep a training step in "
        "cache",
    )


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
    """How a run executes, not what it computes (``--resume`` accepts new values): devices,
    round scanning and several hosts (:mod:`jaxfl.cli.execution`)."""

    devices: int | None = setting(
        None,
        "split the clients over this many devices, a 1-D mesh named 'clients' (on a CPU "
        "scripts/run.py makes one host device per core unless XLA_FLAGS="
        "--xla_force_host_platform_device_count=N says otherwise; --devices 1: no split)",
        check=">= 1",
        allowed="an integer >= 1 (or leave it out: all devices)",
        default_help="all devices",
    )
    rounds_per_call: int = setting(
        1,
        "run up to this many rounds in one compiled call (lax.scan over rounds, one host round "
        "trip); blocks still end at every evaluation and checkpoint",
        check=">= 1",
    )
    coordinator_address: str | None = setting(
        None,
        "several hosts: HOST:PORT of process 0, for jax.distributed.initialize (give the same "
        "command on every host with its own --process-id)",
        default_help="one host",
    )
    num_processes: int | None = setting(
        None,
        "several hosts: how many processes take part (with --coordinator-address)",
        check=">= 1",
    )
    process_id: int | None = setting(
        None, "several hosts: this process's index, 0..--num-processes - 1", check=">= 0"
    )


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """The host loop's results folder, checkpoints, resuming, stopping and logging."""

    out: str | None = setting(
        None,
        "results folder; must not exist or be empty",
        default_help="results/ALGO-DATASET-TIMESTAMP",
    )
    checkpoint_every: int = setting(
        10,
        "write an Orbax checkpoint of the whole simulation every N rounds and at the end, under "
        "OUT/checkpoints, for --resume (0: no checkpoints)",
        check=">= 0",
    )
    keep_checkpoints: int = setting(3, "how many of the newest checkpoints to keep", check=">= 1")
    resume: str | None = setting(
        None,
        "continue the stopped run in RESULTS_DIR from its newest checkpoint, with its saved "
        "flags (only --rounds may be given with it, to extend the run)",
        cli={"metavar": "RESULTS_DIR"},
    )
    early_stop_patience: int = setting(
        0,
        "stop after this many evaluations without a better --early-stop-metric (0: off; in a "
        "sweep each experiment stops on its own)",
        check=">= 0",
    )
    early_stop_metric: str | None = setting(
        None,
        "the metric (larger is better) that --early-stop-patience, --target and the progress "
        "bar watch",
        default_help="test_acc, or client_acc_mean for algorithms without a global model: "
        "local, hypcluster",
    )
    target: float | None = setting(
        None, "stop once --early-stop-metric reaches this value", default_help="off"
    )
    time_budget: float | None = setting(
        None,
        "stop after the first round that ends past this many seconds (a sweep: after the first "
        "compiled block past it, checkpointed; 0: after the first)",
        check=">= 0",
        default_help="off",
    )
    compare_local: bool = setting(
        False,
        "also train the local-only baseline on the same split (cached) and report the fraction "
        "of clients worse off than training alone (frac_worse_than_local)",
    )
    tensorboard: bool = setting(
        False,
        "also log evaluated metrics to OUT/tensorboard (a sweep: one TensorBoard run per "
        "experiment, OUT/tensorboard/ALGO/SETTING-seedS; pip install 'jaxfl[tensorboard]')",
    )


# RunConfig's attribute -> its group's class (the run-level settings' groups)
