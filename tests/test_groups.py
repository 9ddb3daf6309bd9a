"""Clients with different architectures (model groups), and FD on top of them."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfl.algorithms import dsfl, fccl, fd, feddf, fedmd, local
from jaxfl.core import aggregate, train
from jaxfl.core.algorithm import loop_clients
from jaxfl.mechanisms import faults, groups
from jaxfl.models import get_model

from .tolerance import NEAR_ZERO, SUMS, ULPS, assert_trees_close


def test_parse_and_split_groups():
    assert groups.parse_models("lenet5:40,mlp:30,logreg:30") == [
        ("lenet5", 40.0),
        ("mlp", 30.0),
        ("logreg", 30.0),
    ]
    assert groups.parse_models("mlp") == [("mlp", 1.0)]
    with pytest.raises(ValueError, match="--models 'vgg:3'"):
        groups.parse_models("vgg:3")
    assert groups.split_counts([40, 30, 30], 100) == [40, 30, 30]
    assert sum(groups.split_counts([1, 1, 1], 10)) == 10
    assert min(groups.split_counts([98, 1, 1], 10)) >= 1  # every group keeps a client
    made = groups.make_groups([("mlp", 2), ("logreg", 1)], (28, 28, 1), 10, 9, 6)
    assert [(g.name, g.start, g.size, g.per_round) for g in made] == [
        ("mlp", 0, 6, 4),
        ("logreg", 6, 3, 2),
    ]


def _mixed(data, m=4):
    return groups.make_groups(
        [("mlp", 1), ("logreg", 1)], data.feature_shape, data.num_classes, data.num_clients, m
    )


def test_mixed_groups_sample_within_their_group(tiny_federation):
    mixed = _mixed(tiny_federation)
    sampled = groups.sample_groups(jax.random.key(0), mixed, lambda k, n, m: jnp.arange(m))
    assert [list(map(int, s)) for s in sampled] == [[0, 1], [3, 4]]


FD = fd.FDConfig(clients_per_round=4, local_epochs=2, batch_size=8, lr=0.1, fd_beta=0.5)
DSFL = dsfl.DSFLConfig(
    clients_per_round=4, local_epochs=1, batch_size=8, distill_epochs=1, public_per_round=16
)


FEDDF = feddf.FedDFConfig(
    clients_per_round=4,
    local_epochs=1,
    batch_size=8,
    server_distill_steps=20,
    distill_check_every=5,
    distill_patience=10,
    distill_val_fraction=0.25,
)


FEDMD = fedmd.FedMDConfig(
    clients_per_round=4, local_epochs=1, batch_size=8, public_per_round=16, fedmd_digest_batch=8
)


FCCL = fccl.FCCLConfig(clients_per_round=4, local_epochs=1, batch_size=8, public_per_round=16)
LOCAL = local.LocalConfig(clients_per_round=4, local_epochs=1, batch_size=8)


@pytest.mark.parametrize(
    "module,config",
    [
        (fd, FD),
        (dsfl, DSFL),
        (fedmd, FEDMD),
        (local, LOCAL),  # local-only training, each group its own architecture
        # FedDF's groups: test_feddf_without_distillation_is_fedavg_per_group below; FCCL's:
        # its target test below and tests/test_domains.py (a model per domain): the full loop
        # comparisons of these two (50 s) run under -m slow
        pytest.param(feddf, FEDDF, marks=pytest.mark.slow),
        pytest.param(fccl, FCCL, marks=pytest.mark.slow),
    ],
)
def test_mixed_architectures_round_equals_loop_reference(tiny_federation, module, config):
    mixed = _mixed(tiny_federation)
    extra = {"client_optimizer": optax.sgd(0.05)} if module in (fedmd, fccl) else {}
    algo = module.make(config, tiny_federation, mixed, **extra)
    state_v = state_l = algo.init(jax.random.key(0))
    if module is not feddf:  # FedDF keeps one model per group, the others one per client
        assert [jax.tree.leaves(p)[0].shape[0] for p in state_v.client_params] == [3, 3]
    for r in range(2):  # round 1 uses round 0's global logits / soft labels
        key = jax.random.key(10 + r)
        state_v, metrics_v = algo.round(state_v, key)
        state_l, metrics_l = algo.round_loop(state_l, key)
        # Adam normalizes its steps: a gradient component near 0 moves by about +-lr whatever
        # its size, so vmap/loop float noise (~1e-7) becomes lr-sized differences in a few
        # weights. FedDF's server Adam: measured up to 1.4e-5; the clients of FedMD and FCCL
        # use SGD here (the optimizer argument) so the comparison stays at float tolerance.
        atol = 5e-5 if module is feddf else 1e-5
        assert_trees_close(state_v, state_l, atol=atol)
        assert_trees_close(metrics_v, metrics_l, atol=atol)
    assert algo.evaluate(state_v)["client_acc"].shape == (tiny_federation.num_clients,)


def test_fd_one_group_equals_the_plain_model_path(tiny_federation):
    model = get_model("mlp", tiny_federation.feature_shape, tiny_federation.num_classes)
    plain = fd.make(FD, tiny_federation, model)
    grouped = fd.make(FD, tiny_federation, groups.single_group(model, 6, 4))
    key = jax.random.key(2)
    assert_trees_close(
        plain.round(plain.init(key), key), grouped.round(grouped.init(key), key), 0, 0
    )


def test_fd_server_averages_each_label_over_the_clients_that_hold_it():
    tables = jnp.arange(3 * 3 * 3, dtype=jnp.float32).reshape(3, 3, 3)
    holds = jnp.array([[1, 1, 0], [0, 1, 0], [1, 0, 0]], bool)  # nobody holds label 2
    received = jnp.array([True, True, False])  # client 2's table was lost
    previous = jnp.full((3, 3), -7.0)
    g, has_row = fd.aggregate_tables(tables, holds, received, previous, jnp.array([0, 0, 1], bool))
    np.testing.assert_allclose(g[0], tables[0, 0])  # only client 0 (client 2 dropped)
    np.testing.assert_allclose(g[1], (tables[0, 1] + tables[1, 1]) / 2)
    np.testing.assert_allclose(g[2], previous[2])  # kept
    assert has_row.tolist() == [True, True, True]


def test_fd_table_is_the_per_label_mean_of_the_training_logits(tiny_federation):
    """With lr 0 the model never moves: T_k[l] = mean of f(x) over the client's label-l samples,
    whatever the number of epochs; the loss is CE + beta * KL to softmax(G[y]) on rows G has."""
    data = tiny_federation
    model = get_model("logreg", data.feature_shape, data.num_classes)
    params = model.init(jax.random.key(0))
    k = 3
    idx_row, count = data.client_idx[k], data.client_count[k]
    global_logits = jax.random.normal(jax.random.key(1), (4, 4))
    has_row = jnp.array([True, False, True, True])
    config = fd.FDConfig(local_epochs=2, batch_size=int(count), fd_beta=0.7)
    _, loss, table, holds = fd.local_training(
        model.apply, data, params, jax.random.key(2), idx_row, count, optax.sgd(0.0), config,
        global_logits, has_row, None, None,
    )  # fmt: skip
    idx = np.asarray(idx_row[: int(count)])
    x, y = data.train_x[idx], np.asarray(data.train_y[idx])
    logits = model.apply(params, x)
    for label in range(4):
        assert bool(holds[label]) == bool(np.any(y == label))
        if np.any(y == label):
            np.testing.assert_allclose(table[label], logits[y == label].mean(0), rtol=SUMS)
    kl = train.kl_to_target(logits, jax.nn.softmax(global_logits)[y])
    expected = jnp.mean(train.cross_entropy(logits, y) + 0.7 * jnp.where(has_row[y], kl, 0.0))
    assert float(loss) == pytest.approx(float(expected), rel=SUMS)


def test_fd_dropout_keeps_the_table_of_a_round_below_min_received(tiny_federation):
    model = get_model("logreg", tiny_federation.feature_shape, tiny_federation.num_classes)
    cfg = faults.FaultConfig(dropout=0.99, min_received=4)
    algo = fd.make(FD, tiny_federation, model, fault_config=cfg)
    state, metrics = algo.round(algo.init(jax.random.key(0)), jax.random.key(1))
    assert float(metrics["applied"]) == 0.0 and not bool(jnp.any(state.has_row))


def test_ensemble_kl_formula():
    student = jnp.array([[1.0, 0.0, -1.0]])
    teacher = jnp.array([[0.5, 0.5, 2.0]])
    tau = 2.0
    p = np.exp(np.asarray(teacher[0]) / tau) / np.exp(np.asarray(teacher[0]) / tau).sum()
    q = np.exp(np.asarray(student[0]) / tau) / np.exp(np.asarray(student[0]) / tau).sum()
    expected = np.sum(p * np.log(p / q))
    assert float(feddf.ensemble_kl(student, teacher, tau)[0]) == pytest.approx(expected, rel=SUMS)


def test_feddf_without_distillation_is_fedavg_per_group(tiny_federation):
    """Zero distillation steps: each group's model is the count-weighted mean of its clients'."""
    data = tiny_federation
    config = dataclasses.replace(FEDDF, server_distill_steps=0)
    algo = feddf.make(config, data, _mixed(data))
    state = algo.init(jax.random.key(0))
    key = jax.random.key(1)
    new_state, _ = algo.round(state, key)
    shared, client_args, (counts, received, _) = algo.parts.prepare(state, key, data)
    weights = groups.split_rows(counts * received, _mixed(data))
    for i, (update, args) in enumerate(zip(algo.parts.client_update, client_args, strict=True)):
        params = loop_clients(update, shared, *args)[0]
        assert_trees_close(new_state.group_params[i], aggregate.weighted_mean(params, weights[i]))


def test_feddf_distillation_stops_when_validation_cannot_improve():
    """A teacher equal to the student: the validation KL starts at its minimum, 0, so after
    the patience the student is returned unchanged."""
    model = get_model("logreg", (6,), 3)
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (40, 6))
    teacher = model.apply(params, x)
    config = dataclasses.replace(
        FEDDF, server_distill_steps=100, distill_check_every=5, distill_patience=10
    )
    best, steps, best_kl, start = feddf.distill_with_early_stopping(
        model.apply, params, x[:30], teacher[:30], x[30:], teacher[30:], jax.random.key(2), config
    )
    assert int(steps) == 10 and float(start) == pytest.approx(0.0, abs=NEAR_ZERO)
    assert_trees_close(best, params, 0, 0)
    # a teacher the student can learn from: the validation KL goes down and the run continues
    other = jax.random.normal(jax.random.key(3), (40, 3)) * 3
    _, steps, best_kl, start = feddf.distill_with_early_stopping(
        model.apply, params, x[:30], other[:30], x[30:], other[30:], jax.random.key(2), config
    )
    assert float(best_kl) < float(start) and int(steps) > 10


def test_fedmd_l1_digest_loss_formula():
    model = get_model("logreg", (3,), 2)
    params = model.init(jax.random.key(0))
    x = jnp.array([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0], [0.0, 0.0, 1.0]])
    consensus = jnp.array([[0.3, -0.2], [1.0, 1.0], [0.0, 0.5]])
    loss = fedmd.l1_to_consensus(model.apply, x, consensus)
    mask = jnp.array([True, True, False])  # the third slot is padding
    expected = np.mean(np.abs(np.asarray(model.apply(params, x[:2]) - consensus[:2])))
    assert float(loss(params, jnp.arange(3), mask)) == pytest.approx(expected, rel=ULPS)


def test_fedmd_consensus_is_the_mean_of_the_received_clients_logits(tiny_federation):
    data = tiny_federation
    mixed = _mixed(data)
    dropout = faults.FaultConfig(dropout=0.5)
    algo = fedmd.make(FEDMD, data, mixed, fault_config=dropout)
    state = algo.init(jax.random.key(0))
    key = next(  # a round in which some but not all uploads arrive
        jax.random.key(i)
        for i in range(50)
        if 0 < int(faults.round_faults(jax.random.key(i), 4, dropout)[0].sum()) < 4
    )
    shared, client_args, ctx = algo.parts.prepare(state, key, data)
    sampled, received, public_inputs, *_ = ctx
    logits = [
        loop_clients(update, shared, *args)
        for update, args in zip(algo.parts.client_update, client_args, strict=True)
    ]
    (_, _, consensus), _, _ = algo.parts.exchange(state, ctx, tuple(logits), data)
    direct = []
    for g, s in zip(mixed, sampled, strict=True):
        for k in np.asarray(s):
            params = jax.tree.map(
                lambda p, k=k, g=g: p[k - g.start], state.client_params[mixed.index(g)]
            )
            direct.append(g.model.apply(params, public_inputs))
    direct = np.stack(direct)[np.asarray(received)]
    np.testing.assert_allclose(consensus, direct.mean(0), rtol=SUMS, atol=NEAR_ZERO)


def test_fedmd_transfer_learning_at_init(tiny_federation):
    data = tiny_federation
    model = get_model("logreg", data.feature_shape, data.num_classes)
    none = dataclasses.replace(FEDMD, fedmd_public_epochs=0, fedmd_private_epochs=0)
    key = jax.random.key(0)
    fresh = fedmd.make(none, data, model).init(key)
    expected = groups.init_params(jax.random.split(key)[0], groups.single_group(model, 6, 4))
    assert_trees_close(fresh.client_params, expected, 0, 0)
    trained = fedmd.make(dataclasses.replace(FEDMD, fedmd_public_epochs=3), data, model).init(key)

    def public_acc(params):
        return train.accuracy(model.apply, params, data.public_x, data.public_y)

    first = lambda state: jax.tree.map(lambda p: p[0], state.client_params[0])
    assert float(public_acc(first(trained))) > float(public_acc(first(fresh)))


def test_fccl_cross_correlation_loss_on_4x3_logits():
    """Against a direct numpy computation of the equations (biased std, eps 1e-5)."""
    z = np.array([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0], [0.0, 0.3, 1.0], [2.0, 1.0, -1.0]])
    t = np.array([[0.8, 0.1, 1.5], [0.2, -0.5, 0.3], [0.1, 0.2, 0.9], [1.5, 0.7, -0.5]])

    def standardize(a):
        return (a - a.mean(0)) / np.sqrt(a.var(0) + 1e-5)

    m = standardize(z).T @ standardize(t) / 4
    lam = 0.0051
    expected = sum((1 - m[u, u]) ** 2 for u in range(3)) + lam * sum(
        (1 + m[u, v]) ** 2 for u in range(3) for v in range(3) if u != v
    )
    got = fccl.cross_correlation_loss(jnp.asarray(z), jnp.asarray(t), lam)
    assert float(got) == pytest.approx(expected, rel=SUMS)
    # perfectly correlated columns: the diagonal term vanishes
    same = fccl.cross_correlation_loss(jnp.asarray(z), jnp.asarray(z), 0.0)
    # tol: the float32 correlation of a standardized column with itself is 1 up to the rounding of
    # its sums over the batch; (1 - corr)^2 over 3 columns stays far below 1e-4 (any real
    # off-diagonal term is of order 1).
    assert float(same) == pytest.approx(0.0, abs=1e-4)


def test_fccl_non_forgetting_loss_formula(tiny_federation):
    data = tiny_federation
    model = get_model("logreg", data.feature_shape, data.num_classes)
    params, inter, intra = (model.init(jax.random.key(i)) for i in range(3))
    idx_row = data.client_idx[0]
    loss = fccl.non_forgetting_loss(model.apply, data, idx_row, inter, intra)
    positions, mask = jnp.arange(4), jnp.array([True, True, True, False])
    x, y = data.train_x[idx_row[:3]], data.train_y[idx_row[:3]]
    logits = model.apply(params, x)
    expected = jnp.mean(
        train.cross_entropy(logits, y)
        + train.kl_to_target(logits, jax.nn.softmax(model.apply(inter, x)))
        + train.kl_to_target(logits, jax.nn.softmax(model.apply(intra, x)))
    )
    assert float(loss(params, positions, mask)) == pytest.approx(float(expected), rel=SUMS)


def test_fccl_target_is_the_mean_of_the_received_logits_and_intra_teachers_stay(tiny_federation):
    data = tiny_federation
    algo = fccl.make(FCCL, data, _mixed(data))
    state = algo.init(jax.random.key(0))
    shared, client_args, ctx = algo.parts.prepare(state, jax.random.key(1), data)
    logits = tuple(
        loop_clients(update, shared, *args)
        for update, args in zip(algo.parts.client_update, client_args, strict=True)
    )
    (_, _, target), _, _ = algo.parts.exchange(state, ctx, logits, data)
    np.testing.assert_allclose(target, jnp.concatenate(logits).mean(0), rtol=ULPS)
    new_state, metrics = algo.round(state, jax.random.key(1))
    assert_trees_close(new_state.intra_params, state.intra_params, 0, 0)  # frozen teachers
    assert float(metrics["collab_loss"]) > 0
