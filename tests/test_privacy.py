"""Differential privacy: the clip bound, the noise's standard deviation, DP-FedAvg against plain
FedAvg and against its per-client loop, private soft labels, the experiments axis, the epsilon
against dp-accounting itself, calibration, and bad input naming the flag."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfl.algorithms import ALGORITHMS
from jaxfl.cli import flags
from jaxfl.configs import SPECS, with_capability
from jaxfl.core import aggregate
from jaxfl.experiments import axis
from jaxfl.mechanisms import accounting, privacy

from .test_experiments import build, compiled, max_diff, one_run
from .tolerance import SUMS, ULPS, between_programs


def uploads(m=7, seed=0):
    """A pytree of m clients' uploads with very different norms (0.01 to 100)."""
    rng = np.random.default_rng(seed)
    scale = np.logspace(-2, 2, m)[:, None]
    return {
        "w": jnp.asarray(rng.normal(size=(m, 12)) * scale, jnp.float32),
        "b": {"c": jnp.asarray(rng.normal(size=(m, 3)) * scale, jnp.float32)},
    }


def test_the_clip_bound_holds_for_every_client_and_the_private_mean_equals_a_loop():
    """Every clipped upload has norm <= S and an upload already inside is unchanged; the
    vectorized clip-and-sum (z = 0) equals a Python loop over the clients calling clip_upload,
    dropped clients left out and the fixed denominator m kept."""
    clip, tree = 1.5, uploads()
    m = 7
    received = jnp.array([1, 1, 0, 1, 1, 1, 0], bool)
    config = privacy.DPFields(dp_clip=clip, dp_noise=0.0)
    mean, state, metrics = privacy.private_mean(
        tree, received, privacy.init(config), jax.random.key(0), config
    )
    total = jax.tree.map(lambda x: np.zeros(x.shape[1:], np.float64), tree)
    bits = 0.0
    for k in range(m):
        one = jax.tree.map(lambda x, k=k: x[k], tree)
        clipped, bit = privacy.clip_upload(one, jnp.float32(clip))
        norm, before = float(optax.global_norm(clipped)), float(optax.global_norm(one))
        assert norm <= clip * (1 + 1e-6)
        assert bool(bit) == (before <= clip)
        if before <= clip:
            assert max_diff(clipped, one) == 0.0
        else:
            assert norm == pytest.approx(clip, rel=ULPS)
        if received[k]:
            total = jax.tree.map(lambda t, c: t + np.asarray(c, np.float64), total, clipped)
            bits += float(bit)
    # tol: the mean of m = 7 clipped float32 updates against float64 sums of them: rounding of
    # order 2^-24 of values below the clip, far under 1e-6.
    assert max_diff(mean, jax.tree.map(lambda t: t / m, total)) < 1e-6
    assert float(metrics["dp_unclipped_frac"]) == pytest.approx(bits / m)
    assert float(state.clip) == clip  # fixed clipping: C_t stays S


def test_the_noise_has_the_stated_standard_deviation():
    """The noise on the sum is N(0, (z S)^2) per coordinate: over 40,000 draws the sample
    variance is within 5 of its standard errors (sqrt(2/n) relative) of (z S)^2 and the mean
    within 5 standard errors of 0; a correct mechanism fails this with probability < 1e-6
    (the key is fixed, so the test is deterministic)."""
    clip, z, m = 2.0, 1.5, 4
    config = privacy.DPFields(dp_clip=clip, dp_noise=z)
    zeros = {"a": jnp.zeros((20_000,)), "b": jnp.zeros((100, 200))}
    mean, _, _ = privacy.noised_mean(
        zeros, jnp.float32(0), privacy.init(config), jax.random.key(7), config, m
    )
    noise = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(mean)]) * m
    n, std = noise.size, z * clip
    assert abs(noise.mean()) < 5 * std / math.sqrt(n)
    assert abs(noise.var() / std**2 - 1) < 5 * math.sqrt(2 / (n - 1))


