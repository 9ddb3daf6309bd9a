"""Simulated faults as masks, and the pure functions that customise the compiled round."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfl.algorithms import dsfl, fedavg
from jaxfl.core import aggregate, train
from jaxfl.core.algorithm import loop_clients
from jaxfl.mechanisms import faults
from jaxfl.models import get_model

from .test_rounds import DSFL, FEDAVG
from .tolerance import ULPS, assert_trees_close


def _mlp(data):
    return get_model("mlp", data.feature_shape, data.num_classes)


def _round_pieces(algo, state, key):
    """prepare, every client's output by the loop reference, and the round's ctx (an algorithm
    with model groups must have one group here; FedAvg must be built with ``stream=False`` to
    expose each client's raw update)."""
    assert not algo.parts.reduced
    shared, client_args, ctx = algo.parts.prepare(state, key, algo.data)
    if algo.parts.grouped:
        (update,), (client_args,) = algo.parts.client_update, client_args
    else:
        update = algo.parts.client_update
    return loop_clients(update, shared, *client_args), ctx


def _key_where(config, m, predicate):
    """The first round key whose received mask (m,) satisfies ``predicate(number received)``."""
    keys = (jax.random.key(i) for i in range(100))
    return next(k for k in keys if predicate(int(faults.round_faults(k, m, config)[0].sum())))


def test_round_faults_masks_have_the_asked_for_sizes():
    config = faults.FaultConfig(dropout=0.3, straggler_fraction=0.25, straggler_work=0.4)
    received, work = faults.round_faults(jax.random.key(0), 1000, config)
    assert 0.25 < 1 - float(received.mean()) < 0.35
    assert int((work < 1).sum()) == 250 and set(np.unique(np.asarray(work))) == {
        np.float32(0.4),
        np.float32(1.0),
    }
    adv = faults.adversaries(50, 0.2, seed=3)
    assert adv.sum() == 10 and np.array_equal(adv, faults.adversaries(50, 0.2, seed=3))


def test_fedavg_dropout_averages_only_the_received_updates(tiny_federation):
    data = tiny_federation
    config = faults.FaultConfig(dropout=0.5)
    algo = fedavg.make(FEDAVG, data, _mlp(data), fault_config=config)
    state = algo.init(jax.random.key(0))
    key = _key_where(config, 4, lambda n: 0 < n < 4)  # some but not all uploads are lost
    raw = fedavg.make(FEDAVG, data, _mlp(data), fault_config=config, stream=False)
    (deltas, _), (counts, received, *_) = _round_pieces(raw, state, key)
    new_state, metrics = algo.round(state, key)  # the streamed weighted mean
    w = np.asarray(counts * received, np.float64)
    expected = jax.tree.map(
        lambda p, d: p + np.tensordot(w / w.sum(), np.asarray(d), axes=1), state.params, deltas
    )
    assert_trees_close(new_state.params, expected)
    assert float(metrics["received"]) == float(received.sum()) < 4
    everyone = jax.tree.map(
        lambda p, d: p + np.tensordot(counts / counts.sum(), np.asarray(d), axes=1),
        state.params,
        deltas,
    )
    assert not np.allclose(jax.tree.leaves(new_state.params)[0], jax.tree.leaves(everyone)[0])


def test_round_is_not_applied_below_min_received(tiny_federation):
    data = tiny_federation
    config = faults.FaultConfig(dropout=0.6, min_received=4)
    algo = fedavg.make(FEDAVG, data, _mlp(data), fault_config=config)
    state = algo.init(jax.random.key(0))
    key = _key_where(config, 4, lambda n: n < 4)
    new_state, metrics = algo.round(state, key)
    assert float(metrics["applied"]) == 0.0
    assert_trees_close(new_state.params, state.params, rtol=0, atol=0)
    assert int(new_state.round) == 1


def test_dsfl_dropout_soft_labels_average_only_received_clients(tiny_federation):
    data = tiny_federation
    config = faults.FaultConfig(dropout=0.5)
    algo = dsfl.make(DSFL, data, _mlp(data), fault_config=config)
    state = algo.init(jax.random.key(0))
    key = _key_where(config, 4, lambda n: 0 < n < 4)
    (_, probs, *_), ctx = _round_pieces(algo, state, key)
    received = np.asarray(ctx[3])
    new_state, _ = algo.round(state, key)
    expected = jax.nn.softmax(probs[received].mean(0) / DSFL.temperature, -1)
    assert_trees_close(new_state.soft_labels, expected)


def test_straggler_budget_stops_after_its_steps(tiny_federation):
    """max_steps=k equals running only the first k active steps of the same schedule."""
    data = tiny_federation
    model = _mlp(data)
    params = model.init(jax.random.key(0))
    client, key, batch, epochs = 1, jax.random.key(4), 8, 2
    count = data.client_count[client]
    loss_fn = train.client_data_loss(
        model.apply, data.train_x, data.train_y, data.client_idx[client]
    )
    budget = faults.step_budget(jnp.float32(0.5), count, batch, epochs)
    assert int(budget) == int(np.ceil(0.5 * epochs * np.ceil(int(count) / batch)))
    trained = train.sgd_epochs(
        loss_fn, optax.sgd(0.1), params, key, count, data.capacity, batch, epochs, budget
    )
    positions, mask = train.batch_schedule(key, count, data.capacity, batch, epochs)
    expected, done = params, 0
    for pos, m in zip(positions, mask, strict=True):
        if bool(m[0]) and done < int(budget):
            grads = jax.grad(loss_fn)(expected, pos, m)
            expected = jax.tree.map(lambda p, g: p - 0.1 * g, expected, grads)
            done += 1
    assert_trees_close(trained.params, expected)
    assert int(trained.steps) == done == int(budget)  # the steps taken are reported


def test_label_flip_and_logit_attacks_follow_their_definitions():
    y = jnp.array([0, 1, 9])
    np.testing.assert_array_equal(faults.flip_labels(y, 10, jnp.bool_(True)), [9, 8, 0])
    np.testing.assert_array_equal(faults.flip_labels(y, 10, jnp.bool_(False)), y)
    logits = jnp.array([[1.0, 2.0, 0.5]])
    key = jax.random.key(0)
    scaled = faults.attack_probs(logits, key, "scaled_logits", 3.0, jnp.bool_(True))
    np.testing.assert_allclose(scaled, jax.nn.softmax(3.0 * logits), rtol=ULPS)
    honest = faults.attack_probs(logits, key, "random_logits", 3.0, jnp.bool_(False))
    np.testing.assert_allclose(honest, jax.nn.softmax(logits), rtol=ULPS)
    noise = faults.attack_probs(logits, key, "random_logits", 3.0, jnp.bool_(True))
    np.testing.assert_allclose(noise, jax.nn.softmax(3.0 * jax.random.normal(key, (1, 3))))


def test_fedavg_scaled_update_attack_scales_the_adversaries_updates(tiny_federation):
    data = tiny_federation
    clean = fedavg.make(FEDAVG, data, _mlp(data))
    attacked = fedavg.make(
        FEDAVG,
        data,
        _mlp(data),
        fault_config=faults.FaultConfig(
            adversary_fraction=1.0, attack="scaled_update", attack_scale=5.0
        ),
    )
    state = clean.init(jax.random.key(0))
    key = jax.random.key(2)
    new_clean, _ = clean.round(state, key)
    new_attacked, _ = attacked.round(state, key)
    step = lambda new: jax.tree.map(jnp.subtract, new.params, state.params)
    assert_trees_close(step(new_attacked), jax.tree.map(lambda d: 5 * d, step(new_clean)))


@pytest.mark.parametrize(
    "module,config,fault_config",
    [
        (
            fedavg,
            FEDAVG,
            faults.FaultConfig(
                dropout=0.3, straggler_fraction=0.5, adversary_fraction=0.5, attack="label_flip"
            ),
        ),
        (
            dsfl,
            DSFL,
            faults.FaultConfig(
                dropout=0.3, straggler_fraction=0.5, adversary_fraction=0.5, attack="random_logits"
            ),
        ),
    ],
)
def test_vmapped_round_with_faults_equals_loop_reference(
    tiny_federation, module, config, fault_config
):
    algo = module.make(config, tiny_federation, _mlp(tiny_federation), fault_config=fault_config)
    state_v = state_l = algo.init(jax.random.key(0))
    for r in range(2):
        key = jax.random.key(20 + r)
        state_v, metrics_v = algo.round(state_v, key)
        state_l, metrics_l = algo.round_loop(state_l, key)
        assert_trees_close(state_v, state_l)
        assert_trees_close(metrics_v, metrics_l)


def test_unsupported_attack_names_the_flag_and_allowed_values(tiny_federation):
    with pytest.raises(ValueError, match="--attack 'scaled_update' is not allowed for this"):
        dsfl.make(
            DSFL,
            tiny_federation,
            _mlp(tiny_federation),
            fault_config=faults.FaultConfig(adversary_fraction=0.5, attack="scaled_update"),
        )
    with pytest.raises(ValueError, match="--min-received 9"):
        fedavg.make(
            FEDAVG,
            tiny_federation,
            _mlp(tiny_federation),
            fault_config=faults.FaultConfig(min_received=9),
        )


# ----------------------------------------------------------------------------------------------
# Customisation inside the compiled round: pure functions passed to the constructor
# ----------------------------------------------------------------------------------------------
def test_client_loss_term_fedprox_keeps_local_models_near_the_global(tiny_federation):
    data = tiny_federation
    prox = lambda mu: (
        lambda params, global_params: (
            0.5
            * mu
            * sum(
                jnp.sum((p - g) ** 2)
                for p, g in zip(
                    jax.tree.leaves(params), jax.tree.leaves(global_params), strict=True
                )
            )
        )
    )
    state = fedavg.make(FEDAVG, data, _mlp(data)).init(jax.random.key(0))
    drift = {}
    for mu in (0.0, 10.0):
        algo = fedavg.make(FEDAVG, data, _mlp(data), client_loss_term=prox(mu), stream=False)
        (deltas, (data_loss, penalty)), _ = _round_pieces(algo, state, jax.random.key(1))
        drift[mu] = sum(float(jnp.sum(d**2)) for d in jax.tree.leaves(deltas))
        # the proximal term is reported apart from the data loss, per client
        assert np.all(np.asarray(penalty) > 0) if mu else np.all(np.asarray(penalty) == 0)
        assert np.all(np.isfinite(np.asarray(data_loss)))
    assert drift[10.0] < 0.5 * drift[0.0]


def test_custom_client_selection_and_aggregation_are_used(tiny_federation):
    data = tiny_federation
    first_four = lambda key, num_clients, m: jnp.arange(m, dtype=jnp.int32)
    median = lambda deltas, weights: jax.tree.map(lambda d: jnp.median(d, axis=0), deltas)
    algo = fedavg.make(
        FEDAVG, data, _mlp(data), select_clients=first_four, aggregate_updates=median
    )
    state = algo.init(jax.random.key(0))
    key = jax.random.key(3)
    (deltas, _), (counts, *_) = _round_pieces(algo, state, key)
    # the first four clients, ordered by size (StandardClients sorts each cohort)
    np.testing.assert_array_equal(counts, np.sort(np.asarray(data.client_count[:4])))
    new_state, _ = algo.round(state, key)
    expected = jax.tree.map(lambda p, d: p + np.median(np.asarray(d), axis=0), state.params, deltas)
    assert_trees_close(new_state.params, expected)
    # DS-FL: only the selected clients' models change; a custom soft-label rule is applied
    argmax_vote = lambda probs, weights: jax.nn.one_hot(
        jnp.argmax(aggregate.mean_soft_labels(probs, weights), -1), probs.shape[-1]
    )
    algo = dsfl.make(
        DSFL, data, _mlp(data), select_clients=first_four, aggregate_soft_labels=argmax_vote
    )
    state = algo.init(jax.random.key(0))
    new_state, _ = algo.round(state, key)
    changed = [
        not np.allclose(a, b)
        for a, b in zip(
            jax.tree.leaves(state.client_params)[0],
            jax.tree.leaves(new_state.client_params)[0],
            strict=True,
        )
    ]
    assert changed == [True] * 4 + [False] * (data.num_clients - 4)
    assert set(np.unique(np.asarray(new_state.soft_labels))) <= {0.0, 1.0}


def test_the_round_composition_keeps_the_server_state_of_a_round_not_applied(tiny_federation):
    """RoundParts(server_state=...): the engine's guard, in the jitted round and in the loop
    reference alike. A toy algorithm: the server adds the clients' sum to ``server``, each
    client's ``local`` row advances; ``applied`` comes from the round's key."""
    from flax import struct

    from jaxfl.core.algorithm import RoundParts, make_algorithm

    @struct.dataclass
    class Toy:
        server: jax.Array  # (3,)
        local: jax.Array  # (C,)
        round: jax.Array

    num_clients = tiny_federation.num_clients

    def prepare(state, key, data):
        ids = jnp.arange(num_clients)
        return state.server, (ids,), jax.random.bernoulli(key)

    def client_update(server, i):
        return server + i.astype(jnp.float32)

    def finish(state, applied, outputs, data):
        new = Toy(state.server + outputs.sum(0), state.local + 1.0, state.round + 1)
        return new, {"applied": applied}

    def init(key):
        return Toy(jnp.ones(3), jnp.zeros(num_clients), jnp.zeros((), jnp.int32))

    algo = make_algorithm(
        "toy",
        RoundParts(prepare, client_update, finish, server_state=("server",)),
        init,
        lambda state, data: {},
        tiny_federation,
    )
    state = algo.init(jax.random.key(0))
    seen = set()
    for r in range(8):
        key = jax.random.key(r)
        for step in (algo.round, algo.round_loop):
            new, metrics = step(state, key)
            applied = bool(metrics["applied"])
            seen.add(applied)
            expected = state.server + (state.server[None] + jnp.arange(num_clients)[:, None]).sum(0)
            np.testing.assert_array_equal(new.server, expected if applied else state.server)
            np.testing.assert_array_equal(new.local, state.local + 1.0)  # advances regardless
            assert int(new.round) == int(state.round) + 1
        state = new
    assert seen == {True, False}  # both branches ran
