"""Incentives: the data-sharing game against closed forms, accuracy delivery, IncFL and IPR."""

import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import brentq

from jaxfl.algorithms import fedavg, incfl
from jaxfl.core import metrics
from jaxfl.core.algorithm import loop_clients, sample_clients
from jaxfl.models import get_model
from reproductions import incentives
from tests.conftest import MNIST_DIR, mnist_available, tiny_image_dataset

from .tolerance import SUMS, ULPS, assert_trees_close

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def _sqrt_accuracy(top=0.9, b=2.0):
    """a(m) = top - b / sqrt(m): concave and increasing, so m^o = (b / (2c))^(2/3)."""
    return lambda m: top - b / np.sqrt(np.maximum(np.asarray(m, dtype=np.float64), 1e-9))


def test_local_optimum_matches_the_closed_form():
    a = _sqrt_accuracy()
    for c in (1e-4, 3e-4, 1e-3):
        expected = (2.0 / (2 * c)) ** (2 / 3)
        # tol: the optimum is a golden-section search on a flat maximum of a
        # piecewise-interpolated curve; 1e-3 relative is its precision on this curve.
        assert incentives.local_optimum(a, c, 1e7) == pytest.approx(expected, rel=1e-3)


def test_two_agents_free_ride_under_naive_federation_and_not_under_shaping():
    a = _sqrt_accuracy()
    costs = [1e-4, 4e-4]
    eps = 1e-5
    m_o = np.array([(2.0 / (2 * c)) ** (2 / 3) for c in costs])  # 1000.0 and 396.9
    local = incentives.equilibrium(a, costs, "local", eps=eps)
    naive = incentives.equilibrium(a, costs, "naive", eps=eps)
    shaped = incentives.equilibrium(a, costs, "shaped", eps=eps)
    # tol: equilibrium's best-response sweeps stop once no contribution moves by more than tol =
    # 1e-3 of the largest; the same bound here.
    np.testing.assert_allclose(local.contributions, m_o, rtol=1e-3)
    # tol: 1e-3 as above. naive: the cheap agent collects its own optimum, the other contributes
    # nothing
    np.testing.assert_allclose(naive.contributions, [m_o[0], 0.0], rtol=1e-3, atol=1e-6)
    assert naive.utility[1] == pytest.approx(a(m_o[0]), rel=ULPS)  # the free rider's payoff
    # shaped: the fixed point where both agents' lines meet a(M), solved independently
    costs_arr = np.array(costs)

    def m_of_total(total):
        return m_o + (a(total) - a(m_o)) / (costs_arr + eps)

    total = brentq(lambda t: m_of_total(t).sum() - t, m_o.sum(), 1e6)
    # tol: the fixed point of best responses stops at tol = 1e-3 of the largest contribution, and
    # each best response is a numerical argmax; 5e-3 relative bounds both.
    np.testing.assert_allclose(shaped.contributions, m_of_total(total), rtol=5e-3)
    assert np.all(shaped.contributions > m_o)  # nobody free-rides; everyone exceeds its optimum
    assert shaped.total > 1.5 * naive.total
    # individual rationality: shaping never leaves an agent worse off than training alone
    assert np.all(shaped.utility >= local.utility - 1e-6)
    # tol: accuracy at the total through the interpolated curve, whose total carries the 5e-3
    # above times a slope below 0.02.
    np.testing.assert_allclose(shaped.accuracy, a(total), atol=1e-4)


def test_bound_accuracy_formula():
    a = incentives.bound_accuracy(a_opt=0.95, k=10.0)
    m = 5000.0
    expected = 0.95 - (np.sqrt(2 * 10 * (2 + np.log(m / 10))) + 4) / np.sqrt(m)
    assert a(np.array([m]))[0] == pytest.approx(expected)
    assert a(np.array([5.0]))[0] == 0.0  # no guarantee below k points
    values = a(np.geomspace(20, 1e6, 50))  # 0 while the bound is vacuous, then increasing
    assert np.all(np.diff(values) >= 0) and np.all(np.diff(values[values > 0]) > 0)