def test_adaptive_clipping_follows_the_geometric_update():
    """C_{t+1} = C_t exp(-eta (b^ - gamma)) with b^ the noised fraction of unclipped uploads
    (here sigma_b tiny, so b^ is the exact fraction, and z < 2 sigma_b with it); z_D from the
    stated formula."""
    tree, received = uploads(), jnp.ones(7, bool)
    config = privacy.DPFields(
        dp_clip=1.0, dp_noise=1e-6, dp_clip_quantile=0.5, dp_clip_lr=0.3, dp_clip_count_noise=1e-6
    )
    norms = np.asarray([float(optax.global_norm(jax.tree.map(lambda x, k=k: x[k], tree)))
                        for k in range(7)])  # fmt: skip
    _, state, metrics = privacy.private_mean(
        tree, received, privacy.init(config), jax.random.key(0), config
    )
    frac = float(np.mean(norms <= 1.0))
    # tol: a fraction of m = 64 counts computed in float32 against numpy: one rounding, far under
    # 1e-5.
    assert float(metrics["dp_unclipped_frac"]) == pytest.approx(frac, abs=1e-5)
    assert float(state.clip) == pytest.approx(math.exp(-0.3 * (frac - 0.5)), rel=SUMS)
    z_d = float(privacy.update_noise_multiplier(config, 7))
    assert z_d == pytest.approx((1e-6**-2 - (2e-6) ** -2) ** -0.5, rel=SUMS)


EQUAL = ("--dataset", "synthetic_iid", "--partition", "iid", "--model", "logreg")


def private_round_against_its_loop(algo: str):
    """One round of ``algo`` with noise, adaptive clipping and dropout, vectorized and as the
    per-client loop (same key, same noise): they agree, the round reports C_0 and moves the
    clip. Returns (vectorized state, its metrics, the loop's metrics, the key)."""
    noisy = build(
        algo, 0, *EQUAL, "--dp-clip", "0.05", "--dp-noise", "0.8", "--dp-clip-quantile",
        "0.5", "--dp-clip-count-noise", "1", "--dropout", "0.3",
    )  # fmt: skip
    algorithm, key = noisy.algorithm, jax.random.key(3)
    vec, vec_metrics = algorithm.round(algorithm.init(key), key)
    loop, loop_metrics = algorithm.round_loop(algorithm.init(key), key)
    assert max_diff(vec, loop) < between_programs(loop)
    assert float(vec_metrics["dp_clip_norm"]) == pytest.approx(0.05)
    assert float(vec.upload_state.clip) != pytest.approx(0.05)  # the clip moved
    return vec, vec_metrics, loop_metrics, key


def test_dp_fedavg_without_noise_or_clipping_is_fedavg_and_the_round_equals_its_loop():
    """On equal-size clients DP-FedAvg with z = 0 and a clip no update reaches equals plain
    FedAvg exactly (the mean's weights are then the same); with noise and adaptive clipping
    the vectorized round equals the per-client loop reference (same key, same noise)."""
    plain = build("fedavg", 0, *EQUAL)
    counts = np.asarray(plain.data.client_count)
    assert counts.min() == counts.max()
    loose = build("fedavg", 0, *EQUAL, "--dp-clip", "1e9")
    a, _, _ = one_run(plain, 1)
    b, metrics, _ = one_run(loose, 1)
    assert max_diff(a.params, b.params) == 0.0
    assert float(metrics[-1]["dp_unclipped_frac"]) == 1.0
    vec, vec_metrics, loop_metrics, _ = private_round_against_its_loop("fedavg")
    for k, v in loop_metrics.items():
        # tol: metrics of the vectorized round against its per-client loop: float32 means over a
        # few clients, within 1e-6 absolute.
        assert float(vec_metrics[k]) == pytest.approx(float(v), abs=1e-6), k


@pytest.mark.parametrize("algo", ["dsfl", "fd", "ditto", "moon"])
def test_private_uploads_without_noise_or_clipping_equal_the_plain_aggregate(algo):
    """DS-FL's soft labels, FD's tables, Ditto's and MOON's shared model: with z = 0 and a clip
    nothing reaches, round 1 of the private path equals the plain one (every client received,
    equal sizes: the plain mean is then the private one). FedMD and Per-FedAvg are traced below."""
    plain = build(algo, 0, *EQUAL)
    private = build(algo, 0, *EQUAL, "--dp-clip", "1e9")
    a, _, _ = one_run(plain, 1)
    b, metrics, _ = one_run(private, 1)
    assert max_diff(dataclasses.replace(b, upload_state=None), a) < between_programs(a)
    assert float(metrics[0]["dp_unclipped_frac"]) == 1.0


