"""The FedDF, IncFL/MaxFL and FCCL references (reproductions/references/): their pieces against
hand computations, and (``-m slow``) their agreement with jaxfl at a tiny size over seeds."""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from reproductions.references import fccl as ref_fccl
from reproductions.references import feddf as ref_feddf
from reproductions.references import incfl as ref_incfl

from .conftest import jaxfl_finals, mnist_available
from .tolerance import SUMS

ROOT = Path(__file__).resolve().parents[1]


def test_feddf_distillation_moves_the_student_toward_the_ensemble_and_keeps_the_best():
    """Adam on the KL from the ensemble's logits lowers the held-out KL, the best-validated
    student is returned, and with patience 0 no step is run (patience counts the steps since
    the last improvement, checked before each block, as jaxfl's FedDF)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 784)).astype(np.float32)
    teacher = rng.normal(size=(64, 10)).astype(np.float32) * 3
    init, apply = ref_feddf.ARCHITECTURES["mlp"]
    student = init(jax.random.key(0), 10)
    before = float(ref_feddf.kl(apply(student, x[:16]), teacher[:16], 1.0))
    kw = {"steps": 200, "batch": 16, "lr": 1e-3, "temperature": 1.0, "check_every": 50}
    best, done = ref_feddf.distill(
        apply, student, x[16:], teacher[16:], x[:16], teacher[:16], jax.random.key(1),
        patience=1000, **kw,
    )  # fmt: skip
    assert done == 200
    assert float(ref_feddf.kl(apply(best, x[:16]), teacher[:16], 1.0)) < before
    same, done = ref_feddf.distill(
        apply, student, x[16:], teacher[16:], x[:16], teacher[:16], jax.random.key(1),
        patience=0, **kw,
    )  # fmt: skip
    assert done == 0 and same is student


def test_feddf_dirichlet_shares_are_disjoint_equal_and_skewed():
    y = np.repeat(np.arange(10), 200)
    parts = ref_feddf.dirichlet_shares(y, 8, 0.1, np.random.default_rng(0))
    rows = np.concatenate(parts)
    assert len(rows) == len(y) and len(np.unique(rows)) == len(y)
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    top = [np.bincount(y[p], minlength=10).max() / len(p) for p in parts]
    assert np.mean(top) > 0.5  # alpha 0.1: most of a client's examples share one label


FEDDF_TINY = {
    "clients": 20,
    "per_round": 20,
    "alpha": 1.0,
    "unlabeled_size": 2000,
    "rounds": 3,
    "local_epochs": 1,
    "batch": 50,
    "lr": 0.1,
    "model": "mlp",
    "distill_steps": 200,
    "check_every": 50,
    "patience": 100,
}
FEDDF_SEEDS = 6


@pytest.mark.slow  # about 110 s, the reference's per-client loop most of it
@pytest.mark.skipif(not mnist_available(), reason="needs the MNIST IDX files ($JAXFL_MNIST)")
def test_feddf_reference_and_jaxfl_agree_at_a_tiny_size(tmp_path, mnist12k):
    """FedDF and FedAvg on 12,000 MNIST examples (2,000 of them the unlabeled set), 20
    clients, all of them every round, Dirichlet 1.0, the 2NN, 3 rounds, 200 distillation
    steps, 6 seeds: the global model's test accuracy agrees between jaxfl and the reference
    to within 0.04 in the seed means (measured: FedDF +0.001, FedAvg -0.002; one seed's value
    spreads by about 0.017, the difference of two 6-seed means by about 0.01). Every client
    every round because sampling 8 of 20 adds a spread that 4 seeds could not average out:
    there the means differed by 0.06, and by 0.011 over 16 seeds (FedAvg, round 3)."""
    subset, data = mnist12k
    reference = {
        algo: [
            ref_feddf.run(data, algorithm=algo, seed=s, **FEDDF_TINY)[-1]
            for s in range(FEDDF_SEEDS)
        ]
        for algo in ("feddf", "fedavg")
    }
    flags = [
        "--dataset", "mnist", "--data-dir", str(subset),
        "--partition", "dirichlet", "--alpha", "1.0",
        "--clients", "20", "--clients-per-round", "20", "--model", "mlp",
        "--public-size", "2000", "--rounds", "3", "--local-epochs", "1", "--batch-size", "50",
        "--lr", "0.1", "--server-distill-steps", "200", "--distill-check-every", "50",
        "--distill-patience", "100", "--seeds", str(FEDDF_SEEDS), "--checkpoint-every", "0",
    ]  # fmt: skip
    jaxfl_acc = {a: jaxfl_finals(tmp_path, a, flags, "test_acc") for a in ("feddf", "fedavg")}
    gaps = {a: np.mean(jaxfl_acc[a]) - np.mean(reference[a]) for a in ("feddf", "fedavg")}
    assert all(abs(g) < 0.04 for g in gaps.values()), (gaps, jaxfl_acc, reference)


def test_maxfl_step_weighs_the_marginal_clients_most():
    """Two clients, gaps x = (0, 4), c = 1: q = (1/4, s(4)(1 - s(4))); the step is
    eta_g sum_k q_k (w_k - w) / (sum q + eps), computed by hand."""
    w = {"a": np.zeros(2)}
    trained = [{"a": np.array([1.0, 0.0])}, {"a": np.array([0.0, 1.0])}]
    s4 = 1 / (1 + np.exp(-4.0))
    q = np.array([0.25, s4 * (1 - s4)])
    new = ref_incfl.maxfl_step(w, trained, np.array([0.0, 4.0]), 1.0, 1e-3, 0.5)
    # tol: float64 on both sides: 1e-12 is a few float64 roundings.
    np.testing.assert_allclose(new["a"], 0.5 * q / (q.sum() + 1e-3), rtol=1e-12)
    assert new["a"][0] > 3 * new["a"][1]


def test_incfl_splits_hold_out_a_tenth_and_test_on_the_clients_own_labels():
    rng = np.random.default_rng(0)
    train_y, test_y = np.repeat(np.arange(10), 100), np.repeat(np.arange(10), 50)
    splits = ref_incfl.client_splits(train_y, test_y, 10, 0.1, 0.1, rng)
    for train, val, test in splits:
        assert len(set(train) & set(val)) == 0
        assert abs(len(val) - 0.1 * (len(train) + len(val))) <= 0.5
        assert len(test) == 50 and set(test_y[test]) <= set(train_y[np.concatenate([train, val])])


INCFL_TINY = {
    "clients": 40,
    "unseen": 8,
    "per_round": 10,
    "alpha": 0.3,
    "rounds": 5,
    "local_epochs": 2,
    "batch": 50,
    "lr": 0.1,
    "unused_size": 2000,
}
INCFL_SEEDS = 4


@pytest.mark.slow  # about 2 minutes: a local-only baseline per run and seed
@pytest.mark.skipif(not mnist_available(), reason="needs the MNIST IDX files ($JAXFL_MNIST)")
def test_incfl_reference_and_jaxfl_agree_at_a_tiny_size(tmp_path, mnist12k):
    """MaxFL and FedAvg with the local-only baseline on 12,000 MNIST examples (2,000 set
    aside as jaxfl's default public set), 40 clients (8 unseen), 10 per round, Dirichlet 0.3,
    5 rounds of 2 epochs, 4 seeds: the seed means of the global model's test accuracy agree
    to within 0.05 and of the seen clients' IPR to within 0.1 (one seed's IPR moves in steps of
    1/32 and spreads by about 0.06). Measured: test accuracy FedAvg 0.662 vs 0.650, MaxFL
    0.654 vs 0.654; IPR seen FedAvg 0.523 vs 0.547, MaxFL 0.539 vs 0.539 (jaxfl vs the
    reference). The unseen clients' IPR (8 clients, steps of 1/8) is too coarse to compare
    at this size."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from jaxfl.cli import run

    subset, data = mnist12k
    reference = {
        a: [ref_incfl.run(data, algorithm=a, seed=s, **INCFL_TINY) for s in range(INCFL_SEEDS)]
        for a in ("fedavg", "maxfl")
    }
    flags = [
        "--dataset", "mnist", "--data-dir", str(subset), "--partition", "dirichlet",
        "--alpha", "0.3", "--clients", "40", "--unseen-clients", "8", "--clients-per-round",
        "10", "--model", "mlp", "--public-size", "2000", "--rounds", "5", "--local-epochs", "2",
        "--batch-size", "50", "--lr", "0.1", "--client-val-fraction", "0.1", "--compare-local",
        "--checkpoint-every", "0", "--eval-every", "5",
    ]  # fmt: skip
    algos = {"fedavg": ["--algo", "fedavg"], "maxfl": ["--algo", "incfl", "--incfl-rule", "maxfl"]}
    jaxfl = {}
    for a, argv in algos.items():
        jaxfl[a] = []
        for s in range(INCFL_SEEDS):
            out = tmp_path / f"{a}-{s}"
            assert run.main([*argv, *flags, "--seed", str(s), "--out", str(out)]) == 0
            jaxfl[a].append(json.loads((out / "summary.json").read_text())["final"])
    for a in algos:
        for metric, bound in (("test_acc", 0.05), ("ipr_seen", 0.1)):
            ours = np.mean([r[metric] for r in jaxfl[a]])
            theirs = np.mean([r[metric] for r in reference[a]])
            assert abs(ours - theirs) < bound, (a, metric, ours, theirs)