def test_interpolated_accuracy_is_monotone_and_exact_at_the_measurements():
    a = incentives.interpolated_accuracy([100, 1000, 10000], [0.6, 0.8, 0.79])
    np.testing.assert_allclose(a(np.array([100.0, 1000.0, 10000.0])), [0.6, 0.8, 0.8])
    assert a(np.array([0.0]))[0] == 0.0 and a(np.array([50.0]))[0] == pytest.approx(0.3)


def test_degraded_predictions_deliver_the_target_accuracy():
    rng = np.random.default_rng(0)
    n, classes = 20000, 10
    y = rng.integers(classes, size=n)
    preds = np.where(rng.random(n) < 0.92, y, (y + 1) % classes)  # a 92% model
    model_acc = float(np.mean(preds == y))
    for i, target in enumerate((0.8, 0.5, 0.2)):
        q = incentives.mixing_probability(model_acc, target, classes)
        served = incentives.degrade(jnp.asarray(preds), jax.random.key(i), q, classes)
        # tol: binomial std at n = 20000 is at most 0.0035: 0.012 is more than 3 std
        assert float(np.mean(np.asarray(served) == y)) == pytest.approx(target, abs=0.012)
    assert incentives.mixing_probability(0.9, 0.95, classes) == 0.0  # cannot serve better


@pytest.mark.skipif(not mnist_available(), reason="needs MNIST: set JAXFL_MNIST")
def test_degrade_on_mnist_hits_the_targets(tmp_path):
    import incentives as script

    out = tmp_path / "deg"
    argv = ["degrade", "--data-dir", str(MNIST_DIR), "--targets", "0.8,0.5", "--out", str(out)]
    assert script.main(argv) == 0
    record = json.loads((out / "degrade.json").read_text())
    assert record["model_accuracy"] > 0.85  # logreg, one epoch
    for row in record["rows"]:
        # tol: a delivered accuracy over 10,000 test examples: 3 binomial std <= 0.015
        assert row["delivered"] == pytest.approx(row["target"], abs=0.015)


def test_measured_accuracy_curve_grows_with_data():
    ds = tiny_image_dataset(n_train=400, n_test=200)
    acc = incentives.measure_accuracy_curve(ds, [8, 400], model_name="logreg", epochs=3)
    assert acc.shape == (2,) and acc[1] > acc[0]


def test_incfl_weights_peak_at_zero_gap_and_shrink_both_ways():
    gaps = jnp.array([-3.0, -1.0, -0.2, 0.0, 0.2, 1.0, 3.0])
    w = np.asarray(incfl.incfl_weights(gaps, jnp.ones(7), tau=0.5, floor=0.05))
    assert np.argmax(w) == 3 and w[3] == pytest.approx(1.0)
    np.testing.assert_allclose(w, w[::-1], rtol=SUMS)  # symmetric in g
    assert np.all(np.diff(w[:4]) > 0) and np.all(np.diff(w[3:]) < 0)
    assert w[0] == pytest.approx(0.05, abs=0.01)  # tol: far from the margin: the floor
    counts = jnp.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(  # floor 1 is FedAvg's count weighting
        incfl.incfl_weights(jnp.array([-5.0, 0.0, 5.0]), counts, 0.5, 1.0), counts
    )


