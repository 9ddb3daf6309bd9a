"""The Federation: device-resident data plus each client's padded index view.

The data set sits on the device once. Client k's private data is ``train_x[client_idx[k, :n_k]]``
with ``n_k = client_count[k]``; rows past ``n_k`` are padding (index 0) and are masked everywhere.
The same holds for each client's test split. Nothing here is per-client Python state, so the
client axis can later be sharded over devices.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxfl.data import partition as P
from jaxfl.data.sources import Dataset


@struct.dataclass
class Federation:
    """Device arrays of one federated data set (C clients, capacity n_max, L classes).

    Attributes:
      train_x: (N, *feature_shape) float32, every private example of every client; (N, T)
        int32 tokens for a language task.
      train_y: (N,) int32; (N, T) int32 next-token targets for a language task (0: padding).
      client_idx: (C, n_max) int32 indices into ``train_x``; padded with 0.
      client_count: (C,) int32 number of valid entries per row of ``client_idx``.
      test_x: (M, *feature_shape) float32 global test split.
      test_y: (M,) int32.
      client_test_idx: (C, t_max) int32 indices into ``test_x`` (each client's own test split).
      client_test_count: (C,) int32.
      client_val_idx: (C, v_max) int32 indices into ``train_x``: each client's validation split,
        held out of its training data (``client_val_count`` all 0 when there is none).
      client_val_count: (C,) int32.
      public_x: (P, *feature_shape) float32 unlabeled public (open) set for distillation.
      public_y: (P,) int32 its labels, which only FedMD's transfer-learning step reads (the
        public set's own labels, from the train split or from ``--public-dataset``).
      num_classes: L (static).
    """

    train_x: jax.Array
    train_y: jax.Array
    client_idx: jax.Array
    client_count: jax.Array
    test_x: jax.Array
    test_y: jax.Array
    client_test_idx: jax.Array
    client_test_count: jax.Array
    client_val_idx: jax.Array
    client_val_count: jax.Array
    public_x: jax.Array
    public_y: jax.Array
    num_classes: int = struct.field(pytree_node=False)

    @property
    def num_clients(self) -> int:
        return self.client_idx.shape[0]

    @property
    def capacity(self) -> int:
        return self.client_idx.shape[1]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def public_size(self) -> int:
        return self.public_x.shape[0]


def _is_tokens(x: np.ndarray) -> bool:
    """Whether inputs are token ids (a language task), which keep their integer dtype."""
    return np.issubdtype(np.asarray(x[:0]).dtype, np.integer)


def pack(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays of unequal length -> ((C, n_max) int32 padded with 0, (C,) int32 counts)."""
    counts = np.array([len(p) for p in parts], dtype=np.int32)
    out = np.zeros((len(parts), max(1, int(counts.max()))), dtype=np.int32)
    for k, p in enumerate(parts):
        out[k, : len(p)] = p
    return out, counts


def hold_out(
    parts: list[np.ndarray], fraction: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split each client's indices into (train, validation), ``fraction`` of them validation.

    A client with n >= 2 examples gets round(fraction * n) validation examples, at least 1 and
    at most n - 1, so it always keeps training data; a client with one example keeps it. The
    draw uses its own stream of ``seed``, so the test splits do not depend on ``fraction``.
    """
    if not 0.0 <= fraction < 1.0:
        raise P.PartitionError(
            f"--client-val-fraction {fraction} is not allowed; allowed: 0 <= fraction < 1"
        )
    rng = np.random.default_rng([seed, 0x5A1])
    train, val = [], []
    for p in parts:
        n = len(p)
        n_val = 0 if n < 2 else min(n - 1, max(1, int(round(fraction * n))))
        perm = rng.permutation(p)
        val.append(np.sort(perm[:n_val]))
        train.append(np.sort(perm[n_val:]))
    return train, val


@dataclasses.dataclass
class FederationSpec:
    """How to cut a :class:`Dataset` into a federation (the CLI flags of the same names)."""

    num_clients: int = 100
    partition: str = "dirichlet"
    alpha: float = 1.0
    shards_per_client: int = 2
    classes_per_client: int = 2
    rare_labels: int = 2
    rare_examples: int = 2
    public_size: int | None = None
    client_test_size: int | None = None
    client_val_fraction: float = 0.0
    seed: int = 0


def _partition(labels, spec: FederationSpec, num_classes, rng, groups):
    """Returns (parts, priors); priors (C, L) are the client label distributions."""
    name, C = spec.partition, spec.num_clients
    if name == "natural":
        if groups is None:
            raise P.PartitionError(
                "--partition natural needs a data set that is federated by construction "
                f"(e.g. --dataset synthetic); allowed here: {', '.join(P.PARTITIONS[:-1])}"
            )
        parts = groups
    elif name == "iid":
        parts = P.iid(labels, C, rng)
    elif name == "dirichlet":
        parts, _ = P.dirichlet(labels, C, spec.alpha, rng, num_classes)
    elif name == "shards":
        parts = P.shards(labels, C, spec.shards_per_client, rng)
    elif name == "classes":
        parts = P.classes_per_client(labels, C, spec.classes_per_client, rng, num_classes)
    elif name == "quantity":
        parts = P.quantity_skew(labels, C, spec.alpha, rng)
    elif name == "rare":
        parts = P.rare_labels(labels, C, spec.rare_labels, spec.rare_examples, rng, num_classes)
    else:
        raise P.PartitionError(f"unknown --partition {name!r}; allowed: {', '.join(P.PARTITIONS)}")
    hist = P.label_histograms(labels, parts, num_classes).astype(np.float64)
    priors = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1)
    return parts, priors


def build_federation(
    dataset: Dataset,
    spec: FederationSpec,
    public_pool: np.ndarray | None = None,
    public_pool_labels: np.ndarray | None = None,
    train_on_device: bool = True,
) -> tuple[Federation, dict]:
    """Cut ``dataset`` into ``spec.num_clients`` clients, a public set and per-client test splits.

    Args:
      dataset: the labelled data set.
      spec: partition settings.
      public_pool: (P0, *feature_shape) unlabeled examples from another data set
        (``--public-dataset``); ``spec.public_size`` of them are used (all if None), with their
        labels ``public_pool_labels`` (P0,) where given (else -1). When None,
        the public set is ``spec.public_size`` train examples, disjoint from every client's data.
      train_on_device: False keeps ``train_x``/``train_y`` host (numpy) arrays, for the
        host-side client store (:func:`jaxfl.data.host_store.split`).

    Returns:
      The device-resident :class:`Federation` and a JSON-able dict describing it.
    """
    rng = np.random.default_rng(spec.seed)
    n_train = len(dataset.train_y)
    if spec.num_clients < 1:
        raise P.PartitionError(f"--clients must be >= 1, got {spec.num_clients}")
    if public_pool is not None:
        take = len(public_pool) if spec.public_size is None else spec.public_size
        if take > len(public_pool):
            raise P.PartitionError(
                f"--public-size {take} exceeds the {len(public_pool)} examples of --public-dataset"
            )
        chosen = rng.permutation(len(public_pool))[:take]
        public_x = public_pool[chosen]
        public_y = (
            np.full(take, -1, np.int32)
            if public_pool_labels is None
            else np.asarray(public_pool_labels)[chosen]
        )
        private = np.arange(n_train)
    else:
        take = n_train // 6 if spec.public_size is None else spec.public_size
        if not 0 <= take < n_train:
            raise P.PartitionError(
                f"--public-size {take} must be in [0, {n_train}) for {dataset.name}'s train split"
            )
        perm = rng.permutation(n_train)
        public_idx, private = np.sort(perm[:take]), np.sort(perm[take:])
        public_x = dataset.train_x[public_idx]
        public_y = dataset.train_y[public_idx]
    groups = None
    if dataset.train_groups is not None:
        keep = np.zeros(n_train, dtype=bool)
        keep[private] = True
        groups = [g[keep[g]] for g in dataset.train_groups]
        if len(groups) != spec.num_clients and spec.partition == "natural":
            raise P.PartitionError(
                f"{dataset.name} has {len(groups)} natural clients, "
                f"not --clients {spec.num_clients}"
            )
        groups = [np.searchsorted(private, g) for g in groups]
    parts, priors = _partition(dataset.train_y[private], spec, dataset.num_classes, rng, groups)
    parts = [private[p] for p in parts]
    empty = [k for k, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise P.PartitionError(
            f"--partition {spec.partition} left {len(empty)} client(s) without data (e.g. client "
            f"{empty[0]}); lower --clients or --public-size, or choose another --partition"
        )
    if spec.partition == "natural" and dataset.test_groups is not None:
        test_parts = list(dataset.test_groups)
    else:
        per_client = spec.client_test_size or max(1, len(dataset.test_y) // spec.num_clients)
        sizes = np.full(spec.num_clients, per_client)
        test_parts = P.sample_by_priors(dataset.test_y, sizes, priors, rng)
    val_parts = [p[:0] for p in parts]
    if spec.client_val_fraction > 0:
        parts, val_parts = hold_out(parts, spec.client_val_fraction, spec.seed)
    client_idx, client_count = pack(parts)
    val_idx, val_count = pack(val_parts)
    to_array = jnp.asarray if train_on_device else np.asarray
    test_idx, test_count = pack(test_parts)
    fed = Federation(
        train_x=to_array(dataset.train_x),
        train_y=to_array(dataset.train_y),
        client_idx=jnp.asarray(client_idx),
        client_count=jnp.asarray(client_count),
        test_x=jnp.asarray(dataset.test_x),
        test_y=jnp.asarray(dataset.test_y),
        client_test_idx=jnp.asarray(test_idx),
        client_test_count=jnp.asarray(test_count),
        client_val_idx=jnp.asarray(val_idx),
        client_val_count=jnp.asarray(val_count),
        public_x=jnp.asarray(
            public_x, dtype=jnp.int32 if _is_tokens(dataset.train_x) else jnp.float32
        ),
        public_y=jnp.asarray(public_y, dtype=jnp.int32),
        num_classes=dataset.num_classes,
    )
    hist = P.label_histograms(dataset.train_y, parts, dataset.num_classes)
    info = {
        "dataset": dataset.name,
        "source": dataset.source,
        "num_clients": spec.num_clients,
        "partition": spec.partition,
        "train_examples": int(client_count.sum()),
        "client_size_min": int(client_count.min()),
        "client_size_median": float(np.median(client_count)),
        "client_size_p90": float(np.percentile(client_count, 90)),
        "client_size_max": int(client_count.max()),
        "classes_per_client_mean": float((hist > 0).sum(axis=1).mean()),
        "public_size": int(len(public_x)),
        "test_examples": int(len(dataset.test_y)),
        "client_test_size_mean": float(test_count.mean()),
        "client_val_size_mean": float(val_count.mean()),
    }
    return fed, info
