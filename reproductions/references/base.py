"""What the references share (and nothing from jaxfl): reading MNIST's IDX files, the label
partition, a ReLU MLP (LeCun-normal or PyTorch's default initialisation), and minibatch SGD
epochs.

Data: pixels / 255 in [0, 1], flattened to 784 features. Partition ``classes_per_client(y, C,
k)``: every client holds exactly k distinct labels, each label held by the same number of
clients (C k / L), its examples split evenly among its holders (the DS-FL and FedAvg papers'
pathological non-IID split, built differently from jaxfl's ``--partition classes``).
"""

from __future__ import annotations

import gzip
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (gzip-compressed or not) as a NumPy array."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist(folder: str | Path):
    """(train_x (60000, 784) float32 in [0, 1], train_y (60000,), test_x, test_y)."""
    folder = Path(folder)

    def find(stem):
        for name in (stem + ".gz", stem):
            if (folder / name).exists():
                return folder / name
        raise FileNotFoundError(f"{folder}: no {stem}[.gz]")

    def images(stem):
        return read_idx(find(stem)).reshape(-1, 784).astype(np.float32) / 255.0

    def labels(stem):
        return read_idx(find(stem)).astype(np.int32)

    return (
        images("train-images-idx3-ubyte"),
        labels("train-labels-idx1-ubyte"),
        images("t10k-images-idx3-ubyte"),
        labels("t10k-labels-idx1-ubyte"),
    )


def classes_per_client(y: np.ndarray, clients: int, k: int, rng) -> list[np.ndarray]:
    """Index arrays, one per client, each client holding exactly ``k`` distinct labels."""
    num_labels = int(y.max()) + 1
    holders_per_label = clients * k // num_labels
    slots = rng.permutation(np.repeat(np.arange(num_labels), holders_per_label))
    slots = slots[: clients * k].reshape(clients, k)
    for _ in range(100 * clients):  # repair: swap a repeated label into a row that lacks it
        bad = [c for c in range(clients) if len(set(slots[c])) < k]
        if not bad:
            break
        c = bad[0]
        j = next(j for j in range(k) if list(slots[c]).count(slots[c][j]) > 1)
        d, i = rng.integers(clients), rng.integers(k)
        if slots[d][i] not in slots[c] and slots[c][j] not in slots[d]:
            slots[c][j], slots[d][i] = slots[d][i], slots[c][j]
    else:
        raise ValueError("no assignment of labels to clients without repeats")
    parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
    for label in range(num_labels):
        owners = [c for c in range(clients) for s in slots[c] if s == label]
        rows = rng.permutation(np.flatnonzero(y == label))
        for owner, chunk in zip(owners, np.array_split(rows, len(owners)), strict=True):
            parts[owner].append(chunk)
    return [np.concatenate(p) for p in parts]


def init_mlp(key, sizes, init: str = "lecun") -> list[tuple[jax.Array, jax.Array]]:
    """An MLP's (weight (fan_in, fan_out), bias (fan_out,)) layers.

    ``"lecun"`` (the default): weights from a normal truncated at 2 standard deviations with
    variance 1 / fan_in, biases 0 (LeCun normal: what flax's Dense, and so jaxfl, draws).
    ``"torch"``: PyTorch nn.Linear's default, weights and biases uniform in +-1/sqrt(fan_in)
    (a third of that variance). The choice matters for DS-FL: its server model learns only
    from averaged soft labels, whose signal is weak at first, and from the smaller PyTorch
    initialisation it learned several times more slowly in the first rounds (20 clients x 2
    labels of MNIST, 3 rounds: 0.12 vs 0.36 test accuracy; tests/test_references.py).
    """
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        key, kw, kb = jax.random.split(key, 3)
        if init == "torch":
            bound = 1.0 / np.sqrt(fan_in)
            w = jax.random.uniform(kw, (fan_in, fan_out), jnp.float32, -bound, bound)
            b = jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound)
        elif init == "lecun":
            # a standard normal truncated to [-2, 2] has standard deviation 0.8796
            z = jax.random.truncated_normal(kw, -2.0, 2.0, (fan_in, fan_out), jnp.float32)
            w = z / (0.87962566 * np.sqrt(fan_in))
            b = jnp.zeros((fan_out,), jnp.float32)
        else:
            raise ValueError(f"init {init!r}; allowed: lecun, torch")
        layers.append((w, b))
    return layers


def mlp(params, x: jax.Array) -> jax.Array:
    """Logits (n, L) of inputs x (n, 784): ReLU hidden layers."""
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def soft_cross_entropy(params, x, target):
    """mean_x -sum_l target_l log softmax(f(x))_l: KL(target || softmax f) up to a constant
    (the distillation loss); with one-hot targets, the cross-entropy."""
    return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(mlp(params, x)), -1))


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """``x`` with zero rows appended up to ``rows`` (one compiled program for every client)."""
    return np.concatenate([x, np.zeros((rows - len(x), *x.shape[1:]), x.dtype)])


def epoch_batches(key, n, capacity: int, batch: int, drop_last: bool = False):
    """One epoch's minibatches over the first ``n`` of ``capacity`` rows (rows past n are
    padding): (rows (S, batch) int, valid (S, batch) float), S = ceil(capacity / batch), a
    random permutation of the n real rows first. ``valid`` marks the rows a step averages over:
    all n (the last step on the remainder, as PyTorch's DataLoader), or with ``drop_last`` the
    first n // batch * batch; a step with no valid row changes nothing."""
    steps = -(-capacity // batch)
    score = jnp.where(jnp.arange(capacity) < n, jax.random.uniform(key, (capacity,)), 2.0)
    rows = jnp.pad(jnp.argsort(score), (0, steps * batch - capacity)).reshape(steps, batch)
    used = (n // batch) * batch if drop_last else n
    valid = (jnp.arange(steps * batch) < used).reshape(steps, batch).astype(jnp.float32)
    return rows, valid


@partial(jax.jit, static_argnames=("batch", "epochs"))
def sgd_epochs(params, x, target, n, key, lr, batch: int, epochs: int):
    """``epochs`` passes of minibatch SGD over the first ``n`` rows of (x (N, d), target
    (N, L)) (rows past n are padding), reshuffled each epoch: n // batch steps an epoch, the
    last partial batch dropped. Returns (params, mean loss of the last epoch)."""
    capacity = x.shape[0]
    max_steps = capacity // batch
    steps = n // batch
    grad = jax.value_and_grad(soft_cross_entropy)

    def epoch(params, k):
        # a permutation of the n real rows first (padding rows sort last)
        score = jnp.where(jnp.arange(capacity) < n, jax.random.uniform(k, (capacity,)), 2.0)
        order = jnp.argsort(score)[: max_steps * batch].reshape(max_steps, batch)

        def step(params, i_rows):
            i, rows = i_rows
            loss, g = grad(params, x[rows], target[rows])
            live = (i < steps).astype(jnp.float32)
            return jax.tree.map(lambda p, d: p - live * lr * d, params, g), loss * live

        params, losses = jax.lax.scan(step, params, (jnp.arange(max_steps), order))
        return params, jnp.sum(losses) / jnp.maximum(steps, 1)

    params, losses = jax.lax.scan(epoch, params, jax.random.split(key, epochs))
    return params, losses[-1]


@jax.jit
def probabilities(params, x):
    return jax.nn.softmax(mlp(params, x))


def accuracy(params, x, y) -> float:
    return float(np.mean(np.asarray(jnp.argmax(mlp(params, x), -1)) == y))
