"""Local training as scans: minibatch schedules, SGD epochs, losses, prediction, accuracy.

Everything here is written for ONE client and vmapped over the client axis by the algorithms.
Shapes are static: a client with ``count`` valid examples out of ``capacity`` slots runs
``epochs * ceil(capacity / B)`` scan steps, of which only the first ``ceil(count / B)`` per epoch
are active; inactive steps leave parameters and optimizer state untouched, and padded slots of a
partial batch are masked out of the loss mean. So padding never leaks into a batch or a mean, and
the result equals training on the client's own examples alone.

Two kinds of task share these functions, told apart by the labels' rank (static under jit):
classification, labels (N,) with logits (B, L); and next-token prediction (the language tasks),
targets (N, T) with logits (B, T, V), where a target equal to :data:`PAD_TOKEN` is padding and
counts in no loss and no accuracy. A sequence batch's loss is the mean over its non-pad target
tokens (:func:`batch_loss`), its accuracy the fraction of non-pad targets predicted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PAD_TOKEN = 0  # the language tasks' padding target (jaxfl.data.natural.shakespeare's PAD)
EOS_TOKEN = 2  # their end-of-snippet token (shakespeare's EOS)
# logits held at once when a language model is evaluated: rows per batch are cut to this many
# (row, position, token) entries (128 MB of float32; StackOverflow's 10,004 tokens x 20
# positions: 167 rows), so a user with thousands of test sentences does not hold them all
EVAL_LOGITS = 2**25


class Trained(NamedTuple):
    """What local training returns (:func:`sgd_epochs`, :func:`local_sgd`).

    Attributes:
      params: the trained parameter pytree.
      loss: () mean over the active steps of the data loss (the penalty excluded), the number an
        algorithm reports as its training loss.
      steps: () int32 active steps taken (fewer than ``epochs * ceil(count / B)`` for a
        straggler with a step budget).
      penalty: () mean over the active steps of the added ``penalty`` term (0 without one): the
        objective minimised was ``loss + penalty``.
    """

    params: Any
    loss: jax.Array
    steps: jax.Array
    penalty: jax.Array


def batch_schedule(
    key: jax.Array, count: jax.Array, capacity: int, batch_size: int, epochs: int
) -> tuple[jax.Array, jax.Array]:
    """Positions to visit, reshuffled every epoch, and their validity mask.

    Args:
      key: PRNG key of this client.
      count: () int number of valid slots (slots ``[0, count)`` hold data).
      capacity: static number of slots.
      batch_size: B.
      epochs: E.

    Returns:
      positions: (E * S, B) int32 slot indices, S = ceil(capacity / B).
      mask: (E * S, B) bool, True where the slot holds one of the ``count`` examples.
    """
    steps = -(-capacity // batch_size)
    slots = jnp.arange(capacity)

    def one_epoch(k):
        # one draw per slot from fold_in(k, slot): the order of the valid slots does not depend on
        # the padded capacity, so padding cannot change a client's result
        draws = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(k, i)))(slots)
        u = jnp.where(slots < count, draws, 2.0)
        order = jnp.argsort(u).astype(jnp.int32)  # valid slots first, in random order
        return jnp.pad(order, (0, steps * batch_size - capacity))

    positions = jax.vmap(one_epoch)(jax.random.split(key, epochs))
    mask = jnp.arange(steps * batch_size) < count
    positions = positions.reshape(epochs * steps, batch_size)
    mask = jnp.broadcast_to(mask, (epochs, steps * batch_size)).reshape(epochs * steps, batch_size)
    return positions, mask


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``values`` (B,) over ``mask`` (B,) bool; 0 when nothing is valid."""
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """(B, L) logits, (B,) int labels -> (B,) cross-entropy."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def batch_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """The mean loss of a batch whose valid examples are ``mask`` (B,) bool.

    Classification, ``labels`` (B,), ``logits`` (B, L): the mean cross-entropy over the valid
    examples. Next-token prediction, ``labels`` (B, T), ``logits`` (B, T, V): the mean over the
    valid examples' non-pad target tokens,
    ``sum_{b, t: mask_b, y_bt != PAD} CE(logits_bt, y_bt) / #{b, t: mask_b, y_bt != PAD}``, so a
    token weighs the same whether it sits in a full or a partial sequence (TFF's masked loss;
    FedJAX's Shakespeare model divides each sequence's sum by T instead).
    """
    if labels.ndim == 1:
        return masked_mean(cross_entropy(logits, labels), mask)
    tokens = mask[:, None] & (labels > PAD_TOKEN)
    return masked_mean(cross_entropy(logits, labels), tokens)


def kl_to_target(logits: jax.Array, target_probs: jax.Array) -> jax.Array:
    """KL(target || softmax(logits)) per example: (B, L), (B, L) -> (B,)."""
    log_p = jax.nn.log_softmax(logits)
    return jnp.sum(jax.scipy.special.xlogy(target_probs, target_probs) - target_probs * log_p, -1)


def tree_vdot(a, b) -> jax.Array:
    """sum over leaves of <a, b>: a linear term whose gradient is ``a`` (SCAFFOLD's and
    FedDyn's corrections)."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def prox_term(params, anchor, lam: float) -> jax.Array:
    """(lam / 2) ||params - anchor||^2 over every leaf: Ditto's and MR-MTL's regularizer."""
    sq = jax.tree.map(lambda p, a: jnp.sum(jnp.square(p - a)), params, anchor)
    return 0.5 * lam * sum(jax.tree.leaves(sq))


def sgd_epochs(
    loss_fn: Callable[[object, jax.Array, jax.Array], jax.Array],
    optimizer: optax.GradientTransformation,
    params,
    key: jax.Array,
    count: jax.Array,
    capacity: int,
    batch_size: int,
    epochs: int,
    max_steps: jax.Array | None = None,
    penalty: Callable | None = None,
    batch_penalty: Callable | None = None,
    dynamic_steps: bool = False,
) -> Trained:
    """Run ``epochs`` of minibatch training over one client's ``count`` examples.

    Each active step minimises ``loss_fn(params, batch) + penalty(params)``; the two are
    reported apart (a FedProx or Ditto proximal term is not part of the data loss).

    Args:
      loss_fn: ``(params, positions (B,), mask (B,)) -> scalar`` masked mean loss over the batch
        of slots ``positions``.
      optimizer: an optax transformation, initialised fresh here (per-round client optimizer).
      params: one client's parameter pytree.
      key: PRNG key for the shuffles.
      count: () number of valid slots.
      capacity, batch_size, epochs: static sizes.
      max_steps: optional () int: stop after this many active steps (a straggler's budget).
      penalty: optional ``params -> scalar`` added to every batch loss (a proximal term).
      batch_penalty: optional ``(params, positions, mask) -> scalar`` added too, a term that
        depends on the batch (MOON's contrastive loss); ``Trained.penalty`` reports the sum.
      dynamic_steps: run only the client's active steps (a ``lax.while_loop`` over them)
        instead of a scan over every step the padded capacity allows. The same steps in the
        same order, so the same result; under ``vmap`` the clients computed together run as
        many steps as the longest of them, so clients of similar sizes computed together waste
        nothing on padding (:func:`jaxfl.core.client_axis` chunks, sorted by size). Not
        reverse-differentiable (a while loop), which no caller needs.

    Returns:
      :class:`Trained` (params, mean data loss, steps taken, mean penalty).
    """
    positions, mask = batch_schedule(key, count, capacity, batch_size, epochs)

    def objective(params, pos, m):
        data_loss = loss_fn(params, pos, m)
        if penalty is None and batch_penalty is None:
            return data_loss, (data_loss, jnp.float32(0.0))
        terms = [] if penalty is None else [penalty(params)]
        terms += [] if batch_penalty is None else [batch_penalty(params, pos, m)]
        term = sum(terms[1:], terms[0])
        return data_loss + term, (data_loss, term)

    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def step(carry, batch):
        params, opt_state, done = carry
        pos, m = batch
        active = m[0]  # a step is active iff its first slot is valid
        if max_steps is not None:
            active = active & (done < max_steps)
        (_, (loss, term)), grads = grad_fn(params, pos, m)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jnp.where(active, new, old)
        carry = (
            jax.tree.map(keep, new_params, params),
            jax.tree.map(keep, new_opt_state, opt_state),
            done + active,
        )
        return carry, (jnp.where(active, loss, 0.0), jnp.where(active, term, 0.0))

    if dynamic_steps:
        return _active_steps(step, params, optimizer, positions, mask, count, capacity,
                             batch_size, epochs, max_steps)  # fmt: skip
    (params, _, steps), (losses, terms) = jax.lax.scan(
        step, (params, optimizer.init(params), jnp.int32(0)), (positions, mask)
    )
    denominator = jnp.maximum(steps, 1)
    return Trained(params, jnp.sum(losses) / denominator, steps, jnp.sum(terms) / denominator)


def _active_steps(step, params, optimizer, positions, mask, count, capacity, batch_size, epochs,
                  max_steps):  # fmt: skip
    """:func:`sgd_epochs`' scan, but over the active steps only: active step j of epoch
    e = j // S_k is row e * S + j % S_k of the schedule (S = ceil(capacity / B) rows per
    epoch, the first S_k = ceil(count / B) of them active). Losses land in the rows the scan
    would write, so the reported means sum the same array."""
    rows_per_epoch = -(-capacity // batch_size)
    active_per_epoch = (count + batch_size - 1) // batch_size
    n_active = active_per_epoch * epochs
    if max_steps is not None:
        n_active = jnp.minimum(n_active, max_steps)
    zeros = jnp.zeros(positions.shape[0], jnp.float32)

    def body(carry):
        j, params, opt_state, done, losses, terms = carry
        row = (j // jnp.maximum(active_per_epoch, 1)) * rows_per_epoch + j % jnp.maximum(
            active_per_epoch, 1
        )
        (params, opt_state, done), (loss, term) = step(
            (params, opt_state, done), (positions[row], mask[row])
        )
        return j + 1, params, opt_state, done, losses.at[row].set(loss), terms.at[row].set(term)

    carry = (jnp.int32(0), params, optimizer.init(params), jnp.int32(0), zeros, zeros)
    _, params, _, steps, losses, terms = jax.lax.while_loop(lambda c: c[0] < n_active, body, carry)
    denominator = jnp.maximum(steps, 1)
    return Trained(params, jnp.sum(losses) / denominator, steps, jnp.sum(terms) / denominator)


def client_data_loss(
    apply: Callable,
    train_x: jax.Array,
    train_y: jax.Array,
    idx_row: jax.Array,
    label_map: Callable | None = None,
):
    """Cross-entropy loss over a client's private slots: ``loss(params, positions, mask)``.

    Args:
      apply: model apply.
      train_x: (N, ...) all private examples; train_y: (N,).
      idx_row: (n_max,) this client's indices into ``train_x``.
      label_map: optional ``labels (B,) -> labels (B,)`` applied before the loss (label flipping).
    """

    def loss(params, positions, mask):
        idx = idx_row[positions]
        labels = train_y[idx] if label_map is None else label_map(train_y[idx])
        return batch_loss(apply(params, train_x[idx]), labels, mask)

    return loss


def local_sgd(
    apply: Callable,
    data,
    params,
    key: jax.Array,
    idx_row: jax.Array,
    count: jax.Array,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    epochs: int,
    label_map: Callable | None = None,
    penalty: Callable | None = None,
    max_steps: jax.Array | None = None,
    batch_penalty: Callable | None = None,
    dynamic_steps: bool = False,
) -> Trained:
    """One client's local training on its private data (a Federation's ``train_x``/``train_y``).

    ``idx_row`` (n_max,) and ``count`` () are the client's index view; ``label_map`` is that of
    :func:`client_data_loss`, ``penalty``, ``max_steps``, ``batch_penalty`` and
    ``dynamic_steps`` those of :func:`sgd_epochs`. Returns a :class:`Trained` (params, mean
    data loss, steps taken, mean penalty).
    """
    loss_fn = client_data_loss(apply, data.train_x, data.train_y, idx_row, label_map)
    return sgd_epochs(
        loss_fn, optimizer, params, key, count, data.capacity, batch_size, epochs, max_steps,
        penalty, batch_penalty, dynamic_steps,
    )  # fmt: skip


def distill_loss(apply: Callable, inputs: jax.Array, targets: jax.Array):
    """KL(target || model) over a shared distillation set: ``loss(params, positions, mask)``.

    Args:
      apply: model apply.
      inputs: (P, ...) distillation inputs (e.g. this round's open subset).
      targets: (P, L) target probabilities.
    """

    def loss(params, positions, mask):
        return masked_mean(kl_to_target(apply(params, inputs[positions]), targets[positions]), mask)

    return loss


def batched_apply(apply: Callable, params, x: jax.Array, batch_size: int = 500) -> jax.Array:
    """``apply(params, x)`` on (M, ...) inputs, ``batch_size`` rows at a time (bounded memory)."""
    m = x.shape[0]
    batch_size = min(batch_size, m)
    n_batches = -(-m // batch_size)
    pad = n_batches * batch_size - m
    xb = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
    out = jax.lax.map(lambda xs: apply(params, xs), xb.reshape(n_batches, batch_size, *x.shape[1:]))
    return out.reshape(n_batches * batch_size, *out.shape[2:])[:m]


def predict_probs(apply: Callable, params, inputs: jax.Array, batch_size: int = 500) -> jax.Array:
    """Softmax probabilities (P, L) of one model on ``inputs`` (P, ...)."""
    return jax.nn.softmax(batched_apply(apply, params, inputs, batch_size))


def accuracy(apply: Callable, params, x: jax.Array, y: jax.Array, batch_size: int = 1000):
    """Accuracy of one model on (M, ...) inputs ``x`` with (M,) labels ``y``; rows labelled -1
    are padding (the experiments axis pads test sets of different sizes) and do not count.
    With (M, T) next-token targets: the fraction of the targets that are neither
    :data:`PAD_TOKEN` nor -1 predicted right (TFF's ``MaskedCategoricalAccuracy`` masking pad)."""
    if y.ndim == 2:
        return sequence_metrics(apply, params, x, y, batch_size)["acc"]
    logits = batched_apply(apply, params, x, batch_size)
    valid = y >= 0
    hits = (jnp.argmax(logits, -1) == y) & valid
    return jnp.sum(hits) / jnp.maximum(jnp.sum(valid), 1)


def sequence_metrics(apply: Callable, params, x: jax.Array, y: jax.Array, batch_size: int = 1000):
    """Next-token metrics of one model on (M, T) inputs ``x`` and targets ``y``, over the
    targets that are neither :data:`PAD_TOKEN` nor -1 (a padding row), ``batch_size`` rows at
    a time (the (M, T, V) logits are never held at once):

    - ``acc``: fraction of those targets predicted (argmax) right (TFF's masked accuracy);
    - ``acc_no_eos``: the same without the :data:`EOS_TOKEN` targets (FedJAX's
      ``accuracy_no_eos``);
    - ``acc_no_oov_eos``: without the EOS and OOV targets, OOV being the vocabulary's last
      token V - 1 in both language tasks (Reddi et al.'s StackOverflow accuracy);
    - ``token_loss``: mean cross-entropy per target token, and ``perplexity`` = exp of it.
    """
    m = x.shape[0]
    batch_size = min(batch_size, m, _eval_rows(apply, params, x))
    n_batches = -(-m // batch_size)
    pad = n_batches * batch_size - m
    xb = jnp.pad(x, ((0, pad), (0, 0))).reshape(n_batches, batch_size, -1)
    yb = jnp.pad(y, ((0, pad), (0, 0)), constant_values=-1).reshape(n_batches, batch_size, -1)

    def sums(batch):
        xs, ys = batch
        logits = apply(params, xs)
        tokens = ys > PAD_TOKEN
        hits = jnp.argmax(logits, -1) == ys
        ce = cross_entropy(logits, jnp.maximum(ys, 0))
        no_eos = tokens & (ys != EOS_TOKEN)
        in_vocab = no_eos & (ys != logits.shape[-1] - 1)
        return jnp.stack([
            jnp.sum(tokens), jnp.sum(hits & tokens), jnp.sum(no_eos), jnp.sum(hits & no_eos),
            jnp.sum(in_vocab), jnp.sum(hits & in_vocab), jnp.sum(jnp.where(tokens, ce, 0.0)),
        ]).astype(jnp.float32)  # fmt: skip

    totals = jnp.sum(jax.lax.map(sums, (xb, yb)), axis=0)
    n, hits, n_no_eos, hits_no_eos, n_in_vocab, hits_in_vocab, loss = totals
    token_loss = loss / jnp.maximum(n, 1)
    return {
        "acc": hits / jnp.maximum(n, 1),
        "acc_no_eos": hits_no_eos / jnp.maximum(n_no_eos, 1),
        "acc_no_oov_eos": hits_in_vocab / jnp.maximum(n_in_vocab, 1),
        "token_loss": token_loss,
        "perplexity": jnp.exp(token_loss),
    }


def _eval_rows(apply: Callable, params, x: jax.Array) -> int:
    """Rows of token inputs ``x`` (M, T) whose logits stay within :data:`EVAL_LOGITS`."""
    logits = jax.eval_shape(apply, params, x[:1])
    return max(1, EVAL_LOGITS // max(1, math.prod(logits.shape)))


def _client_token_totals(apply: Callable, params, x, y, idx_row, count):
    """(hits, summed cross-entropy, tokens) of one model over one client's split of next-token
    rows (``idx_row`` (n,), ``count``): its non-pad targets, in batches of rows whose logits
    stay within :data:`EVAL_LOGITS` (one batch for a split that fits)."""
    n = idx_row.shape[0]
    rows = min(n, _eval_rows(apply, params, x))
    batches = -(-n // rows)
    idx = jnp.pad(idx_row, (0, batches * rows - n)).reshape(batches, rows)
    valid = (jnp.arange(batches * rows) < count).reshape(batches, rows)

    def totals(batch):
        idx_b, valid_b = batch
        labels = y[idx_b]
        logits = apply(params, x[idx_b])
        tokens = valid_b[:, None] & (labels > PAD_TOKEN)
        hits = jnp.sum((jnp.argmax(logits, -1) == labels) & tokens)
        ce = jnp.sum(jnp.where(tokens, cross_entropy(logits, labels), 0.0))
        return jnp.stack([hits.astype(jnp.float32), ce, jnp.sum(tokens).astype(jnp.float32)])

    return jnp.sum(jax.lax.map(totals, (idx, valid)), axis=0)


def client_loss(apply: Callable, params, x: jax.Array, y: jax.Array, idx_row, count):
    """Mean cross-entropy of one model on one client's split (``idx_row`` (n_max,), ``count``);
    per non-pad target token for next-token rows (in bounded batches of rows)."""
    valid = jnp.arange(idx_row.shape[0]) < count
    if y.ndim == 2:
        _, ce, tokens = _client_token_totals(apply, params, x, y, idx_row, count)
        return ce / jnp.maximum(tokens, 1)
    return batch_loss(apply(params, x[idx_row]), y[idx_row], valid)


def client_accuracy(apply: Callable, params, x: jax.Array, y: jax.Array, idx_row, count):
    """Accuracy of one model on one client's test split (``idx_row`` (t_max,), ``count`` ());
    with next-token targets (t_max, T) the fraction of its non-pad targets predicted right
    (in bounded batches of rows)."""
    if y.ndim == 2:
        hits, _, tokens = _client_token_totals(apply, params, x, y, idx_row, count)
        return hits / jnp.maximum(tokens, 1)
    valid = jnp.arange(idx_row.shape[0]) < count
    hits = jnp.argmax(apply(params, x[idx_row]), -1) == y[idx_row]
    return jnp.sum(hits & valid) / jnp.maximum(count, 1)
