"""The data-sharing game of Karimireddy, Guo, Jordan, "Mechanisms that Incentivize Data Sharing in
Federated Learning" (2022), and delivering a chosen accuracy for real.

Agent i pays c_i per data point and values accuracy a(m) of a model trained on m points:

- alone it collects m_i^o = argmax_m a(m) - c_i m                  (its local optimum)
- naive federation: everyone gets a(M), M = sum_j m_j. Agent i's best response to the others'
  m_{-i} is max(0, m_i^o - m_{-i}) (a concave), so all but the cheapest agents free-ride;
- accuracy shaping: the server returns agent i the accuracy
      gamma_i(m) = min(a(m_i^o) + (c_i + eps)(m_i - m_i^o), a(M)),
  so each extra point buys c_i + eps > c_i of accuracy until the cap a(M): contributing is the
  best response, and the fixed point has more data and higher utilities.

Utilities are u_i = delivered accuracy - c_i m_i. :func:`equilibrium` iterates best responses
(Gauss-Seidel) to the fixed point for ``naive`` and ``shaped``; ``local`` is everyone alone.
a(m) is either :func:`bound_accuracy` (the paper's generalization-bound form) or
:func:`interpolated_accuracy` over accuracies the simulator measured
(:func:`measure_accuracy_curve`). :func:`degrade` and :func:`mixing_probability` deliver a lower
accuracy for real, by replacing a fraction of the model's predictions with random labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

MECHANISMS = ("local", "naive", "shaped")
Accuracy = Callable[[np.ndarray], np.ndarray]


def bound_accuracy(a_opt: float = 1.0, k: float = 10.0) -> Accuracy:
    """a(m) = max(0, a_opt - (sqrt(2k(2 + ln(m/k))) + 4) / sqrt(m)), 0 for m <= k.

    ``k`` is the model's complexity (VC-like dimension); the form follows the paper's
    generalization bound.
    """

    def a(m):
        m = np.asarray(m, dtype=np.float64)
        safe = np.maximum(m, k)
        value = a_opt - (np.sqrt(2 * k * (2 + np.log(safe / k))) + 4) / np.sqrt(safe)
        return np.where(m > k, np.maximum(0.0, value), 0.0)

    return a


def interpolated_accuracy(sizes: Sequence[float], accuracies: Sequence[float]) -> Accuracy:
    """a(m) by linear interpolation in log m over measured (size, accuracy) points.

    Made non-decreasing (more data never hurts in the model of the game); 0 at m = 0, constant
    past the largest size.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    order = np.argsort(sizes)
    sizes = sizes[order]
    acc = np.maximum.accumulate(np.asarray(accuracies, dtype=np.float64)[order])
    if sizes[0] <= 0:
        raise ValueError("measured sizes must be > 0")

    def a(m):
        m = np.asarray(m, dtype=np.float64)
        inside = np.interp(np.log(np.maximum(m, sizes[0])), np.log(sizes), acc)
        ramp = acc[0] * m / sizes[0]  # linear from (0, 0) to the first measurement
        return np.where(m <= 0, 0.0, np.where(m < sizes[0], ramp, inside))

    return a


def _argmax(f: Callable[[np.ndarray], np.ndarray], hi: float, grid: int = 4001) -> float:
    """argmax of f over [0, hi]: a geometric grid, then golden-section search around the best."""
    xs = np.concatenate([[0.0], np.geomspace(1e-3, hi, grid)])
    values = f(xs)
    i = int(np.argmax(values))
    lo_x, hi_x = xs[max(i - 1, 0)], xs[min(i + 1, len(xs) - 1)]
    best_x, best_v = xs[i], values[i]
    g = (np.sqrt(5) - 1) / 2
    a, b = lo_x, hi_x
    for _ in range(80):
        c, d = b - g * (b - a), a + g * (b - a)
        if f(np.array([c]))[0] >= f(np.array([d]))[0]:
            b = d
        else:
            a = c
    x = (a + b) / 2
    return float(x) if f(np.array([x]))[0] >= best_v else float(best_x)


def local_optimum(a: Accuracy, cost: float, m_max: float) -> float:
    """m_i^o = argmax_{0 <= m <= m_max} a(m) - cost * m."""
    return _argmax(lambda m: a(m) - cost * m, m_max)


@dataclasses.dataclass
class Outcome:
    """One mechanism's equilibrium: per-agent contributions, accuracies, utilities."""

    mechanism: str
    contributions: np.ndarray  # (n,) m_i
    accuracy: np.ndarray  # (n,) delivered accuracy
    utility: np.ndarray  # (n,) accuracy - c_i m_i
    rounds: int  # best-response sweeps to converge

    @property
    def total(self) -> float:
        return float(self.contributions.sum())

    def as_dict(self) -> dict:
        return {
            "mechanism": self.mechanism,
            "total_data": self.total,
            "contributions": self.contributions.tolist(),
            "accuracy": self.accuracy.tolist(),
            "utility": self.utility.tolist(),
            "best_response_sweeps": self.rounds,
        }


def shaped_accuracy(a: Accuracy, m_i, m_local, cost, eps, total):
    """gamma_i = min(a(m_i^o) + (c_i + eps)(m_i - m_i^o), a(M)): what shaping delivers to i."""
    line = a(np.array([m_local]))[0] + (cost + eps) * (np.asarray(m_i) - m_local)
    return np.minimum(line, a(np.asarray(total)))


