"""Building blocks of the personalization algorithms (Motley's baselines) and their evaluation.

Personal state lives on the client axis like everything else: ``broadcast_clients`` makes the
(C, ...) copies, and the evaluators below map one-client functions over all C clients with
:func:`jaxfl.core.client_axis.map_clients` (chunked by ``--client-chunk``). Every evaluator scores a
client on its own test split; only :func:`finetune_curves` also reads the validation split,
which is where the number of fine-tuning epochs is chosen (never on test data).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxfl.core import train
from jaxfl.core.client_axis import map_clients
from jaxfl.core.metrics import client_split
from jaxfl.core.names import FINETUNE_LAYERS as FINETUNE_LAYERS  # defined without JAX, for --help
from jaxfl.data.federation import Federation


def broadcast_clients(params, num_clients: int):
    """C copies of one model: every leaf gets a leading client axis of ``num_clients``."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_clients, *x.shape)), params)


def last_layer_labels(params) -> dict:
    """optax.multi_transform labels: "train" for the output layer (the last Dense), else "freeze".

    Args:
      params: a flax parameter dict whose top-level keys are layer names (``Dense_2``, ...).
    """
    dense = sorted((k for k in params if k.startswith("Dense_")), key=lambda k: int(k[6:]))
    if not dense:
        raise ValueError(
            "--finetune-layers last needs a model whose output layer is a Dense layer; "
            f"got layers {', '.join(params)}"
        )
    return {
        k: jax.tree.map(lambda _, k=k: "train" if k == dense[-1] else "freeze", v)
        for k, v in params.items()
    }


def finetune_optimizer(params, lr: float, layers: str) -> optax.GradientTransformation:
    """SGD on all layers, or on the output layer only (``layers="last"``) with the rest frozen."""
    if layers == "all":
        return optax.sgd(lr)
    if layers == "last":
        return optax.multi_transform(
            {"train": optax.sgd(lr), "freeze": optax.set_to_zero()}, last_layer_labels(params)
        )
    raise ValueError(f"unknown --finetune-layers {layers!r}; allowed: {', '.join(FINETUNE_LAYERS)}")


def finetune_curves(
    apply: Callable,
    params,
    data: Federation,
    key: jax.Array,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    layers: str = "all",
    chunk_size: int | None = None,
):
    """Fine-tune one model on every client's training split, epoch by epoch.

    Args:
      apply: model apply.
      params: the global model (one model, no client axis).
      data: the federation.
      key: PRNG key; client k uses ``fold_in(key, k)``, epoch e ``fold_in(., e)``.
      epochs: the largest number of fine-tuning epochs E_max.
      lr, batch_size, layers: the fine-tuning SGD (``layers``: "all" or "last").
      chunk_size: clients per vmap chunk.

    Returns:
      (val_acc, test_acc), each (C, E_max + 1): client k's accuracy on its validation and test
      split after e = 0..E_max epochs (column 0 is the global model itself).
    """
    opt = finetune_optimizer(params, lr, layers)

    def one_client(client):
        return finetune_client(apply, params, data, key, client, opt, epochs, batch_size)

    return map_clients(one_client, jnp.arange(data.num_clients), chunk_size=chunk_size)


def finetune_client(apply, params, data: Federation, key, client, opt, epochs: int, batch_size):
    """One client's row of :func:`finetune_curves`: ((E_max + 1,) val acc, (E_max + 1,) test acc).

    ``client`` () int is the client's index in ``data``; ``opt`` the fine-tuning optimizer.
    """
    val, test = client_split(data, "val"), client_split(data, "test")
    idx_row, count = data.client_idx[client], data.client_count[client]

    def score(p):
        return (
            train.client_accuracy(apply, p, val[0], val[1], val[2][client], val[3][client]),
            train.client_accuracy(apply, p, test[0], test[1], test[2][client], test[3][client]),
        )

    def epoch(p, e):
        k = jax.random.fold_in(jax.random.fold_in(key, client), e)
        p, *_ = train.local_sgd(apply, data, p, k, idx_row, count, opt, batch_size, 1)
        return p, score(p)

    _, (val_acc, test_acc) = jax.lax.scan(epoch, params, jnp.arange(epochs))
    v0, t0 = score(params)
    return jnp.concatenate([v0[None], val_acc]), jnp.concatenate([t0[None], test_acc])


def choose_epochs(val_acc: jax.Array, candidates: Sequence[int], weights: jax.Array):
    """The candidate E with the best mean validation accuracy (ties: the smallest E).

    Args:
      val_acc: (C, E_max + 1) validation accuracy after each number of epochs.
      candidates: the E values allowed (sorted ascending).
      weights: (C,) weight of each client in the mean (its validation count, so a client
        without a validation split does not vote).

    Returns:
      (index into ``candidates``, (len(candidates),) weighted mean validation accuracy).
    """
    cols = val_acc[:, jnp.asarray(candidates)]
    w = weights.astype(jnp.float32)
    mean = jnp.sum(cols * w[:, None], 0) / jnp.maximum(jnp.sum(w), 1.0)
    return jnp.argmax(mean), mean  # argmax returns the first maximum: the smallest E


def adapt_and_score(
    apply: Callable,
    params,
    data: Federation,
    *,
    steps: int,
    lr: float,
    chunk_size: int | None = None,
):
    """(C,) test accuracy of each client after ``steps`` full-batch gradient steps from ``params``
    on its own training split (Per-FedAvg's personalization at evaluation)."""
    x, y = data.train_x, data.train_y
    test = client_split(data, "test")

    def one_client(idx_row, count, test_idx, test_count):
        loss = lambda p: train.client_loss(apply, p, x, y, idx_row, count)

        def step(p, _):
            grads = jax.grad(loss)(p)
            return jax.tree.map(lambda w, g: w - lr * g, p, grads), None

        adapted, _ = jax.lax.scan(step, params, None, length=steps)
        return train.client_accuracy(apply, adapted, test[0], test[1], test_idx, test_count)

    args = (data.client_idx, data.client_count, data.client_test_idx, data.client_test_count)
    return map_clients(one_client, *args, chunk_size=chunk_size)
