"""Poisson participation (--participation poisson): the cohort's law, the private sum's
sensitivity, the epsilon against dp-accounting called directly, the vectorized round against its
loop, the experiments axis, resume, and the errors."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxfl.algorithms import fedavg
from jaxfl.cli import flags
from jaxfl.core import hooks
from jaxfl.experiments import axis
from jaxfl.mechanisms import accounting, privacy
from jaxfl.mechanisms.client_round import poisson_capacity, poisson_cohort
from jaxfl.mechanisms.uploads import upload_mean

from .test_cli import SMALL, run
from .test_experiments import build, compiled, max_diff, one_run
from .test_resume import _metrics
from .tolerance import SUMS, between_programs

EQUAL = ("--dataset", "synthetic_iid", "--partition", "iid", "--model", "logreg")
POISSON = ("--participation", "poisson", "--clients-per-round", "2")


def _cohorts(population: int, q: float, capacity: int, rounds: int, seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), rounds)
    draw = jax.jit(jax.vmap(lambda k: poisson_cohort(k, population, q, capacity)))
    sampled, present = draw(keys)
    return np.asarray(sampled), np.asarray(present)


def test_poisson_cohort_sizes_follow_the_binomial_and_every_client_its_q():
    """Over 4000 rounds at C = 50, q = 0.2: the cohort sizes pass a chi-square test against
    Binomial(50, 0.2) (tails pooled to expected counts >= 5; p > 0.001 at this fixed seed), each
    client takes part in a fraction of rounds within 5 standard deviations of q, and a cohort's
    present slots hold distinct clients."""
    C, q, rounds = 50, 0.2, 4000
    M = poisson_capacity(C, q)
    sampled, present = _cohorts(C, q, M, rounds)
    sizes = present.sum(1)
    observed = np.bincount(sizes, minlength=C + 1)
    expected = stats.binom.pmf(np.arange(C + 1), C, q) * rounds
    lo, hi = 0, C  # pool the tails into the first and last bins with expected >= 5
    while expected[: lo + 1].sum() < 5:
        lo += 1
    while expected[hi:].sum() < 5:
        hi -= 1
    obs = np.concatenate([[observed[: lo + 1].sum()], observed[lo + 1 : hi], [observed[hi:].sum()]])
    exp = np.concatenate([[expected[: lo + 1].sum()], expected[lo + 1 : hi], [expected[hi:].sum()]])
    assert stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-3
    frequency = np.bincount(sampled[present], minlength=C) / rounds
    assert np.abs(frequency - q).max() < 5 * math.sqrt(q * (1 - q) / rounds)
    for row, mask in zip(sampled, present, strict=True):
        assert len(set(row[mask])) == mask.sum()


def test_an_overflowing_draw_keeps_a_uniformly_random_subset():
    """Capacity 5 at C = 50, q = 0.2 (10 expected): almost every round overflows and keeps 5;
    which 5 is uniform over the clients (keeping the first drawn by index would favour low
    indices), as dp-accounting's truncated Poisson event assumes."""
    C, q, rounds = 50, 0.2, 4000
    sampled, present = _cohorts(C, q, 5, rounds, seed=1)
    assert (present.sum(1) <= 5).all() and (present.sum(1) == 5).mean() > 0.95
    frequency = np.bincount(sampled[present], minlength=C) / rounds
    rate = present.sum() / (rounds * C)
    assert np.abs(frequency - rate).max() < 5 * math.sqrt(rate * (1 - rate) / rounds)


def test_the_capacity_bounds_the_overflow_on_both_neighbouring_data_sets():
    for C, q in ((50, 0.2), (3400, 0.01), (100, 0.1)):
        M = poisson_capacity(C, q)
        # tol: 1e-12 is not a tolerance but the overflow bound the capacity is defined by
        assert stats.binom.sf(M, C + 1, q) <= 1e-12 < stats.binom.sf(M - 1, C + 1, q)
    assert poisson_capacity(10, 1.0) == 11  # q = 1: the neighbour with one client more fits


