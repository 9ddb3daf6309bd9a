"""The natural federations by name: where their files are, how to read them, and the one
:class:`jaxfl.data.Dataset` a run gets (clients as ``train_groups``/``test_groups``).

- ``emnist62_federated``: EMNIST-62 split by writer (3,400 writers in FedJAX's and TFF's files,
  3,550 in LEAF's FEMNIST). Read from FedJAX's ``federated_emnist_{train,test}.sqlite``, TFF's
  ``emnist_all.sqlite`` or LEAF's ``train/`` and ``test/`` JSON folders; pixels as jaxfl reads
  MNIST (ink 1 on a 0 background, in [0, 1]: these files store white as 1, so x = 1 - pixels,
  as FedJAX's ``preprocess_batch`` does), shape (28, 28, 1); the test split holds each writer's
  own test examples.
- ``cifar100_federated``: TFF's Pachinko split (500 train clients of 100 images, 100 test
  clients), from TFF's ``cifar100.sqlite`` or FedJAX's ``federated_cifar100_{train,test}.sqlite``;
  pixels scaled and standardised per channel as jaxfl's ``cifar100``; the test clients form the
  global test split, and each train client's own test split is drawn from it by its label
  distribution (the clients share no writer-like identity with the test clients).
- ``shakespeare``: McMahan et al.'s next-character task, one client per speaking role (715 in
  TFF's and FedJAX's files), from FedJAX's ``shakespeare_{train,test}.sqlite``, TFF's
  ``shakespeare.sqlite`` (a ``snippets`` column: each role's lines) or LEAF's JSON (80-character
  windows and their next character); each client's text becomes rows of ``--sequence-length``
  input and target tokens (:mod:`jaxfl.data.natural.shakespeare`); the test split holds each
  role's own test text.
- ``leaf_synthetic``: generated (:mod:`jaxfl.data.natural.leaf_synthetic`), no file.
- ``shakespeare_synthetic``: generated roles' lines, no file
  (:mod:`jaxfl.data.natural.shakespeare_synthetic`), preprocessed as ``shakespeare``.

``--clients N`` takes the first N clients of a fixed shuffled order (a permutation seeded with
:data:`ORDER_SEED`, the same for every ``--seed``, so runs with different seeds share their
population), after ``--min-client-examples`` drops the smaller clients and
``--max-client-examples`` caps each client's train examples at its first M (TFF's
``max_elements``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from jaxfl.core import names
from jaxfl.data.dataset import Dataset
from jaxfl.data.natural import (
    download,
    fedjax_sqlite,
    leaf_json,
    leaf_synthetic,
    shakespeare,
    shakespeare_synthetic,
    stackoverflow,
    tff_sqlite,
)
from jaxfl.data.natural.store import ClientColumns, NaturalDataError, size_summary
from jaxfl.data.pixels import scale_images

ORDER_SEED = 0  # the fixed shuffle from which --clients N takes the first N


@dataclasses.dataclass(frozen=True)
class NaturalSource:
    """Where a natural federation's files are and what they hold.

    Attributes:
      num_classes: labels (the vocabulary size of a text data set).
      fedjax: FedJAX's (train, test) file names, and the (x, y) column names in them (y None:
        a text data set's one column of snippets).
      tff: TFF's file name, its (x, y) feature names, and x's shape.
      leaf: whether LEAF's ``train/`` and ``test/`` JSON folders are a source.
      shared_test_clients: whether the test split's clients are the train clients (writers),
        so each client's own test split is its own test examples.
      downloads: the published files fetched when none is found (:mod:`.download`): one
        format's complete set.
      urls: where every format is published (named when the files are missing).
      text: whether the clients hold text (snippets, or LEAF's character windows) that
        becomes next-token sequences (:mod:`jaxfl.data.natural.shakespeare`).
      needs: files every format needs beside its own (StackOverflow's word counts; TFF's
        ``.tar.bz2`` of it counts too).
    """

    num_classes: int
    fedjax: tuple[tuple[str, str], tuple[str, str]]
    tff: tuple[str, tuple[str, str], tuple[int, ...]]
    leaf: bool
    shared_test_clients: bool
    downloads: tuple[download.RemoteFile, ...]
    urls: tuple[str, ...]
    text: bool = False
    needs: tuple[str, ...] = ()


_TFF = "https://storage.googleapis.com/tff-datasets-public"
_FEDJAX_EMNIST = tuple(
    f"https://storage.googleapis.com/gresearch/fedjax/emnist/federated_emnist_{split}.sqlite"
    for split in ("train", "test")
)
_FEDJAX_SHAKESPEARE = tuple(
    f"https://storage.googleapis.com/gresearch/fedjax/shakespeare/shakespeare_{split}.sqlite"
    for split in ("train", "test")
)
_FEDJAX_STACKOVERFLOW = tuple(
    f"https://storage.googleapis.com/gresearch/fedjax/stackoverflow/{name}"
    for name in ("stackoverflow_train.sqlite", "stackoverflow_test.sqlite",
                 stackoverflow.WORD_COUNTS)
)  # fmt: skip
SOURCES = {
    "emnist62_federated": NaturalSource(
        num_classes=62,
        fedjax=(("federated_emnist_train.sqlite", "federated_emnist_test.sqlite"),
                ("pixels", "label")),
        tff=("emnist_all.sqlite", ("pixels", "label"), (28, 28)),
        leaf=True,
        shared_test_clients=True,
        downloads=tuple(download.RemoteFile(u) for u in _FEDJAX_EMNIST),
        urls=(*_FEDJAX_EMNIST, f"{_TFF}/emnist_all.sqlite.lzma"),
    ),
    "cifar100_federated": NaturalSource(
        num_classes=100,
        fedjax=(("federated_cifar100_train.sqlite", "federated_cifar100_test.sqlite"),
                ("image", "label")),
        tff=("cifar100.sqlite", ("image", "label"), (32, 32, 3)),
        leaf=False,
        shared_test_clients=False,
        # the digest and size FedJAX's cifar100 loader checks TFF's file against
        downloads=(download.RemoteFile(
            f"{_TFF}/cifar100.sqlite.lzma",
            sha256="23d3916c9caa33395737ee560cc7cb77bbd05fc7b73647ee7be3a7e764172939",
            size=153_019_920,
        ),),
        urls=(f"{_TFF}/cifar100.sqlite.lzma",),
    ),
    "shakespeare": NaturalSource(
        num_classes=shakespeare.VOCAB_SIZE,
        fedjax=(("shakespeare_train.sqlite", "shakespeare_test.sqlite"), ("snippets", None)),
        tff=("shakespeare.sqlite", ("snippets", None), ()),
        leaf=True,
        shared_test_clients=True,
        downloads=tuple(download.RemoteFile(u) for u in _FEDJAX_SHAKESPEARE),
        urls=(*_FEDJAX_SHAKESPEARE, f"{_TFF}/shakespeare.sqlite.lzma"),
        text=True,
    ),
    "stackoverflow": NaturalSource(
        num_classes=stackoverflow.vocab_size(),
        fedjax=(("stackoverflow_train.sqlite", "stackoverflow_test.sqlite"), ("tokens", None)),
        tff=("stackoverflow.sqlite", ("tokens", None), ()),
        leaf=False,
        shared_test_clients=True,
        downloads=tuple(download.RemoteFile(u) for u in _FEDJAX_STACKOVERFLOW),
        urls=(*_FEDJAX_STACKOVERFLOW, f"{_TFF}/stackoverflow.sqlite.lzma",
              f"{_TFF}/stackoverflow.word_count.tar.bz2"),
        text=True,
        needs=(stackoverflow.WORD_COUNTS,),
    ),
}  # fmt: skip
GENERATED = ("leaf_synthetic", "shakespeare_synthetic")
TEXT_DATASETS = ("shakespeare", "shakespeare_synthetic", "stackoverflow")
NATURAL_DATASETS = ("leaf_synthetic", "shakespeare_synthetic", *SOURCES)
assert NATURAL_DATASETS == names.NATURAL_DATASETS  # the JAX-free list --help shows


def default_dir(name: str) -> Path:
    """Where ``name``'s files are downloaded without ``--data-dir``:
    ``$JAXFL_DATA_DIR/NAME``, default ``~/.cache/jaxfl/data/NAME``."""
    root = os.environ.get("JAXFL_DATA_DIR") or Path.home() / ".cache" / "jaxfl" / "data"
    return Path(root) / name


def find_files(name: str, data_dir: str | Path | None) -> tuple[str, tuple[Path, ...]]:
    """The format and files of ``name`` in ``data_dir`` (None: :func:`default_dir`):
    ``("fedjax", (train, test))``, ``("tff", (file,))`` or ``("leaf", (train_dir, test_dir))``;
    a NaturalDataError naming what to download otherwise."""
    source = SOURCES[name]
    folder = Path(data_dir) if data_dir is not None else default_dir(name)
    needed = [f for f in source.needs if not (folder / f).is_file()
              and not (folder / f"{f}.tar.bz2").is_file()]  # fmt: skip
    if folder.is_dir() and not needed:
        train, test = (folder / f for f in source.fedjax[0])
        if train.is_file() and test.is_file():
            return "fedjax", (train, test)
        tff_file = folder / source.tff[0]
        if tff_file.is_file():
            return "tff", (tff_file,)
        if source.leaf and (folder / "train").is_dir() and (folder / "test").is_dir():
            return "leaf", (folder / "train", folder / "test")
    where = f"--data-dir {data_dir}" if data_dir is not None else f"{folder} (no --data-dir)"
    leaf = ", or LEAF's train/ and test/ JSON folders" if source.leaf else ""
    beside = f", beside {' and '.join(source.needs)}" if source.needs else ""
    raise NaturalDataError(
        f"--dataset {name}: {where} holds none of its files: FedJAX's "
        f"{' and '.join(source.fedjax[0])}, TFF's {source.tff[0]}{leaf}{beside}. Download them "
        f"from {' or '.join(source.urls)} (decompress a .lzma with `xz -d`) into a folder and give "
        "it as --data-dir"
    )


def locate(
    name: str, data_dir: str | Path | None, *, progress: bool = True
) -> tuple[str, tuple[Path, ...]]:
    """:func:`find_files`, downloading ``name``'s published files into ``data_dir`` (None:
    :func:`default_dir`) when none are there (:mod:`jaxfl.data.natural.download`: a progress
    bar, resumption, a checksum). Offline or unreachable: a NaturalDataError naming the file."""
    try:
        return find_files(name, data_dir)
    except NaturalDataError as missing:
        folder = Path(data_dir) if data_dir is not None else default_dir(name)
        if download.offline():
            raise missing from None
        for remote in SOURCES[name].downloads:
            try:
                download.fetch(remote, folder, progress=progress)
            except NaturalDataError as err:
                raise NaturalDataError(f"--dataset {name}: {err}") from None
        return find_files(name, folder)


def read_splits(name: str, data_dir: str | Path | None) -> tuple[ClientColumns, ClientColumns, str]:
    """(train, test) clients of ``name`` with columns ``x`` and ``y``, as stored (downloaded
    first when ``data_dir`` holds none of its files: :func:`locate`), and the format read.
    A text data set's snippet files give one column, ``snippets``."""
    source = SOURCES[name]
    fmt, files = locate(name, data_dir)
    if fmt == "leaf":
        text = object if source.text else None
        stores = [leaf_json.read(f, *((text, text) if text else ())) for f in files]
        return stores[0], stores[1], fmt
    if fmt == "fedjax":
        x_name, y_name = source.fedjax[1]
        names = tuple(n for n in (x_name, y_name) if n is not None)
        stores = [fedjax_sqlite.read(f, names) for f in files]
    else:
        x_name, y_name = source.tff[1]
        names = tuple(n for n in (x_name, y_name) if n is not None)
        shapes = {x_name: source.tff[2]} if source.tff[2] else {}
        stores = [tff_sqlite.read(files[0], split, names, shapes) for split in ("train", "test")]
    if y_name is None:
        renamed = [ClientColumns(s.client_ids, {"snippets": s.columns[x_name]}, s.offsets)
                   for s in stores]  # fmt: skip
    else:
        renamed = [
            ClientColumns(s.client_ids, {"x": s.columns[x_name], "y": s.columns[y_name]}, s.offsets)
            for s in stores
        ]
    return renamed[0], renamed[1], fmt