@pytest.mark.parametrize("algo", ["fedmd", "perfedavg", "incfl"])
def test_private_rounds_trace_with_the_dp_state_and_metrics(algo):
    """FedMD's private consensus (its exchange phase), Per-FedAvg's shared model (the same
    the same upload mean as Ditto's) and IncFL's bump-weighted updates traced, not compiled
    (FedMD's init's transfer learning makes a numeric round cost 40 s here); the mechanism is
    private_mean, tested above."""
    if algo == "incfl":  # bound directly: run.py's build would train the local baseline
        base = build("fedavg", 0, *EQUAL)
        config = SPECS["incfl"].config(batch_size=10, dp_clip=1.0, dp_noise=1.0)
        losses = np.zeros(base.data.num_clients, np.float32)
        algorithm = ALGORITHMS["incfl"].make(config, base.data, base.model, local_losses=losses)
        data = base.data
    else:
        exp = build(algo, 0, *EQUAL, "--dp-clip", "1", "--dp-noise", "1")
        algorithm, data = exp.algorithm, exp.data
    state = jax.eval_shape(algorithm.init, jax.random.key(0))
    new, metrics = jax.eval_shape(algorithm.round_fn, state, jax.random.key(1), data)
    assert new.upload_state.clip.shape == () and {"dp_clip_norm", "dp_unclipped_frac"} <= set(
        metrics
    )


def test_private_maxfl_without_noise_is_maxfl_and_stays_finite_with_noise():
    """IncFL's MaxFL rule under DP: clients upload (q_k delta_k, q_k) clipped together; with
    z = 0 and a clip nothing reaches, the noised ratio is the plain step (sum q_k >= 1/4 here,
    above the denominator's floor); with heavy noise the floored denominator keeps it finite."""
    base = build("fedavg", 0, *EQUAL)
    losses = np.full(base.data.num_clients, 2.3, np.float32)  # x_k near 0: q_k near 1/4
    incfl = ALGORITHMS["incfl"]

    def round_with(**dp):
        config = incfl.SPEC.config(batch_size=10, clients_per_round=4, **dp)
        algorithm = incfl.make(config, base.data, base.model, local_losses=losses)
        key = jax.random.key(2)
        return algorithm.round(algorithm.init(key), key)

    plain, _ = round_with()
    loose, metrics = round_with(dp_clip=1e9, dp_noise=0.0)
    assert max_diff(loose.params, plain.params) < between_programs(plain.params)
    assert float(metrics["dp_unclipped_frac"]) == 1.0
    noisy, _ = round_with(dp_clip=0.1, dp_noise=5.0)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(noisy.params))


def test_dsfl_private_soft_labels_follow_the_equation():
    """With noise, DS-FL's global soft labels are ERA of (sum clip(p_k) + N(0, (z S)^2)) / m:
    rows are distributions and differ from the plain round's; every client's upload norm is at
    most sqrt(P) (P public rows), so S = sqrt(P) is a clip that never binds."""
    more = ("--dp-clip", str(math.sqrt(20)), "--dp-noise", "1.0")
    exp = build("dsfl", 0, *EQUAL, *more)
    state, metrics, _ = one_run(exp, 1)
    labels = np.asarray(state.soft_labels)
    np.testing.assert_allclose(labels.sum(-1), 1.0, rtol=SUMS)
    assert float(metrics[0]["dp_unclipped_frac"]) == 1.0
    plain, _, _ = one_run(build("dsfl", 0, *EQUAL), 1)
    assert np.abs(labels - np.asarray(plain.soft_labels)).max() > 1e-3