def test_poisson_epsilon_equals_dp_accounting_called_directly():
    """The issue's setting, C = 50, q = 0.2, z = 1.1, 5 rounds, delta 1e-5: PLD is the library's
    PLD accountant on its truncated Poisson event at our capacity (3.27, as untruncated
    Poisson); RDP the library's RDP accountant on Poisson sampling at the delta left after the
    overflow term (3.84); fixed-size sampling keeps its replace-one figure (15.9)."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant as pld
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    C, m, z, rounds, delta = 50, 10, 1.1, 5, 1e-5
    M = poisson_capacity(C, m / C)
    ours = accounting.accountant(z, C, m, delta, None, "poisson", "pld")
    assert ours.capacity == M and ours.describe() == "Poisson q = 0.2, add-or-remove, PLD"
    lib = pld.PLDAccountant(pld.NeighborRel.ADD_OR_REMOVE_ONE, accounting.PLD_DISCRETIZATION)
    truncated = dp_event.TruncatedSubsampledGaussianDpEvent(C, m / C, M, z)
    lib.compose(dp_event.SelfComposedDpEvent(truncated, rounds))
    # tol: the same PLD self-composed (ours) or composed by the accountant: float rounding only
    assert ours.epsilon(rounds) == pytest.approx(lib.get_epsilon(delta), rel=1e-6)
    untruncated = pld.PLDAccountant(pld.NeighborRel.ADD_OR_REMOVE_ONE)  # library defaults
    poisson = dp_event.PoissonSampledDpEvent(m / C, dp_event.GaussianDpEvent(z))
    untruncated.compose(dp_event.SelfComposedDpEvent(poisson, rounds))
    # tol: discretization 1e-3 against the library's 1e-4, and truncation at P <= 1e-12
    assert ours.epsilon(rounds) == pytest.approx(untruncated.get_epsilon(delta), rel=1e-3)
    # tol: the figures, quoted to 3 significant digits
    assert ours.epsilon(rounds) == pytest.approx(3.27, abs=0.01)

    ours_rdp = accounting.accountant(z, C, m, delta, None, "poisson", "rdp")
    lib_rdp = rdp.RdpAccountant(neighboring_relation=rdp.NeighborRel.ADD_OR_REMOVE_ONE)
    lib_rdp.compose(dp_event.SelfComposedDpEvent(poisson, rounds))
    e_half = lib_rdp.get_epsilon(delta / 2)
    overflow = rounds * stats.binom.sf(M, C + 1, m / C) * (1 + math.exp(e_half))
    assert ours_rdp.epsilon(rounds) == pytest.approx(
        lib_rdp.get_epsilon(delta - overflow), rel=SUMS
    )
    # tol: the figures, quoted to 3 significant digits
    assert ours_rdp.epsilon(rounds) == pytest.approx(3.84, abs=0.01)
    # tol: the figure, quoted to 3 significant digits
    assert accounting.accountant(z, C, m, delta, None).epsilon(rounds) == pytest.approx(
        15.9, abs=0.05
    )


@pytest.mark.parametrize("kind", ["pld", "rdp"])
def test_poisson_calibration_meets_the_target(kind):
    z = accounting.calibrate_noise.__wrapped__(3.0, 5, 50, 10, 1e-5, None, "poisson", kind)
    epsilon = accounting.accountant(z, 50, 10, 1e-5, None, "poisson", kind).epsilon(5)
    assert 0.99 * 3.0 <= epsilon <= 3.0 * (1 + 1e-4)


def test_adaptive_clipping_under_poisson_keeps_z_the_total_multiplier():
    """Add-or-remove: the update's sensitivity is C_t and the bits' 1, so z_D^-2 + sigma_b^-2 =
    z^-2 (one Gaussian of multiplier z); z >= sigma_b is refused, naming the flag."""
    config = fedavg.SPEC.config(
        dp_clip=1.0, dp_noise=1.0, dp_clip_quantile=0.5, dp_clip_count_noise=2.0,
        participation="poisson",
    )  # fmt: skip
    z_d = float(privacy.update_noise_multiplier(config, 10))
    assert z_d**-2 + 2.0**-2 == pytest.approx(1.0, rel=SUMS)
    with pytest.raises(ValueError, match="--dp-clip-count-noise above z"):
        privacy.check(config.__class__(**{**config.__dict__, "dp_noise": 2.5}), 10)


def test_one_clients_contribution_to_the_private_sum_is_at_most_the_clip():
    """The private mean under Poisson participation: denominator m = q C, fixed; taking any one
    present client out moves the noised sum (mean x m, same noise) by at most S; an empty cohort
    is applied, its update the noise alone."""
    S, m = 0.5, 4
    config = fedavg.SPEC.config(dp_clip=S, dp_noise=0.7, participation="poisson")
    uploads = upload_mean(config, m)
    state, key = uploads.init(), hooks.round_key(jax.random.key(0))
    M = 9
    rows = 3.0 * jax.random.normal(jax.random.key(1), (M, 20))  # norms far above S
    received = jnp.arange(M) < 6
    mean, _, _ = uploads.mean(rows, received, received, state, key)
    for j in range(6):
        without = received.at[j].set(False)
        other, _, _ = uploads.mean(rows, without, without, state, key)
        assert float(jnp.linalg.norm((mean - other) * m)) <= S * (1 + 1e-5)
    nobody = jnp.zeros((M,), bool)
    assert bool(uploads.applied(nobody, 1))
    noise_only, _, _ = uploads.mean(rows, nobody, nobody, state, key)
    assert float(jnp.linalg.norm(noise_only)) > 0


@pytest.mark.parametrize("dp", [(), ("--dp-clip", "0.05", "--dp-noise", "0.8", "--dropout", "0.3")])
def test_a_poisson_round_equals_its_per_client_loop(dp):
    """FedAvg with Poisson cohorts (capacity M, padded and masked), plain and private: the
    vectorized round equals the loop reference; over rounds the number received varies."""
    exp = build("fedavg", 0, *EQUAL, *POISSON, *dp)
    algo = exp.algorithm
    assert algo.clients_per_round == poisson_capacity(6, 2 / 6)
    received = set()
    for r in range(4):
        key = jax.random.key(r)
        vec, metrics = algo.round(algo.init(key), key)
        loop, _ = algo.round_loop(algo.init(key), key)
        assert max_diff(vec, loop) < between_programs(loop)
        received.add(int(metrics["received"]))
    assert len(received) > 1


def test_poisson_seeds_in_one_compiled_sweep_equal_separate_runs():
    built = {s: build("fedavg", s, *EQUAL, *POISSON) for s in (0, 1)}
    sweep_ = compiled("fedavg", axis.grid((0, 1), {}), built)
    state, _ = sweep_.run_rounds(sweep_.init(), 1, 1)
    for i, seed in enumerate((0, 1)):
        ref, _, _ = one_run(built[seed], 1)
        got = jax.tree.map(lambda x, i=i: x[i], state)
        assert max_diff(got, ref) < between_programs(ref)


def test_a_resumed_poisson_run_equals_the_uninterrupted_one(tmp_path):
    base = ["--algo", "fedavg", *SMALL, *POISSON, "--checkpoint-every", "1"]
    base += ["--dp-clip", "1", "--dp-noise", "1"]
    assert run.main([*base, "--rounds", "3", "--out", str(tmp_path / "whole")]) == 0
    assert run.main([*base, "--rounds", "2", "--out", str(tmp_path / "part")]) == 0
    assert run.main(["--resume", str(tmp_path / "part"), "--rounds", "3"]) == 0
    assert _metrics(tmp_path / "part") == _metrics(tmp_path / "whole")  # bit-identical on CPU
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["privacy"]["epsilon_of"].startswith("Poisson q = ")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--algo", "dsfl", "--participation", "poisson"], "only with --algo fedavg, finetune"),
        (["--algo", "fedavg", "--participation", "sometimes"], "allowed: fixed, poisson"),
        (["--algo", "fedavg", "--dp-clip", "1", "--dp-accountant", "pld"], "rdp with fixed"),
        (["--algo", "fedavg", *POISSON, "--dp-clip", "1", "--min-received", "2"], "1 with"),
    ],
)
def test_bad_participation_input_names_the_flag(argv, message):
    with pytest.raises(flags.ConfigError, match=message):
        flags.validate(flags.parse(["--dataset", "blobs", *argv]))


@pytest.mark.slow
def test_the_privacy_utility_study_draws_both_modes(tmp_path):
    """scripts/privacy_utility.py --tiny: both sweeps run, every point has a finite epsilon
    from its own accounting, and at the same z Poisson's add-or-remove epsilon is the smaller."""
    import importlib.util

    path = __import__("pathlib").Path(__file__).parents[1] / "scripts" / "privacy_utility.py"
    spec = importlib.util.spec_from_file_location("privacy_utility", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    out = tmp_path / "pu"
    assert study.main(["--tiny", "--seeds", "2", "--noise", "0.5,2", "--out", str(out)]) == 0
    results = json.loads((out / "privacy_utility.json").read_text())
    assert results["poisson"]["epsilon_of"].startswith("Poisson q = 0.375")
    fixed, poisson = (results[m]["points"] for m in ("fixed", "poisson"))
    assert [p["noise"] for p in fixed] == [p["noise"] for p in poisson] == [0.5, 2.0]
    for a, b in zip(fixed, poisson, strict=True):
        assert math.isfinite(b["epsilon"]) and b["epsilon"] < a["epsilon"]
        assert a["seeds"] == b["seeds"] == 2
    assert (out / "privacy_utility.png").stat().st_size > 0
