"""FedJAX's SQLite format: one row per client (Ro et al., "FedJAX", 2021).

The file holds one table::

    CREATE TABLE federated_data (
      client_id BLOB NOT NULL PRIMARY KEY,
      data BLOB NOT NULL,          -- zlib(msgpack({column: ndarray}))
      num_examples INTEGER NOT NULL);

Each ``data`` blob is a zlib-compressed msgpack map from column name to array, an array being
the msgpack extension type 1 whose payload is itself msgpack of ``(shape, dtype name, C-order
bytes)`` (type 4: an array of byte strings, ``(shape, flat list of bytes)``; type 3: a numpy
scalar as a 0-d array). Clients are read in ``rowid`` order, as FedJAX iterates them.
:func:`write` produces the same layout (the benchmark runs FedJAX on a federation jaxfl wrote).
"""

from __future__ import annotations

import contextlib
import sqlite3
import zlib
from pathlib import Path

import msgpack
import numpy as np

from jaxfl.data.natural.store import ClientColumns, NaturalDataError, sqlite_tables

EXT_NDARRAY, EXT_SCALAR, EXT_BYTES_NDARRAY = 1, 3, 4


def _unpack_ext(code: int, payload: bytes):
    if code in (EXT_NDARRAY, EXT_SCALAR):
        shape, dtype, buffer = msgpack.unpackb(payload, raw=True)
        array = np.frombuffer(buffer, dtype=np.dtype(dtype.decode())).reshape(shape)
        return array[()] if code == EXT_SCALAR else array
    if code == EXT_BYTES_NDARRAY:
        shape, flat = msgpack.unpackb(payload, raw=True)
        return np.array(flat, dtype=object).reshape(shape)
    return msgpack.ExtType(code, payload)


def _pack_ext(value):
    if isinstance(value, np.ndarray) and value.dtype.hasobject:
        payload = msgpack.packb((value.shape, list(value.ravel())), use_bin_type=True)
        return msgpack.ExtType(EXT_BYTES_NDARRAY, payload)
    if isinstance(value, np.ndarray):
        payload = msgpack.packb(
            (value.shape, value.dtype.name, value.tobytes("C")), use_bin_type=True
        )
        return msgpack.ExtType(EXT_NDARRAY, payload)
    raise TypeError(f"cannot write {type(value).__name__} in FedJAX's format")


def decode_client(blob: bytes) -> dict[str, np.ndarray]:
    """One ``data`` blob -> {column: array}."""
    return msgpack.unpackb(zlib.decompress(blob), ext_hook=_unpack_ext, raw=False)


def encode_client(examples: dict[str, np.ndarray]) -> bytes:
    """{column: array} -> one ``data`` blob."""
    return zlib.compress(msgpack.packb(examples, default=_pack_ext, strict_types=True))


def is_fedjax_sqlite(path: str | Path) -> bool:
    """Whether ``path`` is an SQLite file with FedJAX's ``federated_data`` table."""
    return "federated_data" in sqlite_tables(path)


def _check(path: Path) -> None:
    if not path.is_file():
        raise NaturalDataError(f"{path}: no such file (a FedJAX SQLite file was expected)")
    if not is_fedjax_sqlite(path):
        raise NaturalDataError(
            f"{path}: not a FedJAX SQLite file (no federated_data table); give the file "
            "FedJAX's downloads write, or a TFF SQLite or LEAF JSON file"
        )


def client_sizes(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(client ids, (C,) examples each) in rowid order, from the table's ``num_examples``
    column alone: nothing is decompressed (the client choice reads only what it chooses)."""
    path = Path(path)
    _check(path)
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT client_id, num_examples FROM federated_data ORDER BY rowid")
        rows = rows.fetchall()
    ids = [c.decode() if isinstance(c, bytes) else str(c) for c, _ in rows]
    return ids, np.array([n for _, n in rows], dtype=np.int64)


def read(
    path: str | Path,
    columns: tuple[str, ...] | None = None,
    client_ids: list[str] | None = None,
) -> ClientColumns:
    """The clients of a FedJAX SQLite file, in rowid order (``client_ids``: only those, in
    that order, one absent from the file as a client without examples, which needs
    ``columns``); ``columns`` keeps only those."""
    path = Path(path)
    _check(path)
    ids, examples = [], []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        if client_ids is None:
            rows = db.execute(
                "SELECT client_id, data, num_examples FROM federated_data ORDER BY rowid"
            )
        else:
            query = "SELECT client_id, data, num_examples FROM federated_data WHERE client_id = ?"
            found = (db.execute(query, (cid.encode(),)).fetchone() for cid in client_ids)
            rows = [r or (cid.encode(), None, 0) for r, cid in zip(found, client_ids, strict=True)]
        for client_id, blob, num_examples in rows:
            if blob is None:  # asked for, not in the file: no examples
                ids.append(client_id.decode())
                examples.append({c: np.zeros(0, dtype=object) for c in columns})
                continue
            cid = client_id.decode() if isinstance(client_id, bytes) else str(client_id)
            try:
                data = decode_client(blob)
            except (zlib.error, ValueError, msgpack.exceptions.ExtraData) as err:
                raise NaturalDataError(
                    f"{path}: client {cid!r}'s data is corrupt ({err}); download the file again"
                ) from None
            if columns is not None:
                missing = [c for c in columns if c not in data]
                if missing:
                    raise NaturalDataError(
                        f"{path}: client {cid!r} has no column {missing[0]!r} (it has "
                        f"{', '.join(data)}): not the data set expected"
                    )
                data = {c: data[c] for c in columns}
            sizes = {len(v) for v in data.values()}
            if sizes != {num_examples}:
                raise NaturalDataError(
                    f"{path}: client {cid!r} says num_examples {num_examples} but holds "
                    f"{sorted(sizes)} rows; the file is inconsistent"
                )
            ids.append(cid)
            examples.append(data)
    return ClientColumns.from_clients(ids, examples)


def write(path: str | Path, store: ClientColumns) -> None:
    """Write ``store`` as a FedJAX SQLite file (``path`` must not exist)."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(path)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(
            "CREATE TABLE federated_data (client_id BLOB NOT NULL PRIMARY KEY, "
            "data BLOB NOT NULL, num_examples INTEGER NOT NULL)"
        )
        db.executemany(
            "INSERT INTO federated_data VALUES (?, ?, ?)",
            (
                (cid.encode(), encode_client(store.client(k)), int(store.sizes[k]))
                for k, cid in enumerate(store.client_ids)
            ),
        )
        db.commit()
