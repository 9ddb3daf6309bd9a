"""FedDF (Lin, Kong, Stich, Jaggi, NeurIPS 2020) and FedAvg, written from the paper, one client
at a time: the reference behind reproductions/feddf.py's verdict.

Data: MNIST, the last ``unlabeled_size`` rows of a seeded permutation of the train split are
the unlabeled distillation set (a ``val_fraction`` of it held out for early stopping), the rest
split over the clients by Dirichlet label skew: client k's label distribution
q_k ~ Dir(alpha 1), near-equal sizes, examples drawn without replacement.

Round t, S_t the ``per_round`` clients drawn uniformly without replacement:

1. every k in S_t trains the global model w_t: E epochs of minibatch SGD on the cross-entropy
   (the last partial batch of an epoch is a step too, as PyTorch's DataLoader has it);
2. FedAvg: w_t+1 = sum_k n_k w_k / sum_k n_k. FedDF starts its student there, v = w_t+1,
3. and distils the ensemble into it: teacher logits z(x) = mean_k f(x; w_k) on the unlabeled
   set; Adam (lr ``distill_lr``, cosine-decayed over the steps) on minibatches drawn with
   replacement, loss KL(softmax(z(x) / T) || softmax(f(x; v) / T)), T = ``temperature``;
4. early stopping: every ``check_every`` steps the KL on the held-out split; after ``patience``
   steps without a lower value distillation stops; the best-validated student is w_t+1.

The metric is the global model's accuracy on the test set.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from reproductions.references import base


def dirichlet_shares(y: np.ndarray, clients: int, alpha: float, rng) -> list[np.ndarray]:
    """Index arrays: client k draws its near-equal share's label counts from q_k ~ Dir(alpha),
    without replacement; a label that runs out is taken out of the remaining draws."""
    num_labels = int(y.max()) + 1
    pools = [list(rng.permutation(np.flatnonzero(y == label))) for label in range(num_labels)]
    sizes = [len(part) for part in np.array_split(np.arange(len(y)), clients)]
    out = []
    for size in sizes:
        prior = rng.dirichlet(np.full(num_labels, alpha))
        rows: list[int] = []
        while len(rows) < size:
            left = np.array([len(p) > 0 for p in pools], float)
            p = prior * left
            p = p / p.sum() if p.sum() > 0 else left / left.sum()
            counts = rng.multinomial(size - len(rows), p)
            for label, count in enumerate(counts):
                take = min(int(count), len(pools[label]))
                rows += pools[label][:take]
                pools[label] = pools[label][take:]
        out.append(np.array(rows, np.int64))
    return out


def init_lenet5(key, num_labels: int = 10):
    """LeNet-5 for 28 x 28 x 1 inputs (conv 6@5x5, pool, conv 16@5x5, pool, dense 120, 84, L):
    LeCun-normal weights (fan-in of the kernel), zero biases."""

    def lecun(k, shape, fan_in):
        return jax.random.truncated_normal(k, -2.0, 2.0, shape) / (0.87962566 * np.sqrt(fan_in))

    k = jax.random.split(key, 5)
    return {
        "conv1": (lecun(k[0], (5, 5, 1, 6), 25), jnp.zeros(6)),
        "conv2": (lecun(k[1], (5, 5, 6, 16), 150), jnp.zeros(16)),
        "dense": [
            (lecun(k[2], (256, 120), 256), jnp.zeros(120)),
            (lecun(k[3], (120, 84), 120), jnp.zeros(84)),
            (lecun(k[4], (84, num_labels), 84), jnp.zeros(num_labels)),
        ],
    }


def lenet5(params, x):
    """Logits (n, L) of images x (n, 784)."""
    h = x.reshape(-1, 28, 28, 1)
    for name in ("conv1", "conv2"):
        w, b = params[name]
        h = jax.lax.conv_general_dilated(
            h, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        h = jax.lax.reduce_window(h + b, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        h = jax.nn.relu(h)
    return base.mlp(params["dense"], h.reshape(h.shape[0], -1))


ARCHITECTURES = {  # name -> (init(key, L), apply(params, x))
    "lenet5": (init_lenet5, lenet5),
    "mlp": (lambda key, labels: base.init_mlp(key, (784, 200, 200, labels)), base.mlp),
}


@partial(jax.jit, static_argnames=("apply", "batch", "epochs"))
def local_sgd(apply, params, x, y, n, key, lr, batch: int, epochs: int):
    """``epochs`` of minibatch SGD on the cross-entropy over the first ``n`` rows of (x (N, d),
    y (N,)), reshuffled each epoch, ceil(n / batch) steps an epoch (the last one on the rest)."""
    capacity = x.shape[0]

    def loss(params, xb, yb, vb):
        logp = jax.nn.log_softmax(apply(params, xb))
        ce = -jnp.take_along_axis(logp, yb[:, None], 1)[:, 0]
        return jnp.sum(ce * vb) / jnp.maximum(jnp.sum(vb), 1.0)

    def epoch(params, k):
        order, valid = base.epoch_batches(k, n, capacity, batch)

        def step(params, rows_valid):
            rows, vb = rows_valid
            g = jax.grad(loss)(params, x[rows], y[rows], vb)
            live = (jnp.sum(vb) > 0).astype(jnp.float32)
            return jax.tree.map(lambda p, d: p - live * lr * d, params, g), None

        return jax.lax.scan(step, params, (order, valid))[0], None

    return jax.lax.scan(epoch, params, jax.random.split(key, epochs))[0]


def kl(student_logits, teacher_logits, temperature):
    """mean_x KL(softmax(teacher / T) || softmax(student / T))."""
    t = jax.nn.softmax(teacher_logits / temperature)
    log_t = jax.nn.log_softmax(teacher_logits / temperature)
    log_s = jax.nn.log_softmax(student_logits / temperature)
    return jnp.mean(jnp.sum(t * (log_t - log_s), -1))


@partial(jax.jit, static_argnames=("apply", "batch", "check_every"))
def _distill_chunk(apply, params, m, v, done, key, x, teacher, val_x, val_teacher, lr,
                   temperature, total, batch: int, check_every: int):  # fmt: skip
    """``check_every`` Adam steps from step ``done``; returns (params, m, v, validation KL)."""

    def step(carry, i_k):
        params, m, v = carry
        i, k = i_k
        rows = jax.random.randint(k, (batch,), 0, x.shape[0])
        g = jax.grad(lambda p: kl(apply(p, x[rows]), teacher[rows], temperature))(params)
        s = done + i + 1
        m = jax.tree.map(lambda a, d: 0.9 * a + 0.1 * d, m, g)
        v = jax.tree.map(lambda a, d: 0.999 * a + 0.001 * d * d, v, g)
        rate = lr * 0.5 * (1 + jnp.cos(jnp.pi * (s - 1) / total))
        params = jax.tree.map(
            lambda p, a, b: p - rate * (a / (1 - 0.9**s)) / (jnp.sqrt(b / (1 - 0.999**s)) + 1e-8),
            params, m, v,
        )  # fmt: skip
        return (params, m, v), None

    keys = jax.random.split(key, check_every)
    (params, m, v), _ = jax.lax.scan(step, (params, m, v), (jnp.arange(check_every), keys))
    return params, m, v, kl(apply(params, val_x), val_teacher, temperature)


def distill(apply, student, x, teacher, val_x, val_teacher, key, *, steps, batch, lr,
            temperature, check_every, patience):  # fmt: skip
    """Steps 3-4: (the best-validated student, steps run). Adam written out: m, v with betas
    (0.9, 0.999), eps 1e-8, bias-corrected; lr_s = lr (1 + cos(pi (s - 1) / S)) / 2 at step
    s = 1, 2, ..., S the steps rounded up to whole checks."""
    total = -(-steps // check_every) * check_every
    x, teacher, val_x, val_teacher = map(jnp.asarray, (x, teacher, val_x, val_teacher))
    best = float(kl(apply(student, val_x), val_teacher, temperature))
    best_params, params = student, student
    m = jax.tree.map(jnp.zeros_like, student)
    v = jax.tree.map(jnp.zeros_like, student)
    stale, done = 0, 0
    while done < total and stale < patience:
        params, m, v, value = _distill_chunk(
            apply, params, m, v, done, jax.random.fold_in(key, done), x, teacher, val_x,
            val_teacher, lr, temperature, total, batch, check_every,
        )  # fmt: skip
        done += check_every
        if float(value) < best:
            best, best_params, stale = float(value), params, 0
        else:
            stale += check_every
    return best_params, done


def run(
    data,
    *,
    algorithm: str,  # "feddf" or "fedavg"
    clients: int,
    per_round: int,
    alpha: float,
    unlabeled_size: int,
    rounds: int,
    local_epochs: int,
    batch: int,
    lr: float,
    model: str = "lenet5",
    val_fraction: float = 0.1,
    distill_steps: int = 200,
    distill_lr: float = 1e-3,
    distill_batch: int = 50,
    temperature: float = 1.0,
    check_every: int = 50,
    patience: int = 100,
    seed: int = 0,
) -> list[float]:
    """The global model's test accuracy after each round (``data`` as :func:`base.load_mnist`)."""
    if algorithm not in ("feddf", "fedavg"):
        raise ValueError(f"algorithm {algorithm!r}; allowed: feddf, fedavg")
    init, apply = ARCHITECTURES[model]
    train_x, train_y, test_x, test_y = data
    num_labels = int(train_y.max()) + 1
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train_y))
    unlabeled, private = order[len(order) - unlabeled_size :], order[: len(order) - unlabeled_size]
    n_val = int(round(val_fraction * unlabeled_size))
    val_x, dist_x = train_x[unlabeled[:n_val]], train_x[unlabeled[n_val:]]
    parts = dirichlet_shares(train_y[private], clients, alpha, rng)
    capacity = max(len(p) for p in parts)
    shares = [
        (base.pad_rows(train_x[private[p]], capacity), base.pad_rows(train_y[private[p]], capacity),
         len(p))
        for p in parts
    ]  # fmt: skip
    key = jax.random.key(seed)
    model_params = init(jax.random.fold_in(key, 10**6), num_labels)
    logits = jax.jit(apply)
    history = []
    for t in range(rounds):
        k_round = jax.random.fold_in(key, t)
        chosen = rng.choice(clients, per_round, replace=False)
        trained = [
            local_sgd(apply, model_params, *shares[k][:2], shares[k][2],
                      jax.random.fold_in(k_round, int(k)), lr, batch, local_epochs)
            for k in chosen
        ]  # fmt: skip
        weights = np.array([shares[k][2] for k in chosen], np.float64)
        weights /= weights.sum()
        model_params = jax.tree.map(
            lambda *leaves, w=weights: sum(a * b for a, b in zip(w, leaves, strict=True)),
            *trained,
        )
        if algorithm == "feddf":
            teacher = np.mean([np.asarray(logits(p, dist_x)) for p in trained], axis=0)
            val_teacher = np.mean([np.asarray(logits(p, val_x)) for p in trained], axis=0)
            model_params, _ = distill(
                apply, model_params, dist_x, jnp.asarray(teacher), val_x,
                jnp.asarray(val_teacher), jax.random.fold_in(k_round, 10**7),
                steps=distill_steps, batch=distill_batch, lr=distill_lr,
                temperature=temperature, check_every=check_every, patience=patience,
            )  # fmt: skip
        predicted = np.asarray(jnp.argmax(logits(model_params, test_x), -1))
        history.append(float(np.mean(predicted == test_y)))
    return history
