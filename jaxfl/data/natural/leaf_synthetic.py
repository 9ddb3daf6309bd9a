"""LEAF's synthetic federation, generated here (Caldas et al., "LEAF", 2018, section on synthetic
data; extending Li et al.'s FedProx Synthetic with clustered models).

The generative process, with LEAF's published defaults (``main.py -num-tasks 1000 -num-classes 5
-num-dim 60``, one model cluster):

- Q ~ N(0, 1), shape (d + 1, K, s) with s the number of model clusters (1); the cluster's mean
  mu ~ N(c, 1) in R^s with c ~ N(0, 1).
- Client sizes n_k = floor(lognormal(3, 2)) + 5, capped at 1000: heavy-tailed (median ~25,
  mean ~150), as LEAF draws them.
- Client k: its model u_k ~ N(mu, 0.1^2) in R^s, weights W_k = Q u_k (d + 1, K); its inputs
  x ~ N(v_k, Sigma) with v_k ~ N(B_k, 1), B_k ~ N(0, 1), Sigma = diag(j^-1.2); labels
  y = argmax_c ([1, x] W_k + e)_c with e ~ N(0, 0.1^2) per example and class.
- Each client's examples are split into train and test as LEAF's ``preprocess.sh -t sample``
  does at its default ``--tf 0.9``: max(1, floor(0.9 n_k)) for training, the rest for testing.

One difference, stated: LEAF's code normalises its softmax over the *examples* of a client
(``exp(z) / sum(exp(z))`` sums axis 0), so a label there depends on the other examples drawn;
here the label is the per-example argmax the paper describes. Written from the description, not
copied; the random streams differ, so the numbers are LEAF's distribution, not its file.
"""

from __future__ import annotations

import numpy as np

from jaxfl.data.dataset import Dataset

NUM_CLIENTS = 1000  # LEAF's -num-tasks
NUM_CLASSES = 5
DIM = 60
MIN_SIZE, MAX_SIZE = 5, 1000
TRAIN_FRACTION = 0.9


def client_sizes(num_clients: int, rng: np.random.Generator) -> np.ndarray:
    """(C,) examples per client: floor(lognormal(3, 2)) + 5, capped at 1000."""
    return np.minimum(rng.lognormal(3.0, 2.0, num_clients).astype(np.int64) + MIN_SIZE, MAX_SIZE)


def generate(
    num_clients: int = NUM_CLIENTS,
    *,
    num_classes: int = NUM_CLASSES,
    dim: int = DIM,
    seed: int = 0,
    train_fraction: float = TRAIN_FRACTION,
) -> Dataset:
    """The federation: a :class:`Dataset` whose ``train_groups``/``test_groups`` are the
    clients' own train and test examples (``num_clients`` clients, in generation order)."""
    rng = np.random.default_rng(seed)
    clusters = 1
    q = rng.normal(0.0, 1.0, (dim + 1, num_classes, clusters))
    mu = rng.normal(rng.normal(0.0, 1.0), 1.0, clusters)
    sigma_sqrt = np.sqrt(np.arange(1, dim + 1, dtype=np.float64) ** -1.2)
    sizes = client_sizes(num_clients, rng)
    xs, ys, train_rows, test_rows = [], [], [], []
    start = 0
    for n in sizes:
        u = rng.normal(mu, 0.1)
        w = q @ u  # (d + 1, K)
        v = rng.normal(rng.normal(0.0, 1.0), 1.0, dim)
        x = v + sigma_sqrt * rng.normal(0.0, 1.0, (n, dim))
        logits = w[0] + x @ w[1:] + rng.normal(0.0, 0.1, (n, num_classes))
        xs.append(x)
        ys.append(np.argmax(logits, axis=1))
        n_train = max(1, int(train_fraction * n))
        train_rows.append(np.arange(start, start + n_train))
        test_rows.append(np.arange(start + n_train, start + n))
        start += n
    x_all = np.concatenate(xs).astype(np.float32)
    y_all = np.concatenate(ys).astype(np.int32)
    train_idx = np.concatenate(train_rows)
    test_idx = np.concatenate(test_rows)
    # re-index: the train split holds the train rows, the test split the test rows
    train_pos = np.empty(start, np.int64)
    train_pos[train_idx] = np.arange(len(train_idx))
    test_pos = np.empty(start, np.int64)
    test_pos[test_idx] = np.arange(len(test_idx))
    return Dataset(
        name="leaf_synthetic",
        train_x=x_all[train_idx],
        train_y=y_all[train_idx],
        test_x=x_all[test_idx],
        test_y=y_all[test_idx],
        num_classes=num_classes,
        train_groups=[train_pos[r] for r in train_rows],
        test_groups=[test_pos[r] for r in test_rows],
        source="embedded",
    )