def test_fccl_cross_correlation_by_hand():
    """Two classes, a batch of three: M = Zhat^T Zhat_t / B by hand; the loss is
    sum_u (1 - M_uu)^2 + lambda sum_{u != v} (1 + M_uv)^2."""
    z = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    t = np.array([[0.5, 1.0], [1.0, 0.0], [3.0, 1.0]])

    def hat(a):
        return (a - a.mean(0)) / np.sqrt(a.var(0) + 1e-5)

    m = hat(z).T @ hat(t) / 3
    expected = (
        (1 - m[0, 0]) ** 2 + (1 - m[1, 1]) ** 2 + 0.3 * ((1 + m[0, 1]) ** 2 + (1 + m[1, 0]) ** 2)
    )
    np.testing.assert_allclose(ref_fccl.cross_correlation(z, t, 0.3), expected, rtol=SUMS)


def test_fccl_domains_are_the_shifts_of_the_same_images():
    x = np.random.default_rng(0).random((2, 784)).astype(np.float32)
    np.testing.assert_allclose(ref_fccl.domain(x, "invert"), 1.0 - x)
    rotated = ref_fccl.domain(x, "rot90").reshape(2, 28, 28)
    np.testing.assert_allclose(rotated[0], np.rot90(x[0].reshape(28, 28)))


