"""From a run's config to a bound algorithm: shared by scripts/run.py, scripts/bench.py, tests
and research code.

:func:`build` takes a :class:`jaxfl.configs.run.RunConfig`, loads the data, partitions it,
builds the model and binds the algorithm. The command line's flags (definitions, config files,
resuming) are :mod:`jaxfl.cli.flags`; ``RunConfig.from_flags`` turns parsed flags into a config.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxfl.algorithms import ALGORITHMS
from jaxfl.configs import SPECS
from jaxfl.configs.run import RunConfig
from jaxfl.core.client_axis import (
    client_devices,
    cpu_chunk_size,
    current_mesh,
    device_memory_bytes,
    replicate,
)
from jaxfl.core.errors import ConfigError
from jaxfl.core.names import NATURAL_DATASETS
from jaxfl.data import FederationSpec, PartitionError, build_federation, host_store, load_dataset
from jaxfl.data.domains import build_multidomain_federation, parse_domains, transform_dataset
from jaxfl.experiments.baseline import local_only
from jaxfl.experiments.memory import choose_chunk
from jaxfl.experiments.validation import validate
from jaxfl.mechanisms import accounting, privacy
from jaxfl.mechanisms.client_round import padding_efficiency, poisson_capacity
from jaxfl.mechanisms.faults import FaultConfig
from jaxfl.mechanisms.groups import describe, make_groups, parse_models
from jaxfl.models import get_model


@dataclasses.dataclass
class Experiment:
    args: argparse.Namespace  # the run's flat settings (RunConfig.to_flags), resolved
    run: RunConfig  # the run as it was given
    data: object  # Federation
    data_info: dict
    model: object  # Model
    algorithm: object  # FederatedAlgorithm
    algorithm_config: object  # the algorithm's XConfig
    config: dict  # every resolved setting
    groups: tuple | None = None  # the model groups with --models (model is the first group's)
    make_kwargs: dict = dataclasses.field(default_factory=dict)  # further arguments of make()
    fault_config: object = None  # the FaultConfig the algorithm was bound with
    # jaxfl.mechanisms.accounting.Accountant with --dp-clip and noise, else None
    accountant: object = None


def estimate_step_bytes(model, batch_size: int) -> int:
    """Working set of one client's training step: parameters, gradients and activations."""
    params = jax.eval_shape(model.init, jax.random.key(0))
    x = jax.ShapeDtypeStruct((batch_size, *model.feature_shape), jnp.float32)
    grad = jax.grad(lambda p, x: jnp.sum(model.apply(p, x)))
    compiled = jax.jit(grad).lower(params, x).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes + 3 * 4 * model.num_params)


def cpu_client_chunk(models, batch_size: int, clients_per_round: int) -> int:
    """The CPU's --client-chunk default: cache-sized chunks (see :func:`cpu_chunk_size`), for the
    clients one device holds."""
    per_device = math.ceil(clients_per_round / client_devices())
    return min(cpu_chunk_size(per_device, estimate_step_bytes(m, batch_size)) for m in models)


