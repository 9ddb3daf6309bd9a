"""MaxFL (Cho, Jhunjhunwala, Li, Smith, Joshi 2022) and FedAvg, written from the paper, one
client at a time: the reference behind reproductions/incfl.py's verdict.

Data: MNIST split over C clients by Dirichlet label skew (references/feddf.py's shares); a
tenth of each client's share is its validation split, the rest its training split; each client
also draws a test split of ``len(test) // C`` examples from the test set whose labels follow its
share's label distribution. The last U clients never train ("unseen").

1. Local-only baseline (the clients' outside option): R rounds; in each, ``per_round`` clients
   drawn uniformly from all C train their own model E epochs (the same budget as the
   federation's rounds). rho_k = mean cross-entropy of w_k^loc on k's validation split.
2. The federation: R rounds; in each, ``per_round`` of the C - U seen clients, drawn
   uniformly. Before training, each measures x_k = F_k(w_t) - rho_k on its validation split,
   then trains w_k = LocalSGD(w_t; E epochs).
   MaxFL: s_k = sigmoid(c x_k), q_k = s_k (1 - s_k),
          w_t+1 = w_t + eta_g sum_k q_k (w_k - w_t) / (sum_k q_k + eps)
   FedAvg: w_t+1 = sum_k n_k w_k / sum_k n_k.
3. Incentivized participation rate: the fraction of clients whose accuracy on their own test
   split is higher with the final global model than with their local-only model, over the seen
   clients and over the unseen ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from reproductions.references import base
from reproductions.references.feddf import dirichlet_shares, local_sgd


def client_splits(train_y, test_y, clients: int, alpha: float, val_fraction: float, rng):
    """Per client: (train rows, validation rows, test rows); see the module's docstring."""
    shares = dirichlet_shares(train_y, clients, alpha, rng)
    num_labels = int(train_y.max()) + 1
    by_label = [np.flatnonzero(test_y == label) for label in range(num_labels)]
    per_client = len(test_y) // clients
    out = []
    for share in shares:
        share = rng.permutation(share)
        n_val = int(round(val_fraction * len(share)))
        hist = np.bincount(train_y[share], minlength=num_labels)
        counts = rng.multinomial(per_client, hist / hist.sum())
        test = np.concatenate(
            [rng.choice(by_label[label], c, replace=False) for label, c in enumerate(counts)]
        )
        out.append((share[n_val:], share[:n_val], test))
    return out


def maxfl_step(params, trained: list, x: np.ndarray, c: float, eps: float, server_lr: float):
    """w + eta_g sum_k q_k (w_k - w) / (sum_k q_k + eps), q_k = s_k (1 - s_k), s_k =
    sigmoid(c x_k); ``trained`` the clients' models w_k, ``x`` (m,) their gaps."""
    s = 1.0 / (1.0 + np.exp(-c * np.asarray(x, np.float64)))
    q = s * (1.0 - s)
    weights = q * server_lr / (q.sum() + eps)
    return jax.tree.map(
        lambda p, *leaves: p + sum(wk * (a - p) for wk, a in zip(weights, leaves, strict=True)),
        params,
        *trained,
    )


def _loss(params, x, y) -> float:
    logp = jax.nn.log_softmax(base.mlp(params, x))
    return float(-jnp.mean(jnp.take_along_axis(logp, jnp.asarray(y)[:, None], 1)))


def run(
    data,
    *,
    algorithm: str,  # "maxfl" or "fedavg"
    clients: int,
    unseen: int,
    per_round: int,
    alpha: float,
    rounds: int,
    local_epochs: int,
    batch: int,
    lr: float,
    val_fraction: float = 0.1,
    c: float = 1.0,
    eps: float = 1e-3,
    server_lr: float = 1.0,
    unused_size: int = 0,
    hidden=(200, 200),
    seed: int = 0,
) -> dict[str, float]:
    """``{"ipr_seen", "ipr_unseen", "test_acc"}`` after the last round (``data`` as
    :func:`base.load_mnist`). ``unused_size`` train rows (a seeded draw) are set aside unused,
    as jaxfl's default public set is by algorithms that do not distil."""
    if algorithm not in ("maxfl", "fedavg"):
        raise ValueError(f"algorithm {algorithm!r}; allowed: maxfl, fedavg")
    train_x, train_y, test_x, test_y = data
    num_labels = int(train_y.max()) + 1
    rng = np.random.default_rng(seed)
    kept = np.sort(rng.permutation(len(train_y))[unused_size:])
    train_x, train_y = train_x[kept], train_y[kept]
    splits = client_splits(train_y, test_y, clients, alpha, val_fraction, rng)
    capacity = max(len(tr) for tr, _, _ in splits)
    padded = [
        (base.pad_rows(train_x[tr], capacity), base.pad_rows(train_y[tr], capacity), len(tr))
        for tr, _, _ in splits
    ]
    sizes = (train_x.shape[1], *hidden, num_labels)
    key = jax.random.key(seed)
    start = base.init_mlp(jax.random.fold_in(key, 1), sizes)
    apply = base.mlp

    def train(params, k, round_key):
        x, y, n = padded[k]
        return local_sgd(apply, params, x, y, n, jax.random.fold_in(round_key, k), lr, batch,
                         local_epochs)  # fmt: skip

    # 1. the local-only baseline
    local = [start] * clients
    for t in range(rounds):
        for k in rng.choice(clients, per_round, replace=False):
            local[k] = train(local[k], int(k), jax.random.fold_in(key, 10**6 + t))
    rho = [_loss(local[k], train_x[va], train_y[va]) for k, (_, va, _) in enumerate(splits)]
    # 2. the federation
    params = start
    seen = clients - unseen
    for t in range(rounds):
        chosen = [int(k) for k in rng.choice(seen, per_round, replace=False)]
        round_key = jax.random.fold_in(key, t)
        trained = [train(params, k, round_key) for k in chosen]
        if algorithm == "fedavg":
            w = np.array([padded[k][2] for k in chosen], np.float64)
            w /= w.sum()
            params = jax.tree.map(
                lambda *leaves, w=w: sum(a * b for a, b in zip(w, leaves, strict=True)), *trained
            )
            continue
        x = np.array([_loss(params, train_x[splits[k][1]], train_y[splits[k][1]]) - rho[k]
                      for k in chosen])  # fmt: skip
        s = 1.0 / (1.0 + np.exp(-c * x))
        q = s * (1.0 - s)
        weights = q * server_lr / (q.sum() + eps)
        params = jax.tree.map(
            lambda p, *leaves, w=weights: (
                p + sum(wk * (a - p) for wk, a in zip(w, leaves, strict=True))
            ),
            params,
            *trained,
        )
    # 3. who is better off
    better = np.array([
        base.accuracy(params, test_x[te], test_y[te]) > base.accuracy(local[k], test_x[te],
                                                                     test_y[te])
        for k, (_, _, te) in enumerate(splits)
    ])  # fmt: skip
    return {
        "ipr_seen": float(better[:seen].mean()),
        "ipr_unseen": float(better[seen:].mean()) if unseen else float("nan"),
        "test_acc": base.accuracy(params, test_x, test_y),
    }
