"""Server-side aggregation rules over the client axis (axis 0)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxfl.core.names import AGGREGATIONS as AGGREGATIONS  # defined without JAX, for --help


def weighted_mean(tree, weights: jax.Array):
    """sum_k w_k x_k / sum_k w_k over the leading client axis of every leaf.

    Args:
      tree: pytree whose leaves are (m, ...).
      weights: (m,) non-negative weights (e.g. client sample counts).
    """
    w = weights.astype(jnp.float32) / jnp.maximum(jnp.sum(weights), 1e-30)
    return jax.tree.map(lambda x: jnp.tensordot(w, x, axes=1).astype(x.dtype), tree)


def weighted_sum(tree, weights: jax.Array):
    """sum_k w_k x_k over the leading client axis of every leaf (``weights`` (m,))."""
    w = weights.astype(jnp.float32)
    return jax.tree.map(lambda x: jnp.tensordot(w, x, axes=1).astype(x.dtype), tree)


def mean_soft_labels(client_probs: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Simple average (SA) of the clients' probabilities: (m, P, L) -> (P, L).

    ``weights`` (m,): optional, e.g. the received mask under dropout (0 = not received).
    """
    if weights is None:
        return jnp.mean(client_probs, axis=0)
    return weighted_mean(client_probs, weights)


def entropy_reduction(mean_probs: jax.Array, temperature: float) -> jax.Array:
    """DS-FL's Entropy Reduction Aggregation: softmax(mean_probs / T) per sample, (P, L) -> (P, L).

    T -> 0 gives one-hot argmax labels and large T flattens towards uniform. Note that the
    input is a probability vector, so softmax(p / T) sharpens only where the ensemble is already
    confident (e.g. T = 0.1 turns 0.6 : 0.3 into 0.95 : 0.05); a near-uniform average gets
    *flatter* (0.12 : 0.08 becomes exp(1.2) : exp(0.8)). tests/test_aggregate.py checks both.
    """
    return jax.nn.softmax(mean_probs / temperature, axis=-1)


def aggregate_soft_labels(
    client_probs: jax.Array, rule: str, temperature: float, weights: jax.Array | None = None
) -> jax.Array:
    """DS-FL aggregation by name: ``"era"`` (sharpened mean) or ``"sa"`` (plain mean).

    Args:
      client_probs: (m, P, L) each client's probabilities on the open subset.
      weights: optional (m,) weights of the mean (the received mask under dropout).
    """
    mean = mean_soft_labels(client_probs, weights)
    if rule == "era":
        return entropy_reduction(mean, temperature)
    if rule == "sa":
        return mean
    raise ValueError(f"unknown --aggregation {rule!r}; allowed: {', '.join(AGGREGATIONS)}")


def onto_simplex(probs: jax.Array) -> jax.Array:
    """Rows (..., L) back onto the probability simplex: negatives to 0, rows renormalised; a
    row with no positive entry becomes uniform. For a noised mean of probabilities (DP's noise
    may push entries below 0): post-processing, no privacy cost."""
    positive = jnp.maximum(probs, 0.0)
    total = jnp.sum(positive, axis=-1, keepdims=True)
    uniform = jnp.full_like(positive, 1.0 / positive.shape[-1])
    return jnp.where(total > 0, positive / jnp.maximum(total, 1e-30), uniform)


def entropy(probs: jax.Array) -> jax.Array:
    """Shannon entropy (nats) of each row: (..., L) -> (...)."""
    return -jnp.sum(jax.scipy.special.xlogy(probs, probs), axis=-1)