FCCL_TINY = {
    "per_domain": 4,
    "per_round": 2,
    "models": ((200, 200), (64, 64), ()),
    "rounds": 3,
    "public_size": 2000,
}
FCCL_SEEDS = 4


@pytest.mark.slow  # about 90 s: twelve clients' models trained one at a time
@pytest.mark.skipif(not mnist_available(), reason="needs the MNIST IDX files ($JAXFL_MNIST)")
def test_fccl_reference_and_jaxfl_agree_at_a_tiny_size(tmp_path, mnist12k):
    """FCCL and local-only training on three domains of 12,000 MNIST examples (as is, inverted,
    rotated), 4 clients per domain with the 2NN / MLP 64-64 / logistic regression, 2 per domain
    per round, 3 rounds, 4 seeds: the seed means of both views (a client's model on its own
    domain's test split, "intra"; on every domain's test set, "inter": jaxfl on a fixed 500 of
    them) agree within 0.04 for FCCL and 0.08 for local training, whose clients take one or two
    epochs in 3 rounds and spread by about 0.06 from seed to seed. Measured (jaxfl vs the
    reference): FCCL intra 0.781 vs 0.779, inter 0.329 vs 0.312; local intra 0.594 vs 0.547,
    inter 0.270 vs 0.237."""
    subset, data = mnist12k
    reference = {
        a: [ref_fccl.run(data, algorithm=a, seed=s, **FCCL_TINY) for s in range(FCCL_SEEDS)]
        for a in ("fccl", "local")
    }
    flags = [
        "--dataset", "mnist", "--data-dir", str(subset),
        "--domains", "mnist,mnist:invert,mnist:rot90", "--models", "mlp:1,mlp-64-64:1,logreg:1",
        "--partition", "iid", "--clients", "12", "--clients-per-round", "6", "--rounds", "3",
        "--public-size", "2000", "--public-per-round", "512", "--local-epochs", "1",
        "--client-val-fraction", "0", "--seeds", str(FCCL_SEEDS), "--checkpoint-every", "0",
    ]  # fmt: skip
    for a, bound in (("fccl", 0.04), ("local", 0.08)):
        intra = jaxfl_finals(tmp_path, a, flags, "client_acc_mean")
        inter = [  # the same run's other view
            json.loads(line)["others_acc_mean"]
            for line in (tmp_path / a / "metrics.jsonl").read_text().splitlines()
            if "others_acc_mean" in line
        ][-FCCL_SEEDS:]
        for view, ours in (("intra", intra), ("inter", inter)):
            theirs = np.mean([r[view] for r in reference[a]])
            assert abs(np.mean(ours) - theirs) < bound, (a, view, ours, theirs)
