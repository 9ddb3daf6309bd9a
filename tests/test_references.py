"""The independent references (reproductions/references/): they share no code with jaxfl, their
pieces follow the papers' equations, and at a tiny size they agree with jaxfl over seeds. Here
the shared pieces, DS-FL's and FD's; FedDF's, IncFL's and FCCL's in
tests/test_references_feddf_incfl_fccl.py."""

import ast
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reproductions.references import base
from reproductions.references import dsfl as ref_dsfl
from reproductions.references import fd as ref_fd

from .conftest import jaxfl_finals, mnist_available
from .tolerance import NEAR_ZERO, SUMS, ULPS

ROOT = Path(__file__).resolve().parents[1]
REFERENCES = ROOT / "reproductions" / "references"


def test_the_references_import_nothing_from_jaxfl():
    """Independent means independent: no module of jaxfl, algorithms or the reproductions'
    shared code (which reads jaxfl's results) is imported by a reference."""
    for path in REFERENCES.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                assert top not in ("jaxfl", "algorithms"), (path.name, name)
                if top == "reproductions":
                    assert name.startswith("reproductions.references"), (path.name, name)


def test_era_is_softmax_of_the_mean_over_the_temperature():
    """ERA by hand: softmax([0.6, 0.4] / 0.1) = (e^6, e^4) / (e^6 + e^4); SA is the mean."""
    mean = np.array([[0.6, 0.4], [0.5, 0.5]])
    expected = np.array([[np.exp(6), np.exp(4)], [1, 1]])
    expected /= expected.sum(1, keepdims=True)
    # tol: float64 on both sides: 1e-12 is a few float64 roundings.
    np.testing.assert_allclose(ref_dsfl.era(mean, 0.1), expected, rtol=1e-12)


def test_every_client_holds_exactly_k_labels_and_the_rows_are_split_without_overlap():
    y = np.repeat(np.arange(10), 57)
    parts = base.classes_per_client(y, 20, 2, np.random.default_rng(4))
    assert all(len(set(y[p])) == 2 for p in parts)
    holders = np.bincount(np.concatenate([np.unique(y[p]) for p in parts]), minlength=10)
    assert (holders == 4).all()  # 20 clients x 2 labels / 10 labels
    rows = np.concatenate(parts)
    assert len(rows) == len(y) and len(np.unique(rows)) == len(y)


def test_an_epochs_batches_visit_every_real_row_once_and_drop_last_drops_the_remainder():
    """23 real rows of 30, batches of 5: 6 steps, each real row once among the valid slots (the
    last step on 3 rows); with drop_last only 20 rows (4 full steps) count."""
    rows, valid = base.epoch_batches(jax.random.key(0), 23, 30, 5)
    rows, valid = np.asarray(rows), np.asarray(valid)
    assert rows.shape == valid.shape == (6, 5)
    assert sorted(rows[valid > 0].tolist()) == list(range(23))
    assert valid.sum(1).tolist() == [5, 5, 5, 5, 3, 0]
    _, valid = base.epoch_batches(jax.random.key(0), 23, 30, 5, drop_last=True)
    assert np.asarray(valid).sum(1).tolist() == [5, 5, 5, 5, 0, 0]