def _features(name: str, x: np.ndarray) -> np.ndarray:
    """Stored inputs -> jaxfl's: EMNIST (N, 28, 28, 1) ink-1 floats; CIFAR standardised."""
    if name == "emnist62_federated":
        x = np.asarray(x, np.float32).reshape(len(x), 28, 28)
        return (1.0 - x)[..., None]
    return scale_images(np.asarray(x).reshape(len(x), 32, 32, 3).astype(np.uint8), "cifar100")


def choose_clients(
    store: ClientColumns,
    num_clients: int,
    name: str,
    min_examples: int = 1,
    max_examples: int | None = None,
) -> ClientColumns:
    """The first ``num_clients`` of the fixed shuffled order among the clients with at least
    ``min_examples`` examples, each capped at ``max_examples``."""
    chosen = store.select(chosen_positions(store.sizes, num_clients, name, min_examples))
    return chosen.cap(max_examples) if max_examples is not None else chosen


def chosen_positions(
    sizes: np.ndarray, num_clients: int, name: str, min_examples: int = 1
) -> np.ndarray:
    """Positions (into ``sizes``, the clients' example counts in the file's order) of the first
    ``num_clients`` of the fixed shuffled order among the clients with at least
    ``min_examples`` examples (:func:`choose_clients`; a reader given them reads only those)."""
    sizes = np.asarray(sizes)
    eligible = np.flatnonzero(sizes >= min_examples)
    if len(eligible) == 0:
        raise NaturalDataError(
            f"--dataset {name}: no client has --min-client-examples {min_examples} examples "
            f"(the largest has {int(sizes.max(initial=0))}); lower it"
        )
    if num_clients > len(eligible):
        raise NaturalDataError(
            f"--clients {num_clients} is more than --dataset {name} has ({len(eligible)} "
            f"clients with at least {min_examples} examples); give --clients {len(eligible)} "
            "or fewer"
        )
    order = np.random.default_rng(ORDER_SEED).permutation(len(eligible))
    return eligible[order[:num_clients]]


