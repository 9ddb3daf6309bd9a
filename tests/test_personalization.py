"""Motley's personalization baselines: loop references, the papers' update rules, evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfl.algorithms import ALGORITHMS, PERSONALIZATION, ditto, fedavg, finetune, hypcluster, mrmtl
from jaxfl.algorithms.perfedavg import meta_loss
from jaxfl.core import metrics, train
from jaxfl.core.algorithm import sample_clients
from jaxfl.data import FederationSpec, build_federation
from jaxfl.data.federation import Federation, hold_out, pack
from jaxfl.mechanisms import groups, personalization
from jaxfl.models import get_model
from tests.conftest import tiny_image_dataset

from .tolerance import NEAR_ZERO, SUMS, ULPS, assert_trees_close


@pytest.fixture(scope="module")
def val_federation():
    """6 clients of unequal sizes with 20% of each client's data held out for validation."""
    spec = FederationSpec(
        num_clients=6,
        partition="quantity",
        alpha=2.0,
        public_size=40,
        client_val_fraction=0.2,
        seed=1,
    )
    return build_federation(tiny_image_dataset(), spec)[0]


def _config(name, **extra):
    return ALGORITHMS[name].SPEC.config(
        clients_per_round=4, local_epochs=2, batch_size=8, lr=0.1, **extra
    )


@pytest.mark.parametrize("name", PERSONALIZATION)
def test_vmapped_round_equals_loop_reference(val_federation, name):
    model = get_model("mlp", val_federation.feature_shape, val_federation.num_classes)
    algo = ALGORITHMS[name].make(_config(name), val_federation, model)
    state_v = state_l = algo.init(jax.random.key(0))
    for r in range(2):
        key = jax.random.key(10 + r)
        state_v, metrics_v = algo.round(state_v, key)
        state_l, metrics_l = algo.round_loop(state_l, key)
        assert_trees_close(state_v, state_l)
        assert_trees_close(metrics_v, metrics_l)


# chunking is map_clients' (tests/test_rounds.py, tests/test_scale.py); here through each
# algorithm's round and evaluation: Ditto (personal models, the chunk-of-1 loop) and
# fine-tuning's evaluation by default, the rest under -m slow (34 s)
@pytest.mark.parametrize(
    "name",
    [n if n in ("ditto", "finetune") else pytest.param(n, marks=pytest.mark.slow)
     for n in PERSONALIZATION],
)  # fmt: skip
def test_client_chunks_give_the_same_round_and_evaluation(val_federation, name):
    """Chunks of 3 (padded last chunk) and, for Ditto, of 1 (the compiled loop, the same code
    path for every algorithm) against one vmap."""
    model = get_model("mlp", val_federation.feature_shape, val_federation.num_classes)
    whole = ALGORITHMS[name].make(_config(name), val_federation, model)
    state = whole.init(jax.random.key(0))
    key = jax.random.key(3)
    expected = whole.round(state, key)
    expected_eval = whole.evaluate(expected[0])
    for chunk in (1, 3) if name == "ditto" else (3,):
        chunked = ALGORITHMS[name].make(_config(name, client_chunk=chunk), val_federation, model)
        got = chunked.round(state, key)
        assert_trees_close(expected, got)
        assert_trees_close(expected_eval, chunked.evaluate(got[0]))


def _quadratic(targets):
    """f(w; positions) = mean over positions of 0.5 ||w - targets[pos]||^2 (masked)."""

    def loss(params, positions, mask):
        sq = 0.5 * jnp.sum(jnp.square(params["w"][None] - targets[positions]), -1)
        return jnp.sum(jnp.where(mask, sq, 0.0)) / jnp.maximum(jnp.sum(mask), 1)

    return loss


def test_ditto_and_mrmtl_personal_update_follow_the_formula():
    """v <- v - eta (grad f_k(v) + lambda (v - w)) on f_k(v) = 0.5 ||v - a||^2, full batches."""
    a = jnp.array([[1.0, -2.0, 0.5]])
    w = {"w": jnp.array([0.3, 0.3, -1.0])}
    v0 = {"w": jnp.array([-1.0, 2.0, 0.0])}
    eta, lam, epochs = 0.1, 0.7, 4
    got, *_ = ditto.personal_update(
        _quadratic(a), optax.sgd(eta), v0, w, lam, jax.random.key(0), 1, 1, 1, epochs
    )
    v = np.asarray(v0["w"], np.float64)
    for _ in range(epochs):
        v = v - eta * ((v - np.asarray(a[0])) + lam * (v - np.asarray(w["w"])))
    np.testing.assert_allclose(np.asarray(got["w"]), v, rtol=SUMS)
    # lambda = 0 is plain local training: v -> a geometrically
    free, *_ = ditto.personal_update(
        _quadratic(a), optax.sgd(eta), v0, w, 0.0, jax.random.key(0), 1, 1, 1, epochs
    )
    expected = np.asarray(a[0]) + (1 - eta) ** epochs * (np.asarray(v0["w"]) - np.asarray(a[0]))
    np.testing.assert_allclose(np.asarray(free["w"]), expected, rtol=SUMS)


