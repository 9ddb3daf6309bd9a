"""LEAF's JSON format (Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018), which
most PyTorch FL code reads.

A split is one or more ``.json`` files (LEAF writes at most 100 users per file), each::

    {"users": ["f0000_14", ...], "num_samples": [124, ...],
     "user_data": {"f0000_14": {"x": [[...784 floats...], ...], "y": [3, ...]}, ...}}

:func:`read` takes a file or a folder (every ``*.json`` in it, in name order, users in file
order); LEAF's preprocessing puts the train and test splits in ``train/`` and ``test/`` folders
with the same users. :func:`write` produces the same layout, for fixtures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxfl.data.natural.store import ClientColumns, NaturalDataError


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise NaturalDataError(f"{path}: a folder without LEAF .json files")
        return files
    if path.is_file():
        return [path]
    raise NaturalDataError(f"{path}: no such file or folder (LEAF JSON was expected)")


def read(path: str | Path, x_dtype=np.float32, y_dtype=np.int64) -> ClientColumns:
    """The users of a LEAF split (a ``.json`` file or a folder of them) with columns ``x``
    (as ``x_dtype``) and ``y`` (as ``y_dtype``; ``object`` for Shakespeare's strings)."""
    ids, examples = [], []
    for file in _files(Path(path)):
        try:
            record = json.loads(file.read_text())
            users, counts, data = record["users"], record["num_samples"], record["user_data"]
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise NaturalDataError(f"{file}: not JSON ({err}); download it again") from None
        except (KeyError, TypeError):
            raise NaturalDataError(
                f"{file}: not LEAF's format (it needs users, num_samples and user_data)"
            ) from None
        if len(users) != len(counts):
            raise NaturalDataError(f"{file}: {len(users)} users but {len(counts)} num_samples")
        for user, count in zip(users, counts, strict=True):
            if user not in data:
                raise NaturalDataError(f"{file}: user {user!r} has no user_data")
            x = np.asarray(data[user]["x"], dtype=x_dtype)
            y = np.asarray(data[user]["y"], dtype=y_dtype)
            if len(x) != count or len(y) != count:
                raise NaturalDataError(
                    f"{file}: user {user!r} has {len(x)} x and {len(y)} y, num_samples says {count}"
                )
            ids.append(str(user))
            examples.append({"x": x, "y": y})
    if len(set(ids)) != len(ids):
        raise NaturalDataError(f"{path}: a user appears in more than one file")
    return ClientColumns.from_clients(ids, examples)


def write(path: str | Path, store: ClientColumns, users_per_file: int = 100) -> None:
    """Write ``store`` (columns ``x``, ``y``) as LEAF JSON: a folder of ``all_data_N.json``
    files of at most ``users_per_file`` users each."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for start in range(0, store.num_clients, users_per_file):
        chunk = range(start, min(start + users_per_file, store.num_clients))
        users = [store.client_ids[k] for k in chunk]
        record = {
            "users": users,
            "num_samples": [int(store.sizes[k]) for k in chunk],
            "user_data": {
                store.client_ids[k]: {
                    "x": store.client(k)["x"].tolist(),
                    "y": store.client(k)["y"].tolist(),
                }
                for k in chunk
            },
        }
        (path / f"all_data_{start // users_per_file}.json").write_text(json.dumps(record))
