"""Learning actually happens: stated accuracies after a few rounds."""

import jax
import optax
import pytest

from jaxfl.cli import flags
from jaxfl.core import train
from jaxfl.core.client_axis import map_clients
from jaxfl.experiments import builder
from jaxfl.experiments.simulation import Simulation
from reproductions import common

from .conftest import MNIST_DIR
from .test_cli import run

FAST = [
    "--dataset",
    "synthetic_iid",
    "--clients",
    "20",
    "--rounds",
    "4",
    "--local-epochs",
    "5",
    "--batch-size",
    "10",
    "--public-per-round",
    "200",
    "--distill-epochs",
    "2",
]


# DS-FL's non-IID setting on real MNIST: 20 clients holding 2 classes each
MNIST_TWO_CLASSES = [
    "--dataset",
    "mnist",
    "--data-dir",
    str(MNIST_DIR),
    "--clients",
    "20",
    "--partition",
    "classes",
    "--classes-per-client",
    "2",
]


def _run(argv):
    exp = builder.build(flags.parse_config(argv))
    _, history = Simulation(exp.algorithm, exp.args.rounds, seed=exp.args.seed).run()
    return exp, history


def test_fedavg_learns_embedded_data():
    # measured: test accuracy 0.49, 0.63, 0.70, 0.72 over rounds 1-4; chance is 0.1 and the
    # majority class 0.38
    _, history = _run(["--algo", "fedavg", *FAST])
    assert history[-1]["test_acc"] > 0.65
    assert history[-1]["test_acc"] > history[0]["test_acc"] + 0.15


def test_dsfl_learns_embedded_data():
    # measured: server model 0.38, 0.44, 0.50, 0.52; clients' own-split mean 0.45 -> 0.59
    _, history = _run(["--algo", "dsfl", *FAST])
    assert history[-1]["test_acc"] > 0.45
    assert history[-1]["client_acc_mean"] > 0.5


@pytest.mark.skipif(
    not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason=f"real MNIST not found at {MNIST_DIR} (set JAXFL_MNIST)",
)
@pytest.mark.slow  # about 4 min on 2 cores; DS-FL's learning and ERA's equation have fast tests
def test_dsfl_era_matches_or_beats_sa_and_beats_local_only_on_real_mnist_over_seeds(tmp_path):
    """DS-FL's non-IID setting: 20 clients holding 2 MNIST classes each, all participating,
    3 seeds side by side (each seed its own partition, open-set draw and initialisation).

    Measured on CPU (AMD EPYC, jax 0.10.2), server-model test accuracy over rounds 1-5:
      ERA seed 0 [0.119, 0.252, 0.538, 0.649, 0.579], 1 [0.184, 0.581, 0.561, 0.629, 0.714],
          2 [0.139, 0.252, 0.524, 0.573, 0.577];
      SA  seed 0 [0.118, 0.305, 0.526, 0.623, 0.547], 1 [0.139, 0.555, 0.610, 0.597, 0.654],
          2 [0.138, 0.213, 0.482, 0.569, 0.591];
    ERA - SA averaged over rounds 2-5: +0.004, +0.017, +0.018 (mean +0.013). Local-only
    training for the same 5 epochs: mean client test accuracy about 0.2 (2 classes of 10).

    Whether ERA beats SA is the reproduction's question, answered at the authors' setting
    (100 clients, every one each round, 20 rounds: paired ERA - SA +0.028, 95% CI +0.007 ..
    +0.049, reproductions/RESULTS.md). At this size the gap (+0.013) is smaller than the
    round-to-round wobble DS-FL shows when float summation order changes (about 0.03 after a
    few rounds, see the brief's device note), so a single seed's ERA > SA was a coin flip on
    another machine (it failed once pixels moved to [0, 1]). Here: ERA is not worse than SA by
    more than that wobble on the seeds' mean (a regression that breaks ERA, e.g. a wrong
    temperature or axis, costs 0.1 or more: T = 1 at tiny size measured 0.118 vs 0.381 in
    tests/test_references.py), and it beats local-only training by a wide margin in every seed.
    """
    argv = [
        "--algo",
        "dsfl",
        *MNIST_TWO_CLASSES,
        "--local-epochs",
        "1",
        "--distill-epochs",
        "2",
        "--public-size",
        "5000",
        "--public-per-round",
        "1000",
        "--rounds",
        "5",
        "--checkpoint-every",
        "0",
    ]
    curves = {}
    for aggregation in ("era", "sa"):
        out = tmp_path / aggregation
        flags_of_run = [*argv, "--seeds", "3", "--aggregation", aggregation, "--out", str(out)]
        assert run.main(flags_of_run) == 0
        curves[aggregation] = common.curve(out, "test_acc")[1]  # (seeds, rounds)
    era, sa = curves["era"], curves["sa"]
    assert era.shape == sa.shape == (3, 5)
    later_rounds_gap = (era[:, 1:] - sa[:, 1:]).mean(axis=1)  # per seed; measured +0.004..+0.018
    assert later_rounds_gap.mean() > -0.03  # the wobble bound above; measured +0.013

    exp = builder.build(flags.parse_config([*argv, "--aggregation", "era"]))
    data, model = exp.data, exp.model

    def local_only(key, idx_row, count):
        params = model.init(key)
        loss_fn = train.client_data_loss(model.apply, data.train_x, data.train_y, idx_row)
        params, *_ = train.sgd_epochs(
            loss_fn, optax.sgd(0.1), params, key, count, data.capacity, 50, 5
        )
        return train.accuracy(model.apply, params, data.test_x, data.test_y)

    local_acc = jax.jit(
        lambda: map_clients(
            local_only, jax.random.split(jax.random.key(0), 20), data.client_idx, data.client_count
        )
    )()
    assert float(local_acc.mean()) < 0.25  # two classes of ten: about 0.2
    assert (era[:, -1] > float(local_acc.mean()) + 0.3).all()  # measured 0.58..0.71 per seed


