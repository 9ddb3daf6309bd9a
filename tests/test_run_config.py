"""The library's entry points take a typed RunConfig; the command line's run-level flags are made
from its fields; the flat form (what TOML files, config.json and --resume store) round-trips.

Checked by construction: every flag of run.py is a field of RunConfig's groups, of an algorithm's
config or of the fault settings (only ``--algo``, ``--config`` and ``--help`` are the command
line's own), and a run-level flag's default and help are its field's.
"""

import argparse
import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxfl.cli import flags
from jaxfl.configs import SPECS, fields, settings
from jaxfl.configs.averaging import FedAvgConfig
from jaxfl.configs.distillation import DSFLConfig
from jaxfl.configs.resolve import ALGORITHM_SETTINGS, FAULT_SETTINGS
from jaxfl.configs.run import RUN_SETTINGS, DataConfig, ModelConfig, RunConfig
from jaxfl.configs.shared import FaultFields
from jaxfl.core.errors import ConfigError
from jaxfl.experiments import builder

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_every_flag_is_a_field_and_a_run_level_flags_default_and_help_are_its_fields():
    actions = {a.dest: a for a in flags._parser()._actions}
    own = {"help", "algo", "config"}
    assert set(actions) == own | set(RUN_SETTINGS) | set(ALGORITHM_SETTINGS) | set(FAULT_SETTINGS)
    for name, field in RUN_SETTINGS.items():
        action = actions[name]
        assert action.default == field.default, name
        assert field.metadata["help"] in action.help.replace("%%", "%"), name
        kind = fields.value_type(field)
        if kind is bool:
            assert action.const is True and action.nargs == 0, name  # store_true
        elif field.metadata["cli"].get("action") != "append":
            assert action.type in (None, kind), name


ARGVS = [
    ["--algo", "fedavg", "--dataset", "blobs", "--clients", "30", "--lr", "0.05"],
    ["--algo", "dsfl", "--dropout", "0.2", "--seeds", "3", "--sweep", "temperature=0.1,0.5"],
    ["--algo", "fedavg,dsfl", "--rounds", "4", "--batch-size", "20", "--compare-local"],
    ["--algo", "fedavg", "--dp-clip", "1.0", "--dp-epsilon", "3", "--participation", "poisson"],
    ["--algo", "hypcluster", "--devices", "1", "--out", "somewhere", "--tensorboard"],
    ["--config", str(CONFIGS / "reddi-emnist62-fedadam.toml")],
]


@pytest.mark.parametrize("argv", ARGVS, ids=lambda a: " ".join(x for x in a if x)[:40])
def test_the_flat_form_round_trips(argv):
    argv = [a for a in argv if a is not None]
    parsed = flags.parse(argv)
    run = RunConfig.from_flags(parsed)
    flat = vars(run.to_flags())
    expected = {k: v for k, v in vars(parsed).items() if k != "config"}  # the file read, not kept
    if "," in parsed.algo:  # unresolved (each algorithm's at its turn); the fault settings are
        for name, field in FAULT_SETTINGS.items():  # every algorithm's, so already filled
            expected[name] = field.default if expected[name] is None else expected[name]
    assert flat == expected
    assert RunConfig.from_flags(flat) == run  # a dict (config.json's record) works too


def test_a_config_made_in_code_builds_the_run_the_command_line_builds():
    argv = ["--algo", "fedavg", "--dataset", "blobs", "--clients", "12", "--model", "mlp-16"]
    argv += ["--clients-per-round", "4", "--lr", "0.05", "--dropout", "0.25", "--rounds", "3"]
    from_cli = builder.build(flags.parse_config(argv))
    in_code = builder.build(
        RunConfig(
            FedAvgConfig(lr=0.05, clients_per_round=4),
            data=DataConfig(dataset="blobs", clients=12),
            model=ModelConfig(model="mlp-16"),
            faults=FaultFields(dropout=0.25),
            rounds=3,
        )
    )
    assert vars(in_code.args) == vars(from_cli.args)
    assert in_code.algorithm_config == from_cli.algorithm_config
    assert in_code.fault_config == from_cli.fault_config
    key = jax.random.key(3)
    states = []
    for exp in (from_cli, in_code):
        state, _ = exp.algorithm.run_rounds(exp.algorithm.init(key), key, 1, 1)
        states.append(state.params)
    for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the same program and data


def test_bad_configs_are_refused_naming_the_flag_or_the_field():
    with pytest.raises(ConfigError, match=r"--clients 0 is not allowed; allowed: an integer >= 1"):
        RunConfig(FedAvgConfig(), data=DataConfig(clients=0))
    with pytest.raises(ConfigError, match=r"--partition 'stripes' is not allowed; allowed: iid"):
        RunConfig(FedAvgConfig(), data=DataConfig(partition="stripes"))
    with pytest.raises(ConfigError, match=r"--rounds 0 is not allowed"):
        RunConfig(FedAvgConfig(), rounds=0)
    with pytest.raises(ConfigError, match=r"--lr -1 is not allowed"):
        RunConfig(FedAvgConfig(lr=-1))
    with pytest.raises(ConfigError, match=r"RunConfig.algorithm str is not an algorithm's config"):
        RunConfig("fedavg")
    with pytest.raises(ConfigError, match=r"RunConfig.data is a dict; allowed: a DataConfig"):
        RunConfig(FedAvgConfig(), data={"dataset": "blobs"})
    with pytest.raises(ConfigError, match="tuple of different algorithms"):
        RunConfig((FedAvgConfig(), FedAvgConfig(lr=0.2)))
    with pytest.raises(ConfigError, match=r"fedavg and dsfl set lr to 0.2 and 0.3"):
        RunConfig((FedAvgConfig(lr=0.2), DSFLConfig(lr=0.3))).to_flags()
    with pytest.raises(TypeError, match=r"build takes a RunConfig, not a Namespace"):
        builder.build(argparse.Namespace(algo="fedavg"))
    with pytest.raises(ConfigError, match=r"build binds one algorithm"):
        builder.build(RunConfig((FedAvgConfig(), DSFLConfig())))


def test_several_algorithms_keep_their_own_defaults_and_share_what_was_given():
    run = RunConfig((FedAvgConfig(batch_size=20), DSFLConfig(batch_size=20)), rounds=4)
    flat = run.to_flags()
    assert flat.algo == "fedavg,dsfl" and flat.batch_size == 20
    assert flat.local_epochs is None  # each algorithm takes its own (FedAvg 1, DS-FL 5)
    back = RunConfig.from_flags(flat)
    assert [c.local_epochs for c in back.algorithms] == [1, 5]
    assert back == RunConfig((FedAvgConfig(batch_size=20), DSFLConfig(batch_size=20)), rounds=4)


@pytest.mark.parametrize("algo", list(SPECS))
def test_every_algorithms_defaults_survive_the_round_trip(algo):
    config = SPECS[algo].config()
    run = RunConfig(config)
    assert RunConfig.from_flags(run.to_flags()) == run
    flat = run.to_flags()
    for name in settings(type(config)):
        assert getattr(flat, name) == getattr(config, name), name
    assert all(
        getattr(flat, f.name) == f.default for f in dataclasses.fields(DataConfig)
    )  # the groups' defaults are the flags'
