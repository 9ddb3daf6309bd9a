"""FedProx, SCAFFOLD, FedNova, FedDyn and MOON: the vmapped round against its per-client loop,
and each update rule against a plain reference written from the paper's equations (a Python
loop over the sampled clients calling the same local SGD primitive)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfl.algorithms import fedavg, feddyn, fednova, fedprox, moon, scaffold
from jaxfl.core import train
from jaxfl.core.algorithm import sample_clients
from jaxfl.models import get_model

from .tolerance import ULPS, assert_trees_close

LOCAL = {"clients_per_round": 4, "local_epochs": 2, "batch_size": 8, "lr": 0.1}
CONFIGS = {
    "fedprox": (fedprox, fedprox.FedProxConfig(**LOCAL, prox_mu=0.5)),
    "scaffold": (scaffold, scaffold.ScaffoldConfig(**LOCAL, server_lr=0.8)),
    "fednova": (fednova, fednova.FedNovaConfig(**LOCAL)),
    "feddyn": (feddyn, feddyn.FedDynConfig(**LOCAL, feddyn_alpha=0.1)),
    "moon": (moon, moon.MoonConfig(**LOCAL, moon_mu=2.0)),
}


@pytest.fixture
def mlp(tiny_federation):
    return get_model("mlp", tiny_federation.feature_shape, tiny_federation.num_classes)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_vmapped_round_equals_loop_reference(tiny_federation, mlp, name):
    module, config = CONFIGS[name]
    algo = module.make(config, tiny_federation, mlp)
    state_v = state_l = algo.init(jax.random.key(0))
    for r in range(2):  # round 2 starts from non-zero control variates / gradient states
        key = jax.random.key(10 + r)
        state_v, metrics_v = algo.round(state_v, key)
        state_l, metrics_l = algo.round_loop(state_l, key)
        assert_trees_close(state_v, state_l)
        assert_trees_close(metrics_v, metrics_l)


def local_runs(data, model, params, key, config, penalty_of=None):
    """The round's sampled clients (FedAvg's sampling and keys) trained one by one with
    ``train.sgd_epochs``: [(client, trained)], penalty_of(i, client) the i-th's penalty."""
    k_sample, k_clients = jax.random.split(key)
    sampled = np.asarray(sample_clients(k_sample, data.num_clients, config.clients_per_round))
    keys = jax.random.split(k_clients, len(sampled))
    runs = []
    for i, k in enumerate(sampled):
        loss_fn = train.client_data_loss(
            model.apply, data.train_x, data.train_y, data.client_idx[k]
        )
        trained = train.sgd_epochs(
            loss_fn,
            optax.sgd(config.lr),
            params,
            keys[i],
            data.client_count[k],
            data.capacity,
            config.batch_size,
            config.local_epochs,
            penalty=None if penalty_of is None else penalty_of(i, int(k)),
        )
        runs.append((int(k), trained))
    return runs


def tree_sum(trees, weights):
    return jax.tree.map(lambda *xs: sum(w * x for w, x in zip(weights, xs, strict=True)), *trees)


def test_fedprox_is_fedavg_with_the_proximal_local_objective(tiny_federation, mlp):
    """w_t+1 = sum_k n_k w_k / sum n_k where w_k minimises F_k(w) + (mu/2)||w - w_t||^2; with
    mu = 0 the round is FedAvg's exactly."""
    data, config = tiny_federation, CONFIGS["fedprox"][1]
    algo = fedprox.make(config, data, mlp)
    state = algo.init(jax.random.key(0))
    key = jax.random.key(3)
    new_state, metrics = algo.round(state, key)
    w_t = state.params
    prox = lambda i, k: lambda w: train.prox_term(w, w_t, config.prox_mu)
    runs = local_runs(data, mlp, w_t, key, config, prox)
    counts = [float(data.client_count[k]) for k, _ in runs]
    expected = tree_sum([t.params for _, t in runs], [c / sum(counts) for c in counts])
    assert_trees_close(new_state.params, expected)
    assert float(metrics["train_penalty"]) > 0
    plain = fedavg.FedAvgConfig(**LOCAL)
    zero = fedprox.FedProxConfig(**LOCAL, prox_mu=0.0)
    a = fedprox.make(zero, data, mlp).round(state, key)[0].params
    b = fedavg.make(plain, data, mlp).round(state, key)[0].params  # FedProx's state is FedAvg's
    assert_trees_close(a, b)


