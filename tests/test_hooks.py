"""What customisations receive (jaxfl.core.hooks): hooks get a key and the hyperparameters if
they ask, and every optimizer role of every algorithm is a replaceable optax transformation."""

import inspect

import jax
import jax.numpy as jnp
import optax
import pytest

from jaxfl.algorithms import ALGORITHMS, fedavg
from jaxfl.core import aggregate, hooks, metrics
from jaxfl.core.algorithm import RoundParts, make_algorithm
from jaxfl.mechanisms.client_round import standard_clients
from jaxfl.models import get_model

from .test_experiments import build
from .tolerance import assert_trees_close

ROLES = ("client_optimizer", "server_optimizer", "personal_optimizer", "distill_optimizer")


def test_a_hook_gets_only_what_its_signature_names():
    config = fedavg.FedAvgConfig(lr=0.3)
    plain = hooks.bind(lambda x, w: x + w, config)
    assert plain(1, 2, key=jax.random.key(0)) == 3  # the key is dropped for a plain hook
    both = hooks.bind(lambda x, *, key, hparams: (x, key, hparams.lr), config)
    assert both(1, key="k") == (1, "k", 0.3)
    kwargs = hooks.bind(lambda x, **extras: sorted(extras), config)
    assert kwargs(1, key="k") == ["hparams", "key"]
    assert hooks.bind(None, config) is None
    with pytest.raises(ValueError, match="asks for a key"):
        both(1)  # a call site without a key cannot serve a hook that needs one


def test_an_optimizer_is_a_transformation_a_factory_of_the_hparams_or_the_shortcut():
    config = fedavg.FedAvgConfig(lr=0.3)
    given = optax.adam(1e-3)
    assert hooks.optimizer(given, config, lambda: optax.sgd(1.0)) is given
    seen = []
    built = hooks.optimizer(lambda hp: seen.append(hp) or given, config, lambda: None)
    assert built is given and seen == [config]
    shortcut = optax.sgd(0.3)
    assert hooks.optimizer(None, config, lambda: shortcut) is shortcut
    with pytest.raises(TypeError, match="GradientTransformation"):
        hooks.optimizer(0.1, config, lambda: shortcut)
    with pytest.raises(TypeError, match="must return"):
        hooks.optimizer(lambda hp: hp.lr, config, lambda: shortcut)


def _recording(log: set, role: str) -> optax.GradientTransformation:
    base = optax.sgd(0.1)

    def update(updates, state, params=None):
        log.add(role)  # at trace time: this role's optimizer steps somewhere in the round
        return base.update(updates, state, params)

    return optax.GradientTransformation(base.init, update)


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_every_optimizer_role_of_every_algorithm_is_used(algo):
    """Traced, not compiled: each optimizer ``make`` accepts (given as a factory of the
    hyperparameters) steps in the algorithm's init or round; every algorithm has a client one."""
    exp = build(algo, 0)
    module = ALGORITHMS[algo]
    roles = [r for r in ROLES if r in inspect.signature(module.make).parameters]
    assert "client_optimizer" in roles
    log, configs = set(), []

    def factory(role):
        return lambda hp: configs.append(hp) or _recording(log, role)

    bound = module.make(
        exp.algorithm_config,
        exp.data,
        exp.groups or exp.model,
        fault_config=exp.fault_config,
        seed=0,
        **exp.make_kwargs,
        **{role: factory(role) for role in roles},
    )
    state = jax.eval_shape(bound.init, jax.random.key(0))
    jax.eval_shape(bound.round_fn, state, jax.random.key(1), exp.data)
    assert log == set(roles), (algo, roles, log)
    assert all(c is exp.algorithm_config for c in configs)


def test_fedavg_aggregation_hook_gets_its_own_key_each_round_and_the_hparams(tiny_federation):
    """A DP-style hook, weighted mean + lr * N(0, 1) drawn from its key, moves the model by
    exactly server_lr * lr * N(fold_in(round key, HOOK_STREAM)) against the plain round."""
    data = tiny_federation
    model = get_model("logreg", data.feature_shape, data.num_classes)
    config = fedavg.FedAvgConfig(batch_size=8, lr=0.05, server_lr=0.5)

    def noise(key, tree, scale):
        keys = jax.random.split(key, len(jax.tree.leaves(tree)))
        leaves = jax.tree.leaves(tree)
        leaves = [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
        return jax.tree.unflatten(jax.tree.structure(tree), leaves)

    def noisy_mean(deltas, weights, *, key, hparams):
        mean = aggregate.weighted_mean(deltas, weights)
        return jax.tree.map(jnp.add, mean, noise(key, mean, hparams.lr))

    plain = fedavg.make(config, data, model, stream=False)
    noisy = fedavg.make(config, data, model, aggregate_updates=noisy_mean)
    state = plain.init(jax.random.key(0))
    for r in (1, 2):
        key = jax.random.fold_in(jax.random.key(9), r)
        expected, _ = plain.round(state, key)
        got, _ = noisy.round(state, key)
        hook_key = jax.random.fold_in(key, hooks.HOOK_STREAM)
        added = noise(hook_key, state.params, config.server_lr * config.lr)
        moved = jax.tree.map(jnp.subtract, got.params, expected.params)
        for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(added), strict=True):
            assert_trees_close(a, b)
        state = got


def my_fedavg(data, model, m, lr, batch_size, epochs):
    """The README's "your own algorithm" example, as written there."""
    clients = standard_clients(data, m)
    sgd = optax.sgd(lr)

    def prepare(params, key, data):
        picked = clients.sample(key, data)
        return (data, params), picked.client_args, data.client_count[picked.sampled]

    def client_update(shared, client):
        data, params = shared
        trained = clients.train(model.apply, data, params, sgd, batch_size, epochs, client)
        return trained.params, trained.loss

    def finish(params, counts, outputs, data):
        client_params, losses = outputs
        train_loss = jnp.sum(losses * counts) / jnp.sum(counts)
        return aggregate.weighted_mean(client_params, counts), {"train_loss": train_loss}

    def evaluate(params, data):
        return {"test_acc": metrics.global_test_accuracy(model.apply, params, data)}

    return make_algorithm(
        "my_fedavg", RoundParts(prepare, client_update, finish), model.init, evaluate, data
    )


def test_an_algorithm_from_the_standard_clients_equals_fedavg(tiny_federation):
    """make_algorithm infers m from prepare; StandardClients samples and trains with FedAvg's
    keys and faults, so averaging the clients' models is FedAvg (server SGD, lr 1)."""
    data = tiny_federation
    model = get_model("logreg", data.feature_shape, data.num_classes)
    config = fedavg.FedAvgConfig(clients_per_round=4, batch_size=8, lr=0.05)
    ours = my_fedavg(data, model, 4, 0.05, 8, 1)
    assert ours.clients_per_round == 4 and ours.communication == {}
    reference = fedavg.make(config, data, model)
    params = ours.init(jax.random.key(0))
    state = reference.init(jax.random.key(0))
    key = jax.random.key(5)
    params, m_ours = ours.round(params, key)
    state, m_ref = reference.round(state, key)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params), strict=True):
        assert_trees_close(a, b)
    assert_trees_close(m_ours["train_loss"], m_ref["train_loss"])