def build(run: RunConfig, dataset=None) -> Experiment:
    """Load the data (unless ``dataset`` is given), partition it, build the model, bind the
    algorithm of ``run`` (one algorithm's :class:`jaxfl.configs.run.RunConfig`).

    The checks across settings run first (:func:`jaxfl.experiments.validation.validate`), on
    the run's flat form (:meth:`RunConfig.to_flags`), whose errors name the flags; that form is
    also what ``config.json`` records for ``--resume``."""
    if not isinstance(run, RunConfig):
        raise TypeError(
            f"build takes a RunConfig, not a {type(run).__name__} (parsed flags: "
            "RunConfig.from_flags(namespace))"
        )
    if len(run.algorithms) != 1:
        raise ConfigError(
            f"build binds one algorithm; RunConfig.algorithm holds {run.algo} (a comparison of "
            "several: jaxfl.experiments.sweep_runner.run_sweep)"
        )
    args = run.to_flags()
    validate(args)
    module, spec = ALGORITHMS[args.algo], SPECS[args.algo]
    domains = None
    if args.domains:
        try:
            domains = [
                transform_dataset(load_dataset(name, args.data_dir, seed=args.seed), transform)
                for name, transform in parse_domains(args.domains)
            ]
        except PartitionError as err:
            raise ConfigError(str(err)) from err
        dataset = domains[0]
    elif dataset is None:
        dataset = load_dataset(
            args.dataset,
            args.data_dir,
            num_clients=args.clients,
            seed=args.seed,
            min_client_examples=args.min_client_examples,
            max_client_examples=args.max_client_examples,
            sequence_length=args.sequence_length,
        )
    partition = args.partition or ("natural" if dataset.train_groups is not None else "dirichlet")
    public_size = args.public_size
    if public_size is None and args.dataset in NATURAL_DATASETS and not spec.public_data:
        public_size = 0  # a natural client's data stays its own unless the algorithm distils
    public_pool = public_labels = None
    if args.public_dataset is not None:
        public = load_dataset(
            args.public_dataset, args.data_dir, num_clients=args.clients, seed=args.seed
        )
        if public.feature_shape != dataset.feature_shape:
            raise ConfigError(
                f"--public-dataset {args.public_dataset} has inputs {public.feature_shape}, "
                f"--dataset {args.dataset} has {dataset.feature_shape}; they must match"
            )
        public_pool, public_labels = public.train_x, public.train_y
    val_fraction = args.client_val_fraction
    if val_fraction is None:
        val_fraction = spec.validation_fraction
    federation = FederationSpec(
        num_clients=args.clients,
        partition=partition,
        alpha=args.alpha,
        shards_per_client=args.shards_per_client,
        classes_per_client=args.classes_per_client,
        rare_labels=args.rare_labels,
        rare_examples=args.rare_examples,
        public_size=public_size,
        client_test_size=args.client_test_size,
        client_val_fraction=val_fraction,
        seed=args.seed,
    )
    host_able = spec.host_data and not domains and not val_fraction
    placement = data_placement(args.data_placement, dataset, host_able)
    m = args.clients_per_round or (args.clients - (args.unseen_clients or 0))
    if domains is not None:
        data, info = build_multidomain_federation(domains, federation, public_pool, public_labels)
    else:
        data, info = build_federation(
            dataset, federation, public_pool, public_labels, placement == "device"
        )
    store = None
    if placement == "host":  # the training split stays here; rounds get their cohort's part
        store, data = host_store.split(data, cohort_slots(args, m))
    data = replicate(data)  # once, on every device of the mesh (a no-op on one device)
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
    model_groups = None
    if args.models:
        try:
            model_groups = make_groups(
                parse_models(args.models),
                dataset.feature_shape,
                dataset.num_classes,
                args.clients,
                m,
                args.conv_lowering,
                args.compute_dtype,
            )
        except ValueError as err:
            raise ConfigError(str(err)) from err
        model, model_name = model_groups[0].model, args.models
        models = [g.model for g in model_groups]
    else:
        model_name = args.model or _default_model(dataset)
        model = get_model(
            model_name,
            dataset.feature_shape,
            dataset.num_classes,
            args.conv_lowering,
            args.compute_dtype,
        )
        models = [model]
    on_cpu = _on_cpu()
    chunk = args.client_chunk
    if chunk is None and on_cpu:
        chunk = cpu_client_chunk(models, args.batch_size, m)
    privacy_record = calibrate_privacy(args, m)
    noise = {} if privacy_record is None else {"dp_noise": privacy_record["noise_multiplier"]}
    algo_config = config_from_args(
        spec.config, args, clients_per_round=m, client_chunk=chunk, **noise
    )
    fault_config = config_from_args(FaultConfig, args)
    extra = {}
    if spec.needs_local_baseline:
        baseline = local_only(run, val_fraction, build, dataset)
        extra["local_losses"] = baseline["val_loss" if val_fraction > 0 else "train_loss"]
    try:
        algorithm = module.make(
            algo_config,
            data,
            model_groups or model,
            fault_config=fault_config,
            seed=args.seed,
            **extra,
        )
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if chunk is None and not on_cpu:  # measured: the largest chunk that fits in device memory
        chunk = choose_chunk(algorithm, device_memory_bytes())
        if chunk is not None:
            algo_config = dataclasses.replace(algo_config, client_chunk=chunk)
            algorithm = module.make(
                algo_config,
                data,
                model_groups or model,
                fault_config=fault_config,
                seed=args.seed,
                **extra,
            )
    if store is not None:
        if algorithm.cohort is None:  # the spec said it could: a module that lost its cohort
            raise ConfigError(f"--data-placement host: --algo {args.algo} draws no key-only cohort")
        place = replicate if current_mesh() is not None else jax.device_put
        algorithm = host_store.feed(
            algorithm, host_store.CohortFeeder(store, data, algorithm.cohort, place)
        )
    efficiency = padding_efficiency(  # Poisson: about m clients; an empty slot runs no steps
        np.asarray(data.client_count),
        algorithm.participants_per_round,
        args.batch_size or 1,
        data.capacity,
        chunk=algorithm.client_chunk if algorithm.cohort_by_size else chunk,
        devices=client_devices(),
        by_size=algorithm.cohort_by_size,
    )
    schedule = algorithm.client_chunk if isinstance(algorithm.client_chunk, tuple) else None
    device_bytes = int(data.train_x.nbytes + data.train_y.nbytes)  # with host placement a block
    flags = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config = {
        **flags,
        "flags": flags,  # exactly as given: what --resume rebuilds the run from
        "partition": partition,
        "client_val_fraction": val_fraction,
        "model": model_name,
        "conv_lowering": args.conv_lowering or _resolved_lowering(),
        "clients_per_round": m,
        "client_chunk": chunk,
        # examples a round trains on / example slots it computes (expected over cohorts)
        "padding_efficiency": efficiency,
        "padding": "sorted chunks" if algorithm.cohort_by_size else "padded capacity",
        # per device: (width, count) runs of chunks, narrower as the sorted sizes grow
        "client_chunk_schedule": [list(run) for run in schedule] if schedule else None,
        "data_placement": placement,
        # bytes of the training split on the device, and sent to it each round (host placement)
        "train_split_bytes": device_bytes if store is None else store.train_bytes,
        "train_split_device_bytes": device_bytes,
        "host_to_device_bytes_per_round": None if store is None else store.block_bytes,
        "algorithm_config": dataclasses.asdict(algo_config),
        "faults": dataclasses.asdict(fault_config),
        "data": info,
        "model_params": model.num_params,
        "model_groups": describe(model_groups) if model_groups else None,
        "communication_per_client_per_round": algorithm.communication,
        "privacy": privacy_record,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "client_devices": client_devices(),
        "processes": jax.process_count(),
        "jax_version": jax.__version__,
    }
    accountant = None
    if privacy_record is not None:
        accountant = accounting.for_config(
            algo_config,
            privacy_record["population"],
            m,
            privacy_record["delta"],
            privacy_record["accountant"],
        )
    return Experiment(
        args,
        run,
        data,
        info,
        model,
        algorithm,
        algo_config,
        config,
        model_groups,
        extra,
        fault_config,
        accountant,
    )


