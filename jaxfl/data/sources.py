"""Data sources: tensorflow-datasets, a local folder of IDX files, and embedded synthetic data.

Every source returns a :class:`Dataset` of host NumPy arrays: images as float32 NHWC with each
data set's standard preprocessing (:func:`_scale_images`: MNIST-family pixels in [0, 1], as in
FedAvg's, LEAF's and FedJAX's pipelines and torchvision's ``ToTensor``; CIFAR standardized per
channel with its training split's mean and standard deviation, as the PyTorch peers such as
FedDF's code do), labels as int32. Arrays converted from
TFDS or IDX are cached as ``.npz`` under ``$JAXFL_CACHE`` (default ``~/.cache/jaxfl``) so that a
second run starts in seconds.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from jaxfl.core.names import DATASETS as DATASETS  # defined without JAX, for --help
from jaxfl.core.names import EMBEDDED_DATASETS as EMBEDDED_DATASETS
from jaxfl.core.names import NATURAL_DATASETS
from jaxfl.core.names import TFDS_DATASETS as TFDS_DATASETS
from jaxfl.data.dataset import Dataset as Dataset  # defined there; imported from here too
from jaxfl.data.dataset import DataUnavailableError as DataUnavailableError
from jaxfl.data.pixels import CHANNEL_STATS as CHANNEL_STATS
from jaxfl.data.pixels import scale_images as _scale_images
from jaxfl.data.synthetic import blobs, synthetic_federated


def cache_dir() -> Path:
    return Path(os.environ.get("JAXFL_CACHE", Path.home() / ".cache" / "jaxfl"))


# ----------------------------------------------------------------------------------------------
# IDX (the MNIST-family raw format)
# ----------------------------------------------------------------------------------------------
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a NumPy array; an unreadable,
    truncated or malformed file is a :class:`DataUnavailableError` naming it."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, OSError) as err:  # gzip.BadGzipFile is an OSError
        raise DataUnavailableError(
            f"{path} cannot be read ({type(err).__name__}: {err}): the file is damaged or "
            "truncated; download it again"
        ) from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataUnavailableError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataUnavailableError(
            f"{path}: header says {dims} but holds {data.size} values (a truncated file?)"
        )
    return data.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem + ".bin"):
        if (folder / candidate).exists():
            return folder / candidate
    return None


def check_data_dir(data_dir: str | Path, name: str) -> None:
    """Before any work: ``--data-dir`` must be a folder holding MNIST-family IDX files or a
    prepared TFDS copy of ``name`` (a ``<builder>/`` folder), else a DataUnavailableError that
    says which."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DataUnavailableError(f"--data-dir {folder} does not exist or is not a folder")
    if _find_idx(folder, "train-images-idx3-ubyte") is not None:
        return
    builder = TFDS_DATASETS.get(name, (name,))[0].split("/")[0]
    if (folder / builder).is_dir():
        return
    raise DataUnavailableError(
        f"--data-dir {folder} holds neither MNIST-family IDX files (train-images-idx3-ubyte[.gz], "
        f"train-labels-idx1-ubyte[.gz], t10k-...) nor a prepared TFDS data set ({builder}/); "
        "omit --data-dir to let TFDS download into its default folder"
    )


def load_idx_folder(folder: str | Path, name: str = "mnist", num_classes: int = 10) -> Dataset:
    """Load MNIST-family IDX files (``train-images-idx3-ubyte[.gz]``, ...) from ``folder``."""
    folder = Path(folder)
    stems = {
        "train_x": "train-images-idx3-ubyte",
        "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte",
        "test_y": "t10k-labels-idx1-ubyte",
    }
    paths = {k: _find_idx(folder, s) for k, s in stems.items()}
    missing = [stems[k] for k, p in paths.items() if p is None]
    if missing:
        raise DataUnavailableError(
            f"--data-dir {folder}: missing IDX files {missing} (expected the MNIST-family layout: "
            "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
            "t10k-images-idx3-ubyte[.gz],"
            " t10k-labels-idx1-ubyte[.gz])"
        )
    arrays = {k: read_idx(p) for k, p in paths.items()}
    return Dataset(
        name=name,
        train_x=_scale_images(arrays["train_x"], name),
        train_y=arrays["train_y"].astype(np.int32),
        test_x=_scale_images(arrays["test_x"], name),
        test_y=arrays["test_y"].astype(np.int32),
        num_classes=num_classes,
        source=f"idx:{folder}",
    )


