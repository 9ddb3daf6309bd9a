"""FD, federated distillation (Jeong et al. 2018), written from the paper, one device at a time:
the reference behind reproductions/fd.py's verdict.

Setting: M devices, every device every round. Device i holds an IID share of the training set
in which ``rare_labels`` of its labels (drawn per device; FAug's "target labels") keep only
``rare_examples`` examples each.

Round t, device i (the paper's Algorithm 1, with L labels):

1. Local training, E epochs of minibatch SGD on
       loss(x, y) = CE(y, f_i(x)) + beta * CE(softmax(G_i[y]), softmax(f_i(x)))
   where G_i[y] is the global average logit vector of label y (the distillation term only once
   it exists). Meanwhile the device keeps, per label l, the mean F_i[l] of the logit vectors its
   training steps produced on its examples of label l (each step's logits before its update).
2. Upload F_i (L x L). The server forms, for every device, the average of the OTHER devices'
   vectors over those that hold the label:
       G_i[l] = sum_{j != i, j holds l} F_j[l] / #{j != i : j holds l}
   (``exclude_own=False`` averages over all holders, the device itself included).

The metric is the paper's: each device's own model on the global test set, averaged over the
devices. ``beta = 0`` is standalone (local-only) training on the same shares.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from reproductions.references import base


def rare_label_shares(y: np.ndarray, clients: int, rare: int, keep: int, rng) -> list[np.ndarray]:
    """Index arrays: a random IID split into ``clients`` near-equal shares, each then reduced to
    ``keep`` examples of each of ``rare`` labels drawn for that device (the rest discarded)."""
    num_labels = int(y.max()) + 1
    shares = np.array_split(rng.permutation(len(y)), clients)
    out = []
    for share in shares:
        scarce = set(rng.choice(num_labels, rare, replace=False).tolist())
        kept, seen = [], dict.fromkeys(scarce, 0)
        for row in share:
            label = int(y[row])
            if label in scarce:
                if seen[label] >= keep:
                    continue
                seen[label] += 1
            kept.append(row)
        out.append(np.array(kept, np.int64))
    return out


def global_vectors(tables: np.ndarray, holds: np.ndarray, exclude_own: bool):
    """Per device, the average of the (other) holders' per-label vectors.

    Args:
      tables: (M, L, L) device i's mean logit vector per label.
      holds: (M, L) bool, device i had examples of label l.

    Returns:
      (G (M, L, L), has (M, L) bool): device i's targets and which of them exist.
    """
    w = holds.astype(np.float64)
    total = np.einsum("ml,mlc->lc", w, tables)  # (L, L) over all holders
    count = w.sum(0)  # (L,)
    if exclude_own:
        sums = total[None] - w[..., None] * tables
        counts = count[None] - w
    else:
        sums = np.broadcast_to(total, tables.shape)
        counts = np.broadcast_to(count, holds.shape)
    has = counts > 0
    return sums / np.maximum(counts, 1)[..., None], has


@partial(jax.jit, static_argnames=("batch", "epochs", "drop_last"))
def fd_epochs(
    params, x, y, n, key, lr, beta, target_logits, has_target, batch: int, epochs: int,
    drop_last: bool = True,
):  # fmt: skip
    """``epochs`` of minibatch SGD on CE + beta * CE(softmax(G[y]), softmax(f)) over the first
    ``n`` rows of (x (N, d), y (N,)), reshuffled each epoch.

    ``drop_last``: the last partial batch of an epoch is dropped (n // batch steps), else it is
    one more step on its fewer rows, with the loss averaged over them (PyTorch's DataLoader
    default, and jaxfl's).

    Args:
      target_logits: (L, L) the device's G; has_target: (L,) bool.

    Returns:
      (params, table (L, L) mean training-step logits per label, holds (L,) bool).
    """
    num_labels = target_logits.shape[0]
    capacity = x.shape[0]
    target_probs = jax.nn.softmax(target_logits, -1)

    def loss(params, xb, yb, vb):
        logits = base.mlp(params, xb)
        logp = jax.nn.log_softmax(logits)
        ce = -jnp.take_along_axis(logp, yb[:, None], 1)[:, 0]
        kd = -jnp.sum(target_probs[yb] * logp, -1) * has_target[yb]
        return jnp.sum((ce + beta * kd) * vb) / jnp.maximum(jnp.sum(vb), 1.0), logits

    grad = jax.value_and_grad(loss, has_aux=True)

    def epoch(carry, k):
        order, valid = base.epoch_batches(k, n, capacity, batch, drop_last)

        def step(carry, rows_valid):
            params, sums, counts = carry
            rows, vb = rows_valid
            (_, logits), g = grad(params, x[rows], y[rows], vb)
            live = (jnp.sum(vb) > 0).astype(jnp.float32)
            onehot = jax.nn.one_hot(y[rows], num_labels) * vb[:, None]
            params = jax.tree.map(lambda p, d: p - live * lr * d, params, g)
            return (params, sums + onehot.T @ logits, counts + onehot.sum(0)), None

        carry, _ = jax.lax.scan(step, carry, (order, valid))
        return carry, None

    zeros = (jnp.zeros((num_labels, num_labels)), jnp.zeros((num_labels,)))
    (params, sums, counts), _ = jax.lax.scan(epoch, (params, *zeros), jax.random.split(key, epochs))
    return params, sums / jnp.maximum(counts, 1.0)[:, None], counts > 0


def run(
    data,
    *,
    algorithm: str,  # "fd" or "local"
    clients: int,
    rare_labels: int,
    rare_examples: int,
    rounds: int,
    local_epochs: int,
    batch: int,
    lr: float,
    beta: float = 0.5,
    hidden=(200, 200),
    exclude_own: bool = True,
    drop_last: bool = True,
    init: str = "lecun",
    seed: int = 0,
) -> list[float]:
    """The devices' mean accuracy on the global test set after each round.

    ``data`` = (train_x (N, d), train_y (N,), test_x, test_y); ``algorithm="local"`` is the
    same loop with beta = 0 (standalone training). ``drop_last``: :func:`fd_epochs`'s.
    """
    if algorithm not in ("fd", "local"):
        raise ValueError(f"algorithm {algorithm!r}; allowed: fd, local")
    train_x, train_y, test_x, test_y = data
    num_labels = int(train_y.max()) + 1
    rng = np.random.default_rng(seed)
    parts = rare_label_shares(train_y, clients, rare_labels, rare_examples, rng)
    capacity = max(len(p) for p in parts)
    shares = [
        (base.pad_rows(train_x[p], capacity), base.pad_rows(train_y[p], capacity), len(p))
        for p in parts
    ]
    sizes = (train_x.shape[1], *hidden, num_labels)
    key = jax.random.key(seed)
    models = [base.init_mlp(jax.random.fold_in(key, 1000 + i), sizes, init) for i in range(clients)]
    strength = beta if algorithm == "fd" else 0.0
    targets = np.zeros((clients, num_labels, num_labels), np.float32)
    has = np.zeros((clients, num_labels), bool)
    history = []
    for t in range(rounds):
        k_round = jax.random.fold_in(key, t)
        tables, holds = [], []
        for i, (x, y, n) in enumerate(shares):
            models[i], table, held = fd_epochs(
                models[i], x, y, n, jax.random.fold_in(k_round, i), lr, strength,
                jnp.asarray(targets[i]), jnp.asarray(has[i]), batch, local_epochs, drop_last,
            )  # fmt: skip
            tables.append(np.asarray(table))
            holds.append(np.asarray(held))
        targets, has = global_vectors(np.stack(tables), np.stack(holds), exclude_own)
        targets = targets.astype(np.float32)
        history.append(float(np.mean([base.accuracy(m, test_x, test_y) for m in models])))
    return history