def test_one_full_batch_epoch_is_one_gradient_step_of_the_cross_entropy():
    """Logistic regression (no hidden layer), batch = n, one epoch: W - lr X^T (softmax - Y) / n,
    computed in NumPy; padding rows past n are never used."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(3, size=8)]
    params = base.init_mlp(jax.random.key(1), (5, 3))
    padded_x, padded_y = base.pad_rows(x, 11), base.pad_rows(y, 11)
    padded_x[8:], padded_y[8:] = 5.0, 7.0  # garbage in the padding rows
    new, _ = base.sgd_epochs(params, padded_x, padded_y, 8, jax.random.key(2), 0.5, 8, 1)
    w, b = (np.asarray(v, np.float64) for v in params[0])
    z = x @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(new[0][0], w - 0.5 * x.T @ (p - y) / 8, rtol=SUMS, atol=NEAR_ZERO)
    np.testing.assert_allclose(new[0][1], b - 0.5 * (p - y).mean(0), rtol=SUMS, atol=NEAR_ZERO)


TINY = {
    "clients": 20,
    "classes_per_client": 2,
    "open_size": 2000,
    "open_per_round": 500,
    "rounds": 3,
    "local_epochs": 1,
    "distill_epochs": 2,
    "batch": 50,
    "lr": 0.1,
}
SEEDS = 3


@pytest.mark.skipif(not mnist_available(), reason="needs the MNIST IDX files ($JAXFL_MNIST)")
def test_dsfl_reference_and_jaxfl_agree_at_a_tiny_size(tmp_path, mnist12k):
    """DS-FL (ERA) and FedAvg on 12,000 MNIST examples, 20 clients x 2 labels, every client
    every round, 3 rounds, 3 seeds: jaxfl (scripts/run.py, one compiled sweep) and the
    reference (a per-client loop) differ in partition, initialisation draws and batching, so
    only their seed means are compared: within 0.12 of each other (the seeds' own spread is
    about 0.1 here). Measured with the reference at this size: ERA 0.38, jaxfl 0.36; ERA with
    T = 1 instead of 0.1: 0.12; PyTorch's smaller initialisation: 0.12 (checked below, the
    difference the cpu-scale entry first showed); SA: 0.29, a gap this bound does not catch
    (the cpu-scale entry measures ERA - SA over seeds)."""
    subset, data = mnist12k
    reference = {
        algo: [ref_dsfl.run(data, algorithm=algo, seed=s, **TINY)[-1] for s in range(SEEDS)]
        for algo in ("era", "fedavg")
    }
    flags = [
        "--dataset", "mnist", "--data-dir", str(subset),
        "--partition", "classes", "--classes-per-client", "2",
        "--clients", "20", "--clients-per-round", "20", "--model", "mlp",
        "--public-size", "2000", "--public-per-round", "500", "--rounds", "3",
        "--local-epochs", "1", "--distill-epochs", "2", "--seeds", str(SEEDS),
        "--checkpoint-every", "0",
    ]  # fmt: skip
    jaxfl_acc = {
        "era" if algo == "dsfl" else algo: jaxfl_finals(tmp_path, algo, flags, "test_acc")
        for algo in ("dsfl", "fedavg")
    }
    for algo in ("era", "fedavg"):
        gap = abs(np.mean(jaxfl_acc[algo]) - np.mean(reference[algo]))
        assert gap < 0.12, (algo, jaxfl_acc[algo], reference[algo])
    assert np.mean(reference["era"]) > 0.3  # both learn (chance 0.1)
    torch_init = [
        ref_dsfl.run(data, algorithm="era", seed=s, init="torch", **TINY)[-1] for s in range(SEEDS)
    ]
    assert np.mean(reference["era"]) - np.mean(torch_init) > 0.1, torch_init


def test_probabilities_are_softmax_rows():
    params = base.init_mlp(jax.random.key(0), (4, 6, 3))
    p = base.probabilities(params, jnp.ones((2, 4)))
    np.testing.assert_allclose(np.asarray(p).sum(1), 1.0, rtol=ULPS)


def test_fd_targets_average_the_other_holders_vectors():
    """Three devices, two labels: device 2 lacks label 1. Device 0's target for label 0 is the
    mean of devices 1 and 2's vectors; for label 1, device 1's alone; device 1's target for
    label 1 is device 0's; with exclude_own=False every device gets the mean over all holders."""
    tables = np.array(
        [[[1.0, 0.0], [0.0, 1.0]], [[3.0, 0.0], [0.0, 3.0]], [[5.0, 5.0], [9.0, 9.0]]]
    )
    holds = np.array([[True, True], [True, True], [True, False]])
    g, has = ref_fd.global_vectors(tables, holds, exclude_own=True)
    np.testing.assert_allclose(g[0, 0], [4.0, 2.5])
    np.testing.assert_allclose(g[0, 1], [0.0, 3.0])
    np.testing.assert_allclose(g[1, 1], [0.0, 1.0])
    np.testing.assert_allclose(g[2, 1], [0.0, 2.0])  # the two holders of label 1
    assert has.all()
    g_all, _ = ref_fd.global_vectors(tables, holds, exclude_own=False)
    np.testing.assert_allclose(g_all[:, 0], np.broadcast_to([3.0, 5.0 / 3], (3, 2)))
    np.testing.assert_allclose(g_all[:, 1], np.broadcast_to([0.0, 2.0], (3, 2)))


def test_fd_rare_label_shares_keep_exactly_the_few_examples():
    y = np.repeat(np.arange(10), 100)
    parts = ref_fd.rare_label_shares(y, 5, 2, 3, np.random.default_rng(0))
    rows = np.concatenate(parts)
    assert len(np.unique(rows)) == len(rows)
    for p in parts:
        counts = np.bincount(y[p], minlength=10)
        assert sorted(counts)[:2] == [3, 3] and (np.sort(counts)[2:] > 10).all()