def test_scaffold_follows_option_two_for_two_rounds(tiny_federation, mlp):
    """The reference keeps c and every c_i itself: y_i by SGD on F_i + <c - c_i, y>,
    c_i+ = c_i - c + (x - y_i)/(K eta_l), x += eta_g mean(y_i - x), c += sum(c_i+ - c_i)/N."""
    data, config = tiny_federation, CONFIGS["scaffold"][1]
    algo = scaffold.make(config, data, mlp)
    state = algo.init(jax.random.key(0))
    x = state.params
    zeros = jax.tree.map(jnp.zeros_like, x)
    c, c_clients = zeros, {k: zeros for k in range(data.num_clients)}
    for r in range(2):
        key = jax.random.key(20 + r)
        state, _ = algo.round(state, key)

        def correction(i, k, c=c):
            diff = jax.tree.map(jnp.subtract, c, c_clients[k])
            return lambda y: train.tree_vdot(diff, y)

        runs = local_runs(data, mlp, x, key, config, correction)
        delta_c = []
        for k, trained in runs:
            steps = int(trained.steps)
            new = jax.tree.map(
                lambda ci, cg, xx, yy, K=steps: ci - cg + (xx - yy) / (K * config.lr),
                c_clients[k],
                c,
                x,
                trained.params,
            )
            delta_c.append(jax.tree.map(jnp.subtract, new, c_clients[k]))
            c_clients[k] = new
        m = len(runs)
        mean_dy = tree_sum([jax.tree.map(jnp.subtract, t.params, x) for _, t in runs], [1 / m] * m)
        x = jax.tree.map(lambda p, d: p + config.server_lr * d, x, mean_dy)
        c = jax.tree.map(lambda cg, d: cg + d, c, tree_sum(delta_c, [1 / data.num_clients] * m))
        assert_trees_close(state.params, x)
        assert_trees_close(state.control, c)
        for k in range(data.num_clients):
            assert_trees_close(
                jax.tree.map(lambda t, k=k: t[k], state.client_controls), c_clients[k]
            )


def test_fednova_normalizes_each_update_by_its_steps():
    """Two clients, one step and four steps, equal sizes: p = (1/2, 1/2), tau_eff = 2.5,
    Delta = 2.5 (d_1 / 1 + d_2 / 4) / 2; a client whose upload is lost weighs nothing."""
    deltas = {"w": jnp.array([[1.0, 2.0], [4.0, 8.0]])}
    delta, tau_eff = fednova.normalized_delta(deltas, jnp.array([1, 4]), jnp.array([3.0, 3.0]))
    assert float(tau_eff) == pytest.approx(2.5)
    np.testing.assert_allclose(delta["w"], 2.5 * (np.array([1, 2]) / 1 + np.array([4, 8]) / 4) / 2)
    delta, tau_eff = fednova.normalized_delta(deltas, jnp.array([1, 4]), jnp.array([3.0, 0.0]))
    assert float(tau_eff) == pytest.approx(1.0)
    np.testing.assert_allclose(delta["w"], [1.0, 2.0])


def test_fednova_round_follows_the_equations(tiny_federation, mlp):
    """Unequal client sizes give unequal tau_i: w_t+1 = w_t + tau_eff sum p_i (w_i - w_t)/tau_i
    with p_i = n_i / sum n_j, and that is not FedAvg's round."""
    data, config = tiny_federation, CONFIGS["fednova"][1]
    algo = fednova.make(config, data, mlp)
    state = algo.init(jax.random.key(0))
    key = jax.random.key(4)
    new_state, metrics = algo.round(state, key)
    runs = local_runs(data, mlp, state.params, key, config)
    n = np.array([float(data.client_count[k]) for k, _ in runs])
    tau = np.array([int(t.steps) for _, t in runs])
    assert len(set(tau)) > 1, "the fixture must give unequal step counts"
    p = n / n.sum()
    tau_eff = float(np.sum(p * tau))
    deltas = [jax.tree.map(jnp.subtract, t.params, state.params) for _, t in runs]
    expected = jax.tree.map(jnp.add, state.params, tree_sum(deltas, list(tau_eff * p / tau)))
    assert_trees_close(new_state.params, expected)
    assert float(metrics["tau_eff"]) == pytest.approx(tau_eff, rel=ULPS)
    plain = fedavg.make(fedavg.FedAvgConfig(**LOCAL), data, mlp)
    start = plain.init(jax.random.key(0))
    assert_trees_close(start.params, state.params)  # the same starting model
    fedavg_params = plain.round(start, key)[0].params
    gap = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new_state.params, fedavg_params)
    assert max(jax.tree.leaves(gap)) > 1e-4