def equilibrium(
    a: Accuracy,
    costs: Sequence[float],
    mechanism: str,
    *,
    eps: float = 1e-4,
    m_max: float = 1e7,
    tol: float = 1e-3,
    max_sweeps: int = 500,
) -> Outcome:
    """The fixed point of best responses under ``mechanism`` (local, naive or shaped).

    Args:
      a: accuracy as a function of total data (vectorized over numpy arrays).
      costs: (n,) marginal data costs c_i > 0.
      eps: the shaping margin (each extra point earns c_i + eps of accuracy).
      m_max: the largest contribution considered.
      tol: convergence threshold on the largest change of a contribution in a sweep.
    """
    if mechanism not in MECHANISMS:
        raise ValueError(f"unknown mechanism {mechanism!r}; allowed: {', '.join(MECHANISMS)}")
    costs = np.asarray(costs, dtype=np.float64)
    if np.any(costs <= 0):
        raise ValueError("data costs c_i must be > 0")
    m_local = np.array([local_optimum(a, c, m_max) for c in costs])
    if mechanism == "local":
        acc = a(m_local)
        return Outcome("local", m_local, acc, acc - costs * m_local, 0)
    m = np.zeros_like(costs)
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):  # noqa: B007
        largest_change = 0.0
        for i, c in enumerate(costs):
            others = m.sum() - m[i]
            if mechanism == "naive":
                new = max(0.0, m_local[i] - others)
            else:
                utility = lambda x, i=i, c=c, others=others: (
                    shaped_accuracy(a, x, m_local[i], c, eps, x + others) - c * x
                )
                new = _argmax(utility, m_max)
            largest_change = max(largest_change, abs(new - m[i]))
            m[i] = new
        if largest_change < tol * max(1.0, m.max()):
            break
    total = m.sum()
    if mechanism == "naive":
        acc = np.full_like(costs, a(np.array([total]))[0])
    else:
        acc = np.array(
            [shaped_accuracy(a, m[i], m_local[i], c, eps, total) for i, c in enumerate(costs)]
        )
    return Outcome(mechanism, m, acc, acc - costs * m, sweeps)


def mixing_probability(model_accuracy: float, target: float, num_classes: int) -> float:
    """q such that (1 - q) * model_accuracy + q / L = target (q in [0, 1]).

    Replacing each prediction by a uniformly random label with probability q delivers ``target``
    in expectation; a target above the model's accuracy cannot be delivered (q = 0).
    """
    chance = 1.0 / num_classes
    if model_accuracy <= chance:
        return 0.0
    return float(np.clip((model_accuracy - target) / (model_accuracy - chance), 0.0, 1.0))


def degrade(predictions, key, q: float, num_classes: int):
    """Each of the (N,) predicted labels becomes a uniformly random label with probability q."""
    import jax
    import jax.numpy as jnp

    k_mix, k_label = jax.random.split(key)
    mix = jax.random.uniform(k_mix, predictions.shape) < q
    random_labels = jax.random.randint(k_label, predictions.shape, 0, num_classes)
    return jnp.where(mix, random_labels, predictions)


def measure_accuracy_curve(
    dataset,
    sizes: Sequence[int],
    *,
    model_name: str = "logreg",
    epochs: int = 5,
    lr: float = 0.1,
    batch_size: int = 50,
    seed: int = 0,
    client_chunk: int | None = None,
) -> np.ndarray:
    """Test accuracy after training on m examples, for each m in ``sizes``, measured by the
    simulator: every size is one client (nested random subsets of the train split) on the
    client axis, trained local-only, scored on the whole test set. Every client runs the same
    number of SGD steps (``epochs`` passes over max(sizes) slots, a small client's m examples
    repeated to fill them), so a small data set is not also an undertrained model.

    Returns (len(sizes),) accuracies, for :func:`interpolated_accuracy`.
    """
    import jax
    import jax.numpy as jnp

    from jaxfl.algorithms import local
    from jaxfl.data.federation import Federation, pack
    from jaxfl.models import get_model

    sizes = [int(s) for s in sizes]
    if min(sizes) < 1 or max(sizes) > len(dataset.train_y):
        raise ValueError(f"sizes must be in 1..{len(dataset.train_y)} (the train split)")
    perm = np.random.default_rng(seed).permutation(len(dataset.train_y))
    slots = np.arange(max(sizes))
    client_idx, counts = pack([perm[:s][slots % s] for s in sizes])
    n_test = len(dataset.test_y)
    data = Federation(
        train_x=jnp.asarray(dataset.train_x),
        train_y=jnp.asarray(dataset.train_y),
        client_idx=jnp.asarray(client_idx),
        client_count=jnp.asarray(counts),
        test_x=jnp.asarray(dataset.test_x),
        test_y=jnp.asarray(dataset.test_y),
        client_test_idx=jnp.broadcast_to(jnp.arange(n_test, dtype=jnp.int32), (len(sizes), n_test)),
        client_test_count=jnp.full((len(sizes),), n_test, jnp.int32),
        client_val_idx=jnp.zeros((len(sizes), 1), jnp.int32),
        client_val_count=jnp.zeros((len(sizes),), jnp.int32),
        public_x=jnp.zeros((1, *dataset.feature_shape), jnp.float32),
        public_y=jnp.zeros((1,), jnp.int32),
        num_classes=dataset.num_classes,
    )
    model = get_model(model_name, dataset.feature_shape, dataset.num_classes)
    config = local.LocalConfig(
        local_epochs=epochs, batch_size=batch_size, lr=lr, client_chunk=client_chunk
    )
    algo = local.make(config, data, model)
    state, _ = algo.round(algo.init(jax.random.key(seed)), jax.random.key(seed + 1))
    return np.asarray(algo.evaluate(state)["client_acc"], dtype=np.float64)