def test_mrmtl_server_keeps_the_count_weighted_mean_of_personal_models(val_federation):
    model = get_model("logreg", val_federation.feature_shape, val_federation.num_classes)
    config = mrmtl.MRMTLConfig(local_epochs=1, batch_size=8, lr=0.1, mrmtl_lambda=0.5)
    algo = mrmtl.make(config, val_federation, model)  # all clients every round
    state, _ = algo.round(algo.init(jax.random.key(0)), jax.random.key(1))
    counts = np.asarray(val_federation.client_count, np.float64)
    for mean, personal_leaf in zip(
        jax.tree.leaves(state.mean_params), jax.tree.leaves(state.personal_params), strict=True
    ):
        expected = np.tensordot(counts / counts.sum(), np.asarray(personal_leaf), axes=1)
        np.testing.assert_allclose(np.asarray(mean), expected, rtol=SUMS, atol=NEAR_ZERO)


def test_ditto_round_anchors_personal_models_to_the_round_start_global_model(val_federation):
    """In the round, v_k follows personal_update with anchor w_t (not w_t+1), from v_k = w_0."""
    data = val_federation
    model = get_model("logreg", data.feature_shape, data.num_classes)
    config = ditto.DittoConfig(
        clients_per_round=4, local_epochs=1, batch_size=8, lr=0.05, ditto_lambda=2.0
    )
    algo = ditto.make(config, data, model)
    state0 = algo.init(jax.random.key(0))
    key = jax.random.key(1)
    state, _ = algo.round(state0, key)
    k_sample, k_clients = jax.random.split(key)
    sampled = np.asarray(sample_clients(k_sample, data.num_clients, 4))
    for i, k in enumerate(sampled):
        k_personal = jax.random.split(jax.random.split(k_clients, 4)[i])[1]
        base = train.client_data_loss(model.apply, data.train_x, data.train_y, data.client_idx[k])
        expected, *_ = ditto.personal_update(
            base, optax.sgd(0.05), state0.params, state0.params, 2.0, k_personal,
            data.client_count[k], data.capacity, 8, 1,
        )  # fmt: skip
        assert_trees_close(jax.tree.map(lambda x, k=k: x[k], state.personal_params), expected)
    untouched = sorted(set(range(data.num_clients)) - set(sampled.tolist()))
    for k in untouched:  # clients not sampled keep v_k = w_0
        assert_trees_close(jax.tree.map(lambda x, k=k: x[k], state.personal_params), state0.params)


def test_perfedavg_meta_gradient_is_first_order_maml():
    """grad = grad f(w - alpha grad f(w; D); D'), D the first half of the batch, D' the second."""
    targets = jnp.array([[1.0, 0.0], [3.0, -1.0], [-2.0, 2.0], [0.0, 4.0]])
    base = _quadratic(targets)
    params = {"w": jnp.array([0.5, -0.5])}
    alpha = 0.3
    positions, mask = jnp.arange(4), jnp.ones(4, bool)
    value, grads = jax.value_and_grad(meta_loss(base, alpha))(params, positions, mask)
    w = np.asarray(params["w"])
    inner = w - alpha * (w - np.asarray(targets[:2]).mean(0))  # grad of f on D: w - mean(D)
    np.testing.assert_allclose(np.asarray(grads["w"]), inner - np.asarray(targets[2:]).mean(0))
    expected_value = np.mean(0.5 * np.sum((inner - np.asarray(targets[2:])) ** 2, -1))
    np.testing.assert_allclose(float(value), expected_value, rtol=ULPS)