# ----------------------------------------------------------------------------------------------
# tensorflow-datasets
# ----------------------------------------------------------------------------------------------
def _read_data_source(source, image_key: str) -> tuple[np.ndarray, np.ndarray]:
    n = len(source)
    images, labels = [], []
    for start in range(0, n, 4096):
        keys = list(range(start, min(n, start + 4096)))
        try:
            records = source.__getitems__(keys)
        except (TypeError, AttributeError):  # mocked sources only support item access
            records = [source[i] for i in keys]
        images.extend(np.asarray(r[image_key]) for r in records)
        labels.extend(int(r["label"]) for r in records)
    return np.stack(images), np.asarray(labels, dtype=np.int32)


def load_tfds(name: str, data_dir: str | None = None, use_cache: bool = True) -> Dataset:
    """Load a TFDS image-classification data set as arrays, through ``tfds.data_source``.

    ``tfds.data_source`` reads prepared array_record files without TensorFlow. Downloading and
    preparing them the first time needs TensorFlow (``pip install 'jaxfl[tfds-prepare]'``) and
    internet; both failures are reported as :class:`DataUnavailableError`.
    """
    builder_name, image_key, num_classes = TFDS_DATASETS[name]
    cache_file = cache_dir() / f"{name}.npz"
    if use_cache and cache_file.exists():
        with np.load(cache_file) as z:
            return Dataset(
                name=name,
                train_x=_scale_images(z["train_x"], name),
                train_y=z["train_y"],
                test_x=_scale_images(z["test_x"], name),
                test_y=z["test_y"],
                num_classes=num_classes,
                source=f"cache:{cache_file}",
            )
    import tensorflow_datasets as tfds

    try:
        splits = {
            split: _read_data_source(
                tfds.data_source(builder_name, split=split, data_dir=data_dir), image_key
            )
            for split in ("train", "test")
        }
    except Exception as err:  # network, missing TensorFlow, corrupt download, ...
        raise DataUnavailableError(
            f"could not load --dataset {name} through tensorflow-datasets "
            f"({type(err).__name__}: {str(err)[:300]}). Without internet, point --data-dir at a "
            "folder of MNIST-family IDX files, or use the embedded data set with --dataset "
            "synthetic. Preparing a TFDS data set the first time needs internet and TensorFlow: "
            "pip install 'jaxfl[tfds-prepare]'."
        ) from err
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    if use_cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(tmp, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)
        tmp.replace(cache_file)
    return Dataset(
        name=name,
        train_x=_scale_images(train_x, name),
        train_y=train_y,
        test_x=_scale_images(test_x, name),
        test_y=test_y,
        num_classes=num_classes,
        source="tfds",
    )


# ----------------------------------------------------------------------------------------------
# Front door
# ----------------------------------------------------------------------------------------------
def load_dataset(
    name: str,
    data_dir: str | None = None,
    *,
    num_clients: int = 100,
    seed: int = 0,
    synthetic_alpha: float = 1.0,
    synthetic_beta: float = 1.0,
    min_client_examples: int = 1,
    max_client_examples: int | None = None,
    sequence_length: int | None = None,
) -> Dataset:
    """Load data set ``name`` (one of :data:`DATASETS`).

    Args:
      name: data set name.
      data_dir: a folder of IDX files (MNIST family) to read instead of TFDS; for TFDS names a
        folder that is not IDX is passed on to TFDS as its ``data_dir``.
      num_clients, seed, synthetic_alpha, synthetic_beta: used by the embedded ``synthetic`` and
        ``synthetic_iid`` sets, which generate one natural client per simulated client.
      min_client_examples, max_client_examples: the natural federations' client filter and cap
        (:func:`jaxfl.data.natural.load_natural`, which also takes ``num_clients`` clients).
      sequence_length: the language tasks' tokens per row (None: the data set's own).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown --dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if name == "blobs":
        return blobs(seed=seed)
    if name in NATURAL_DATASETS:
        from jaxfl.data.natural import load_natural

        return load_natural(
            name,
            data_dir,
            num_clients,
            seed=seed,
            min_examples=min_client_examples,
            max_examples=max_client_examples,
            sequence_length=sequence_length,
        )
    if name in EMBEDDED_DATASETS:
        return synthetic_federated(
            num_clients, synthetic_alpha, synthetic_beta, seed=seed, iid=name == "synthetic_iid"
        )
    if data_dir is not None and _find_idx(Path(data_dir), "train-images-idx3-ubyte"):
        return load_idx_folder(data_dir, name=name, num_classes=TFDS_DATASETS[name][2])
    return load_tfds(name, data_dir=data_dir)