def test_noised_sa_soft_labels_go_back_on_the_simplex():
    """SA's private mean may have negative entries: negatives to 0, rows renormalised, a row
    noised to all-negative becomes uniform (post-processing only)."""
    noised = jnp.array([[0.7, -0.1, 0.5], [-0.2, -0.3, -0.1], [0.2, 0.2, 0.6]])
    labels = np.asarray(aggregate.onto_simplex(noised))
    np.testing.assert_allclose(labels[0], [0.7 / 1.2, 0.0, 0.5 / 1.2], rtol=ULPS)
    np.testing.assert_allclose(labels[1], [1 / 3] * 3, rtol=ULPS)
    np.testing.assert_allclose(labels[2], [0.2, 0.2, 0.6], rtol=ULPS)


def test_a_swept_noise_multiplier_equals_separate_runs_and_reports_each_epsilon():
    """The experiments axis: --sweep dp-noise=0.5,2 in one compiled call; its second
    experiment's round 1 equals the single run with --dp-noise 2 (the noise multiplier is a
    traced hyperparameter), and each experiment's epsilon is its own."""
    clip = ("--dp-clip", "0.5", "--dp-noise", "1")
    built = {0: build("fedavg", 0, "--model", "logreg", *clip)}
    grid = axis.grid((0,), {"dp_noise": (0.5, 2.0)})
    sweep_ = compiled("fedavg", grid, built)
    state, _ = sweep_.run_rounds(sweep_.init(), 1, 1)
    ref = build("fedavg", 0, "--model", "logreg", "--dp-clip", "0.5", "--dp-noise", "2.0")
    ref_state, _, _ = one_run(ref, 1)
    assert max_diff(jax.tree.map(lambda x: x[1], state), ref_state) < between_programs(ref_state)
    noisier = jax.tree.map(lambda x: x[0], state)  # z = 0.5: another noise draw's scale
    assert max_diff(noisier, ref_state) > 1e-4
    from jaxfl.experiments import sweep_records

    records = [{"round": 2}, {"round": 2}]
    sweep_records.add_epsilon(records, sweep_, built[0].config)
    setting = built[0].config["privacy"]
    eps = [
        accounting.Accountant(z, setting["population"], 6, setting["delta"]).epsilon(2)
        for z in (0.5, 2.0)
    ]
    assert [r["dp_epsilon"] for r in records] == pytest.approx(eps)
    assert eps[0] > eps[1]


def test_the_epsilon_reported_equals_dp_accounting_called_directly():
    """r rounds: the accountant's epsilon (one round's RDP times r) equals dp-accounting's RDP
    accountant composing the same event r times; with adaptive clipping the event composes
    both Gaussians, and --dp-noise z is their combined multiplier."""
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    C, m, delta = 200, 20, 1e-3
    for z, sigma_b in ((1.2, None), (1.2, 2.0)):
        ours = accounting.Accountant(z, C, m, delta, sigma_b)
        for r in (1, 7, 30):
            acc = rdp.RdpAccountant(list(accounting.ORDERS), rdp.NeighborRel.REPLACE_ONE)
            acc.compose(accounting.round_event(z, C, m, sigma_b), r)
            # tol: the same dp-accounting computation in float64 on both sides: only the order of
            # composing r events differs.
            assert ours.epsilon(r) == pytest.approx(acc.get_epsilon(delta), rel=1e-9)
    single = rdp.RdpAccountant(list(accounting.ORDERS), rdp.NeighborRel.REPLACE_ONE)
    single.compose(
        dp_event.SampledWithoutReplacementDpEvent(C, m, dp_event.GaussianDpEvent(1.2 / 2)), 30
    )
    # tol: one accountant composing both Gaussians against one event of their combined multiplier:
    # equal in exact arithmetic; float64 rounding of the RDP orders' sums is far under 1e-6.
    assert accounting.Accountant(1.2, C, m, delta, 2.0).epsilon(30) == pytest.approx(
        single.get_epsilon(delta), rel=1e-6
    )


def test_calibration_meets_the_target_within_one_percent():
    z = accounting.calibrate_noise.__wrapped__(4.0, 25, 500, 50, 1e-3)
    epsilon = accounting.Accountant(z, 500, 50, 1e-3).epsilon(25)
    # tol: calibration bisects z until epsilon is within 1% of the target: its stated precision.
    assert epsilon <= 4.0 and epsilon == pytest.approx(4.0, rel=0.01)
    with pytest.raises(accounting.AccountingError, match="--dp-epsilon 0.05: no noise level"):
        accounting.calibrate_noise.__wrapped__(0.05, 25, 500, 50, 1e-3, clip_count_noise=1.0)