def data_placement(asked: str, dataset, host_able: bool) -> str:
    """``--data-placement``: ``device`` or ``host`` as asked; ``auto`` is host where the run can
    (``host_able``: the algorithm draws a key-only cohort, one federation, no validation split)
    and the training split exceeds half the device's memory (known on accelerators; a CPU's
    device is the host's own memory, so there it is device)."""
    if asked != "auto":
        return asked
    if not host_able:
        return "device"
    memory = device_memory_bytes()
    split_bytes = dataset.train_x.nbytes + dataset.train_y.nbytes
    if memory is None or _on_cpu() or split_bytes <= memory / 2:
        return "device"
    return "host"


def cohort_slots(args, m: int) -> int:
    """M, the rows of a round's cohort: m, or with Poisson participation its capacity."""
    if getattr(args, "participation", None) == "poisson":
        population = args.clients - (args.unseen_clients or 0)
        return poisson_capacity(population, m / population)
    return m


def calibrate_privacy(args: argparse.Namespace, m: int) -> dict | None:
    """With ``--dp-clip``: the accounting setting (population, m, delta), the noise multiplier
    (``--dp-noise``, or for ``--dp-epsilon`` calibrated to it) and the epsilon planned after
    ``--rounds``: the record config.json keeps. None without DP."""
    if getattr(args, "dp_clip", None) is None:
        return None
    population = args.clients - (getattr(args, "unseen_clients", None) or 0)
    delta = args.dp_delta if args.dp_delta is not None else accounting.default_delta(population)
    setting = privacy.DPFields(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(privacy.DPFields)}
    )
    sigma_b = privacy.count_noise(setting, m) if privacy.adaptive(setting) else None
    participation = getattr(args, "participation", None) or "fixed"
    kind = getattr(args, "dp_accountant", None) or accounting.default_accountant(participation)
    record = {
        "population": population,
        "clients_per_round": m,
        "delta": delta,
        "participation": participation,
        "accountant": kind,
    }
    noise = args.dp_noise
    if args.dp_epsilon is not None:
        try:
            noise = accounting.calibrate_noise(
                args.dp_epsilon, args.rounds, population, m, delta, sigma_b, participation, kind
            )
        except accounting.AccountingError as err:
            raise ConfigError(str(err)) from err
        record["target_epsilon"] = args.dp_epsilon
    record["noise_multiplier"] = noise
    try:  # before accounting: z >= 2 sigma_b has no update noise (jaxfl.mechanisms.privacy)
        privacy.check(dataclasses.replace(setting, dp_noise=noise), m, participation=participation)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    planned = accounting.accountant(
        float(noise), population, m, delta, sigma_b, participation, kind
    )
    epsilon = planned.epsilon(args.rounds)
    record["epsilon_planned"] = epsilon if math.isfinite(epsilon) else None  # None: no noise
    record["epsilon_of"] = planned.describe()  # how every epsilon of the run is computed
    return record


def config_from_args(config_cls, args: argparse.Namespace, **overrides):
    """Fill an algorithm's config dataclass from the flags of the same names."""
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(config_cls)
        if hasattr(args, f.name)
    }
    return config_cls(**{**values, **overrides})


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def _resolved_lowering() -> str:
    from jaxfl.models import default_conv_lowering

    return default_conv_lowering()


def _default_model(dataset) -> str:
    feature_shape = dataset.feature_shape
    if dataset.train_y.ndim == 2:  # next-token targets: the language task's model
        return "nwp-lstm" if dataset.name == "stackoverflow" else "charlstm"
    if len(feature_shape) == 3:
        return "resnet8" if feature_shape[0] >= 32 else "lenet5"
    return "mlp"
