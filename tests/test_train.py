"""Local training: schedules, masking, and equality with an unpadded per-step reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfl.core import train
from jaxfl.models import get_model

from .tolerance import NEAR_ZERO, SUMS, ULPS


def test_schedule_visits_each_valid_slot_once_per_epoch():
    positions, mask = train.batch_schedule(jax.random.key(3), jnp.int32(7), 12, 3, epochs=2)
    assert positions.shape == (2 * 4, 3) and mask.shape == (8, 3)
    for epoch in range(2):
        pos = np.asarray(positions[epoch * 4 : (epoch + 1) * 4]).ravel()
        m = np.asarray(mask[epoch * 4 : (epoch + 1) * 4]).ravel()
        assert sorted(pos[m]) == list(range(7))  # a permutation of the valid slots only
        assert m.sum() == 7


def test_schedule_is_independent_of_padding():
    a, _ = train.batch_schedule(jax.random.key(0), jnp.int32(9), 9, 4, 1)
    b, mb = train.batch_schedule(jax.random.key(0), jnp.int32(9), 40, 4, 1)
    np.testing.assert_array_equal(np.asarray(a).ravel()[:9], np.asarray(b)[np.asarray(mb)][:9])


def _client_setup(count, capacity):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(50, 5)).astype(np.float32))
    y = jnp.asarray(rng.integers(3, size=50).astype(np.int32))
    own = np.array([4, 9, 11, 20, 33, 41, 47][:count])
    idx_row = jnp.asarray(np.pad(own, (0, capacity - count)).astype(np.int32))
    return x, y, own, idx_row


def test_padded_client_equals_unpadded_reference():
    """SGD over a padded index row == plain SGD on the client's own examples, batch by batch."""
    model = get_model("logreg", (5,), 3)
    params0 = model.init(jax.random.key(1))
    key, lr, batch, epochs, count = jax.random.key(7), 0.3, 3, 2, 7
    x, y, own, idx_row = _client_setup(count, capacity=16)
    loss_fn = train.client_data_loss(model.apply, x, y, idx_row)
    got, *_ = train.sgd_epochs(
        loss_fn, optax.sgd(lr), params0, key, jnp.int32(count), 16, batch, epochs
    )
    # the same client with no padding at all
    _, _, _, tight_row = _client_setup(count, capacity=count)
    tight_loss = train.client_data_loss(model.apply, x, y, tight_row)
    tight, *_ = train.sgd_epochs(
        tight_loss, optax.sgd(lr), params0, key, jnp.int32(count), count, batch, epochs
    )
    # explicit reference: per epoch, the client's examples in the schedule's order, mean CE per
    # batch (last batch smaller), one SGD step per batch
    positions, mask = train.batch_schedule(key, jnp.int32(count), 16, batch, epochs)
    order = np.asarray(positions)[np.asarray(mask)].reshape(epochs, count)
    params = params0
    for e in range(epochs):
        for s in range(0, count, batch):
            ids = own[order[e, s : s + batch]]

            def ce(p, ids=ids):
                return jnp.mean(train.cross_entropy(model.apply(p, x[ids]), y[ids]))

            grads = jax.grad(ce)(params)
            params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    leaves = zip(jax.tree.leaves(got), jax.tree.leaves(tight), jax.tree.leaves(params), strict=True)
    for a, b, c in leaves:
        np.testing.assert_allclose(a, b, rtol=SUMS, atol=NEAR_ZERO)
        np.testing.assert_allclose(a, c, rtol=SUMS, atol=NEAR_ZERO)


def test_kl_to_target_matches_definition():
    logits = jnp.array([[1.0, 2.0, 0.5]])
    target = jnp.array([[0.2, 0.7, 0.1]])
    p = jax.nn.softmax(logits)[0]
    expected = float(jnp.sum(target[0] * (jnp.log(target[0]) - jnp.log(p))))
    np.testing.assert_allclose(train.kl_to_target(logits, target)[0], expected, rtol=ULPS)
    one_hot = jnp.array([[0.0, 1.0, 0.0]])  # zero targets contribute 0, not NaN
    np.testing.assert_allclose(train.kl_to_target(logits, one_hot)[0], -jnp.log(p[1]), rtol=ULPS)


