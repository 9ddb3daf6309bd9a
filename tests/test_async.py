"""The virtual clock and FedBuff: a heapq discrete-event reference for arrivals, staleness and
versions; K = M with equal speeds is synchronous FedAvg; the vectorized server step against its
per-client loop; resume; the synchronous move-on rules; bad input naming the flag."""

import heapq
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfl.algorithms import fedavg, fedbuff, finetune
from jaxfl.cli import flags
from jaxfl.data import FederationSpec, build_federation
from jaxfl.experiments import checkpoint
from jaxfl.mechanisms import clock, faults
from jaxfl.models import get_model

from .conftest import tiny_image_dataset
from .tolerance import ULPS, assert_trees_close


def _federation(clients=12, partition="quantity"):
    data = tiny_image_dataset(n_train=480, shape=(6, 6, 1))
    spec = FederationSpec(num_clients=clients, partition=partition, alpha=2.0, seed=1)
    return build_federation(data, spec)[0]


def _fedbuff(data, **fields):
    config = fedbuff.FedBuffConfig(batch_size=8, lr=0.1, **fields)
    return fedbuff.make(config, data, get_model("logreg", data.feature_shape, data.num_classes))


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def test_arrivals_staleness_and_versions_equal_a_heapq_discrete_event_simulation():
    """Over 30 server steps (M = 6, K = 2, lognormal speeds, uniform latencies, unequal data),
    the compiled step pops the same clients, at the same times, with the same staleness and
    start versions as a host-side event queue; the dispatch draws come from the JAX run."""
    data = _federation()
    m, k, steps = 6, 2, 30
    algo = _fedbuff(
        data,
        concurrency=m,
        buffer=k,
        client_speed="lognormal:1",
        client_latency="uniform:0:3",
        staleness="polynomial:0.5",
    )
    state = algo.init(jax.random.key(3))
    speed, latency = np.asarray(state.clock.step_time), np.asarray(state.clock.latency)
    counts = np.asarray(data.client_count)

    def duration(client):  # steps x time per step + latency, float32 as on the device
        n_steps = np.float32(-(-counts[client] // 8))
        return n_steps * speed[client] + latency[client]

    queue = []  # (arrival, slot, client, version)
    for slot, client in enumerate(np.asarray(state.flight.client)):
        heapq.heappush(queue, (np.float32(0) + duration(client), slot, int(client), 0))
    by_slot = [e[0] for e in sorted(queue, key=lambda e: e[1])]
    np.testing.assert_allclose(state.flight.arrival, by_slot, rtol=ULPS)
    hist = np.zeros(fedbuff.STALENESS_BINS, int)
    key = jax.random.key(9)
    for t in range(steps):
        popped = [heapq.heappop(queue) for _ in range(k)]
        now = popped[-1][0]
        staleness = [t - e[3] for e in popped]
        for s in staleness:
            hist[min(s, fedbuff.STALENESS_BINS - 1)] += 1
        before = _np(state.flight)
        state, metrics = algo.round(state, jax.random.fold_in(key, t))
        after = _np(state.flight)
        popped_slots = sorted(e[1] for e in popped)
        changed = np.flatnonzero(after.version != before.version)
        assert list(changed) == popped_slots, t  # exactly the popped slots were refilled
        np.testing.assert_allclose(float(metrics["sim_time"]), now, rtol=ULPS)
        assert float(metrics["staleness_mean"]) == pytest.approx(np.mean(staleness), rel=ULPS)
        assert int(metrics["staleness_max"]) == max(staleness)
        assert np.array_equal(np.asarray(state.staleness_hist), hist)
        for slot in popped_slots:  # the new client, from version t + 1, arrives after d_c
            client = int(after.client[slot])
            assert after.version[slot] == t + 1
            heapq.heappush(queue, (np.float32(now + duration(client)), slot, client, t + 1))
            np.testing.assert_allclose(after.arrival[slot], now + duration(client), rtol=ULPS)
        assert len(set(after.client)) == m  # a client trains one model at a time
    assert hist[1:].sum() > 0 and max(np.flatnonzero(hist)) >= 3  # real staleness was exercised


def test_equal_speeds_and_k_equal_m_is_synchronous_fedavg_exactly():
    """K = M = m, every client equally fast and equally large, constant staleness weight: every
    server step is FedAvg's round on the same m clients with the same keys, bit for bit."""
    data = _federation(clients=8, partition="iid")
    assert len(set(np.asarray(data.client_count))) == 1
    m = 4
    buff = _fedbuff(data, concurrency=m, buffer=m, staleness="constant")
    model = get_model("logreg", data.feature_shape, data.num_classes)
    base = fedavg.FedAvgConfig(clients_per_round=m, batch_size=8, lr=0.1)
    state_b = buff.init(jax.random.key(0))
    state_a = fedavg.make(base, data, model).init(jax.random.key(0))
    for t in range(2):
        key = jax.random.key(100 + t)
        in_flight = jnp.asarray(state_b.flight.client)  # all arrive at once, in slot order
        sync = fedavg.make(base, data, model, select_clients=lambda *_, c=in_flight: c)
        state_a, metrics_a = sync.round(state_a, key)
        state_b, metrics_b = buff.round(state_b, key)
        for a, b in zip(
            jax.tree.leaves(state_a.params), jax.tree.leaves(state_b.params), strict=True
        ):
            np.testing.assert_array_equal(a, b)
        assert float(metrics_a["train_loss"]) == float(metrics_b["train_loss"])
        assert float(metrics_a["sim_time"]) == float(metrics_b["sim_time"])
        assert int(metrics_b["staleness_max"]) == 0


def test_vectorized_server_step_equals_the_per_client_loop_and_resume_is_bit_identical(tmp_path):
    """With faults on (dropout, stragglers, scaled updates from adversaries)."""
    data = _federation()
    config = fedbuff.FedBuffConfig(
        batch_size=8, concurrency=6, buffer=3, client_speed="two-tier:0.5:4"
    )
    hostile = faults.FaultConfig(
        dropout=0.3, straggler_fraction=0.5, adversary_fraction=0.25, attack="scaled_update"
    )
    model = get_model("logreg", data.feature_shape, data.num_classes)
    algo = fedbuff.make(config, data, model, fault_config=hostile, seed=2)
    key = jax.random.key(1)
    state_v = state_l = algo.init(jax.random.key(0))
    for r in range(2):
        state_v, metrics_v = algo.round(state_v, jax.random.fold_in(key, r))
        state_l, metrics_l = algo.round_loop(state_l, jax.random.fold_in(key, r))
        for a, b in zip(
            jax.tree.leaves((state_v, metrics_v)),
            jax.tree.leaves((state_l, metrics_l)),
            strict=True,
        ):
            assert_trees_close(np.asarray(a), np.asarray(b))
    # resume: 2 steps, save, restore, 2 more == 4 steps in one scan (in-flight models and clock)
    fresh = algo.init(jax.random.key(0))
    whole, _ = algo.run_rounds(jax.tree.map(jnp.copy, fresh), key, 1, 4)
    half, _ = algo.run_rounds(fresh, key, 1, 2)
    checkpoint.save(tmp_path, 2, half, {})
    restored, _ = checkpoint.restore(tmp_path, jax.eval_shape(algo.init, jax.random.key(0)))
    resumed, _ = algo.run_rounds(restored, key, 3, 2)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert float(resumed.clock.time) > 0


def test_move_on_waits_for_all_the_first_k_or_a_deadline():
    d = jnp.array([3.0, 1.0, 5.0, 1.0, 2.0])
    rec = jnp.array([True, True, True, False, True])
    kept, t = clock.move_on(d, rec)
    assert kept.tolist() == rec.tolist() and float(t) == 5.0  # a lost upload is still awaited
    kept, t = clock.move_on(d, rec, first=2)  # the 2 earliest received: clients 1 and 4
    assert kept.tolist() == [False, True, False, False, True] and float(t) == 2.0
    kept, t = clock.move_on(d, rec, deadline=2.5)
    assert kept.tolist() == [False, True, False, False, True] and float(t) == 2.5
    kept, t = clock.move_on(d, rec, deadline=10.0, first=4)  # only 4 received: all, time max
    assert kept.tolist() == rec.tolist() and float(t) == 5.0
    ties = jnp.array([1.0, 1.0, 1.0])
    kept, _ = clock.move_on(ties, jnp.ones(3, bool), first=2)
    assert kept.tolist() == [True, True, False]  # ties: lower position first


def test_finetune_keeps_fedavgs_clock():
    """FedAvg + fine-tuning runs FedAvg's rounds (fine-tuning happens at evaluation), so the
    clock's settings reach them: the same arrivals, deadline and time as FedAvg's round."""
    data = _federation()
    model = get_model("logreg", data.feature_shape, data.num_classes)
    timing = {"clients_per_round": 4, "batch_size": 8, "client_speed": "uniform:1:2"}
    timing["round_deadline"] = 3.0
    plain = fedavg.make(fedavg.FedAvgConfig(**timing), data, model)
    tuned = finetune.make(finetune.SPEC.config(**timing, finetune_epochs="1"), data, model)
    key = jax.random.key(4)
    (a, got), (b, expected) = (
        algo.round(algo.init(jax.random.key(0)), key) for algo in (tuned, plain)
    )
    for name in ("sim_time", "received", "applied"):
        assert float(got[name]) == float(expected[name]), name
    assert 0 < int(expected["received"]) < 4  # the deadline dropped someone, not everyone
    assert float(a.clock.time) == float(b.clock.time) > 0


def test_fedavg_rounds_keep_the_clock_and_a_deadline_drops_the_late_clients():
    data = _federation()
    model = get_model("logreg", data.feature_shape, data.num_classes)
    config = fedavg.FedAvgConfig(clients_per_round=4, batch_size=8, client_speed="uniform:1:2")
    algo = fedavg.make(config, data, model)
    state = algo.init(jax.random.key(0))
    key = jax.random.key(4)
    after, metrics = algo.round(state, key)
    sampled = np.asarray(jax.random.permutation(jax.random.split(key)[0], 12)[:4])
    steps = -(-np.asarray(data.client_count)[sampled] // 8)
    slowest = np.max(steps * np.asarray(state.clock.step_time)[sampled])
    assert float(metrics["sim_time"]) == pytest.approx(slowest, rel=ULPS)
    missed = fedavg.make(
        fedavg.FedAvgConfig(**{**vars(config), "round_deadline": 0.5}), data, model
    )  # nobody finishes a step in 0.5 s: nothing is applied, the round lasts the deadline
    after, metrics = missed.round(state, key)
    assert int(metrics["received"]) == 0 and not bool(metrics["applied"])
    assert float(metrics["sim_time"]) == 0.5
    for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, b)
    first = fedavg.make(fedavg.FedAvgConfig(**{**vars(config), "round_first": 2}), data, model)
    _, metrics = first.round(state, key)
    arrivals = np.sort(steps * np.asarray(state.clock.step_time)[sampled])
    assert int(metrics["received"]) == 2
    assert float(metrics["sim_time"]) == pytest.approx(arrivals[1], rel=ULPS)


def test_speed_distributions_parse_and_draw(tmp_path):
    key = jax.random.key(0)
    two = clock.draw(clock.parse("two-tier:0.25:4", "--client-speed"), key, 20)
    assert sorted(np.asarray(two).tolist()) == [1.0] * 15 + [4.0] * 5
    uni = np.asarray(clock.draw(clock.parse("uniform:2:3", "--client-speed"), key, 50))
    assert uni.min() >= 2 and uni.max() <= 3
    logn = np.asarray(clock.draw(clock.parse("lognormal:0.5", "--client-speed"), key, 4000))
    # tol: the median of 4,000 lognormal(0, 0.5) draws has a standard error of 1.25 * 0.5 /
    # sqrt(4000) = 0.01 on the log scale; 0.05 is 5 of them.
    assert np.median(logn) == pytest.approx(1.0, abs=0.05) and np.std(np.log(logn)) > 0.45
    assert clock.parse("2.5", "--client-latency", positive=False).params == (2.5,)
    path = tmp_path / "speeds.txt"
    path.write_text("1, 2\n3")
    values = clock.draw(clock.parse(str(path), "--client-speed", 3), key, 3)
    assert np.asarray(values).tolist() == [1.0, 2.0, 3.0]
    tau = jnp.array([0, 1, 3, 8])
    np.testing.assert_allclose(clock.staleness_weights("polynomial:0.5", tau), (1 + tau) ** -0.5)
    np.testing.assert_allclose(clock.staleness_weights("hinge:2:2", tau), [1, 1, 1 / 3, 1 / 13])
    assert clock.staleness_weights("constant", tau).tolist() == [1, 1, 1, 1]


BAD = [
    (["--algo", "fedbuff", "--concurrency", "4", "--buffer", "5"], "--buffer 5 is not allowed; "
     "allowed: 1..--concurrency (4)"),
    (["--algo", "fedbuff", "--concurrency", "30"], "--concurrency 30 is not allowed; allowed: "
     "1..--clients (20)"),
    (["--algo", "fedbuff", "--client-speed", "gamma:2"], "--client-speed 'gamma:2': unknown "
     "distribution 'gamma'"),
    (["--algo", "fedavg", "--client-speed", "lognormal:x"], "the parameters of lognormal are"),
    (["--algo", "fedavg", "--client-speed", "two-tier:0.5"], "two-tier takes 2 parameter"),
    (["--algo", "fedavg", "--client-latency", "-1"], "--client-latency '-1': a value must be >= 0"),
    (["--algo", "fedbuff", "--staleness", "hinge:1"], "--staleness 'hinge:1': hinge takes 2"),
    (["--algo", "fedbuff", "--round-deadline", "3"], "--round-deadline 3.0 is not allowed; "
     "allowed: only with a synchronous"),
    (["--algo", "fedavg", "--round-first", "9", "--clients-per-round", "5"], "--round-first 9 "
     "is not allowed; allowed: 1..--clients-per-round (5)"),
    (["--algo", "dsfl", "--client-speed", "lognormal:1"], "allowed: only with --algo fedavg, "
     "finetune, fedbuff, fedprox"),
]  # fmt: skip


@pytest.mark.parametrize("argv,message", BAD)
def test_bad_clock_and_async_input_names_the_flag(argv, message):
    with pytest.raises(flags.ConfigError, match=re.escape(message)):  # parse or validate
        flags.validate(flags.parse([*argv, "--clients", "20"]))


def test_a_speed_file_with_a_non_positive_value_or_the_wrong_length_is_refused(tmp_path):
    path = tmp_path / "speeds.npy"
    np.save(path, np.array([1.0, 0.0, 2.0]))
    args = flags.parse(["--algo", "fedbuff", "--clients", "3", "--client-speed", str(path)])
    with pytest.raises(flags.ConfigError, match="every value must be > 0; client 1 has 0.0"):
        flags.validate(args)
    args = flags.parse(["--algo", "fedbuff", "--clients", "4", "--client-speed", str(path)])
    with pytest.raises(flags.ConfigError, match=r"holds 3 values, one per client is needed \(4\)"):
        flags.validate(args)


@pytest.mark.slow  # as for the other algorithms outside NUMERIC: traced by default, in
# tests/test_experiments.py's binds test (FedBuff's state, every float hyperparameter traced)
def test_two_seeds_of_fedbuff_in_one_call_equal_two_separate_runs():
    """The experiments axis: each seed's own speeds, dispatch and in-flight models (round 1)."""
    from .test_experiments import check_two_seeds

    check_two_seeds("fedbuff")


def test_a_stale_update_is_scaled_by_its_staleness_weight():
    """K = 1: from the same state and key, polynomial:1 moves the model by s(tau) = 1/(1+tau)
    times what constant weighting moves it (same client, same start model, same training)."""
    data = _federation()
    const = _fedbuff(
        data, concurrency=4, buffer=1, client_speed="lognormal:1", staleness="constant"
    )
    poly = _fedbuff(
        data, concurrency=4, buffer=1, client_speed="lognormal:1", staleness="polynomial:1"
    )
    state = const.init(jax.random.key(0))
    for t in range(6):  # until the next arrival is stale
        slot = int(np.argmin(np.asarray(state.flight.arrival)))
        tau = int(state.round) - int(state.flight.version[slot])
        if tau > 0:
            break
        state, _ = const.round(state, jax.random.key(50 + t))
    assert tau > 0
    key = jax.random.key(99)
    moved_const, _ = const.round(state, key)
    moved_poly, _ = poly.round(state, key)
    for w, a, b in zip(
        *(jax.tree.leaves(s.params) for s in (state, moved_const, moved_poly)), strict=True
    ):
        # tol: b - w and a - w are differences of order-1 float32 weights (their cancellation
        # leaves about 2^-24 = 6e-8 absolute: atol) divided by 1 + tau in float32; 1e-4 relative
        # covers the rounding of these small deltas.
        np.testing.assert_allclose(
            np.asarray(b) - w, (np.asarray(a) - w) / (1 + tau), rtol=1e-4, atol=1e-7
        )
