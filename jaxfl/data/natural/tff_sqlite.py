"""TensorFlow Federated's SQLite format: one ``tf.train.Example`` per row.

The file holds two tables (TFF's ``SqlClientData``)::

    CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL,
                           serialized_example_proto BLOB NOT NULL);
    CREATE TABLE client_metadata (client_id TEXT NOT NULL, split_name TEXT NOT NULL,
                                  num_examples INTEGER NOT NULL);

A split's clients are read in ``client_id`` order (as TFF and FedJAX iterate them), each
client's examples in ``rowid`` order. Examples are parsed without TensorFlow
(:mod:`jaxfl.data.natural.tf_example`); a feature with a fixed shape (``shapes``) is reshaped,
so EMNIST's 784 floats become (28, 28) and CIFAR-100's 3072 integers (32, 32, 3).
:func:`write` produces the same layout, for fixtures and benchmarks.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxfl.data.natural import tf_example
from jaxfl.data.natural.store import ClientColumns, NaturalDataError, sqlite_tables


def is_tff_sqlite(path: str | Path) -> bool:
    """Whether ``path`` is an SQLite file with TFF's ``examples`` and ``client_metadata``."""
    return {"examples", "client_metadata"} <= sqlite_tables(path)


def splits(path: str | Path) -> list[str]:
    """The split names a TFF SQLite file holds (``train``, ``test``, ``heldout``, ...)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return [r[0] for r in db.execute("SELECT DISTINCT split_name FROM client_metadata")]


def _column(values: list, shape: tuple[int, ...] | None, name: str, path: Path, cid: str):
    if not values:  # a client without examples in this split
        return np.zeros((0, *(shape or ())), dtype=object if shape is None else np.float32)
    if values and isinstance(values[0], list):  # bytes features: one byte string each
        if any(len(v) != 1 for v in values):
            raise NaturalDataError(f"{path}: client {cid!r}'s {name!r} is not one string each")
        return np.array([v[0] for v in values], dtype=object)
    try:
        stacked = np.stack(values)
    except ValueError:
        raise NaturalDataError(
            f"{path}: client {cid!r}'s {name!r} has examples of different lengths"
        ) from None
    if shape is not None:
        stacked = stacked.reshape((len(values), *shape))
    elif stacked.ndim == 2 and stacked.shape[1] == 1:
        stacked = stacked[:, 0]
    return stacked


def _check(path: Path) -> None:
    if not path.is_file():
        raise NaturalDataError(f"{path}: no such file (a TFF SQLite file was expected)")
    if not is_tff_sqlite(path):
        raise NaturalDataError(
            f"{path}: not a TFF SQLite file (no examples and client_metadata tables)"
        )


def client_sizes(path: str | Path, split: str) -> tuple[list[str], np.ndarray]:
    """(client ids, (C,) examples each) of ``split`` in client-id order, from the
    ``client_metadata`` table alone (no example is parsed)."""
    path = Path(path)
    _check(path)
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        meta = db.execute(
            "SELECT client_id, num_examples FROM client_metadata WHERE split_name = ? "
            "ORDER BY client_id",
            (split,),
        ).fetchall()
    return [str(c) for c, _ in meta], np.array([n for _, n in meta], dtype=np.int64)


def read(
    path: str | Path,
    split: str,
    features: Sequence[str],
    shapes: dict[str, tuple[int, ...]] | None = None,
    client_ids: list[str] | None = None,
) -> ClientColumns:
    """The clients of ``split`` with the given ``features`` as columns (``client_ids``: only
    those, in that order; one absent from the split has no examples)."""
    path = Path(path)
    shapes = shapes or {}
    _check(path)
    if split not in splits(path):
        raise NaturalDataError(f"{path}: no split {split!r}; it has {', '.join(splits(path))}")
    ids, examples = [], []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        meta = db.execute(
            "SELECT client_id, num_examples FROM client_metadata WHERE split_name = ? "
            "ORDER BY client_id",
            (split,),
        ).fetchall()
        if client_ids is not None:
            sizes = dict(meta)
            meta = [(cid, sizes.get(cid, 0)) for cid in client_ids]
        for cid, num_examples in meta:
            rows = db.execute(
                "SELECT serialized_example_proto FROM examples WHERE split_name = ? AND "
                "client_id = ? ORDER BY rowid",
                (split, cid),
            ).fetchall()
            if len(rows) != num_examples:
                raise NaturalDataError(
                    f"{path}: client {cid!r} has {len(rows)} examples in split {split!r}, its "
                    f"metadata says {num_examples}; the file is incomplete or corrupt"
                )
            try:
                parsed = [tf_example.decode(r[0]) for r in rows]
            except Exception as err:  # protobuf's DecodeError and friends
                raise NaturalDataError(
                    f"{path}: client {cid!r} holds an example that is not a tf.train.Example "
                    f"({type(err).__name__}); download the file again"
                ) from None
            data = {}
            for name in features:
                if parsed and name not in parsed[0]:
                    raise NaturalDataError(
                        f"{path}: examples have no feature {name!r} (they have "
                        f"{', '.join(parsed[0])}): not the data set expected"
                    )
                data[name] = _column([p[name] for p in parsed], shapes.get(name), name, path, cid)
            ids.append(str(cid))
            examples.append(data)
    return ClientColumns.from_clients(ids, examples)


def write(path: str | Path, split_stores: dict[str, ClientColumns]) -> None:
    """Write {split: clients} as a TFF SQLite file (``path`` must not exist)."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(path)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(
            "CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL, "
            "serialized_example_proto BLOB NOT NULL)"
        )
        db.execute(
            "CREATE TABLE client_metadata (client_id TEXT NOT NULL, split_name TEXT NOT NULL, "
            "num_examples INTEGER NOT NULL)"
        )
        for split, store in split_stores.items():
            for k, cid in enumerate(store.client_ids):
                client = store.client(k)
                n = int(store.sizes[k])
                db.execute("INSERT INTO client_metadata VALUES (?, ?, ?)", (cid, split, n))
                for i in range(n):
                    features = {name: col[i] for name, col in client.items()}
                    db.execute(
                        "INSERT INTO examples VALUES (?, ?, ?)",
                        (split, cid, tf_example.encode(features)),
                    )
        db.commit()