@pytest.mark.skipif(
    not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason=f"real MNIST not found at {MNIST_DIR} (set JAXFL_MNIST)",
)
def test_feddf_mixed_architectures_beat_per_group_fedavg_on_real_mnist_two_classes_per_client():
    """20 clients with 2 MNIST classes each, half MLP and half logistic regression.

    Measured on CPU (seed 0), group models' test accuracy after 4 rounds: FedDF (200
    distillation steps a round) MLP 0.780, logreg 0.777; the same without distillation
    (per-group FedAvg) 0.714, 0.707. Local-only models of this split score about 0.2
    (test_dsfl_era_matches_or_beats_sa_and_beats_local_only... measures about 0.2).
    """
    argv = [
        "--algo",
        "feddf",
        *MNIST_TWO_CLASSES,
        "--local-epochs",
        "1",
        "--lr",
        "0.05",
        "--public-size",
        "5000",
        "--rounds",
        "4",
        "--models",
        "mlp:1,logreg:1",
        "--distill-check-every",
        "50",
        "--distill-patience",
        "100",
    ]
    _, distilled = _run([*argv, "--server-distill-steps", "200"])
    _, plain = _run([*argv, "--server-distill-steps", "0"])
    for group in ("test_acc_0", "test_acc_1"):
        assert distilled[-1][group] > plain[-1][group] + 0.03
        assert distilled[-1][group] > 0.7  # local-only: about 0.2


@pytest.mark.skipif(
    not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason=f"real MNIST not found at {MNIST_DIR} (set JAXFL_MNIST)",
)
@pytest.mark.slow  # FedMD's and FCCL's rounds: loop references in tests/test_groups.py
def test_fedmd_and_fccl_beat_local_only_on_real_mnist_two_classes_per_client():
    """20 clients with 2 MNIST classes each, MLPs, 3 rounds, each client's own test split.

    Measured on CPU (seed 0), clients' mean accuracy over rounds 1-3: local-only [0.901, 0.966,
    0.962], FD [0.909, 0.936, 0.972], FedMD [0.984, 0.985, 0.988], FCCL [0.981, 0.979, 0.982].
    On the global test set every method stays near 0.19-0.20: two-class clients never learn the
    other eight classes from these exchanges in 3 rounds. FD is within noise of local-only here,
    so it is not asserted.
    """
    base = [
        *MNIST_TWO_CLASSES,
        "--local-epochs",
        "1",
        "--public-size",
        "5000",
        "--rounds",
        "3",
        "--model",
        "mlp",
        "--client-test-size",
        "200",
    ]
    final = {
        algo: _run([*base, "--algo", algo])[1][-1]["client_acc_mean"]
        for algo in ("local", "fedmd", "fccl")
    }
    assert final["fedmd"] > final["local"] + 0.01
    assert final["fccl"] > final["local"] + 0.01