BAD = [
    (["--dp-clip", "-1"], "--dp-clip -1.0 is not allowed; allowed: a clip norm > 0"),
    (["--dp-clip", "1", "--dp-noise", "-0.5"], "--dp-noise -0.5 is not allowed"),
    (["--dp-clip", "1", "--dp-delta", "1.5"], "allowed: 0 < delta < 1"),
    (["--dp-clip", "1", "--dp-epsilon", "0"], "allowed: a target epsilon > 0"),
    (["--dp-noise", "1"], "allowed: only with --dp-clip"),
    (["--dp-clip", "1", "--dp-epsilon", "2", "--dp-noise", "1"], "not both"),
    (["--dp-clip", "1", "--dp-clip-quantile", "1.5"], "0 < quantile < 1"),
    (["--algo", "feddf", "--dp-clip", "1"], "only with --algo fedavg, dsfl, finetune, ditto"),
]


@pytest.mark.parametrize("argv,message", BAD)
def test_bad_dp_input_names_the_flag(argv, message):
    with pytest.raises(flags.ConfigError, match=message.replace("(", r"\(")):  # parse or validate
        flags.validate(flags.parse(["--algo", "fedavg", *argv]))


def test_an_unreachable_epsilon_and_an_impossible_adaptive_noise_are_refused_before_training():
    with pytest.raises(flags.ConfigError, match="--dp-epsilon 0.01: no noise level"):
        build("fedavg", 0, *EQUAL, "--dp-clip", "1", "--dp-epsilon", "0.01",
              "--dp-clip-quantile", "0.5")  # fmt: skip
    with pytest.raises(flags.ConfigError, match="--dp-clip-count-noise above z / 2"):
        build("fedavg", 0, *EQUAL, "--dp-clip", "1", "--dp-noise", "5",
              "--dp-clip-quantile", "0.5")  # fmt: skip


def test_dp_algorithms_are_the_ones_that_implement_it():
    """The specs that declare DP (what --help and the errors list) are exactly the ones whose
    configs hold the DP fields (a config without them would ignore the flags)."""
    for name in ALGORITHMS:
        dp = name in with_capability("dp")
        assert issubclass(SPECS[name].config, privacy.DPFields) == dp, name


def test_moon_is_private_without_a_line_of_dp_code_and_its_round_equals_its_loop():
    """MOON got DP from the upload mean alone (its config's DP fields, its spec's dp=True): with
    noise, adaptive clipping and dropout its vectorized round equals the per-client loop
    reference (same key, same noise), the clip moves, and the update differs from the plain
    round's."""
    vec, _, _, key = private_round_against_its_loop("moon")
    plain = build("moon", 0, *EQUAL, "--dropout", "0.3").algorithm
    plain_state, _ = plain.round(plain.init(key), key)
    assert max_diff(vec.params, plain_state.params) > 1e-4


# the algorithms that read UploadMean.private: privacy changes WHAT their clients upload
CHANGES_THE_UPLOAD = {
    "fd": "the holder counts are released as a noised sum beside the tables",
    "incfl": "the client weighs its own update, so its loss gap never leaves it",
}


def test_no_algorithm_module_holds_dp_code():
    """DP enters every algorithm through jaxfl.mechanisms.uploads: no algorithm module imports
    the privacy module, and only the listed ones ask whether the mean is private (each says
    why). Checked on the syntax tree, so a new algorithm is held to it too."""
    import ast
    import pathlib

    folder = pathlib.Path(__file__).parents[1] / "jaxfl" / "algorithms"
    readers = set()
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = {a.name for a in node.names}
                assert not (
                    node.module == "jaxfl.mechanisms.privacy"
                    or (node.module == "jaxfl.mechanisms" and "privacy" in names)
                ), path.name
            if isinstance(node, ast.Attribute) and node.attr == "private":
                readers.add(path.stem)
    assert readers == set(CHANGES_THE_UPLOAD)
