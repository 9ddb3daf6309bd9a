"""Shared fixtures: small federations built from embedded or generated data."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

# One XLA compilation cache for the session (and the run.py processes tests start): tests build
# the same rounds many times through fresh closures, and a persistent cache turns each repeated
# compile of the same program into a load (measured: tests/test_rounds.py 153 s -> 126 s).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxfl-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
# no test touches the network: a natural data set's download is refused (tests/test_download.py
# serves its files from a local HTTP server and lifts this for itself)
os.environ.setdefault("JAXFL_OFFLINE", "1")

import numpy as np
import pytest

from jaxfl.data import Dataset, FederationSpec, build_federation

# real MNIST IDX files: $JAXFL_MNIST, else this repository's machines' shared copy
MNIST_DIR = Path(
    os.environ.get("JAXFL_MNIST")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """A fresh cache per test, and no conv-lowering measurements (seconds per layer shape):
    ``--conv-lowering auto`` takes its rule of thumb unless a test turns tuning on."""
    from jaxfl.models import tuning

    monkeypatch.setenv("JAXFL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JAXFL_CONV_TUNING", "off")
    tuning.reset()
    yield
    tuning.reset()


def tiny_image_dataset(n_train=240, n_test=60, classes=4, shape=(28, 28, 1), seed=0) -> Dataset:
    """Random images whose label is encoded in their mean brightness (learnable, tiny)."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(classes, size=n).astype(np.int32)
        x = rng.normal(0, 0.3, (n, *shape)).astype(np.float32) + (y / classes)[:, None, None, None]
        return x.astype(np.float32), y

    (tx, ty), (vx, vy) = make(n_train), make(n_test)
    return Dataset("tiny", tx, ty, vx, vy, classes, source="generated")


@pytest.fixture
def tiny_federation():
    """6 clients of unequal sizes (quantity skew) over 28x28 noise images, public set of 40."""
    ds = tiny_image_dataset()
    spec = FederationSpec(num_clients=6, partition="quantity", alpha=2.0, public_size=40, seed=1)
    fed, _ = build_federation(ds, spec)
    counts = np.asarray(fed.client_count)
    assert counts.min() != counts.max(), "fixture must have unequal client sizes"
    return fed


def mnist_available() -> bool:
    return any((MNIST_DIR / f"train-images-idx3-ubyte{ext}").exists() for ext in ("", ".gz"))


# the independent references' agreement tests (tests/test_references*.py)
@pytest.fixture(scope="session")
def mnist12k(tmp_path_factory):
    """The first 12,000 train / 2,000 test MNIST examples as IDX files: (folder, the
    reference's arrays)."""
    from reproductions.references import base

    from .test_data import _write_idx

    subset = tmp_path_factory.mktemp("mnist12k")
    for stem, n in (("train", 12000), ("t10k", 2000)):
        found = {p.name.split("-")[1]: p for p in MNIST_DIR.glob(f"{stem}-*-idx?-ubyte*")}
        images, labels = (base.read_idx(found[kind])[:n] for kind in ("images", "labels"))
        _write_idx(subset / f"{stem}-images-idx3-ubyte.gz", images)
        _write_idx(subset / f"{stem}-labels-idx1-ubyte.gz", labels)
    return subset, base.load_mnist(subset)


def jaxfl_finals(tmp_path, algo, flags, metric):
    """scripts/run.py's final ``metric`` per seed (one compiled sweep over the seeds)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from jaxfl.cli import run

    out = tmp_path / algo
    assert run.main(["--algo", algo, *flags, "--out", str(out)]) == 0
    finals = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if metric in record:
            finals[record["seed"]] = record[metric]
    return list(finals.values())
