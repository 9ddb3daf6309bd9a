"""Partitioners and the Federation: label distributions, disjointness, coverage, determinism."""

import numpy as np
import pytest

from jaxfl.data import FederationSpec, PartitionError, build_federation
from jaxfl.data import partition as P

from .conftest import tiny_image_dataset

LABELS = np.repeat(np.arange(10), 600)  # 6000 examples, 600 per class


def _check_disjoint_cover(parts, n, exact=True):
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx), "clients overlap"
    if exact:
        assert len(allidx) == n, "not every example was assigned"
    assert min(len(p) for p in parts) >= 1


def test_iid_balanced_and_deterministic():
    a = P.iid(LABELS, 7, np.random.default_rng(0))
    b = P.iid(LABELS, 7, np.random.default_rng(0))
    _check_disjoint_cover(a, len(LABELS))
    assert max(map(len, a)) - min(map(len, a)) <= 1
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=False))


@pytest.mark.parametrize("alpha", [100.0, 0.1])
def test_dirichlet_label_skew_follows_alpha(alpha):
    parts, priors = P.dirichlet(LABELS, 20, alpha, np.random.default_rng(1), 10)
    _check_disjoint_cover(parts, len(LABELS))
    # later clients take what is left once a class runs out (inherent to the client-inner
    # scheme, renormalised over the classes still available), so the checks cover the first half
    hist = P.label_histograms(LABELS, parts, 10)[:10]
    empirical = hist / hist.sum(1, keepdims=True)
    if alpha == 100.0:  # near-uniform priors: every client sees every class
        assert (hist > 0).all()
    else:  # skewed: most mass on few classes, and the draw follows the priors
        assert np.median((empirical > 0.05).sum(1)) <= 4
    assert np.abs(empirical - priors[:10]).max() < 0.25


def test_dirichlet_10k_clients_tiny_alpha_terminates_with_every_client_served():
    labels = np.repeat(np.arange(10), 6000)
    parts, _ = P.dirichlet(labels, 10_000, 0.01, np.random.default_rng(0), 10)
    _check_disjoint_cover(parts, len(labels))
    hist = P.label_histograms(labels, parts, 10)
    assert np.median((hist > 0).sum(1)) == 1  # alpha 0.01: almost one class per client


def test_shards_give_few_labels():
    parts = P.shards(LABELS, 30, 2, np.random.default_rng(0))
    _check_disjoint_cover(parts, len(LABELS))
    assert ((P.label_histograms(LABELS, parts, 10) > 0).sum(1) <= 2).all()


def test_classes_per_client_exact_and_balanced():
    parts = P.classes_per_client(LABELS, 25, 2, np.random.default_rng(0), 10)
    _check_disjoint_cover(parts, len(LABELS))
    hist = P.label_histograms(LABELS, parts, 10)
    assert ((hist > 0).sum(1) == 2).all()
    holders = (hist > 0).sum(0)
    assert holders.max() - holders.min() <= 1  # every class held by 5 clients


def test_quantity_skew_sizes_vary_labels_do_not():
    parts = P.quantity_skew(LABELS, 12, 0.5, np.random.default_rng(0))
    _check_disjoint_cover(parts, len(LABELS))
    sizes = np.array([len(p) for p in parts])
    assert sizes.max() > 3 * sizes.min()


def test_rare_labels_keep_exactly_the_few_examples_of_two_labels_per_client():
    """FD's setting: IID shares, then 2 labels per client cut to 3 examples; the others keep
    their whole IID share (about 60 each here), and nothing is shared between clients."""
    parts = P.rare_labels(LABELS, 10, 2, 3, np.random.default_rng(0), 10)
    _check_disjoint_cover(parts, len(LABELS), exact=False)
    hist = P.label_histograms(LABELS, parts, 10)
    assert (np.sort(hist, 1)[:, :2] == 3).all() and (np.sort(hist, 1)[:, 2:] >= 40).all()
    scarce = [tuple(np.flatnonzero(row == 3)) for row in hist]
    assert len(set(scarce)) > 1  # drawn per client
    with pytest.raises(PartitionError, match="--rare-labels"):
        P.rare_labels(LABELS, 10, 10, 3, np.random.default_rng(0), 10)
    with pytest.raises(PartitionError, match="--rare-examples"):
        P.rare_labels(LABELS, 10, 2, -1, np.random.default_rng(0), 10)


def test_too_many_clients_is_a_clear_error():
    with pytest.raises(PartitionError, match="--clients"):
        P.iid(np.arange(5), 6, np.random.default_rng(0))
    with pytest.raises(PartitionError, match="--clients"):
        P.classes_per_client(np.repeat(np.arange(2), 3), 20, 1, np.random.default_rng(0), 2)


def test_federation_public_disjoint_and_test_splits_follow_labels():
    ds = tiny_image_dataset(n_train=600, n_test=300, classes=4)
    spec = FederationSpec(
        num_clients=5, partition="classes", classes_per_client=1, public_size=100, seed=0
    )
    fed, info = build_federation(ds, spec)
    idx = np.asarray(fed.client_idx)
    counts = np.asarray(fed.client_count)
    private = np.concatenate([idx[k, : counts[k]] for k in range(5)])
    assert len(np.unique(private)) == len(private) == 500  # public set held out, rest dealt
    assert info["public_size"] == 100 and fed.public_x.shape == (100, 28, 28, 1)
    public_rows = {r.tobytes() for r in np.asarray(fed.public_x)}
    assert not public_rows & {r.tobytes() for r in ds.train_x[private]}
    train_y, test_y = np.asarray(fed.train_y), np.asarray(fed.test_y)
    tidx, tcount = np.asarray(fed.client_test_idx), np.asarray(fed.client_test_count)
    for k in range(5):  # one class per client: its test split holds only that class
        own = set(train_y[idx[k, : counts[k]]])
        assert len(own) == 1
        assert set(test_y[tidx[k, : tcount[k]]]) == own


def test_federation_is_deterministic_under_seed():
    ds = tiny_image_dataset()
    spec = FederationSpec(num_clients=4, partition="dirichlet", alpha=0.5, public_size=20, seed=3)
    a, _ = build_federation(ds, spec)
    b, _ = build_federation(ds, spec)
    np.testing.assert_array_equal(a.client_idx, b.client_idx)
    np.testing.assert_array_equal(a.client_test_idx, b.client_test_idx)
    np.testing.assert_array_equal(a.public_x, b.public_x)


def test_a_client_left_without_data_is_a_clear_error():
    ds = tiny_image_dataset(n_train=40)
    ds.train_groups = [np.arange(0, 20), np.arange(20, 40), np.array([], dtype=np.int64)]
    spec = FederationSpec(num_clients=3, partition="natural", public_size=0)
    with pytest.raises(PartitionError, match="left 1 client"):
        build_federation(ds, spec)


def test_a_client_whose_labels_the_test_set_lacks_draws_by_the_test_sets_labels():
    from jaxfl.data.partition import sample_by_priors

    labels = np.array([0, 0, 1, 1, 1])
    priors = np.array([[0.0, 0.0, 1.0], [0.5, 0.5, 0.0]])  # client 0 holds only label 2
    rng = np.random.default_rng(0)
    first, second = sample_by_priors(labels, np.array([4, 4]), priors, rng)
    assert len(first) == 4 and set(labels[first]) <= {0, 1}
    assert len(second) == 4
