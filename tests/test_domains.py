"""Multi-domain federations (clients from different data sets with one label space), and FCCL
on one with a model per domain."""

import json

import jax
import numpy as np
import pytest

from jaxfl.algorithms import fccl
from jaxfl.data import FederationSpec, PartitionError
from jaxfl.data.domains import build_multidomain_federation, parse_domains, transform_dataset
from jaxfl.mechanisms import groups
from tests.conftest import MNIST_DIR, mnist_available, tiny_image_dataset

from .tolerance import ULPS


def _domains():
    base = tiny_image_dataset(n_train=120, n_test=40)
    return [transform_dataset(base, t) for t in ("none", "invert", "rot90")], base


def test_transforms():
    (plain, inverted, rotated), base = _domains()
    hi, lo = base.train_x.max(), base.train_x.min()
    np.testing.assert_allclose(inverted.train_x, hi + lo - base.train_x, rtol=ULPS)
    np.testing.assert_array_equal(rotated.test_x[3, :, :, 0], np.rot90(base.test_x[3, :, :, 0]))
    assert parse_domains("mnist,mnist:invert") == [("mnist", "none"), ("mnist", "invert")]
    with pytest.raises(PartitionError, match="unknown transform 'blur'"):
        parse_domains("mnist,mnist:blur")


def test_each_client_holds_and_is_tested_on_its_own_domain_only():
    datasets, base = _domains()
    spec = FederationSpec(num_clients=7, partition="iid", public_size=20, seed=0)
    fed, info = build_multidomain_federation(datasets, spec)
    n_train = [120, 120, 120]  # every domain's whole train split (domain 0's public rows unused)
    n_test = 40
    bounds = np.cumsum([0, *n_train])
    sizes = [3, 2, 2]
    assert [d["clients"] for d in info["domains"]] == [[0, 2], [3, 4], [5, 6]]
    starts = np.cumsum([0, *sizes])
    for d in range(3):
        for k in range(starts[d], starts[d + 1]):
            rows = np.asarray(fed.client_idx[k, : int(fed.client_count[k])])
            assert rows.min() >= bounds[d] and rows.max() < bounds[d + 1]
            test_rows = np.asarray(fed.client_test_idx[k, : int(fed.client_test_count[k])])
            assert test_rows.min() >= d * n_test and test_rows.max() < (d + 1) * n_test
    # the second domain's rows hold the inverted images, with the same labels
    np.testing.assert_allclose(fed.train_x[bounds[1] : bounds[2]], datasets[1].train_x)
    np.testing.assert_array_equal(fed.train_y[bounds[1] : bounds[2]], base.train_y)
    assert sum(int(fed.client_count[k]) for k in range(3)) == 100  # 20 held out as public
    assert fed.public_x.shape[0] == 20 and len(fed.test_y) == 3 * n_test
    # equal-weight model groups line up with the domains
    made = groups.make_groups([("mlp", 1), ("logreg", 1), ("mlp", 1)], (28, 28, 1), 4, 7, 3)
    assert [(g.start, g.size) for g in made] == [(0, 3), (3, 2), (5, 2)]


def test_fccl_runs_on_a_multi_domain_federation_with_a_model_per_domain():
    datasets, _ = _domains()
    spec = FederationSpec(num_clients=6, partition="iid", public_size=30, seed=0)
    fed, _ = build_multidomain_federation(datasets, spec)
    model_groups = groups.make_groups(
        [("mlp", 1), ("logreg", 1), ("mlp-16", 1)], fed.feature_shape, fed.num_classes, 6, 3
    )
    config = fccl.FCCLConfig(clients_per_round=3, batch_size=8, public_per_round=16)
    algo = fccl.make(config, fed, model_groups)
    state, metrics = algo.round(algo.init(jax.random.key(0)), jax.random.key(1))
    evaluated = algo.evaluate(state)
    assert evaluated["client_acc"].shape == (6,) and 0 <= float(evaluated["others_acc_mean"]) <= 1
    assert float(metrics["collab_loss"]) > 0


@pytest.mark.skipif(not mnist_available(), reason="needs MNIST: set JAXFL_MNIST")
def test_multi_domain_cli_run(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from jaxfl.cli import run

    out = tmp_path / "res"
    argv = ["--algo", "fccl", "--domains", "mnist,mnist:invert", "--data-dir", str(MNIST_DIR)]
    argv += ["--models", "mlp:1,logreg:1", "--clients", "4", "--rounds", "1"]
    argv += ["--local-epochs", "1", "--public-size", "600", "--public-per-round", "256"]
    argv += ["--client-test-size", "50", "--checkpoint-every", "0", "--out", str(out)]
    assert run.main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert [d["name"] for d in config["data"]["domains"]] == ["mnist", "mnist:invert"]
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert "others_acc_mean" in record
