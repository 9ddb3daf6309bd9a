"""The peers' form of a round, the reference ``scripts/bench.py`` times jaxfl against.

FedJAX (and most FL simulators) run a round as a plain Python loop over the sampled clients and
over each client's minibatches, calling ONE jitted SGD step per batch, with the batch sliced from
host (NumPy) arrays and XLA's native convolution differentiated by JAX's own rules
(``flax.linen.Conv``, as haiku's in FedJAX). This module is that form, written once so the
benchmark compares like with like: the same architectures, batch size, epochs and learning rate
as jaxfl's round, the same arithmetic, only the execution differs. It is a timing reference, not
a second implementation to trust: jaxfl's own per-client loop reference (``round_loop``) is what
the tests hold the vectorized round to.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from jaxfl.models import get_model


class _PeerCNN(nn.Module):
    """FedAvg's MNIST CNN with ``flax.linen`` layers (as in FedJAX's EMNIST/MNIST CNN)."""

    num_classes: int

    @nn.compact
    def __call__(self, x):
        for features in (32, 64):
            x = nn.Conv(features, (5, 5), padding="SAME")(x)
            x = nn.relu(nn.max_pool(x, (2, 2), (2, 2)))
        x = nn.relu(nn.Dense(512)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes)(x)


class _PeerLeNet5(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x):
        for features in (6, 16):
            x = nn.Conv(features, (5, 5), padding="VALID")(x)
            x = nn.relu(nn.max_pool(x, (2, 2), (2, 2)))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(120)(x))
        x = nn.relu(nn.Dense(84)(x))
        return nn.Dense(self.num_classes)(x)


def peer_model(name: str, feature_shape: tuple[int, ...], num_classes: int):
    """(init(key) -> params, apply(params, x) -> logits) of zoo model ``name`` in the peers'
    form (native ``flax.linen.Conv``); models without convolutions are the zoo's own."""
    modules = {"cnn": _PeerCNN, "lenet5": _PeerLeNet5}
    if name not in modules:
        model = get_model(name, feature_shape, num_classes)
        return model.init, model.apply
    module = modules[name](num_classes)
    dummy = jnp.zeros((1, *feature_shape), jnp.float32)
    return (lambda key: module.init(key, dummy)["params"]), (
        lambda params, x: module.apply({"params": params}, x)
    )


def _sgd_step(apply: Callable, lr: float, loss: Callable):
    @jax.jit
    def step(params, x, target):
        grads = jax.grad(lambda p: loss(apply(p, x), target))(params)
        return jax.tree.map(lambda p, g: p - lr * g, params, grads)

    return step


def _ce(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _kl(logits, probs):
    return optax.kl_divergence(jax.nn.log_softmax(logits), probs).mean()


def _epochs(step, params, x, y, batch: int, epochs: int, rng: np.random.Generator):
    """``epochs`` passes of minibatch SGD over host arrays, one jitted call per batch (a last
    partial batch is dropped, as FedJAX's default batching does)."""
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x) - batch + 1, batch):
            rows = order[start : start + batch]
            params = step(params, x[rows], y[rows])
    return params


def fedavg_client_seconds(
    name, feature_shape, num_classes, clients, batch: int, lr: float, epochs: int
) -> float:
    """Seconds per client of FedAvg's local training in the peers' form, averaged over
    ``clients`` (a list of host (x, y) arrays), after one client's worth of compilation."""
    init, apply = peer_model(name, feature_shape, num_classes)
    params = init(jax.random.key(0))
    step = _sgd_step(apply, lr, _ce)
    rng = np.random.default_rng(0)
    jax.block_until_ready(step(params, clients[0][0][:batch], clients[0][1][:batch]))
    start = time.perf_counter()
    updates = []
    for x, y in clients:
        local = _epochs(step, params, x, y, batch, epochs, rng)
        updates.append(jax.tree.map(jnp.subtract, local, params))
    jax.block_until_ready(updates)
    return (time.perf_counter() - start) / len(clients)


def dsfl_client_seconds(
    name,
    feature_shape,
    num_classes,
    clients,
    open_x: np.ndarray,
    batch: int,
    lr: float,
    epochs: int,
    distill_epochs: int,
) -> float:
    """Seconds per client of DS-FL's client phase in the peers' form (distillation on the last
    soft labels, local training, predictions on the open subset ``open_x``), averaged over
    ``clients``, after compilation."""
    init, apply = peer_model(name, feature_shape, num_classes)
    params = init(jax.random.key(0))
    train_step = _sgd_step(apply, lr, _ce)
    kd_step = _sgd_step(apply, lr, _kl)
    predict = jax.jit(lambda p, x: jax.nn.softmax(apply(p, x)))
    soft = np.full((len(open_x), num_classes), 1.0 / num_classes, np.float32)
    rng = np.random.default_rng(0)
    x0, y0 = clients[0]
    jax.block_until_ready(
        (train_step(params, x0[:batch], y0[:batch]), kd_step(params, open_x[:batch], soft[:batch]))
    )
    jax.block_until_ready(predict(params, open_x[:500]))
    start = time.perf_counter()
    outputs = []
    for x, y in clients:
        local = _epochs(kd_step, params, open_x, soft, batch, distill_epochs, rng)
        local = _epochs(train_step, local, x, y, batch, epochs, rng)
        probs = [predict(local, open_x[i : i + 500]) for i in range(0, len(open_x), 500)]
        outputs.append((local, probs))
    jax.block_until_ready(outputs)
    return (time.perf_counter() - start) / len(clients)


def round_seconds(exp, loop_clients: int) -> tuple[float, bool] | None:
    """Round time of the peers' form of ``exp``'s client work (``exp``: a
    :class:`jaxfl.experiments.builder.Experiment`), timed on
    ``loop_clients`` clients and scaled to the round's m (None: no peer form for this
    algorithm). DS-FL's counts the clients' phase only; the server's ERA and distillation (one
    model, ``distill_epochs`` over the open subset) add about one client's distillation."""
    algo, cfg, data = exp.args.algo, exp.algorithm_config, exp.data
    if algo not in ("fedavg", "dsfl") or exp.groups:
        return None
    m = exp.algorithm.clients_per_round
    k = min(m, loop_clients)
    idx, counts = np.asarray(data.client_idx), np.asarray(data.client_count)
    train_x, train_y = np.asarray(data.train_x), np.asarray(data.train_y)
    clients = [(train_x[idx[i, : counts[i]]], train_y[idx[i, : counts[i]]]) for i in range(k)]
    shape, classes = exp.model.feature_shape, data.num_classes
    if algo == "fedavg":
        per_client = fedavg_client_seconds(
            exp.model.name, shape, classes, clients, cfg.batch_size, cfg.lr, cfg.local_epochs
        )
    else:
        open_x = np.asarray(data.public_x[: cfg.public_per_round])
        per_client = dsfl_client_seconds(
            exp.model.name, shape, classes, clients, open_x, cfg.batch_size, cfg.lr,
            cfg.local_epochs, cfg.distill_epochs,
        )  # fmt: skip
    return per_client * m, k < m