def test_incfl_round_uses_the_gap_weights_and_matches_the_loop(tiny_federation):
    data = tiny_federation
    model = get_model("mlp", data.feature_shape, data.num_classes)
    local_losses = jnp.linspace(0.5, 2.5, data.num_clients)
    config = incfl.IncFLConfig(
        clients_per_round=4, local_epochs=1, batch_size=8, lr=0.1, incfl_rule="bump"
    )
    algo = incfl.make(config, data, model, local_losses=local_losses)
    state = algo.init(jax.random.key(0))
    key = jax.random.key(3)
    new_v, metrics_v = algo.round(state, key)
    new_l, metrics_l = algo.round_loop(state, key)
    pairs = zip(
        jax.tree.leaves((new_v, metrics_v)), jax.tree.leaves((new_l, metrics_l)), strict=True
    )
    for x, y in pairs:
        assert_trees_close(np.asarray(x), np.asarray(y))
    # w_t+1 = w_t + sum_k p_k delta_k / sum_k p_k with p_k from g_k = F_k(w_t) - F_k(local)
    shared, client_args, ctx = algo.parts.prepare(state, key, data)
    deltas, _, global_losses = loop_clients(algo.parts.client_update, shared, *client_args)
    counts, _, local_sampled, *_ = ctx
    p = np.asarray(incfl.incfl_weights(global_losses - local_sampled, counts, 0.5, 0.05))
    for w0, w1, d in zip(
        jax.tree.leaves(state.params),
        jax.tree.leaves(new_v.params),
        jax.tree.leaves(deltas),
        strict=True,
    ):
        expected = np.asarray(w0) + np.tensordot(p / p.sum(), np.asarray(d), axes=1)
        assert_trees_close(np.asarray(w1), expected)


def test_maxfl_weights_and_step_by_hand_on_three_clients():
    """q_k = s(1 - s), s = sigmoid(c x_k); step sum q_k delta_k / (sum q_k + eps), by hand."""
    x = jnp.array([-2.0, 0.0, 1.0])
    # sigmoid(-2) = 0.11920292, sigmoid(1) = 0.73105858
    hand_q = np.array([0.11920292 * 0.88079708, 0.25, 0.73105858 * 0.26894142])
    np.testing.assert_allclose(incfl.maxfl_weights(x, 1.0), hand_q, rtol=ULPS)
    np.testing.assert_allclose(  # c sharpens: sigmoid(2 * 1) = 0.88079708
        incfl.maxfl_weights(x, 2.0)[2], 0.88079708 * 0.11920292, rtol=ULPS
    )
    deltas = {"w": jnp.array([[1.0, 0.0], [2.0, 1.0], [-4.0, 3.0]])}
    direction = incfl.maxfl_direction(deltas, jnp.asarray(hand_q), eps=1e-3)
    hand = (hand_q[:, None] * np.array([[1.0, 0.0], [2.0, 1.0], [-4.0, 3.0]])).sum(0)
    np.testing.assert_allclose(direction["w"], hand / (hand_q.sum() + 1e-3), rtol=ULPS)


def test_maxfl_round_on_three_clients_follows_the_rule_and_the_loop(tiny_federation):
    """One MaxFL round with eta_g = 0.5, 3 clients of the fixture, one dropped upload: x_k from a
    hand-written loss of the global model, q_k and the step by the formula, against the round."""
    from jaxfl.mechanisms import faults

    data = tiny_federation
    model = get_model("logreg", data.feature_shape, data.num_classes)
    local_losses = jnp.array([2.0, 2.4, 2.2, 2.6, 2.1, 2.3])
    config = incfl.IncFLConfig(
        clients_per_round=3, local_epochs=1, batch_size=8, lr=0.1, server_lr=0.5, incfl_c=3.0
    )
    drop = faults.FaultConfig(dropout=0.34)
    algo = incfl.make(config, data, model, local_losses=local_losses, fault_config=drop)
    state = algo.init(jax.random.key(0))
    for seed in range(20):  # a round where exactly one of the three uploads is dropped
        key = jax.random.key(seed)
        received = np.asarray(algo.parts.prepare(state, key, data)[2][1])
        if received.sum() == 2:
            break
    new_v, metrics_v = algo.round(state, key)
    new_l, _ = algo.round_loop(state, key)
    for a, b in zip(jax.tree.leaves(new_v), jax.tree.leaves(new_l), strict=True):
        assert_trees_close(np.asarray(a), np.asarray(b))
    shared, client_args, _ = algo.parts.prepare(state, key, data)
    deltas, _, _ = loop_clients(algo.parts.client_update, shared, *client_args)
    _, sampled_val_idx, sampled_val_n, local_losses = (
        np.asarray(a) if i else a for i, a in enumerate(client_args)
    )
    w, b = (np.asarray(state.params["Dense_0"][k]) for k in ("kernel", "bias"))
    x = []
    for row, n, rho in zip(sampled_val_idx, sampled_val_n, local_losses, strict=True):
        feats = np.asarray(data.train_x)[row[:n]].reshape(n, -1)
        logits = feats @ w + b
        logp = logits - logits.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        x.append(-logp[np.arange(n), np.asarray(data.train_y)[row[:n]]].mean() - rho)
    s = 1 / (1 + np.exp(-3.0 * np.array(x)))
    q = s * (1 - s) * received
    for w0, w1, d in zip(
        jax.tree.leaves(state.params),
        jax.tree.leaves(new_v.params),
        jax.tree.leaves(deltas),
        strict=True,
    ):
        expected = np.asarray(w0) + 0.5 * np.tensordot(q, np.asarray(d), 1) / (q.sum() + 1e-3)
        assert_trees_close(np.asarray(w1), expected)
    assert float(metrics_v["received"]) == 2