def two_populations(num_clients=10, n=60, t=40, d=10, num_classes=3, seed=0) -> Federation:
    """Clients alternate between two populations with the same inputs and permuted labels:
    population B's label is (A's label + 1) mod L, so no single model can serve both."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, num_classes))
    xs, ys, txs, tys, train_idx, test_idx = [], [], [], [], [], []
    for k in range(num_clients):
        x = rng.normal(size=(n + t, d)).astype(np.float32)
        y = ((np.argmax(x @ w, 1) + k % 2) % num_classes).astype(np.int32)
        xs.append(x[:n])
        ys.append(y[:n])
        txs.append(x[n:])
        tys.append(y[n:])
        train_idx.append(np.arange(n) + k * n)
        test_idx.append(np.arange(t) + k * t)
    (ci, cc), (ti, tc) = pack(train_idx), pack(test_idx)
    return Federation(
        train_x=jnp.asarray(np.concatenate(xs)),
        train_y=jnp.asarray(np.concatenate(ys)),
        client_idx=jnp.asarray(ci),
        client_count=jnp.asarray(cc),
        test_x=jnp.asarray(np.concatenate(txs)),
        test_y=jnp.asarray(np.concatenate(tys)),
        client_test_idx=jnp.asarray(ti),
        client_test_count=jnp.asarray(tc),
        client_val_idx=jnp.zeros((num_clients, 1), jnp.int32),
        client_val_count=jnp.zeros((num_clients,), jnp.int32),
        public_x=jnp.zeros((1, d), jnp.float32),
        public_y=jnp.zeros((1,), jnp.int32),
        num_classes=num_classes,
    )


@pytest.mark.parametrize("warmup", [0.0, 0.2])
def test_hypcluster_separates_two_populations_and_beats_fedavg(warmup):
    data = two_populations()
    model = get_model("logreg", (10,), 3)
    rounds = 10
    config = hypcluster.HypClusterConfig(
        local_epochs=1, batch_size=20, lr=0.5, num_clusters=2, cluster_warmup=warmup, rounds=rounds
    )
    algo = hypcluster.make(config, data, model)
    base = fedavg.make(fedavg.FedAvgConfig(local_epochs=1, batch_size=20, lr=0.5), data, model)
    state, fed_state = algo.init(jax.random.key(0)), base.init(jax.random.key(0))
    for r in range(rounds):
        state, _ = algo.round(state, jax.random.key(100 + r))
        fed_state, _ = base.round(fed_state, jax.random.key(100 + r))
    choice = np.asarray(hypcluster.assign_clusters(model.apply, state.cluster_params, data))
    population = np.arange(10) % 2
    # every client of a population in the same cluster, the two populations in different ones
    assert len(set(choice[population == 0])) == 1 and len(set(choice[population == 1])) == 1
    assert choice[0] != choice[1]
    cluster_acc = float(np.mean(algo.evaluate(state)["client_acc"]))
    fedavg_acc = float(np.mean(base.evaluate(fed_state)["client_acc"]))
    # measured: HypCluster 0.91-0.93, FedAvg 0.47-0.48 (one model cannot fit both labelings)
    assert cluster_acc > 0.85 and cluster_acc > fedavg_acc + 0.3


def test_hypcluster_aggregates_each_cluster_over_its_own_clients():
    clusters = {"w": jnp.array([[0.0, 0.0], [10.0, 10.0], [5.0, 5.0]])}
    deltas = {"w": jnp.array([[1.0, 1.0], [3.0, 3.0], [-2.0, 4.0], [100.0, 100.0]])}
    choice = jnp.array([0, 0, 1, 1])
    weights = jnp.array([1.0, 3.0, 2.0, 0.0])  # the last upload was lost
    got = hypcluster.cluster_update(clusters, deltas, choice, weights)["w"]
    np.testing.assert_allclose(got[0], [2.5, 2.5])  # (1 * 1 + 3 * 3) / 4
    np.testing.assert_allclose(got[1], [8.0, 14.0])  # only the received client of cluster 1
    np.testing.assert_allclose(got[2], [5.0, 5.0])  # nobody chose cluster 2: unchanged


def test_finetune_chooses_epochs_on_validation_data_only(val_federation):
    """Replacing every test example and label changes nothing about the chosen E."""
    model = get_model("mlp", val_federation.feature_shape, val_federation.num_classes)
    config = finetune.FinetuneConfig(
        clients_per_round=4, local_epochs=1, batch_size=8, lr=0.1, finetune_epochs="0,1,3"
    )
    algo = finetune.make(config, val_federation, model)
    state, _ = algo.round(algo.init(jax.random.key(0)), jax.random.key(1))
    rng = np.random.default_rng(0)
    scrambled = val_federation.replace(
        test_x=jnp.asarray(rng.normal(size=val_federation.test_x.shape), jnp.float32),
        test_y=jnp.asarray(rng.permutation(np.asarray(val_federation.test_y))),
    )
    a = algo.evaluate(state)
    b = finetune.make(config, scrambled, model).evaluate(state)
    for e in (0, 1, 3):
        assert a[f"finetune_val_acc_E{e}"] == b[f"finetune_val_acc_E{e}"]
    assert a["finetune_epochs"] == b["finetune_epochs"]
    assert not np.array_equal(np.asarray(a["client_acc"]), np.asarray(b["client_acc"]))
    # the choice is the argmax of the validation means (ties: the smaller E)
    means = [float(a[f"finetune_val_acc_E{e}"]) for e in (0, 1, 3)]
    assert int(a["finetune_epochs"]) == (0, 1, 3)[int(np.argmax(means))]
    # E = 0 is the global model itself
    np.testing.assert_allclose(
        a["global_client_acc"],
        metrics.per_client_accuracy(model.apply, state.params, val_federation, personal=False),
    )


def test_finetune_curves_equal_a_per_client_loop(val_federation):
    model = get_model("mlp", val_federation.feature_shape, val_federation.num_classes)
    params = model.init(jax.random.key(0))
    key = jax.random.key(4)
    val_acc, test_acc = personalization.finetune_curves(
        model.apply, params, val_federation, key, epochs=2, lr=0.1, batch_size=8, layers="last"
    )
    opt = personalization.finetune_optimizer(params, 0.1, "last")
    one = jax.jit(personalization.finetune_client, static_argnums=(0, 5, 6, 7))
    for k in range(val_federation.num_clients):
        v, t = one(model.apply, params, val_federation, key, k, opt, 2, 8)
        # tol: an accuracy is a count over at most 100 examples in float32; 1e-6 is far below one
        # example (0.01), so this asks for the same predictions.
        np.testing.assert_allclose(val_acc[k], v, atol=1e-6)
        np.testing.assert_allclose(test_acc[k], t, atol=1e-6)  # tol: as above


def test_finetune_last_layer_only_freezes_the_rest():
    model = get_model("mlp", (8,), 3)
    params = model.init(jax.random.key(0))
    opt = personalization.finetune_optimizer(params, 0.5, "last")
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = opt.update(grads, opt.init(params), params)
    new = optax.apply_updates(params, updates)
    for layer in params:
        changed = not np.allclose(new[layer]["kernel"], params[layer]["kernel"])
        assert changed == (layer == "Dense_2"), layer


def test_validation_split_is_held_out_of_each_clients_training_data():
    ds = tiny_image_dataset()
    spec = dict(num_clients=6, partition="quantity", alpha=2.0, public_size=40, seed=1)
    plain, _ = build_federation(ds, FederationSpec(**spec))
    held, _ = build_federation(ds, FederationSpec(**spec, client_val_fraction=0.25))
    for k in range(6):
        full = set(np.asarray(plain.client_idx[k, : int(plain.client_count[k])]))
        train = set(np.asarray(held.client_idx[k, : int(held.client_count[k])]))
        val = set(np.asarray(held.client_val_idx[k, : int(held.client_val_count[k])]))
        assert train | val == full and not train & val and train
        assert len(val) == max(1, round(0.25 * len(full)))
    assert int(jnp.sum(plain.client_val_count)) == 0
    # the test splits do not depend on the validation fraction
    np.testing.assert_array_equal(plain.client_test_idx, held.client_test_idx)
    train, val = hold_out([np.array([7])], 0.5, seed=0)
    assert list(train[0]) == [7] and len(val[0]) == 0  # a one-example client keeps its example


def test_personalization_summary_formulas():
    acc = np.array([0.9, 0.5, 0.7, 0.2])
    glob = np.array([0.8, 0.6, 0.7, 0.1])
    local = np.array([0.95, 0.4, 0.7, 0.3])
    s = metrics.personalization_summary(acc, glob, local)
    assert s["frac_better_than_global"] == 0.5  # clients 0 and 3 (ties do not count)
    assert s["frac_worse_than_local"] == 0.5  # clients 0 and 3
    assert s["frac_better_than_local"] == 0.25  # client 1
    assert s["global_client_acc_mean"] == pytest.approx(0.55)


def test_evaluation_paths_equal_a_per_client_python_loop(val_federation):
    """Per-FedAvg's adaptation, HypCluster's assignment and the grouped personal metrics, each
    against a Python loop over clients calling the single-client computation directly."""
    data = val_federation
    model = get_model("mlp", data.feature_shape, data.num_classes)
    params = model.init(jax.random.key(0))
    got = personalization.adapt_and_score(model.apply, params, data, steps=2, lr=0.1)
    for k in range(data.num_clients):
        idx, cnt = data.client_idx[k], data.client_count[k]
        p = params
        for _ in range(2):
            g = jax.grad(
                lambda q, idx=idx, cnt=cnt: train.client_loss(
                    model.apply, q, data.train_x, data.train_y, idx, cnt
                )
            )(p)
            p = jax.tree.map(lambda w, d: w - 0.1 * d, p, g)
        acc = train.client_accuracy(
            model.apply, p, data.test_x, data.test_y, data.client_test_idx[k],
            data.client_test_count[k],
        )  # fmt: skip
        # tol: as above: the same predictions, counted in float32.
        assert float(got[k]) == pytest.approx(float(acc), abs=1e-6)

    clusters = jax.vmap(model.init)(jax.random.split(jax.random.key(1), 3))
    choice = hypcluster.assign_clusters(model.apply, clusters, data)
    for k in range(data.num_clients):
        losses = [
            float(
                train.client_loss(
                    model.apply,
                    jax.tree.map(lambda h, j=j: h[j], clusters),
                    data.train_x,
                    data.train_y,
                    data.client_idx[k],
                    data.client_count[k],
                )  # fmt: skip
            )
            for j in range(3)
        ]
        assert int(choice[k]) == int(np.argmin(losses))

    mixed = groups.make_groups(
        [("mlp", 1), ("logreg", 1)], data.feature_shape, data.num_classes, data.num_clients, 4
    )
    client_params = groups.init_params(jax.random.key(2), mixed)
    got = groups.personal_metrics(mixed, client_params, data)
    rows = jax.random.permutation(jax.random.key(0), len(data.test_y))[
        : groups.OTHERS_TEST_EXAMPLES
    ]
    own, others = [], []
    for g, params_g in zip(mixed, client_params, strict=True):
        for i in range(g.size):
            p = jax.tree.map(lambda x, i=i: x[i], params_g)
            k = g.start + i
            own.append(
                train.client_accuracy(
                    g.model.apply,
                    p,
                    data.test_x,
                    data.test_y,
                    data.client_test_idx[k],
                    data.client_test_count[k],
                )  # fmt: skip
            )
            others.append(train.accuracy(g.model.apply, p, data.test_x[rows], data.test_y[rows]))
    # tol: as above: the same predictions, counted in float32.
    np.testing.assert_allclose(got["client_acc"], own, atol=1e-6)
    # tol: as above: a mean of float32 accuracies
    assert float(got["others_acc_mean"]) == pytest.approx(float(np.mean(others)), abs=1e-6)


def test_local_only_round_is_local_sgd_from_each_clients_own_model(val_federation):
    """v_k <- LocalSGD_k(v_k) for the sampled clients (recomputed per client); the rest keep
    v_k; nothing else is involved."""
    data = val_federation
    model = get_model("logreg", data.feature_shape, data.num_classes)
    config = ALGORITHMS["local"].SPEC.config(
        clients_per_round=3, local_epochs=2, batch_size=8, lr=0.2
    )
    algo = ALGORITHMS["local"].make(config, data, model)
    state0 = algo.init(jax.random.key(0))
    key = jax.random.key(5)
    state, _ = algo.round(state0, key)
    (before,), (after,) = state0.client_params, state.client_params  # one model group
    k_sample, k_clients = jax.random.split(key)
    sampled = np.asarray(sample_clients(k_sample, data.num_clients, 3))
    for i, k in enumerate(sampled):
        expected, *_ = train.local_sgd(
            model.apply, data, jax.tree.map(lambda x, k=k: x[k], before),
            jax.random.split(k_clients, 3)[i], data.client_idx[k], data.client_count[k],
            optax.sgd(0.2), 8, 2,
        )  # fmt: skip
        assert_trees_close(jax.tree.map(lambda x, k=k: x[k], after), expected)
    for k in sorted(set(range(data.num_clients)) - set(sampled.tolist())):
        assert_trees_close(
            jax.tree.map(lambda x, k=k: x[k], after),
            jax.tree.map(lambda x, k=k: x[k], before),
            0,
            0,
        )
