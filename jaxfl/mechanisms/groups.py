"""Client groups with different model architectures (heterogeneous federated learning).

``--models lenet5:40,mlp:30,logreg:30`` splits the C clients into contiguous groups of
(about) 40%, 30% and 30%, each with its own model. A group's clients are stacked on their own
client axis (their parameters are one pytree with a leading axis of the group's size), and one
jitted round covers every group: the round loops over the few groups while it is traced,
never over clients. Only what does not depend on the architecture crosses groups: predictions
on shared data, per-label logit tables. Every round samples a fixed number of clients from
each group (``per_round``, proportional to the group's size, at least 1), so shapes stay static.

A run without ``--models`` is one group holding every client; it samples exactly as before
(the round key is used as is, not split per group).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxfl.core.client_axis import map_clients
from jaxfl.models import MODEL_NAMES_HELP, Model, get_model, is_model_name


@dataclasses.dataclass(frozen=True)
class Group:
    """Clients ``start .. start + size - 1``, all with ``model``; ``per_round`` sampled a round."""

    model: Model
    start: int
    size: int
    per_round: int

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def stop(self) -> int:
        return self.start + self.size


def parse_models(spec: str) -> list[tuple[str, float]]:
    """ "lenet5:40,mlp:30" -> [("lenet5", 40.0), ("mlp", 30.0)]; a bare name has weight 1."""
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        name, _, weight = item.partition(":")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            w = -1.0
        if not is_model_name(name) or w <= 0:
            raise ValueError(
                f"--models {spec!r}: {item!r} is not MODEL[:WEIGHT] with a model from "
                f"{MODEL_NAMES_HELP} and a weight > 0 (e.g. lenet5:40,mlp:30,logreg:30)"
            )
        out.append((name, w))
    if not out:
        raise ValueError(f"--models {spec!r} names no model; e.g. lenet5:40,mlp:30,logreg:30")
    return out


def split_counts(weights: Sequence[float], total: int) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder), every part >= 1."""
    if total < len(weights):
        raise ValueError(f"cannot give {len(weights)} groups at least one of {total} clients")
    w = np.asarray(weights, dtype=np.float64)
    exact = w / w.sum() * (total - len(w))
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - len(w) - counts.sum()]] += 1
    return (counts + 1).tolist()


def make_groups(
    models: Sequence[tuple[str, float]] | Sequence[Model],
    feature_shape: tuple[int, ...],
    num_classes: int,
    num_clients: int,
    clients_per_round: int,
    conv_lowering: str | None = None,
    compute_dtype: str = "float32",
) -> tuple[Group, ...]:
    """Groups over clients 0..C-1 in order, sizes and per-round counts proportional to weights.

    ``models`` is a list of (model name, weight) (see :func:`parse_models`) or of built Models
    (equal weights).
    """
    if models and isinstance(models[0], Model):
        built, weights = list(models), [1.0] * len(models)
    else:
        built = [
            get_model(n, feature_shape, num_classes, conv_lowering, compute_dtype)
            for n, _ in models
        ]
        weights = [w for _, w in models]
    sizes = split_counts(weights, num_clients)
    per_round = split_counts(weights, clients_per_round) if len(built) > 1 else [clients_per_round]
    per_round = [min(p, s) for p, s in zip(per_round, sizes, strict=True)]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
    return tuple(
        Group(model, int(start), int(size), int(m))
        for model, start, size, m in zip(built, starts, sizes, per_round, strict=True)
    )


def single_group(model: Model, num_clients: int, clients_per_round: int) -> tuple[Group, ...]:
    return (Group(model, 0, num_clients, clients_per_round),)


def as_groups(model_or_groups, num_clients: int, clients_per_round: int) -> tuple[Group, ...]:
    """A Model (one group of every client) or an already built tuple of Groups."""
    if isinstance(model_or_groups, Model):
        return single_group(model_or_groups, num_clients, clients_per_round)
    groups = tuple(model_or_groups)
    if groups[-1].stop != num_clients or groups[0].start != 0:
        raise ValueError(
            f"the model groups cover clients {groups[0].start}..{groups[-1].stop - 1}, "
            f"not all {num_clients}"
        )
    return groups


def sample_groups(key: jax.Array, groups: Sequence[Group], select: Callable) -> list[jax.Array]:
    """Per group, the (per_round,) global indices of its sampled clients.

    ``select(key, n, m)`` draws m of n local indices; one group uses ``key`` itself.
    """
    keys = [key] if len(groups) == 1 else list(jax.random.split(key, len(groups)))
    return [g.start + select(k, g.size, g.per_round) for k, g in zip(keys, groups, strict=True)]


def init_params(key: jax.Array, groups: Sequence[Group]) -> tuple:
    """Per group, (size, ...) independently initialised client models."""
    keys = [key] if len(groups) == 1 else list(jax.random.split(key, len(groups)))
    return tuple(
        jax.vmap(g.model.init)(jax.random.split(k, g.size))
        for k, g in zip(keys, groups, strict=True)
    )