def load_natural(
    name: str,
    data_dir: str | Path | None,
    num_clients: int,
    *,
    seed: int = 0,
    min_examples: int = 1,
    max_examples: int | None = None,
    sequence_length: int | None = None,
) -> Dataset:
    """The natural federation ``name`` with ``num_clients`` clients, as a :class:`Dataset`
    (clients in ``train_groups``; ``test_groups`` too where the test clients are the train
    clients). ``seed`` only matters to the generated sets; ``sequence_length`` to the text
    sets, whose inputs and targets are (N, sequence_length) tokens and whose
    ``--min-client-examples``/``--max-client-examples`` count those rows (None: 20 for
    StackOverflow, 80 for Shakespeare)."""
    if sequence_length is None:
        stack = name == "stackoverflow"
        sequence_length = stackoverflow.SEQUENCE_LENGTH if stack else shakespeare.SEQUENCE_LENGTH
    prechosen = False
    if name == "stackoverflow":
        train, test = _read_stackoverflow(
            data_dir, num_clients, min_examples, max_examples, sequence_length
        )
        num_classes, shared_test, prechosen = SOURCES[name].num_classes, True, True
        to_x = lambda x: x  # noqa: E731
    elif name == "shakespeare_synthetic":
        roles = max(num_clients, shakespeare_synthetic.NUM_ROLES)
        train, test = shakespeare_synthetic.generate(roles, seed=seed)
        train, test = (shakespeare.to_sequences(s, sequence_length, "snippets")
                       for s in (train, test))  # fmt: skip
        num_classes, shared_test = shakespeare.VOCAB_SIZE, True
        to_x = lambda x: x  # noqa: E731
    elif name == "leaf_synthetic":
        generated = leaf_synthetic.generate(max(num_clients, leaf_synthetic.NUM_CLIENTS), seed=seed)
        train = ClientColumns.from_clients(
            [str(k) for k in range(len(generated.train_groups))],
            [{"x": generated.train_x[g], "y": generated.train_y[g]}
             for g in generated.train_groups],
        )  # fmt: skip
        test = ClientColumns.from_clients(
            train.client_ids,
            [{"x": generated.test_x[g], "y": generated.test_y[g]} for g in generated.test_groups],
        )
        num_classes, shared_test = generated.num_classes, True
        to_x = lambda x: np.asarray(x, np.float32)  # noqa: E731
    else:
        train, test, fmt = read_splits(name, data_dir)
        num_classes = SOURCES[name].num_classes
        shared_test = SOURCES[name].shared_test_clients
        to_x = lambda x: _features(name, x)  # noqa: E731
        if SOURCES[name].text:
            form = "leaf" if fmt == "leaf" else "snippets"
            train, test = (shakespeare.to_sequences(s, sequence_length, form)
                           for s in (train, test))  # fmt: skip
            to_x = lambda x: x  # noqa: E731
    if prechosen:  # read in the fixed shuffled order already, filtered and capped
        chosen = train
    else:
        chosen = choose_clients(train, num_clients, name, min_examples, max_examples)
    test_groups = None
    if shared_test:
        position = {cid: k for k, cid in enumerate(test.client_ids)}
        missing = [cid for cid in chosen.client_ids if cid not in position]
        if missing:
            raise NaturalDataError(
                f"--dataset {name}: client {missing[0]!r} has no test split; the files do not "
                "belong together"
            )
        test = test.select([position[cid] for cid in chosen.client_ids])
        if (test.sizes > 0).all() or name in TEXT_DATASETS:  # a role without test text: 0 rows
            test_groups = [test.rows(k) for k in range(test.num_clients)]
    y_train = chosen.columns["y"].astype(np.int32)
    y_test = test.columns["y"].astype(np.int32)
    for split, y in (("train", y_train), ("test", y_test)):
        if y.size and not 0 <= y.min() <= y.max() < num_classes:
            raise NaturalDataError(
                f"--dataset {name}: {split} labels outside 0..{num_classes - 1}; the file is "
                "not this data set"
            )
    return Dataset(
        name=name,
        train_x=to_x(chosen.columns["x"]),
        train_y=y_train,
        test_x=to_x(test.columns["x"]),
        test_y=y_test,
        num_classes=num_classes,
        train_groups=[chosen.rows(k) for k in range(chosen.num_clients)],
        test_groups=test_groups,
        source="embedded" if name in GENERATED else f"natural:{data_dir or default_dir(name)}",
    )


