"""Data sources: IDX files, TFDS under mock_data, the offline message, real MNIST."""

import gzip
import hashlib

import numpy as np
import pytest

from jaxfl.data import DataUnavailableError, load_dataset, sources

from .conftest import MNIST_DIR
from .tolerance import SUMS


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_folder_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (12, 28, 28))
    labels = rng.integers(0, 10, 12)
    for stem, arr in [
        ("train-images-idx3-ubyte", imgs),
        ("train-labels-idx1-ubyte", labels),
        ("t10k-images-idx3-ubyte", imgs[:4]),
        ("t10k-labels-idx1-ubyte", labels[:4]),
    ]:
        _write_idx(tmp_path / f"{stem}.gz", arr)
    ds = load_dataset("mnist", str(tmp_path))
    assert ds.train_x.shape == (12, 28, 28, 1) and ds.train_x.dtype == np.float32
    # tol: float32 pixels / 255 against float64: one rounding of values in [0, 1], at most 2^-25.
    np.testing.assert_allclose(ds.train_x[..., 0], imgs / 255.0, atol=1e-6)  # [0, 1]
    np.testing.assert_array_equal(ds.train_y, labels)
    assert ds.source.startswith("idx:")


def test_each_data_set_gets_its_standard_preprocessing():
    """MNIST family: pixels / 255 (FedAvg's, LEAF's, FedJAX's pipelines); CIFAR: standardized per
    channel with the training split's statistics (the PyTorch peers' Normalize)."""
    from jaxfl.data.sources import CHANNEL_STATS, _scale_images

    pixels = np.array([[[0, 255]], [[51, 102]]], np.uint8)  # (2, 1, 2): N, H, W
    np.testing.assert_allclose(_scale_images(pixels, "fashion_mnist")[..., 0], pixels / 255.0)
    rgb = np.stack([pixels, pixels, pixels], -1)  # (2, 1, 2, 3)
    mean, std = CHANNEL_STATS["cifar10"]
    for c in range(3):
        np.testing.assert_allclose(
            _scale_images(rgb, "cifar10")[..., c], (pixels / 255.0 - mean[c]) / std[c], rtol=SUMS
        )


def test_idx_folder_missing_files_names_the_flag(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28)))
    with pytest.raises(DataUnavailableError, match="--data-dir"):
        load_dataset("mnist", str(tmp_path))


def test_a_missing_empty_or_truncated_data_dir_is_named_before_any_work(tmp_path):
    from jaxfl.data.sources import check_data_dir, read_idx

    with pytest.raises(DataUnavailableError, match="does not exist"):
        check_data_dir(tmp_path / "nowhere", "mnist")
    with pytest.raises(DataUnavailableError, match="holds neither MNIST-family IDX files"):
        check_data_dir(tmp_path, "mnist")  # empty
    (tmp_path / "mnist").mkdir()
    check_data_dir(tmp_path, "mnist")  # a prepared TFDS copy: left to TFDS
    whole = tmp_path / "train-images-idx3-ubyte.gz"
    _write_idx(whole, np.zeros((4, 28, 28)))
    truncated = tmp_path / "cut" / "train-images-idx3-ubyte.gz"
    truncated.parent.mkdir()
    truncated.write_bytes(whole.read_bytes()[:-20])
    with pytest.raises(DataUnavailableError, match=f"{truncated}.*damaged or truncated"):
        read_idx(truncated)


def test_tfds_path_under_mock_data_and_cache():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = load_dataset("mnist")
    assert ds.source == "tfds"
    assert ds.train_x.shape == (16, 28, 28, 1) and ds.test_x.shape[1:] == (28, 28, 1)
    assert ds.train_x.min() >= 0.0 and ds.train_x.max() <= 1.0
    cached = load_dataset("mnist")  # second load: from the converted-array cache, no TFDS
    assert cached.source.startswith("cache:")
    np.testing.assert_array_equal(cached.train_x, ds.train_x)


def test_offline_failure_names_data_dir_and_embedded_set(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("no internet")

    monkeypatch.setattr(tfds, "data_source", offline)
    with pytest.raises(DataUnavailableError) as err:
        load_dataset("fashion_mnist")
    assert "--data-dir" in str(err.value) and "--dataset synthetic" in str(err.value)


def test_unknown_dataset_lists_allowed():
    with pytest.raises(ValueError, match="allowed: mnist"):
        load_dataset("imagenet")


def test_synthetic_is_non_iid_and_deterministic():
    a = load_dataset("synthetic", num_clients=30, seed=1)
    b = load_dataset("synthetic", num_clients=30, seed=1)
    np.testing.assert_array_equal(a.train_x, b.train_x)
    assert len(a.train_groups) == 30 and a.train_x.shape[1:] == (60,)
    hists = np.stack([np.bincount(a.train_y[g], minlength=10) for g in a.train_groups])
    dists = hists / hists.sum(1, keepdims=True)
    assert np.abs(dists - dists.mean(0)).sum(1).mean() > 0.5  # label mixes differ by client


@pytest.mark.skipif(
    not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason=f"real MNIST not found at {MNIST_DIR} (set JAXFL_MNIST)",
)
def test_real_mnist_from_shared_idx_files():
    with gzip.open(MNIST_DIR / "t10k-labels-idx1-ubyte.gz") as f:
        raw = f.read()
    assert hashlib.sha256(raw).hexdigest() == (
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
    )
    ds = sources.load_idx_folder(MNIST_DIR)
    assert ds.train_x.shape == (60000, 28, 28, 1) and ds.test_x.shape == (10000, 28, 28, 1)
    assert np.bincount(ds.train_y).tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
