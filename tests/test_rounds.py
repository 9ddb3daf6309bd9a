"""Whole vmapped rounds against the per-client Python-loop reference and the papers' equations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfl.algorithms import dsfl, fedavg
from jaxfl.core import aggregate, metrics, train
from jaxfl.core.algorithm import sample_clients
from jaxfl.models import get_model

from .tolerance import ULPS, assert_trees_close

FEDAVG = fedavg.FedAvgConfig(clients_per_round=4, local_epochs=2, batch_size=8, lr=0.1)
DSFL = dsfl.DSFLConfig(
    clients_per_round=4,
    local_epochs=1,
    batch_size=8,
    lr=0.1,
    distill_epochs=2,
    public_per_round=16,
    temperature=0.1,
)


# DS-FL with LeNet-5 (33 s) only under -m slow: DS-FL's round is compared with the MLP, the
# conv model's vmapped path with FedAvg here and per model in tests/test_models.py
@pytest.mark.parametrize(
    "module,config,model_name",
    [
        (fedavg, FEDAVG, "lenet5"),
        (fedavg, FEDAVG, "mlp"),
        (dsfl, DSFL, "mlp"),
        pytest.param(dsfl, DSFL, "lenet5", marks=pytest.mark.slow),
    ],
)
def test_vmapped_round_equals_loop_reference(tiny_federation, module, config, model_name):
    model = get_model(model_name, tiny_federation.feature_shape, tiny_federation.num_classes)
    algo = module.make(config, tiny_federation, model)
    state_v = state_l = algo.init(jax.random.key(0))
    for r in range(2):  # round 0 has no soft labels yet, round 1 distils on them
        key = jax.random.key(10 + r)
        state_v, metrics_v = algo.round(state_v, key)
        state_l, metrics_l = algo.round_loop(state_l, key)
        assert_trees_close(state_v, state_l)
        assert_trees_close(metrics_v, metrics_l)


@pytest.mark.parametrize(
    "module,config,chunk",
    [
        (fedavg, FEDAVG, 1),
        (fedavg, FEDAVG, 3),
        (dsfl, DSFL, 3),
        pytest.param(dsfl, DSFL, 1, marks=pytest.mark.slow),  # chunks of 1: FedAvg's above
    ],
)
def test_client_chunking_gives_the_same_round(tiny_federation, module, config, chunk):
    model = get_model("mlp", tiny_federation.feature_shape, tiny_federation.num_classes)
    whole = module.make(config, tiny_federation, model)
    chunked = module.make(
        type(config)(**{**config.__dict__, "client_chunk": chunk}), tiny_federation, model
    )  # 4 sampled clients in chunks of 3 exercises the padded last chunk; 1 the compiled loop
    state = whole.init(jax.random.key(0))
    key = jax.random.key(5)
    assert_trees_close(whole.round(state, key), chunked.round(state, key))


def test_fedavg_is_the_count_weighted_mean_of_local_models(tiny_federation):
    """w_{t+1} = sum_k n_k w_k / sum_k n_k with plain server SGD at lr 1."""
    data = tiny_federation
    model = get_model("mlp", data.feature_shape, data.num_classes)
    algo = fedavg.make(FEDAVG, data, model)
    state = algo.init(jax.random.key(0))
    key = jax.random.key(3)
    new_state, _ = algo.round(state, key)
    k_sample, k_clients = jax.random.split(key)
    sampled = np.asarray(sample_clients(k_sample, data.num_clients, 4))
    keys = jax.random.split(k_clients, 4)
    local, weights = [], []
    for i, k in enumerate(sampled):
        loss_fn = train.client_data_loss(
            model.apply, data.train_x, data.train_y, data.client_idx[k]
        )
        w_k, *_ = train.sgd_epochs(
            loss_fn,
            optax.sgd(FEDAVG.lr),
            state.params,
            keys[i],
            data.client_count[k],
            data.capacity,
            FEDAVG.batch_size,
            FEDAVG.local_epochs,
        )
        local.append(w_k)
        weights.append(float(data.client_count[k]))
    expected = jax.tree.map(
        lambda *ws: sum(w * x for w, x in zip(weights, ws, strict=False)) / sum(weights), *local
    )
    assert_trees_close(new_state.params, expected)


@pytest.mark.parametrize("rule", ["era", "sa"])
def test_dsfl_soft_labels_follow_the_equations(tiny_federation, rule):
    """y_hat = softmax(mean_k softmax(f_k(x)) / T) (ERA) or the mean itself (SA), on O_t."""
    data = tiny_federation
    model = get_model("mlp", data.feature_shape, data.num_classes)
    config = dsfl.DSFLConfig(**{**DSFL.__dict__, "aggregation": rule})
    algo = dsfl.make(config, data, model)
    state, _ = algo.round(algo.init(jax.random.key(0)), jax.random.key(1))
    new_state, _ = algo.round(state, jax.random.key(2))
    changed = [
        k
        for k in range(data.num_clients)
        if not np.allclose(
            jax.tree.leaves(state.client_params)[0][k],
            jax.tree.leaves(new_state.client_params)[0][k],
        )
    ]
    assert len(changed) == 4  # exactly the sampled clients were updated
    open_x = data.public_x[new_state.open_idx]
    probs = jnp.stack(
        [
            jax.nn.softmax(
                model.apply(jax.tree.map(lambda p, k=k: p[k], new_state.client_params[0]), open_x)
            )
            for k in changed
        ]
    )
    mean = probs.mean(0)
    expected = jax.nn.softmax(mean / config.temperature, -1) if rule == "era" else mean
    assert_trees_close(new_state.soft_labels, expected)
    if rule == "era":
        assert float(aggregate.entropy(new_state.soft_labels).mean()) < float(
            aggregate.entropy(mean).mean()
        )


def test_dsfl_clients_distill_towards_the_previous_soft_labels(tiny_federation):
    """Step 1 of the round: with local training off (lr 0), a client's model moves towards the
    previous round's global soft labels, and only from round 1 on."""
    data = tiny_federation
    model = get_model("mlp", data.feature_shape, data.num_classes)
    config = dsfl.DSFLConfig(
        **{
            **DSFL.__dict__,
            "lr": 1e-9,
            "distill_lr": 0.5,
            "distill_epochs": 5,
            "clients_per_round": data.num_clients,
        }
    )
    algo = dsfl.make(config, data, model)
    state0 = algo.init(jax.random.key(0))
    state1, m1 = algo.round(state0, jax.random.key(1))
    assert float(m1["client_distill_loss"]) == 0.0  # nothing to distill from in round 0
    prev_x = data.public_x[state1.open_idx]

    def kl(params):
        return jax.vmap(
            lambda p: jnp.mean(train.kl_to_target(model.apply(p, prev_x), state1.soft_labels))
        )(params)

    state2, m2 = algo.round(state1, jax.random.key(2))
    assert float(m2["client_distill_loss"]) > 0.0
    assert np.all(np.asarray(kl(state2.client_params[0])) < np.asarray(kl(state1.client_params[0])))


