"""A host-side client store: the federation's training examples stay in host memory and each
round only the sampled cohort's examples go to the device (``--data-placement host``).

On the device a natural federation's training split is one array read through each client's row
of indices (:class:`jaxfl.data.federation.Federation`); that array is what stops fitting first
(EMNIST-62's 3,400 writers: 671,585 images, 2.1 GB as float32; StackOverflow's 135M sentences far
more). A round reads only its cohort: M sampled clients of at most n_max examples each. With the
store, the device holds a *cohort view* of the federation instead: the same Federation, whose
``train_x``/``train_y`` are a block of this round's cohort's examples (gathered on the host with
numpy from the store's arrays, which may be memory-mapped files; a static size, the M largest
clients' examples together) and whose ``client_idx`` rows of the sampled clients point into
it. Every other field (the clients' counts, the test and public splits) stays device-resident.
The round is the same compiled function, given the view instead of the whole federation: a
client reads the same examples in the same order, so the numbers are the device placement's,
bit for bit on a CPU.

Which clients a round samples is a function of the round's key alone for the algorithms that
draw their cohort with :class:`jaxfl.mechanisms.client_round.StandardClients` (their
``FederatedAlgorithm.cohort``), so the host computes it first, and the next round's view is
gathered and sent on a background thread while the current round computes (prefetch).
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxfl.data.federation import Federation


@dataclasses.dataclass
class HostStore:
    """The training split on the host and how to cut a round's cohort block from it.

    Attributes:
      train_x: (N, *feature_shape) float32 host array (``np.memmap`` for what exceeds RAM).
      train_y: (N,) int32.
      client_idx: (C, n_max) int32 host copy of each client's row of indices into ``train_x``.
      client_count: (C,) int32 each client's examples.
      slots: M, the rows of a round's cohort (m; with Poisson participation its capacity).
    """

    train_x: np.ndarray
    train_y: np.ndarray
    client_idx: np.ndarray
    client_count: np.ndarray
    slots: int

    @functools.cached_property
    def block_rows(self) -> int:
        """Rows of a cohort block: example 0 (what every padding index reads, as on the device)
        then the cohort's examples, at most the M largest clients' together (a static shape)."""
        largest = np.sort(self.client_count)[::-1][: self.slots]
        return 1 + int(largest.sum())

    @property
    def block_bytes(self) -> int:
        """Bytes sent to the device per round: the cohort block's examples and labels."""
        per_example = self.train_x[:1].nbytes + self.train_y[:1].nbytes
        return self.block_rows * per_example

    @property
    def train_bytes(self) -> int:
        """Bytes of the whole training split (what the device placement keeps resident)."""
        return self.train_x.nbytes + self.train_y.nbytes

    def gather(self, sampled: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The cohort block: example 0, then each present slot's client's examples in slot
        order (``sampled`` (M,) client ids, ``present`` (M,) bool), zero-index padding to
        :attr:`block_rows`; the rows that :func:`cohort_rows` points the clients at."""
        sampled, present = np.asarray(sampled), np.asarray(present)
        counts = np.where(present, self.client_count[sampled], 0)
        own = np.arange(self.client_idx.shape[1])[None, :] < counts[:, None]
        idx = np.zeros(self.block_rows, np.int64)
        rows = self.client_idx[sampled][own]
        idx[1 : 1 + len(rows)] = rows
        return np.asarray(self.train_x[idx]), np.asarray(self.train_y[idx])


def split(data: Federation, slots: int) -> tuple[HostStore, Federation]:
    """A federation built with its training split on the host (numpy ``train_x``/``train_y``)
    -> (its store, the device-resident rest).

    The resident federation's ``train_x``/``train_y`` are zeros of a cohort block's shape, so
    an algorithm bound to it compiles the shapes every view has.
    """
    if int(np.asarray(data.client_val_count).max(initial=0)) > 0:
        raise ValueError(
            "--data-placement host: a client's validation split indexes the training split on "
            "the device; use --client-val-fraction 0 or --data-placement device"
        )
    store = HostStore(
        np.asarray(data.train_x),
        np.asarray(data.train_y),
        np.asarray(data.client_idx),
        np.asarray(data.client_count),
        slots,
    )
    rows = store.block_rows
    resident = jax.tree.map(
        jnp.asarray,
        data.replace(
            train_x=np.zeros((rows, *store.train_x.shape[1:]), store.train_x.dtype),
            train_y=np.zeros((rows,), store.train_y.dtype),
        ),
    )
    return store, resident


@jax.jit
def cohort_rows(client_count: jax.Array, client_idx: jax.Array, sampled, present) -> jax.Array:
    """(C, n_max) index rows into a cohort block (:meth:`HostStore.gather`): a present slot's
    client's row j is its example's place in the block (j < its count) or 0 (example 0, the
    padding every row reads on the device too); every other client's row is 0 (a round reads
    only its cohort's). ``client_idx`` gives the shape and dtype."""
    counts = jnp.where(present, client_count[sampled], 0)
    offsets = 1 + jnp.cumsum(counts) - counts
    j = jnp.arange(client_idx.shape[1], dtype=client_idx.dtype)
    positions = jnp.where(j[None, :] < counts[:, None], offsets[:, None] + j[None, :], 0)
    target = jnp.where(present, sampled, client_idx.shape[0])  # an empty slot writes nothing
    positions = positions.astype(client_idx.dtype)
    return jnp.zeros_like(client_idx).at[target].set(positions, mode="drop")


def cohort_view(resident: Federation, sampled, present, block_x, block_y, place=jax.device_put):
    """The federation a round sees: ``resident`` with the cohort block ``block_x``/``block_y``
    (:meth:`HostStore.gather`) as its training split and the cohort's index rows pointing into
    it (:func:`cohort_rows`). Only the block and the index rows are new device arrays; ``place``
    puts them where the round runs."""
    block_x, block_y = place((block_x, block_y))
    rows = cohort_rows(
        resident.client_count,
        resident.client_idx,
        jnp.asarray(sampled, jnp.int32),
        jnp.asarray(present, bool),
    )
    return resident.replace(train_x=block_x, train_y=block_y, client_idx=place(rows))


class CohortFeeder:
    """Round r's cohort view, the next one prepared on a background thread (prefetch).

    ``cohort(key) -> (sampled (M,) client ids, present (M,) bool)`` is the algorithm's own
    sampling (the clients its ``prepare`` draws from the round's key); ``place`` puts a view
    where the round runs (the mesh's replication)."""

    def __init__(self, store: HostStore, resident: Federation, cohort: Callable, place: Callable):
        self.store, self.resident, self.place = store, resident, place
        self.cohort = jax.jit(cohort)
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jaxfl-cohort")
        self.pending: dict[tuple, concurrent.futures.Future] = {}
        self.rounds_sent = 0

    def _view(self, key: jax.Array) -> Federation:
        sampled, present = (np.asarray(a) for a in jax.device_get(self.cohort(key)))
        block_x, block_y = self.store.gather(sampled, present)
        self.rounds_sent += 1
        return cohort_view(self.resident, sampled, present, block_x, block_y, self.place)

    def view(self, key: jax.Array, next_key: jax.Array | None = None) -> Federation:
        """The view of the round whose key is ``key``; starts preparing ``next_key``'s."""
        tag = _tag(key)
        future = self.pending.pop(tag, None)
        view = future.result() if future is not None else self._view(key)
        self.pending.clear()  # a stale prefetch (another key than asked) is dropped
        if next_key is not None:
            # in the caller's context: the client mesh (a context variable) places the view
            run_here = contextvars.copy_context().run
            self.pending[_tag(next_key)] = self.pool.submit(run_here, self._view, next_key)
        return view


def _tag(key: jax.Array) -> tuple:
    return tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())


def feed(algorithm, feeder: CohortFeeder):
    """``algorithm`` (a :class:`jaxfl.core.algorithm.FederatedAlgorithm`) with each round's
    data from ``feeder``'s cohort views instead of its bound federation. ``round``,
    ``run_rounds`` (one compiled round per round, each with its own view, the next one gathered
    while the current one computes) and ``round_loop`` take the views; ``evaluate`` keeps the
    bound federation, whose test splits are device-resident."""

    def run_rounds(state, round_key, first, num_rounds=1):
        stacked = []
        for r in range(first, first + num_rounds):
            key, next_key = (jax.random.fold_in(round_key, i) for i in (r, r + 1))
            view = feeder.view(key, next_key)
            state, metrics = algorithm.run_rounds(state, round_key, r, 1, data=view)
            stacked.append(metrics)
        return state, jax.tree.map(lambda *m: jnp.concatenate(m), *stacked)

    return dataclasses.replace(
        algorithm,
        round=lambda state, key: algorithm.round(state, key, data=feeder.view(key)),
        run_rounds=run_rounds,
        round_loop=lambda state, key: algorithm.round_loop(state, key, data=feeder.view(key)),
    )
