"""A whole run's settings as typed config objects: what the library's entry points take.

:class:`RunConfig` holds the algorithm's config (``FedAvgConfig(lr=0.05)``, or a tuple of
several algorithms' configs compared on the same partitions and seeds), the data, the model,
rounds and seed, the fault settings, the DP accountant's settings, the experiments axis, the
execution (devices, hosts) and the host loop's output and stopping settings. Every run-level
setting is a field declared once with :func:`jaxfl.configs.fields.setting` (default, help,
allowed values), in RunConfig itself (rounds, seed, eval_every) or one of its groups
(:mod:`jaxfl.configs.run_groups`): the command line's run-level flags, ``--help``, TOML config
files and the checks are made from these fields, as the algorithms' flags from their configs.

A run also has a flat form, one attribute per flag (:meth:`RunConfig.to_flags`): the form the
command line parses into, TOML config files and ``config.json``'s ``flags`` record store and
``--resume`` reads back, and the one the builder and the cross-setting checks
(:mod:`jaxfl.experiments.validation`, whose errors name flags) read. ``RunConfig.from_flags``
and ``to_flags`` convert between them, and round-trip. Imports no JAX.

Example (research code)::

    from jaxfl.configs.averaging import FedAvgConfig
    from jaxfl.configs.run import DataConfig, RunConfig
    from jaxfl.experiments import builder

    config = RunConfig(
        FedAvgConfig(lr=0.05, clients_per_round=10),
        data=DataConfig(dataset="blobs", clients=100),
        rounds=5,
    )
    experiment = builder.build(config)  # data, model and the bound algorithm
"""

from __future__ import annotations

import argparse
import dataclasses

from jaxfl.configs.fields import check, check_value, setting, settings
from jaxfl.configs.resolve import ALGORITHM_SETTINGS, resolve
from jaxfl.configs.run_groups import (
    AccountingConfig,
    AxisConfig,
    DataConfig,
    ExecutionConfig,
    ModelConfig,
    OutputConfig,
)
from jaxfl.configs.shared import FaultFields
from jaxfl.configs.specs import SPECS
from jaxfl.core.errors import ConfigError

__all__ = [
    "GROUPS",
    "RUN_SETTINGS",
    "AccountingConfig",
    "AxisConfig",
    "DataConfig",
    "ExecutionConfig",
    "ModelConfig",
    "OutputConfig",
    "RunConfig",
    "algorithm_name",
]


GROUPS = {
    "data": DataConfig,
    "model": ModelConfig,
    "faults": FaultFields,
    "accounting": AccountingConfig,
    "axis": AxisConfig,
    "execution": ExecutionConfig,
    "output": OutputConfig,
}