def test_feddyn_server_step_on_numbers():
    """h = h - alpha/m sum_{k in P}(theta_k - theta), theta+ = mean_{k in P} theta_k - h/alpha:
    theta 0, locals 1 and 3, alpha 0.5, m = 4 clients in all."""
    zero = {"w": jnp.zeros(())}
    local = {"w": jnp.array([1.0, 3.0])}
    theta, h = feddyn.server_step(zero, zero, local, jnp.array([True, True]), 0.5, 4)
    assert float(h["w"]) == pytest.approx(-0.5) and float(theta["w"]) == pytest.approx(3.0)
    theta, h = feddyn.server_step(zero, zero, local, jnp.array([True, False]), 0.5, 4)
    assert float(h["w"]) == pytest.approx(-0.125) and float(theta["w"]) == pytest.approx(1.25)


def test_feddyn_follows_algorithm_one_for_two_rounds(tiny_federation, mlp):
    """The reference keeps h and every g_k: theta_k minimises L_k - <g_k, theta> +
    (alpha/2)||theta - theta^{t-1}||^2, g_k -= alpha (theta_k - theta^{t-1}), then the server."""
    data, config = tiny_federation, CONFIGS["feddyn"][1]
    alpha = config.feddyn_alpha
    algo = feddyn.make(config, data, mlp)
    state = algo.init(jax.random.key(0))
    theta = state.params
    zeros = jax.tree.map(jnp.zeros_like, theta)
    h, g = zeros, {k: zeros for k in range(data.num_clients)}
    for r in range(2):
        key = jax.random.key(30 + r)
        state, _ = algo.round(state, key)

        def penalty(i, k, anchor=theta):
            return lambda th: -train.tree_vdot(g[k], th) + train.prox_term(th, anchor, alpha)

        runs = local_runs(data, mlp, theta, key, config, penalty)
        for k, trained in runs:
            g[k] = jax.tree.map(lambda gk, t, a: gk - alpha * (t - a), g[k], trained.params, theta)
        m = len(runs)
        drift = tree_sum([jax.tree.map(jnp.subtract, t.params, theta) for _, t in runs], [1] * m)
        h = jax.tree.map(lambda hh, d: hh - alpha * d / data.num_clients, h, drift)
        mean_local = tree_sum([t.params for _, t in runs], [1 / m] * m)
        theta = jax.tree.map(lambda mu, hh: mu - hh / alpha, mean_local, h)
        assert_trees_close(state.params, theta)
        assert_trees_close(state.h, h)
        for k in range(data.num_clients):
            assert_trees_close(jax.tree.map(lambda t, k=k: t[k], state.client_grads), g[k])


@pytest.mark.parametrize("name", ["mlp", "lenet5", "logreg"])
def test_a_zoo_models_representation_is_what_its_output_layer_reads(tiny_federation, name):
    """logits = represent(x) @ W + b for the last Dense layer (W, b)."""
    model = get_model(name, tiny_federation.feature_shape, tiny_federation.num_classes)
    params = model.init(jax.random.key(1))
    x = tiny_federation.train_x[:5]
    last = params[max((k for k in params if k.startswith("Dense")), key=lambda k: int(k[6:]))]
    z = model.represent(params, x)
    # tol: the last layer as its own matmul against the model's (another blocking of the same
    # sums): 1e-5 of the logits' scale, as SUMS, and 1e-5 absolute for logits near 0.
    np.testing.assert_allclose(
        model.apply(params, x), z @ last["kernel"] + last["bias"], rtol=1e-5, atol=1e-5
    )


def test_moon_contrastive_loss_on_numbers():
    """sim(z, z_glob) = 1, sim(z, z_prev) = 0, tau = 0.5: l_con = -log(e^2 / (e^2 + 1))."""
    z, z_glob, z_prev = jnp.array([[1.0, 0.0]]), jnp.array([[2.0, 0.0]]), jnp.array([[0.0, 3.0]])
    value = float(moon.contrastive(z, z_glob, z_prev, 0.5)[0])
    assert value == pytest.approx(-np.log(np.exp(2) / (np.exp(2) + 1)), rel=ULPS)


