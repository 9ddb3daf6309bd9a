"""Clients' examples as columns, one client after another: the form every natural-federation
reader produces, whatever the file format.

A :class:`ClientColumns` holds each column (``x``, ``y``, or a format's own names) concatenated
over clients along axis 0, with ``offsets`` (C + 1,) marking where each client starts, so a
client's examples are ``column[offsets[k]:offsets[k + 1]]``. No padding is stored: a writer
with 3 examples and one with 400 take 3 and 400 rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxfl.data.dataset import DataUnavailableError


class NaturalDataError(DataUnavailableError):
    """A natural federation's file is missing, of the wrong format or inconsistent; the message
    names the file and what to do."""


@dataclasses.dataclass
class ClientColumns:
    """The examples of C clients.

    Attributes:
      client_ids: C client ids (strings), in the store's order.
      columns: name -> array (N, ...), the clients' examples concatenated in that order.
      offsets: (C + 1,) int64, client k's rows are ``offsets[k]:offsets[k + 1]``.
    """

    client_ids: list[str]
    columns: dict[str, np.ndarray]
    offsets: np.ndarray

    @property
    def num_clients(self) -> int:
        return len(self.client_ids)

    @property
    def sizes(self) -> np.ndarray:
        """(C,) int64 examples per client."""
        return np.diff(self.offsets)

    def client(self, k: int) -> dict[str, np.ndarray]:
        """Client ``k``'s examples, column by column."""
        lo, hi = self.offsets[k], self.offsets[k + 1]
        return {name: col[lo:hi] for name, col in self.columns.items()}

    def rows(self, k: int) -> np.ndarray:
        """(n_k,) the row indices of client ``k``'s examples."""
        return np.arange(self.offsets[k], self.offsets[k + 1])

    @classmethod
    def from_clients(
        cls, client_ids: Sequence[str], examples: Sequence[dict[str, np.ndarray]]
    ) -> ClientColumns:
        """Concatenate per-client column dicts (every client the same column names)."""
        if len(client_ids) != len(examples):
            raise ValueError(f"{len(client_ids)} client ids for {len(examples)} clients")
        names = list(examples[0]) if examples else []
        for cid, ex in zip(client_ids, examples, strict=True):
            if list(ex) != names:
                raise NaturalDataError(f"client {cid!r} has columns {list(ex)}, not {names}")
        sizes = [len(next(iter(ex.values()))) if ex else 0 for ex in examples]
        columns = {n: np.concatenate([np.asarray(ex[n]) for ex in examples]) for n in names}
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return cls(list(client_ids), columns, offsets)

    def select(self, order: Sequence[int]) -> ClientColumns:
        """The clients ``order`` (indices), in that order."""
        order = np.asarray(order, dtype=np.int64)
        rows = np.concatenate([self.rows(k) for k in order]) if len(order) else np.zeros(0, int)
        sizes = self.sizes[order]
        return ClientColumns(
            [self.client_ids[k] for k in order],
            {n: c[rows] for n, c in self.columns.items()},
            np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        )

    def cap(self, max_examples: int) -> ClientColumns:
        """Each client's first ``max_examples`` examples (TFF's ``max_elements``: the rest are
        dropped, in file order)."""
        keep = [self.rows(k)[:max_examples] for k in range(self.num_clients)]
        rows = np.concatenate(keep) if keep else np.zeros(0, int)
        sizes = [len(r) for r in keep]
        return ClientColumns(
            list(self.client_ids),
            {n: c[rows] for n, c in self.columns.items()},
            np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        )


def size_summary(sizes: np.ndarray) -> dict[str, float]:
    """min / median / p90 / max / mean of the client sizes (examples per client)."""
    sizes = np.asarray(sizes)
    if sizes.size == 0:
        return {"clients": 0}
    return {
        "clients": int(sizes.size),
        "min": int(sizes.min()),
        "median": float(np.median(sizes)),
        "p90": float(np.percentile(sizes, 90)),
        "max": int(sizes.max()),
        "mean": float(sizes.mean()),
    }


def sqlite_tables(path: str | Path) -> set[str]:
    """The table names of an SQLite file, opened read-only; empty when it is not one."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError:
        return set()
