"""Aggregation rules against hand-computed values."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxfl.core import aggregate

from .tolerance import ULPS


def test_weighted_mean_by_counts():
    tree = {"w": jnp.array([[1.0, 2.0], [3.0, 6.0]])}
    out = aggregate.weighted_mean(tree, jnp.array([1, 3]))
    np.testing.assert_allclose(out["w"], [(1 + 9) / 4, (2 + 18) / 4])


def test_era_hand_computed():
    probs = jnp.array([[[0.7, 0.2, 0.1]], [[0.5, 0.4, 0.1]]])  # 2 clients, 1 sample, 3 classes
    mean = np.array([0.6, 0.3, 0.1])
    e = np.exp(mean / 0.1)
    expected = e / e.sum()  # softmax([6, 3, 1])
    np.testing.assert_allclose(
        aggregate.aggregate_soft_labels(probs, "era", 0.1)[0], expected, rtol=ULPS
    )
    # tol: the hand values are printed to 6 decimals, so each is within 5e-7 of the exact softmax.
    np.testing.assert_allclose(expected, [0.946499, 0.047123, 0.006377], atol=1e-6)
    np.testing.assert_allclose(
        aggregate.aggregate_soft_labels(probs, "sa", 0.1)[0], mean, rtol=ULPS
    )


def test_era_sharpens_confident_ensembles():
    """Clients that mostly agree (the case ERA is designed for): ERA lowers every entropy."""
    rng = np.random.default_rng(0)
    winners = rng.integers(10, size=64)
    conf = rng.uniform(0.4, 0.9, size=(5, 64, 1))
    probs = (1 - conf) * rng.dirichlet(np.ones(10), size=(5, 64)) + conf * np.eye(10)[winners]
    sa = aggregate.aggregate_soft_labels(jnp.asarray(probs), "sa", 0.1)
    era = aggregate.aggregate_soft_labels(jnp.asarray(probs), "era", 0.1)
    assert np.all(aggregate.entropy(era) < aggregate.entropy(sa))
    np.testing.assert_array_equal(jnp.argmax(era, -1), jnp.argmax(sa, -1))  # same winner
    np.testing.assert_array_equal(jnp.argmax(era, -1), winners)
    flat = aggregate.entropy_reduction(sa, 1e6)  # T -> inf flattens to uniform
    # tol: at T = 1e6 softmax(p / T) is within max|p| / T = 1e-6 of uniform; 1e-5 bounds that plus
    # float32 rounding.
    np.testing.assert_allclose(flat, 0.1, atol=1e-5)


def test_era_flattens_near_uniform_averages():
    """softmax(p/T) is not always sharper: with p near uniform, 0.12 vs 0.08 becomes
    exp(1.2) : exp(0.8), a smaller ratio than 1.5, so the entropy goes up."""
    p = jnp.array([[0.12, 0.08, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]])
    assert float(aggregate.entropy(aggregate.entropy_reduction(p, 0.1))[0]) > float(
        aggregate.entropy(p)[0]
    )


def test_unknown_rule_names_the_flag():
    with pytest.raises(ValueError, match="--aggregation"):
        aggregate.aggregate_soft_labels(jnp.ones((1, 1, 2)), "median", 0.1)
