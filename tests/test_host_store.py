"""--data-placement host: the training split stays on the host and each round gets its cohort's
examples; the numbers are the device placement's, bit for bit on a CPU (a client reads the same
examples in the same order from a smaller array)."""

import json

import jax
import numpy as np
import pytest

from jaxfl.configs.averaging import FedAvgConfig, ScaffoldConfig
from jaxfl.configs.run import DataConfig, ModelConfig, RunConfig
from jaxfl.configs.shared import FaultFields
from jaxfl.core.errors import ConfigError
from jaxfl.data import FederationSpec, build_federation, host_store, load_dataset
from jaxfl.experiments import builder
from jaxfl.experiments.simulation import Simulation


@pytest.fixture(scope="module")
def leaf200():
    return load_dataset("leaf_synthetic", None, seed=0, num_clients=200)


def _run(algorithm_config, placement, leaf200, faults, rounds=3):
    run = RunConfig(
        algorithm_config,
        data=DataConfig(dataset="leaf_synthetic", clients=200, data_placement=placement),
        model=ModelConfig(model="mlp-16"),
        faults=faults,
        rounds=rounds,
    )
    exp = builder.build(run, dataset=leaf200)
    state, history = Simulation(exp.algorithm, rounds, seed=0).run()
    return exp, state, history


@pytest.mark.parametrize(
    "config",
    [
        FedAvgConfig(clients_per_round=20, batch_size=10, lr=0.05),
        FedAvgConfig(clients_per_round=20, batch_size=10, lr=0.05, participation="poisson"),
        ScaffoldConfig(clients_per_round=20, batch_size=10, lr=0.05),  # per-client state rows
    ],
    ids=["fedavg", "fedavg-poisson", "scaffold"],
)
def test_host_placement_gives_the_device_placements_numbers(config, leaf200):
    faults = FaultFields(dropout=0.2, straggler_fraction=0.3)
    device_exp, device_state, device_history = _run(config, "device", leaf200, faults)
    host_exp, host_state, host_history = _run(config, "host", leaf200, faults)
    assert host_exp.config["data_placement"] == "host"
    assert device_exp.config["data_placement"] == "device"  # auto on a CPU: device
    # the device holds one cohort block, not the training split
    block = host_exp.config["train_split_device_bytes"]
    assert block == host_exp.config["host_to_device_bytes_per_round"]
    assert block < device_exp.config["train_split_device_bytes"]
    for a, b in zip(jax.tree.leaves(device_state), jax.tree.leaves(host_state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    volatile = {"round_time_s"}
    strip = [{k: v for k, v in r.items() if k not in volatile} for r in device_history]
    assert [{k: v for k, v in r.items() if k not in volatile} for r in host_history] == strip


def test_a_cohort_view_reads_each_sampled_clients_examples(leaf200):
    data, _ = build_federation(
        leaf200, FederationSpec(num_clients=200, partition="natural"), train_on_device=False
    )
    store, resident = host_store.split(data, slots=4)
    sampled = np.array([7, 3, 150, 3])  # the last slot empty (Poisson padding repeats a client)
    present = np.array([True, True, True, False])
    block_x, block_y = store.gather(sampled, present)
    assert block_x.shape[0] == store.block_rows == 1 + np.sort(store.client_count)[-4:].sum()
    view = host_store.cohort_view(resident, sampled, present, block_x, block_y)
    for k in (7, 3, 150):
        count = int(data.client_count[k])
        rows = np.asarray(view.client_idx[k])
        np.testing.assert_array_equal(  # the same examples, in the same order
            np.asarray(view.train_x)[rows[:count]], data.train_x[data.client_idx[k, :count]]
        )
        np.testing.assert_array_equal(np.asarray(view.train_y)[rows[:count]],
                                      data.train_y[data.client_idx[k, :count]])  # fmt: skip
        assert (rows[count:] == 0).all()  # padding reads example 0, as on the device
    np.testing.assert_array_equal(np.asarray(view.train_x)[0], data.train_x[0])
    others = np.setdiff1d(np.arange(200), sampled)
    assert (np.asarray(view.client_idx)[others] == 0).all()


def test_the_next_rounds_view_is_prepared_while_this_one_runs(leaf200):
    data, _ = build_federation(
        leaf200, FederationSpec(num_clients=200, partition="natural"), train_on_device=False
    )
    store, resident = host_store.split(data, slots=5)

    def cohort(key):
        return jax.random.choice(key, 200, (5,), replace=False), jax.numpy.ones(5, bool)

    feeder = host_store.CohortFeeder(store, resident, cohort, jax.device_put)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    first = feeder.view(k1, next_key=k2)
    assert feeder.pending and feeder.rounds_sent >= 1
    second = feeder.view(k2)  # taken from the prefetch, not gathered again
    assert feeder.rounds_sent == 2 and not feeder.pending
    again = host_store.cohort_view(
        resident, *map(np.asarray, cohort(k2)), *store.gather(*map(np.asarray, cohort(k2)))
    )
    np.testing.assert_array_equal(np.asarray(second.client_idx), np.asarray(again.client_idx))
    assert first.train_x.shape == second.train_x.shape == resident.train_x.shape


def test_host_placement_is_refused_where_it_cannot_work():
    from jaxfl.cli import flags

    refused = r"'host' is not allowed; allowed: device or auto with --algo dsfl; host only with"
    with pytest.raises(ConfigError, match=refused):
        flags.validate(flags.parse(["--algo", "dsfl", "--data-placement", "host"]))
    with pytest.raises(ConfigError, match="device or auto with --domains"):
        flags.validate(flags.parse(["--algo", "fedavg", "--data-placement", "host",
                                    "--domains", "mnist,mnist:invert"]))  # fmt: skip
    with pytest.raises(ConfigError, match="--data-placement 'disk' is not allowed"):
        flags.validate(flags.parse(["--algo", "fedavg", "--data-placement", "disk"]))
    from jaxfl.experiments import sweep_runner

    with pytest.raises(ConfigError, match="--data-placement host is not supported with --seeds"):
        sweep_runner.check_sweep_flags(
            flags.parse(["--algo", "fedavg", "--seeds", "2", "--data-placement", "host"])
        )


def test_the_command_line_runs_host_placement_and_says_what_moves(tmp_path, capsys):
    from jaxfl.cli import run

    argv = ["--algo", "fedavg", "--dataset", "leaf_synthetic", "--clients", "200",
            "--clients-per-round", "20", "--rounds", "2", "--model", "mlp-16",
            "--data-placement", "host", "--out", str(tmp_path / "r")]  # fmt: skip
    assert run.main(argv) == 0
    out = capsys.readouterr().out
    assert "data placement host: the training split (" in out and "each round sends" in out
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["data_placement"] == "host" and config["flags"]["data_placement"] == "host"