@pytest.mark.parametrize("chunk", [None, 1, 4])
@pytest.mark.parametrize("personal", [True, False])
def test_per_client_accuracy_equals_loop_reference(tiny_federation, chunk, personal):
    """metrics.per_client_accuracy (vmapped, chunked, or a compiled loop) vs a Python loop."""
    data = tiny_federation
    model = get_model("mlp", data.feature_shape, data.num_classes)
    client_params = jax.vmap(model.init)(jax.random.split(jax.random.key(0), data.num_clients))
    params = client_params if personal else model.init(jax.random.key(1))
    got = metrics.per_client_accuracy(
        model.apply, params, data, personal=personal, chunk_size=chunk
    )
    expected = []
    for k in range(data.num_clients):
        p_k = jax.tree.map(lambda p, k=k: p[k], params) if personal else params
        idx = np.asarray(data.client_test_idx[k, : int(data.client_test_count[k])])
        logits = model.apply(p_k, data.test_x[idx])
        expected.append(float(np.mean(np.argmax(logits, -1) == np.asarray(data.test_y)[idx])))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=ULPS)


def test_optax_optimizers_given_to_fedavg_equal_the_flag_shortcuts(tiny_federation):
    """Your own optax transformations (or a function of the config building one) give the same
    numbers as the flags' shortcuts."""
    model = get_model("mlp", tiny_federation.feature_shape, tiny_federation.num_classes)
    config = fedavg.FedAvgConfig(batch_size=8, lr=0.05, server_opt="momentum", server_lr=0.7)
    by_flags = fedavg.make(config, tiny_federation, model)
    given = fedavg.make(
        fedavg.FedAvgConfig(batch_size=8, lr=0.05),
        tiny_federation,
        model,
        client_optimizer=lambda hparams: optax.sgd(hparams.lr),  # a factory of the config
        server_optimizer=optax.sgd(0.7, momentum=0.9),
    )
    a = b = by_flags.init(jax.random.key(0))
    for r in range(2):
        a, _ = by_flags.round(a, jax.random.key(r))
        b, _ = given.round(b, jax.random.key(r))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("eps", [None, 1e-4])
def test_fedadam_and_fedyogi_follow_their_update_on_numbers(eps):
    """Reddi et al.'s server step x + eta m_t / (sqrt(v_t) + tau) on the pseudo-gradient -Delta,
    first round by hand, bias-corrected as the Keras Adam and TFA Yogi of the authors' code:
    Adam m = (1 - b1) g, v = (1 - b2) g^2; Yogi m = b1 m0 + (1 - b1) g, v = v0 - (1 - b2)
    sign(v0 - g^2) g^2 from m0 = v0 = 1e-6; m / (1 - b1) and v / (1 - b2) then; tau the
    epsilon (optax's default when None)."""
    delta = {"w": jnp.array([1e-4, -3e-4, 0.5])}
    x0 = {"w": jnp.array([1.0, 2.0, 3.0])}
    g, lr = -np.asarray(delta["w"], np.float64), 0.01
    b1, b2 = 0.9, 0.999
    for opt, default_eps in (("adam", 1e-8), ("yogi", 1e-3)):
        config = fedavg.FedAvgConfig(server_opt=opt, server_lr=lr, server_epsilon=eps)
        server_opt = fedavg.flag_server_optimizer(config)
        x1, _ = fedavg.server_update(server_opt, x0, server_opt.init(x0), delta)
        tau = default_eps if eps is None else eps
        start = 0.0 if opt == "adam" else 1e-6  # optax's Yogi starts both moments at 1e-6
        m_hat = (b1 * start + (1 - b1) * g) / (1 - b1)
        v = (1 - b2) * g**2 if opt == "adam" else start - (1 - b2) * np.sign(start - g**2) * g**2
        expected = np.asarray(x0["w"]) - lr * m_hat / (np.sqrt(v / (1 - b2)) + tau)
        # tol: float32 arithmetic of optax against the float64 formula: a few ULPs of x ~ 1
        np.testing.assert_allclose(x1["w"], expected, rtol=1e-6)
