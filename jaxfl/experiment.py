"""From command-line flags to a bound algorithm: shared by scripts/run.py, scripts/bench.py, tests.

:func:`add_arguments` defines every flag with its help; :func:`validate` checks the cheap things
before any data is loaded; :func:`build` loads data, partitions it, builds the model and binds
the algorithm.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

from algorithms import ALGORITHMS
from jaxfl.aggregate import AGGREGATIONS
from jaxfl.clients import default_chunk_size
from jaxfl.data import DATASETS, PARTITIONS, FederationSpec, build_federation, load_dataset
from jaxfl.models import CONV_LOWERINGS, MODELS, get_model


class ConfigError(ValueError):
    """A flag has a value that cannot work; the message names the flag and the allowed values."""


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    a = parser.add_argument
    a("--algo", default="dsfl", help=f"federated algorithm: {', '.join(ALGORITHMS)} (default dsfl)")
    a("--clients", type=int, default=100, help="number of simulated clients C (default 100)")
    a(
        "--clients-per-round",
        type=int,
        default=None,
        help="clients sampled per round, uniform without replacement (default: all C)",
    )
    a(
        "--dataset",
        default="mnist",
        help=f"data set: {', '.join(DATASETS)} (default mnist, through tensorflow-datasets or "
        "--data-dir; 'synthetic' (FedProx Synthetic(1,1)) and 'synthetic_iid' are embedded "
        "and need no download)",
    )
    a(
        "--data-dir",
        default=None,
        help="folder of MNIST-family IDX files (train-images-idx3-ubyte[.gz], ...) to read instead "
        "of downloading; otherwise passed to TFDS as its data_dir",
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
        "--model",
        default=None,
        help=f"model: {', '.join(MODELS)} (default: lenet5 for 28x28 images, resnet8 for 32x32, "
        "mlp for vectors)",
    )
    a(
        "--conv-lowering",
        default=None,
        help=f"how conv layers are computed: {', '.join(CONV_LOWERINGS)} (default: the measured "
        "fastest on this backend)",
    )
    a("--rounds", type=int, default=20, help="communication rounds (default 20)")
    a("--local-epochs", type=int, default=5, help="local epochs on private data (default 5)")
    a("--batch-size", type=int, default=50, help="local minibatch size (default 50)")
    a("--lr", type=float, default=0.1, help="client SGD learning rate (default 0.1)")
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
        "--public-per-round",
        type=int,
        default=1000,
        help="DS-FL: open samples drawn from the public set each round (default 1000)",
    )
    a("--distill-epochs", type=int, default=5, help="DS-FL: distillation epochs (default 5)")
    a("--distill-lr", type=float, default=None, help="DS-FL: distillation lr (default: --lr)")
    a(
        "--distill-batch-size",
        type=int,
        default=None,
        help="DS-FL: distillation batch size (default: --batch-size)",
    )
    a(
        "--temperature",
        type=float,
        default=0.1,
        help="DS-FL: ERA softmax temperature T > 0 (default 0.1)",
    )
    a(
        "--aggregation",
        default="era",
        help=f"DS-FL soft-label aggregation: {', '.join(AGGREGATIONS)} (era: entropy reduction, "
        "sa: simple average; default era)",
    )
    a(
        "--server-opt",
        default="sgd",
        help="FedAvg server optimizer: sgd (FedAvg), momentum (FedAvgM), adam (FedAdam)",
    )
    a("--server-lr", type=float, default=1.0, help="FedAvg server learning rate (default 1.0)")
    a(
        "--client-test-size",
        type=int,
        default=None,
        help="examples in each client's own test split, drawn from the test set with the client's "
        "label distribution (default: test size / C)",
    )
    a("--eval-every", type=int, default=1, help="evaluate every N rounds (default 1)")
    a(
        "--client-chunk",
        type=int,
        default=None,
        help="process sampled clients K at a time inside the jitted round to bound memory "
        "(default: chosen from device memory)",
    )
    a("--seed", type=int, default=0, help="seed for data partition, init and every round")
    return parser


def _fail(flag: str, value, allowed) -> None:
    raise ConfigError(f"{flag} {value!r} is not allowed; allowed: {allowed}")


def validate(args: argparse.Namespace) -> None:
    """Cheap checks, before any data is loaded."""
    if args.algo not in ALGORITHMS:
        _fail("--algo", args.algo, ", ".join(ALGORITHMS))
    if args.dataset not in DATASETS:
        _fail("--dataset", args.dataset, ", ".join(DATASETS))
    if args.public_dataset is not None and args.public_dataset not in DATASETS:
        _fail("--public-dataset", args.public_dataset, ", ".join(DATASETS))
    if args.partition is not None and args.partition not in PARTITIONS:
        _fail("--partition", args.partition, ", ".join(PARTITIONS))
    if args.model is not None and args.model not in MODELS:
        _fail("--model", args.model, ", ".join(MODELS))
    if args.conv_lowering is not None and args.conv_lowering not in CONV_LOWERINGS:
        _fail("--conv-lowering", args.conv_lowering, ", ".join(CONV_LOWERINGS))
    if args.aggregation not in AGGREGATIONS:
        _fail("--aggregation", args.aggregation, ", ".join(AGGREGATIONS))
    if args.server_opt not in ("sgd", "momentum", "adam"):
        _fail("--server-opt", args.server_opt, "sgd, momentum, adam")
    if args.temperature <= 0:
        _fail("--temperature", args.temperature, "a number > 0")
    for flag in (
        "clients",
        "rounds",
        "local_epochs",
        "batch_size",
        "eval_every",
        "distill_epochs",
        "public_per_round",
    ):
        if getattr(args, flag) < 1:
            _fail("--" + flag.replace("_", "-"), getattr(args, flag), "an integer >= 1")
    if args.clients_per_round is not None and not 1 <= args.clients_per_round <= args.clients:
        _fail("--clients-per-round", args.clients_per_round, f"1..--clients ({args.clients})")
    if args.client_chunk is not None and args.client_chunk < 1:
        _fail("--client-chunk", args.client_chunk, "an integer >= 1")
    if args.lr <= 0 or args.server_lr <= 0:
        _fail("--lr/--server-lr", (args.lr, args.server_lr), "numbers > 0")


@dataclasses.dataclass
class Experiment:
    args: argparse.Namespace
    data: object  # Federation
    data_info: dict
    model: object  # Model
    algorithm: object  # FederatedAlgorithm
    algorithm_config: object  # the algorithm's XConfig
    config: dict  # every resolved setting


def estimate_client_bytes(model, batch_size: int, predict_batch: int = 500) -> int:
    """Rough working set of one client in a round: parameter copies plus activations."""
    params = jax.eval_shape(model.init, jax.random.key(0))
    x = jax.ShapeDtypeStruct((8, *model.feature_shape), jnp.float32)
    compiled = jax.jit(model.apply).lower(params, x).compile()
    act_per_example = max(compiled.memory_analysis().temp_size_in_bytes / 8, 4 * 64)
    return int(4 * model.num_params * 8 + act_per_example * (3 * batch_size + predict_batch))


def build(args: argparse.Namespace, dataset=None) -> Experiment:
    """Load the data (unless ``dataset`` is given), partition it, build the model, bind the
    algorithm."""
    validate(args)
    if dataset is None:
        dataset = load_dataset(
            args.dataset, args.data_dir, num_clients=args.clients, seed=args.seed
        )
    partition = args.partition or ("natural" if dataset.train_groups is not None else "dirichlet")
    public_pool = None
    if args.public_dataset is not None:
        public = load_dataset(
            args.public_dataset, args.data_dir, num_clients=args.clients, seed=args.seed
        )
        if public.feature_shape != dataset.feature_shape:
            raise ConfigError(
                f"--public-dataset {args.public_dataset} has inputs {public.feature_shape}, "
                f"--dataset {args.dataset} has {dataset.feature_shape}; they must match"
            )
        public_pool = public.train_x
    spec = FederationSpec(
        num_clients=args.clients,
        partition=partition,
        alpha=args.alpha,
        shards_per_client=args.shards_per_client,
        classes_per_client=args.classes_per_client,
        public_size=args.public_size,
        client_test_size=args.client_test_size,
        seed=args.seed,
    )
    data, info = build_federation(dataset, spec, public_pool)
    if args.algo == "dsfl":
        distill_batch = args.distill_batch_size or args.batch_size
        if data.public_size < max(args.public_per_round, distill_batch):
            raise ConfigError(
                f"the public set has {data.public_size} examples, fewer than --public-per-round "
                f"{args.public_per_round} or one distillation batch ({distill_batch}); raise "
                "--public-size or lower --public-per-round"
            )
        if args.public_per_round < distill_batch:
            raise ConfigError(
                f"--public-per-round {args.public_per_round} is smaller than one distillation "
                f"batch ({distill_batch}); raise it or lower --distill-batch-size"
            )
    model_name = args.model or _default_model(dataset.feature_shape)
    model = get_model(model_name, dataset.feature_shape, dataset.num_classes, args.conv_lowering)
    m = args.clients_per_round or args.clients
    chunk = args.client_chunk or default_chunk_size(
        m, estimate_client_bytes(model, args.batch_size)
    )
    module = ALGORITHMS[args.algo]
    algo_config = config_from_args(module.CONFIG, args, clients_per_round=m, client_chunk=chunk)
    algorithm = module.make(algo_config, data, model)
    config = {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "partition": partition,
        "model": model_name,
        "conv_lowering": args.conv_lowering or _resolved_lowering(),
        "clients_per_round": m,
        "client_chunk": chunk,
        "algorithm_config": dataclasses.asdict(algo_config),
        "data": info,
        "model_params": model.num_params,
        "communication_per_client_per_round": algorithm.communication,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "jax_version": jax.__version__,
    }
    return Experiment(args, data, info, model, algorithm, algo_config, config)


def config_from_args(config_cls, args: argparse.Namespace, **overrides):
    """Fill an algorithm's config dataclass from the flags of the same names."""
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(config_cls)
        if hasattr(args, f.name)
    }
    return config_cls(**{**values, **overrides})


def _resolved_lowering() -> str:
    from jaxfl.models import default_conv_lowering

    return default_conv_lowering()


def _default_model(feature_shape) -> str:
    if len(feature_shape) == 3:
        return "resnet8" if feature_shape[0] >= 32 else "lenet5"
    return "mlp"


def parse(argv: list[str] | None = None, description: str = "") -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    add_arguments(parser)
    parser.add_argument(
        "--out",
        default=None,
        help="results folder (default results/ALGO-DATASET-TIMESTAMP); must not exist or be empty",
    )
    return parser.parse_args(argv)