def split_rows(x: jax.Array, groups: Sequence[Group]) -> list[jax.Array]:
    """Split an (m, ...) array of sampled-client values into per-group (per_round, ...) parts."""
    bounds = np.cumsum([g.per_round for g in groups])[:-1].tolist()
    return jnp.split(x, bounds) if bounds else [x]


def personal_accuracy(groups: Sequence[Group], client_params, data, chunk_size=None):
    """(C,) accuracy of every client's own model (each group with its model) on its test split.

    ``client_params``: per group, (size, ...) parameters.
    """
    from jaxfl.core.metrics import per_client_accuracy

    parts = []
    for g, params in zip(groups, client_params, strict=True):
        sub = data.replace(
            client_test_idx=data.client_test_idx[g.start : g.stop],
            client_test_count=data.client_test_count[g.start : g.stop],
        )
        parts.append(
            per_client_accuracy(g.model.apply, params, sub, personal=True, chunk_size=chunk_size)
        )
    return jnp.concatenate(parts)


OTHERS_TEST_EXAMPLES = 500


def others_accuracy_mean(groups: Sequence[Group], client_params, data, chunk_size=None):
    """() mean over clients of each client's own model's accuracy on the global test set (every
    domain's), "learn from others" in FCCL's terms. Scored on a fixed random subset of at most
    ``OTHERS_TEST_EXAMPLES`` (500) test examples, so it costs C x 500 predictions, not C x M
    (the mean over clients is still precise; one client's value has a std of about 0.02)."""
    from jaxfl.core.train import accuracy

    n = data.test_y.shape[0]
    # one draw per row from fold_in(key, row), padding rows (label -1) last: the subset does not
    # depend on how far the test set is padded (the experiments axis pads it)
    draws = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(jax.random.key(0), i)))(
        jnp.arange(n)
    )
    real = data.test_y.reshape(n, -1)[:, 0] >= 0  # a (M, T) target row is padding all along
    rows = jnp.argsort(jnp.where(real, draws, 2.0))[: min(n, OTHERS_TEST_EXAMPLES)]
    x, y = data.test_x[rows], data.test_y[rows]
    per_group = [
        map_clients(lambda p, g=g: accuracy(g.model.apply, p, x, y), params, chunk_size=chunk_size)
        for g, params in zip(groups, client_params, strict=True)
    ]
    return jnp.mean(jnp.concatenate(per_group))


def scatter_rows(client_params, groups: Sequence[Group], sampled, new_rows) -> tuple:
    """Write each group's (per_round, ...) ``new_rows`` at its global indices ``sampled``."""
    return tuple(
        jax.tree.map(lambda all_, new, s=s, g=g: all_.at[s - g.start].set(new), p, rows)
        for g, p, s, rows in zip(groups, client_params, sampled, new_rows, strict=True)
    )


def gather_rows(client_params, groups: Sequence[Group], sampled) -> list:
    """Each group's (per_round, ...) parameters of its sampled clients."""
    return [
        jax.tree.map(lambda p, s=s, g=g: p[s - g.start], params)
        for g, params, s in zip(groups, client_params, sampled, strict=True)
    ]


def client_inputs(groups: Sequence[Group], sampled, keys, work, data, adversary, *rows) -> tuple:
    """Per group, the client-axis arguments ``(*rows, ClientInputs)`` of its sampled clients,
    the usual inputs of a client update (:func:`jaxfl.core.algorithm.client_inputs`).

    Args:
      groups: the model groups; ``sampled``: per group, its (per_round,) global client indices.
      keys, work: (m,) over all sampled clients, in group order (per-client PRNG keys, fault work).
      data: the Federation; adversary: (C,) bool.
      *rows: per-group lists of leading values (e.g. each group's gathered client parameters).
    """
    from jaxfl.core.algorithm import client_inputs

    keys, work = split_rows(keys, groups), split_rows(work, groups)
    return tuple(
        client_inputs(s, keys[i], work[i], data, adversary, *(r[i] for r in rows))
        for i, s in enumerate(sampled)
    )


def personal_metrics(groups: Sequence[Group], client_params, data, chunk_size=None) -> dict:
    """Evaluation of client-owned models: ``client_acc`` (C,) on own test splits and
    ``others_acc_mean`` (every client's model on the global test set, mean)."""
    return {
        "client_acc": personal_accuracy(groups, client_params, data, chunk_size),
        "others_acc_mean": others_accuracy_mean(groups, client_params, data, chunk_size),
    }


def describe(groups: Sequence[Group]) -> list[dict]:
    """JSON-able description for config.json."""
    return [
        {
            "model": g.name,
            "clients": [g.start, g.stop - 1],
            "size": g.size,
            "per_round": g.per_round,
            "params": g.model.num_params,
        }
        for g in groups
    ]
