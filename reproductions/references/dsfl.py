"""DS-FL (Itahara et al., IEEE TMC 2021) and FedAvg (McMahan et al. 2017), written from the
papers, one client at a time: the reference behind reproductions/dsfl.py's verdict.

DS-FL, round t (every client takes part, as in the authors' code: sample ratio 1.0):

1. Update: each client k trains its model on its private data, E epochs of SGD on the
   cross-entropy.
2. Predict: on the round's open sample O_t (``open_per_round`` unlabeled examples drawn from
   the open set), p_k(x) = softmax(f_k(x)).
3. Aggregate: p_bar(x) = (1 / K) sum_k p_k(x); ERA: y_hat(x) = softmax(p_bar(x) / T), T = 0.1;
   SA: y_hat(x) = p_bar(x).
4. Distill: the server model and every client model take ``distill_epochs`` epochs of SGD on
   (O_t, y_hat) with the loss -sum_l y_hat_l log softmax(f(x))_l (KL up to a constant).

The server model is the one evaluated. FedAvg: every client starts from the global model,
trains E epochs, and the global model becomes the n_k-weighted mean of the client models.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from reproductions.references import base


def era(mean_probs: np.ndarray, temperature: float) -> np.ndarray:
    """Entropy reduction aggregation: softmax(p_bar / T) row by row, p_bar (P, L)."""
    z = mean_probs / temperature
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _one_hot(y, num_labels):
    return np.eye(num_labels, dtype=np.float32)[y]


def run(
    data,
    *,
    algorithm: str,  # "era", "sa" or "fedavg"
    clients: int,
    classes_per_client: int,
    open_size: int,
    open_per_round: int,
    rounds: int,
    local_epochs: int,
    distill_epochs: int,
    batch: int,
    lr: float,
    hidden=(200, 200),
    temperature: float = 0.1,
    init: str = "lecun",
    seed: int = 0,
) -> list[float]:
    """Server (DS-FL) or global (FedAvg) test accuracy after each round.

    ``data`` = (train_x (N, d), train_y (N,), test_x, test_y): the last ``open_size`` rows of a
    seeded permutation of the train split are the open (unlabeled) set, the rest are split over
    the clients. ``init``: the models' initialisation (:func:`base.init_mlp`).
    """
    train_x, train_y, test_x, test_y = data
    num_labels = int(train_y.max()) + 1
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train_y))
    open_rows, private_rows = order[len(order) - open_size :], order[: len(order) - open_size]
    parts = base.classes_per_client(train_y[private_rows], clients, classes_per_client, rng)
    capacity = max(len(p) for p in parts)
    private = [  # (x, one-hot y) padded to the largest client, and the client's size
        (
            base.pad_rows(train_x[private_rows[p]], capacity),
            base.pad_rows(_one_hot(train_y[private_rows[p]], num_labels), capacity),
            len(p),
        )
        for p in parts
    ]
    open_x = train_x[open_rows]
    sizes = (train_x.shape[1], *hidden, num_labels)
    key = jax.random.key(seed)
    key, k_server = jax.random.split(key)
    server = base.init_mlp(k_server, sizes, init)
    models = [base.init_mlp(jax.random.fold_in(key, 1000 + k), sizes, init) for k in range(clients)]
    history = []
    for t in range(rounds):
        k_round = jax.random.fold_in(key, t)
        if algorithm == "fedavg":
            trained = [
                base.sgd_epochs(server, x, y, n, jax.random.fold_in(k_round, k), lr, batch,
                                local_epochs)[0]
                for k, (x, y, n) in enumerate(private)
            ]  # fmt: skip
            weights = np.array([n for _, _, n in private], np.float64)
            weights /= weights.sum()
            server = jax.tree.map(
                lambda *leaves, w=weights: sum(a * b for a, b in zip(w, leaves, strict=True)),
                *trained,
            )
            history.append(base.accuracy(server, test_x, test_y))
            continue
        sample = open_x[rng.choice(open_size, open_per_round, replace=False)]
        probs = []
        for k, (x, y, n) in enumerate(private):  # 1. update, 2. predict
            models[k], _ = base.sgd_epochs(
                models[k], x, y, n, jax.random.fold_in(k_round, k), lr, batch, local_epochs
            )
            probs.append(np.asarray(base.probabilities(models[k], sample)))
        mean = np.mean(probs, axis=0)  # 3. aggregate
        targets = jnp.asarray(era(mean, temperature) if algorithm == "era" else mean)
        k_distill = jax.random.fold_in(k_round, 10**6)
        server, _ = base.sgd_epochs(  # 4. distill: the server ...
            server, sample, targets, open_per_round, k_distill, lr, batch, distill_epochs
        )
        for k in range(clients):  # ... and every client
            models[k], _ = base.sgd_epochs(
                models[k], sample, targets, open_per_round, jax.random.fold_in(k_distill, k + 1),
                lr, batch, distill_epochs,
            )  # fmt: skip
        history.append(base.accuracy(server, test_x, test_y))
    return history
