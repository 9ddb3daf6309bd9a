"""The names a user can choose on the command line, in one import-light module.

Data sets, partitions, models, attacks, lowerings and the like are defined here (the modules
that implement them re-export them) so that :mod:`jaxfl.cli.flags` can build the whole
``--help`` without importing JAX: ``run.py --help`` answers in about a second. The algorithms'
names, configs and capabilities are :mod:`jaxfl.configs.specs`'.
"""

from __future__ import annotations

# --dataset: name -> (TFDS builder name, image key, number of classes), then the embedded sets
TFDS_DATASETS = {
    "mnist": ("mnist", "image", 10),
    "fashion_mnist": ("fashion_mnist", "image", 10),
    "emnist_digits": ("emnist/digits", "image", 10),
    "emnist_balanced": ("emnist/balanced", "image", 47),
    "emnist_letters": ("emnist/letters", "image", 37),
    "cifar10": ("cifar10", "image", 10),
    "cifar100": ("cifar100", "image", 100),
}
EMBEDDED_DATASETS = (
    "blobs", "synthetic", "synthetic_iid", "leaf_synthetic", "shakespeare_synthetic"
)  # fmt: skip
# federated by construction, read from their published files (jaxfl.data.natural): --data-dir
FILE_NATURAL_DATASETS = ("emnist62_federated", "cifar100_federated", "shakespeare", "stackoverflow")
NATURAL_DATASETS = ("leaf_synthetic", "shakespeare_synthetic", *FILE_NATURAL_DATASETS)
DATASETS = tuple(TFDS_DATASETS) + EMBEDDED_DATASETS + FILE_NATURAL_DATASETS
# generated from --seed: a different seed is different data
SEEDED_DATASETS = ("synthetic", "synthetic_iid", "leaf_synthetic", "shakespeare_synthetic")
# next-token prediction (jaxfl.data.natural.shakespeare): token inputs and targets (N, T)
SEQUENCE_DATASETS = ("shakespeare", "shakespeare_synthetic", "stackoverflow")

PARTITIONS = ("iid", "dirichlet", "shards", "classes", "quantity", "rare", "natural")
# --data-placement: where the training split lives (jaxfl.data.host_store)
DATA_PLACEMENTS = ("auto", "device", "host")
ATTACKS = ("none", "label_flip", "random_logits", "scaled_logits", "scaled_update")
AGGREGATIONS = ("era", "sa")
INCFL_RULES = ("maxfl", "bump")  # --incfl-rule (the first is the default)
SERVER_OPTS = ("sgd", "momentum", "adam", "yogi")
# the virtual clock (jaxfl.mechanisms.clock): --client-speed/--client-latency kinds
SPEED_KINDS = ("constant", "lognormal", "two-tier", "uniform", "file")
FINETUNE_LAYERS = ("all", "last")
# --participation: exactly m of C each round, or each client independently with q = m / C
PARTICIPATIONS = ("fixed", "poisson")
DP_ACCOUNTANTS = ("rdp", "pld")  # --dp-accountant: dp-accounting's Renyi DP or PLD accountant

# --model
MODELS = (
    "logreg", "mlp", "cnn", "emnist-cnn", "lenet5", "resnet8", "resnet20", "charlstm",
    "nwp-lstm", "transformer-S",
)  # fmt: skip
IMAGE_MODELS = ("cnn", "emnist-cnn", "lenet5", "resnet8", "resnet20")
SEQUENCE_MODELS = (
    "charlstm",
    "nwp-lstm",
    "transformer-S",
)  # token sequences in, next-token logits out
MODEL_NAMES_HELP = (
    f"{', '.join(MODELS)}, mlp-H1-H2... (an MLP with those hidden widths), or charlstm-H (the "
    "character LSTM with H units per layer; charlstm is H=256); charlstm, nwp-lstm (the "
    "StackOverflow word LSTM) and transformer-S (a 3-block decoder-only transformer of width "
    "128) are for the language tasks"
)
COMPUTE_DTYPES = ("float32", "bfloat16")
CONV_LOWERINGS = ("rows", "im2col", "patches", "xla")
LOWERING_CHOICES = ("auto", *CONV_LOWERINGS)


def mlp_hidden(name: str) -> tuple[int, ...] | None:
    """The hidden widths a model name gives an MLP: ``"mlp"`` -> (200, 200) (FedAvg's 2NN),
    ``"mlp-64-64"`` -> (64, 64); None for any other name, including malformed ``mlp-...``."""
    if name == "mlp":
        return (200, 200)
    head, *widths = name.split("-")
    if head != "mlp" or not widths or not all(w.isdigit() and int(w) > 0 for w in widths):
        return None
    return tuple(int(w) for w in widths)


def lstm_hidden(name: str) -> int | None:
    """The LSTM width a model name gives the character LSTM: ``"charlstm"`` -> 256 (McMahan et
    al.'s), ``"charlstm-64"`` -> 64; None for any other name."""
    if name == "charlstm":
        return 256
    head, _, width = name.partition("-")
    return int(width) if head == "charlstm" and width.isdigit() and int(width) > 0 else None


def is_sequence_model(name: str) -> bool:
    """Whether zoo model ``name`` reads token sequences (the language tasks' models)."""
    return lstm_hidden(name) is not None or name in SEQUENCE_MODELS


def is_model_name(name: str) -> bool:
    """Whether ``name`` names a zoo model (see :data:`MODEL_NAMES_HELP`)."""
    return name in MODELS or mlp_hidden(name) is not None or lstm_hidden(name) is not None