def test_fd_epoch_is_the_papers_step_and_its_table_holds_the_steps_logits():
    """Logistic regression, one full batch: W - lr d/dW mean[CE(y, f) + beta CE(softmax(G[y]),
    softmax(f))] computed in NumPy, and the uploaded table is the mean logit vector per label
    of that step (before the update); a label without a target gets no distillation term."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 1])
    targets = rng.normal(size=(3, 3)).astype(np.float32)
    has = np.array([True, True, False])
    params = base.init_mlp(jax.random.key(1), (4, 3))
    new, table, holds = ref_fd.fd_epochs(
        params, x, y, 6, jax.random.key(2), 0.5, 0.7, targets, has, 6, 1
    )
    w, b = (np.asarray(v, np.float64) for v in params[0])
    z = x @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    t = np.exp(targets - targets.max(1, keepdims=True))
    t /= t.sum(1, keepdims=True)
    onehot = np.eye(3)[y]
    dz = (p - onehot) + 0.7 * has[y][:, None] * (p - t[y])  # d/dz of each example's loss
    np.testing.assert_allclose(new[0][0], w - 0.5 * x.T @ dz / 6, rtol=SUMS, atol=NEAR_ZERO)
    np.testing.assert_allclose(new[0][1], b - 0.5 * dz.mean(0), rtol=SUMS, atol=NEAR_ZERO)
    expected = np.stack([z[y == label].mean(0) for label in range(3)])
    np.testing.assert_allclose(table, expected, rtol=SUMS, atol=NEAR_ZERO)
    assert np.asarray(holds).all()


FD_TINY = {
    "clients": 10,
    "rare_labels": 2,
    "rare_examples": 2,
    "rounds": 3,
    "local_epochs": 1,
    "batch": 50,
    "lr": 0.1,
    "beta": 0.5,
    "drop_last": False,
}
FD_SEEDS = 6


@pytest.mark.skipif(not mnist_available(), reason="needs the MNIST IDX files ($JAXFL_MNIST)")
def test_fd_reference_and_jaxfl_agree_at_a_tiny_size(tmp_path, mnist12k):
    """FD and standalone training on 12,000 MNIST examples, 10 devices with 2 scarce labels
    (2 examples each), every device every round, 3 rounds, 6 seeds: the devices' mean accuracy
    on the global test set (jaxfl: ``others_acc_mean`` on 500 test examples; the reference: all
    2,000) agrees between jaxfl and the reference to within 0.05 in the seed means, for both.
    The two differ in partition, initialisation and shuffle draws and in FD's target (the
    paper's average over the other devices in the reference, over all holders in jaxfl), so
    only means are compared; one seed's value has a spread of 0.02-0.03 here, the difference
    of two 6-seed means about 0.016 (measured gaps: FD +0.018, standalone +0.008). Two
    settings first made them differ and are matched here: jaxfl's default public set (a sixth
    of the train split held out) and the standalone algorithm's validation tenth
    (``--public-size 0 --client-val-fraction 0``: every example on the devices); and the last
    partial batch of each epoch, which jaxfl (like PyTorch's DataLoader) trains on and the
    reference drops by default: a step on 14 examples at lr 0.1 just before each evaluation
    costs about 0.04 here (64 draws of one device's round from the same initial weights:
    jaxfl 0.484, the reference keeping it 0.482, dropping it 0.55); ``drop_last=False``."""
    subset, data = mnist12k
    reference = {
        algo: [ref_fd.run(data, algorithm=algo, seed=s, **FD_TINY)[-1] for s in range(FD_SEEDS)]
        for algo in ("fd", "local")
    }
    flags = [
        "--dataset", "mnist", "--data-dir", str(subset),
        "--partition", "rare", "--rare-labels", "2", "--rare-examples", "2",
        "--clients", "10", "--clients-per-round", "10", "--model", "mlp",
        "--rounds", "3", "--local-epochs", "1", "--batch-size", "50", "--lr", "0.1",
        "--fd-beta", "0.5", "--seeds", str(FD_SEEDS), "--checkpoint-every", "0",
        "--public-size", "0", "--client-val-fraction", "0",  # all 12,000 on the devices
    ]  # fmt: skip
    jaxfl_acc = {
        algo: jaxfl_finals(tmp_path, algo, flags, "others_acc_mean") for algo in ("fd", "local")
    }
    gaps = {a: np.mean(jaxfl_acc[a]) - np.mean(reference[a]) for a in ("fd", "local")}
    assert all(abs(g) < 0.05 for g in gaps.values()), (gaps, jaxfl_acc, reference)
    assert np.mean(reference["fd"]) > 0.5  # every device learns its 8 ample labels