def test_moon_round_follows_the_equations(tiny_federation, mlp):
    """Each sampled client minimises CE + mu l_con (cosines written out here), the server takes
    the count-weighted mean, and each client keeps its new local model for the next round."""
    data = tiny_federation
    config = moon.MoonConfig(**LOCAL, moon_mu=2.0, moon_temperature=0.5)
    algo = moon.make(config, data, mlp)
    state = algo.init(jax.random.key(0))
    for r in range(2):  # round 2: the previous local models differ from the global one
        key = jax.random.key(40 + r)
        new_state, _ = algo.round(state, key)

        def con_term(i, k, w_t=state.params, prev=state.previous):
            prev_k = jax.tree.map(lambda leaf: leaf[k], prev)

            def term(params, positions, mask):
                x = data.train_x[data.client_idx[k][positions]]
                unit = lambda a: a / jnp.linalg.norm(a, axis=-1, keepdims=True)
                z = unit(mlp.represent(params, x))
                pos = jnp.sum(z * unit(mlp.represent(w_t, x)), -1) / 0.5
                neg = jnp.sum(z * unit(mlp.represent(prev_k, x)), -1) / 0.5
                l_con = -jnp.log(jnp.exp(pos) / (jnp.exp(pos) + jnp.exp(neg)))
                return 2.0 * jnp.sum(l_con * mask) / jnp.sum(mask)

            return term

        runs = []
        k_sample, k_clients = jax.random.split(key)
        sampled = np.asarray(sample_clients(k_sample, data.num_clients, 4))
        keys = jax.random.split(k_clients, 4)
        for i, k in enumerate(sampled):
            loss_fn = train.client_data_loss(
                mlp.apply, data.train_x, data.train_y, data.client_idx[k]
            )
            runs.append(
                train.sgd_epochs(
                    loss_fn, optax.sgd(config.lr), state.params, keys[i], data.client_count[k],
                    data.capacity, config.batch_size, config.local_epochs,
                    batch_penalty=con_term(i, int(k)),
                )
            )  # fmt: skip
        counts = [float(data.client_count[k]) for k in sampled]
        expected = tree_sum([t.params for t in runs], [c / sum(counts) for c in counts])
        assert_trees_close(new_state.params, expected)
        for k, t in zip(sampled, runs, strict=True):
            assert_trees_close(jax.tree.map(lambda p, k=k: p[k], new_state.previous), t.params)
        state = new_state


def test_the_cohort_sorted_by_size_keeps_each_clients_key_and_faults(tiny_federation):
    """StandardClients orders a round's cohort by size: the same clients with the same keys,
    work and arrival as unsorted, smallest first."""
    import dataclasses as dc

    from jaxfl.mechanisms import faults
    from jaxfl.mechanisms.client_round import standard_clients

    data = tiny_federation
    config = faults.FaultConfig(dropout=0.3, straggler_fraction=0.5)
    sorted_clients = standard_clients(data, 6, fault_config=config, seed=0)
    plain = dc.replace(sorted_clients, by_size=False)
    key = jax.random.key(5)
    a, b = sorted_clients.sample(key, data), plain.sample(key, data)
    counts = np.asarray(data.client_count)[np.asarray(a.sampled)]
    assert (np.diff(counts) >= 0).all()

    def rows(picked):
        (client,) = picked.client_args
        return {
            int(c): (tuple(np.asarray(jax.random.key_data(k))), float(w), bool(r), int(n))
            for c, k, w, r, n in zip(picked.sampled, client.key, client.work, picked.received,
                                     client.count, strict=True)
        }  # fmt: skip

    assert rows(a) == rows(b)


def test_cohorts_are_sorted_only_when_the_clients_are_uneven(tiny_federation):
    """Sorted cohorts and per-client step counts (a while loop) pay only on uneven clients:
    below 0.9 padded efficiency (mean size / capacity) they are used, at or above it the plain
    scan over the capacity's steps is."""
    from jaxfl.mechanisms.client_round import UNEVEN_BELOW, standard_clients, uneven

    data = tiny_federation
    counts, capacity = np.asarray(data.client_count), data.client_idx.shape[1]
    assert counts.mean() < UNEVEN_BELOW * capacity and uneven(data)
    assert standard_clients(data, 6).by_size
    full = data.replace(client_count=jnp.full_like(data.client_count, capacity))
    almost = data.replace(client_count=jnp.full_like(data.client_count, int(0.95 * capacity)))
    for even in (full, almost):
        assert not uneven(even) and not standard_clients(even, 6).by_size


def test_padding_efficiency_by_hand():
    from jaxfl.mechanisms.client_round import padding_efficiency

    sizes = [1, 2, 3, 10]
    # every client padded to capacity 10 (B = 1): 16 examples / 40 slots
    assert padding_efficiency(sizes, 4, 1, 10, chunk=2) == 16 / 40
    # sorted, chunks of 2: [1, 2] costs 2 x 2, [3, 10] costs 2 x 10: 16 / 24
    assert padding_efficiency(sizes, 4, 1, 10, chunk=2, by_size=True, trials=3) == 16 / 24
    # B = 4: steps 1, 1, 1, 3; chunks cost 2 x 1 x 4 and 2 x 3 x 4 slots
    assert padding_efficiency(sizes, 4, 4, 10, chunk=2, by_size=True, trials=2) == 16 / 32