def algorithm_name(algorithm_config) -> str:
    """The ``--algo`` name of an algorithm config instance (its spec's config class)."""
    for name, spec in SPECS.items():
        if type(algorithm_config) is spec.config:
            return name
    known = ", ".join(spec.config.__name__ for spec in SPECS.values())
    raise ConfigError(
        f"RunConfig.algorithm {type(algorithm_config).__name__} is not an algorithm's config; "
        f"allowed: {known}, or a tuple of them"
    )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything one run computes, typed: what :func:`jaxfl.experiments.builder.build`,
    :func:`jaxfl.experiments.sweep_runner.run_sweep` and
    :func:`jaxfl.experiments.baseline.local_only` take.

    Attributes:
      algorithm: the algorithm's config (``FedAvgConfig(...)``, ``DSFLConfig(...)``, ...), or a
        tuple of configs of different algorithms, run one after another on the same partitions
        and seeds (a sweep). Its settings left at their defaults take the algorithm's own.
      data, model, faults, accounting, axis, execution, output: the groups of run-level
        settings (:class:`DataConfig`, ...; ``faults`` a
        :class:`jaxfl.configs.shared.FaultFields`).
      rounds, seed, eval_every: communication rounds, the seed of the partition, the
        initialisation and every round, and how often the run evaluates.

    Each setting is checked against its field's allowed values when the config is made (a
    ConfigError naming the flag); the checks across settings run when it is built.
    """

    algorithm: object
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    rounds: int = setting(20, "communication rounds", check=">= 1")
    seed: int = setting(0, "seed for data partition, init and every round")
    eval_every: int = setting(1, "evaluate every N rounds", check=">= 1")
    faults: FaultFields = dataclasses.field(default_factory=FaultFields)
    accounting: AccountingConfig = dataclasses.field(default_factory=AccountingConfig)
    axis: AxisConfig = dataclasses.field(default_factory=AxisConfig)
    execution: ExecutionConfig = dataclasses.field(default_factory=ExecutionConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)

    def __post_init__(self):
        for attr, cls in GROUPS.items():
            group = getattr(self, attr)
            if not isinstance(group, cls):
                raise ConfigError(
                    f"RunConfig.{attr} is a {type(group).__name__}; allowed: a {cls.__name__}"
                )
            check(group)
        for name, field in settings(RunConfig).items():
            check_value(field, getattr(self, name))
        for config in self.algorithms:
            algorithm_name(config)
            check(config)
        names = [algorithm_name(c) for c in self.algorithms]
        if not names or len(set(names)) != len(names):
            raise ConfigError(
                f"RunConfig.algorithm {names} is not allowed; allowed: one algorithm's config, "
                "or a tuple of different algorithms' configs"
            )

    @property
    def algorithms(self) -> tuple:
        """The algorithm configs, as a tuple (one for a single algorithm)."""
        if isinstance(self.algorithm, (tuple, list)):
            return tuple(self.algorithm)
        return (self.algorithm,)

    @property
    def algo(self) -> str:
        """The ``--algo`` value: one name, or several comma separated."""
        return ",".join(algorithm_name(c) for c in self.algorithms)

    def to_flags(self) -> argparse.Namespace:
        """The flat form: one attribute per flag (``algo``, ``clients``, ``lr``, ...), resolved
        for a single algorithm (:func:`jaxfl.configs.resolve.resolve`).

        An algorithm's setting equal to its own default is left None (not given), so several
        algorithms each take their own; several algorithms given different values of the same
        setting are a ConfigError (a comparison shares each flag)."""
        flat = {name: getattr(self, name) for name in settings(RunConfig)}
        for attr in GROUPS:
            flat.update(dataclasses.asdict(getattr(self, attr)))
        if flat["sweep"] is not None:
            flat["sweep"] = list(flat["sweep"])
        given: dict[str, tuple[str, object]] = {}
        for config in self.algorithms:
            algo = algorithm_name(config)
            for name, field in settings(type(config)).items():
                value = getattr(config, name)
                if value == field.default:
                    continue
                if name in given and given[name][1] != value:
                    raise ConfigError(
                        f"RunConfig.algorithm: {given[name][0]} and {algo} set {name} to "
                        f"{given[name][1]!r} and {value!r}; algorithms compared in one run "
                        "share each setting (run them separately)"
                    )
                given[name] = (algo, value)
        flat.update({name: None for name in ALGORITHM_SETTINGS})
        flat.update({name: value for name, (_, value) in given.items()})
        flat["algo"] = self.algo
        args = argparse.Namespace(**flat)
        return resolve(args) if len(self.algorithms) == 1 else args

    @classmethod
    def from_flags(cls, flags: argparse.Namespace | dict) -> RunConfig:
        """The typed form of the flat settings ``flags`` (a parsed command line, a TOML file's
        or ``config.json``'s record): attributes missing take their defaults."""
        flat = dict(vars(flags)) if isinstance(flags, argparse.Namespace) else dict(flags)
        algo = flat.get("algo") or "dsfl"
        configs = []
        for name in algo.split(","):
            name = name.strip()
            if name not in SPECS:
                raise ConfigError(f"--algo {algo!r} is not allowed; allowed: {', '.join(SPECS)}")
            own = resolve(argparse.Namespace(**{**flat, "algo": name}))
            # its settings (a field that is no flag, e.g. HypCluster's rounds, is the builder's)
            given = settings(SPECS[name].config)
            configs.append(SPECS[name].config(**{n: getattr(own, n) for n in given}))

        def group(group_cls):
            return group_cls(
                **{
                    f.name: _stored(flat[f.name])
                    for f in dataclasses.fields(group_cls)
                    if flat.get(f.name) is not None
                }
            )

        run_level = {n: flat[n] for n in settings(RunConfig) if flat.get(n) is not None}
        return cls(
            configs[0] if len(configs) == 1 else tuple(configs),
            **{attr: group(group_cls) for attr, group_cls in GROUPS.items()},
            **run_level,
        )


# every run-level setting (not an algorithm's, not a fault's): name -> field, in --help's order
RUN_SETTINGS = {
    **settings(RunConfig),
    **{n: f for cls in GROUPS.values() if cls is not FaultFields for n, f in settings(cls).items()},
}


def _stored(value):
    """A flat value as a config field holds it: a list (``--sweep``'s) as a tuple, a path as
    its string."""
    if isinstance(value, list):
        return tuple(value)
    if hasattr(value, "__fspath__"):
        return str(value)
    return value