def test_batched_apply_and_accuracy():
    model = get_model("mlp", (6,), 4)
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (23, 6))
    np.testing.assert_allclose(
        train.batched_apply(model.apply, params, x, 5),
        model.apply(params, x),
        rtol=SUMS,
        atol=NEAR_ZERO,
    )
    y = jnp.argmax(model.apply(params, x), -1)
    assert float(train.accuracy(model.apply, params, x, y, batch_size=4)) == 1.0


def test_penalty_is_minimised_with_the_data_loss_and_reported_apart():
    """sgd_epochs(loss, penalty=r) steps on loss + r exactly as on the summed loss, but reports
    the data loss, the penalty and the steps taken apart, each a mean over the active steps."""
    model = get_model("logreg", (5,), 3)
    params0 = model.init(jax.random.key(1))
    key, count, capacity, batch, epochs = jax.random.key(7), 7, 16, 3, 2
    x, y, _, idx_row = _client_setup(count, capacity)
    data_loss = train.client_data_loss(model.apply, x, y, idx_row)
    prox = lambda p: train.prox_term(p, params0, 0.5)  # (0.5/2)||w - w0||^2
    summed = lambda p, pos, m: data_loss(p, pos, m) + prox(p)
    run = lambda loss, **kw: train.sgd_epochs(
        loss, optax.sgd(0.3), params0, key, jnp.int32(count), capacity, batch, epochs, **kw
    )
    split, together = run(data_loss, penalty=prox), run(summed)
    for a, b in zip(jax.tree.leaves(split.params), jax.tree.leaves(together.params), strict=True):
        np.testing.assert_array_equal(a, b)  # the same objective, the same steps
    steps = epochs * -(-count // batch)  # 3 active steps per epoch: batches of 3, 3, 1
    assert int(split.steps) == int(together.steps) == steps
    # the reference: replay the schedule and average each term over the active steps
    positions, mask = train.batch_schedule(key, jnp.int32(count), capacity, batch, epochs)
    params, data_terms, prox_terms = params0, [], []
    for pos, m in zip(positions, mask, strict=True):
        if bool(m[0]):
            data_terms.append(float(data_loss(params, pos, m)))
            prox_terms.append(float(prox(params)))
            grads = jax.grad(summed)(params, pos, m)
            params = jax.tree.map(lambda p, g: p - 0.3 * g, params, grads)
    np.testing.assert_allclose(split.loss, np.mean(data_terms), rtol=SUMS)
    np.testing.assert_allclose(split.penalty, np.mean(prox_terms), rtol=SUMS)
    np.testing.assert_allclose(together.loss, np.mean(data_terms) + np.mean(prox_terms), rtol=SUMS)
    assert float(together.penalty) == 0.0 and float(split.penalty) > 0.0


def test_dynamic_steps_give_the_scan_result_bit_for_bit_under_vmap():
    """Running only a client's own steps (a while loop; what sorted chunks rely on) changes no
    bit of its result, for clients of very different sizes computed together, stragglers'
    step budgets included."""
    model = get_model("mlp-16", (6,), 3)
    rng = np.random.default_rng(0)
    n, capacity, B, E = 300, 90, 8, 2

    class Data:
        train_x = jnp.asarray(rng.normal(size=(n, 6)).astype(np.float32))
        train_y = jnp.asarray(rng.integers(0, 3, n).astype(np.int32))

    Data.capacity = capacity
    counts = jnp.asarray([1, 5, 8, 9, 17, 40, 90, 90], jnp.int32)
    idx = jnp.asarray(rng.integers(0, n, (8, capacity)).astype(np.int32))
    budgets = jnp.asarray([10**6, 3, 10**6, 1, 10**6, 7, 10**6, 20], jnp.int32)
    keys = jax.random.split(jax.random.key(1), 8)
    params = model.init(jax.random.key(0))

    def run(dynamic):
        def one(key, row, count, budget):
            return train.local_sgd(model.apply, Data, params, key, row, count, optax.sgd(0.3),
                                   B, E, max_steps=budget, dynamic_steps=dynamic)  # fmt: skip

        return jax.jit(jax.vmap(one))(keys, idx, counts, budgets)

    scan, loop = run(False), run(True)
    for a, b in zip(jax.tree.leaves(scan.params), jax.tree.leaves(loop.params), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(scan.loss, loop.loss)
    np.testing.assert_array_equal(scan.steps, loop.steps)
    expected = np.minimum(E * -(-np.asarray(counts) // B), np.asarray(budgets))
    np.testing.assert_array_equal(loop.steps, expected)