def _read_stackoverflow(
    data_dir, num_clients: int, min_examples: int, max_examples: int | None, sequence_length: int
) -> tuple[ClientColumns, ClientColumns]:
    """The chosen users' (train, test) token rows, reading only them
    (:mod:`jaxfl.data.natural.stackoverflow`); the test split has a (possibly empty) entry
    for each chosen user, in the same order."""
    name = "stackoverflow"
    fmt, files = locate(name, data_dir)
    folder = files[0].parent
    table = stackoverflow.token_table(
        stackoverflow.read_vocabulary(stackoverflow.word_counts_file(folder))
    )
    if fmt == "fedjax":
        ids, sizes = fedjax_sqlite.client_sizes(files[0])
        chosen = [ids[k] for k in chosen_positions(sizes, num_clients, name, min_examples)]
        stores = [fedjax_sqlite.read(f, ("tokens",), chosen) for f in files]
    else:
        ids, sizes = tff_sqlite.client_sizes(files[0], "train")
        chosen = [ids[k] for k in chosen_positions(sizes, num_clients, name, min_examples)]
        stores = [tff_sqlite.read(files[0], split, ("tokens",), client_ids=chosen)
                  for split in ("train", "test")]  # fmt: skip
    stores[0] = stores[0].cap(max_examples) if max_examples is not None else stores[0]
    out = []
    for store in stores:
        rows = [stackoverflow.sentences_to_sequences(store.client(k)["tokens"], table,
                                                     sequence_length)
                for k in range(store.num_clients)]  # fmt: skip
        out.append(ClientColumns.from_clients(
            store.client_ids, [{"x": x, "y": y} for x, y in rows]))  # fmt: skip
    return out[0], out[1]


def describe_sizes(dataset: Dataset) -> dict[str, float]:
    """The client-size distribution (train examples per client) of a natural federation."""
    return size_summary(np.array([len(g) for g in dataset.train_groups or []]))
