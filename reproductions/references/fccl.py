"""FCCL (Huang, Ye, Du, CVPR 2022) and local-only training, written from the paper and its
authors' code, one client at a time: the reference behind reproductions/fccl.py's verdict.

Data: three domains of MNIST (as is, inverted 1 - x, rotated by 90 degrees), each domain's
train split divided evenly and at random over its ``per_domain`` clients; domain d's clients
use architecture ``models[d]`` (MLPs given by their hidden widths). The unlabeled public set is
``public_size`` examples of the first domain's train split, held out of its clients. A client's
own test split is ``len(test) // per_domain`` examples of its domain's test set; the global
test set is every domain's test set together.

FCCL (Adam, lr ``lr``, a fresh state for each phase, as the authors' code):
0. every client trains one epoch on its private data; that model is also its frozen
   intra-domain teacher.
Round t: ``per_round`` clients of each domain, drawn uniformly; a public batch X of ``public``
inputs drawn from the public set.
1. z_k = f_k(X) (B, L); target z_t = mean_k z_k, fixed.
2. Federated cross-correlation learning, ``collab_steps`` Adam steps on
       M = Zhat_k^T Zhat_t / B,  Zhat = each column standardised over the batch,
       loss = sum_u (1 - M_uu)^2 + lambda sum_{u != v} (1 + M_uv)^2
   (the +1 off the diagonal as in the authors' code); the result is the inter-domain teacher.
3. Federated non-forgetting distillation, E epochs on private data of
       CE(y, p) + KL(p_inter || p) + KL(p_intra || p),  p = softmax(f_k(x)).
Local only: the sampled clients train E epochs of SGD (``local_lr``) on the cross-entropy.

Metrics (the paper's two views): each client's model on its own test split ("intra"), and on
the global test set ("inter"), each averaged over the clients.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from reproductions.references import base

DOMAINS = ("mnist", "invert", "rot90")


def domain(x: np.ndarray, name: str) -> np.ndarray:
    """(n, 784) images in [0, 1] seen through a domain shift."""
    if name == "mnist":
        return x
    if name == "invert":
        return 1.0 - x
    if name == "rot90":
        return np.rot90(x.reshape(-1, 28, 28), 1, axes=(1, 2)).reshape(-1, 784).copy()
    raise ValueError(f"domain {name!r}; allowed: {', '.join(DOMAINS)}")


def standardize(z):
    return (z - z.mean(0)) / jnp.sqrt(z.var(0) + 1e-5)


def cross_correlation(z, target, lam: float):
    """sum_u (1 - M_uu)^2 + lam sum_{u != v} (1 + M_uv)^2, M = Zhat^T Zhat_t / B."""
    m = standardize(z).T @ standardize(target) / z.shape[0]
    eye = jnp.eye(m.shape[0])
    return jnp.sum(eye * (1.0 - m) ** 2) + lam * jnp.sum((1.0 - eye) * (1.0 + m) ** 2)


def _adam(params, g, state, lr):
    """One Adam step (betas 0.9, 0.999, eps 1e-8, bias-corrected); state = (m, v, step)."""
    m, v, step = state
    step = step + 1
    m = jax.tree.map(lambda a, d: 0.9 * a + 0.1 * d, m, g)
    v = jax.tree.map(lambda a, d: 0.999 * a + 0.001 * d * d, v, g)
    params = jax.tree.map(
        lambda p, a, b: p - lr * (a / (1 - 0.9**step)) / (jnp.sqrt(b / (1 - 0.999**step)) + 1e-8),
        params, m, v,
    )  # fmt: skip
    return params, (m, v, step)


def _fresh(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return (zeros, zeros, jnp.float32(0.0))


@partial(jax.jit, static_argnames=("batch", "epochs", "adam", "distill"))
def private_epochs(params, x, y, n, key, lr, inter, intra, batch: int, epochs: int,
                   adam: bool, distill: bool):  # fmt: skip
    """E epochs over the first n rows of (x, y), reshuffled each epoch, the last partial batch
    a step too; loss CE (+ KL(p_inter || p) + KL(p_intra || p) with ``distill``); Adam (fresh
    state) or SGD."""
    capacity = x.shape[0]

    def loss(p, xb, yb, vb):
        logp = jax.nn.log_softmax(base.mlp(p, xb))
        per = -jnp.take_along_axis(logp, yb[:, None], 1)[:, 0]
        if distill:
            for teacher in (inter, intra):
                q = jax.nn.softmax(base.mlp(teacher, xb))
                per = per + jnp.sum(q * (jnp.log(q + 1e-12) - logp), -1)
        return jnp.sum(per * vb) / jnp.maximum(jnp.sum(vb), 1.0)

    def epoch(carry, k):
        order, valid = base.epoch_batches(k, n, capacity, batch)

        def step(carry, rows_vb):
            p, state = carry
            rows, vb = rows_vb
            g = jax.grad(loss)(p, x[rows], y[rows], vb)
            live = jnp.sum(vb) > 0
            if adam:
                new_p, new_state = _adam(p, g, state, lr)
            else:
                new_p, new_state = jax.tree.map(lambda a, d: a - lr * d, p, g), state
            keep = lambda new, old: jnp.where(live, new, old)  # noqa: E731
            return (jax.tree.map(keep, new_p, p), jax.tree.map(keep, new_state, state)), None

        return jax.lax.scan(step, carry, (order, valid))[0], None

    carry = (params, _fresh(params))
    (params, _), _ = jax.lax.scan(epoch, carry, jax.random.split(key, epochs))
    return params


@partial(jax.jit, static_argnames=("steps",))
def collaborate(params, public_x, target, lr, lam, steps: int):
    """Step 2: ``steps`` Adam steps (fresh state) on the cross-correlation loss."""
    state = _fresh(params)
    for _ in range(steps):
        g = jax.grad(lambda p: cross_correlation(base.mlp(p, public_x), target, lam))(params)
        params, state = _adam(params, g, state, lr)
    return params


def run(
    data,
    *,
    algorithm: str,  # "fccl" or "local"
    per_domain: int,
    per_round: int,
    models: tuple,  # hidden widths per domain, e.g. ((200, 200), (64, 64), ())
    rounds: int,
    public_size: int,
    public: int = 512,
    local_epochs: int = 1,
    batch: int = 50,
    lr: float = 1e-3,
    local_lr: float = 0.1,
    lam: float = 0.0051,
    collab_steps: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """``{"intra", "inter"}`` after the last round (``data`` as :func:`base.load_mnist`)."""
    if algorithm not in ("fccl", "local"):
        raise ValueError(f"algorithm {algorithm!r}; allowed: fccl, local")
    train_x, train_y, test_x, test_y = data
    labels = int(train_y.max()) + 1
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    clients = []  # (domain, x, y, n) padded, own test rows' (x, y)
    global_x, global_y = [], []
    public_x = None
    for d, name in enumerate(DOMAINS):
        dx, tx = domain(train_x, name), domain(test_x, name)
        global_x.append(tx)
        global_y.append(test_y)
        order = rng.permutation(len(train_y))
        if d == 0:
            public_x, order = jnp.asarray(dx[order[:public_size]]), order[public_size:]
        test_order = rng.permutation(len(test_y))
        per_test = len(test_y) // per_domain
        shares = np.array_split(order, per_domain)
        capacity = max(len(s) for s in shares)
        for i, rows in enumerate(shares):
            test_rows = test_order[i * per_test : (i + 1) * per_test]
            clients.append({
                "domain": d,
                "x": base.pad_rows(dx[rows], capacity),
                "y": base.pad_rows(train_y[rows], capacity),
                "n": len(rows),
                "test": (tx[test_rows], test_y[test_rows]),
            })  # fmt: skip
    global_x, global_y = np.concatenate(global_x), np.concatenate(global_y)
    for i, c in enumerate(clients):
        sizes = (784, *models[c["domain"]], labels)
        c["params"] = base.init_mlp(jax.random.fold_in(key, 10**5 + i), sizes)
        if algorithm == "fccl":  # 0. pretraining: the intra-domain teacher
            c["params"] = private_epochs(
                c["params"], c["x"], c["y"], c["n"], jax.random.fold_in(key, 10**6 + i), lr,
                c["params"], c["params"], batch, 1, True, False,
            )  # fmt: skip
            c["intra"] = c["params"]
    for t in range(rounds):
        k_round = jax.random.fold_in(key, t)
        chosen = [
            d * per_domain + int(i)
            for d in range(len(DOMAINS))
            for i in rng.choice(per_domain, per_round, replace=False)
        ]
        if algorithm == "local":
            for k in chosen:
                c = clients[k]
                c["params"] = private_epochs(
                    c["params"], c["x"], c["y"], c["n"], jax.random.fold_in(k_round, k),
                    local_lr, c["params"], c["params"], batch, local_epochs, False, False,
                )  # fmt: skip
            continue
        batch_x = public_x[rng.choice(public_x.shape[0], public, replace=False)]
        target = jnp.mean(jnp.stack([base.mlp(clients[k]["params"], batch_x) for k in chosen]), 0)
        for k in chosen:
            c = clients[k]
            inter = collaborate(c["params"], batch_x, target, lr, lam, collab_steps)
            c["params"] = private_epochs(
                inter, c["x"], c["y"], c["n"], jax.random.fold_in(k_round, k), lr, inter,
                c["intra"], batch, local_epochs, True, True,
            )  # fmt: skip
    intra = [base.accuracy(c["params"], *c["test"]) for c in clients]
    inter = [base.accuracy(c["params"], global_x, global_y) for c in clients]
    return {"intra": float(np.mean(intra)), "inter": float(np.mean(inter))}