def test_unseen_clients_never_train(tiny_federation):
    """Clients are drawn from the first C - U only, and the last U still get evaluated."""
    data = tiny_federation
    model = get_model("logreg", data.feature_shape, data.num_classes)
    drawn_from = []

    def recording_select(key, num_clients, m):
        drawn_from.append(num_clients)
        return sample_clients(key, num_clients, m)

    config = fedavg.FedAvgConfig(clients_per_round=2, batch_size=8, unseen_clients=2)
    for module, extra in ((fedavg, {}), (incfl, {"local_losses": jnp.ones(data.num_clients)})):
        own = {f.name for f in dataclasses.fields(incfl.IncFLConfig)}  # IncFL keeps no clock
        given = {k: v for k, v in vars(config).items() if k in own}
        cfg = config if module is fedavg else incfl.IncFLConfig(**given)
        algo = module.make(cfg, data, model, select_clients=recording_select, **extra)
        state, _ = algo.round(algo.init(jax.random.key(0)), jax.random.key(1))
        assert algo.evaluate(state)["client_acc"].shape == (data.num_clients,)
    assert drawn_from == [data.num_clients - 2] * 2
    with pytest.raises(ValueError, match="--unseen-clients 5 is not allowed"):
        fedavg.make(fedavg.FedAvgConfig(clients_per_round=2, unseen_clients=5), data, model)


def test_ipr_on_a_constructed_case():
    served = np.array([0.9, 0.6, 0.7, 0.5, 0.8])
    alone = np.array([0.8, 0.7, 0.7, 0.4, 0.9])
    s = metrics.personalization_summary(served, None, alone, seen_clients=3)
    assert s["ipr"] == pytest.approx(2 / 5)  # clients 0 and 3 are better off federating
    assert s["ipr_seen"] == pytest.approx(1 / 3) and s["ipr_unseen"] == pytest.approx(1 / 2)


def test_incentives_script_game_and_ipr(tmp_path):
    import incentives as script

    out = tmp_path / "game"
    assert script.main(["game", "--costs", "1e-4,4e-4", "--out", str(out)]) == 0
    record = json.loads((out / "game.json").read_text())
    totals = {o["mechanism"]: o["total_data"] for o in record["outcomes"]}
    assert totals["shaped"] > totals["naive"] and (out / "game.png").stat().st_size > 1000
    out = tmp_path / "ipr"
    argv = ["ipr", "--dataset", "synthetic", "--clients", "12", "--clients-per-round", "4"]
    argv += ["--rounds", "2", "--unseen-clients", "3", "--checkpoint-every", "0"]
    assert script.main([*argv, "--out", str(out)]) == 0
    final = json.loads((out / "ipr.json").read_text())["final"]
    assert set(final) == {"fedavg", "incfl"} and "ipr_unseen" in final["incfl"]
    assert (out / "ipr.png").exists()
