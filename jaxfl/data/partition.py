"""Non-IID partitioners: labels in, one index array per client out.

Every partitioner is deterministic given its ``numpy.random.Generator`` and runs in
O(num_clients * num_classes + N) without rejection loops, so 10k clients with a tiny Dirichlet
alpha take well under a second. Every client gets at least one example, or
:class:`PartitionError` says why not.
"""

from __future__ import annotations

import numpy as np

from jaxfl.core.names import PARTITIONS as PARTITIONS  # defined without JAX, for --help


class PartitionError(ValueError):
    """A partition cannot give every client at least one example."""


def balanced_sizes(total: int, num_clients: int) -> np.ndarray:
    """Split ``total`` into ``num_clients`` sizes that differ by at most one."""
    if total < num_clients:
        raise PartitionError(
            f"{total} examples cannot give each of --clients {num_clients} at least one"
        )
    return np.full(num_clients, total // num_clients) + (
        np.arange(num_clients) < total % num_clients
    )


def allocate_by_priors(
    labels: np.ndarray,
    sizes: np.ndarray,
    priors: np.ndarray,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Give client k ``sizes[k]`` examples whose labels follow ``priors[k]``, without replacement.

    Each client draws its label counts from a multinomial over the classes that still have
    examples; classes that run out are renormalised away (the "client-inner" scheme of Hsu et al.
    2019 used by the DS-FL authors' lab). Requires ``sizes.sum() <= len(labels)``.

    Args:
      labels: (N,) int labels.
      sizes: (C,) examples per client.
      priors: (C, L) per-client class distributions (rows sum to 1).
    """
    num_classes = priors.shape[1]
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    left = np.array([len(p) for p in pools])
    taken = np.zeros(num_classes, dtype=np.int64)
    out = []
    for k, need in enumerate(sizes):
        counts = np.zeros(num_classes, dtype=np.int64)
        need = int(need)
        while need > 0:
            p = priors[k] * (left > 0)
            if p.sum() <= 0:  # the client's classes are exhausted: fall back to what is left
                p = (left > 0).astype(np.float64)
            draw = np.minimum(rng.multinomial(need, p / p.sum()), left)
            counts += draw
            left -= draw
            need -= int(draw.sum())
        idx = [pools[c][taken[c] : taken[c] + counts[c]] for c in range(num_classes)]
        taken += counts
        out.append(rng.permutation(np.concatenate(idx)))
    return out


def sample_by_priors(
    labels: np.ndarray, sizes: np.ndarray, priors: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """Client k draws ``sizes[k]`` examples with label counts ~ Multinomial(sizes[k], priors[k]).

    Used for per-client *test* splits: each client's draw is without replacement (with
    replacement only if a class has fewer examples than asked), clients draw independently, so
    test splits may overlap but always follow the client's own label distribution exactly, over
    the labels the test set has. A client none of whose labels the test set has (a natural
    federation whose test clients are other people, e.g. CIFAR-100's Pachinko split on a small
    test set) draws by the test set's own label distribution instead.
    """
    pools = [np.flatnonzero(labels == c) for c in range(priors.shape[1])]
    available = np.array([len(pool) > 0 for pool in pools])
    out = []
    for k, size in enumerate(sizes):
        p = priors[k] * available
        if p.sum() == 0:
            p = np.array([len(pool) for pool in pools], dtype=np.float64)
        counts = rng.multinomial(int(size), p / p.sum())
        idx = [
            rng.choice(pools[c], counts[c], replace=counts[c] > len(pools[c]))
            for c in np.flatnonzero(counts)
        ]
        out.append(rng.permutation(np.concatenate(idx)))
    return out


def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Uniformly shuffled, near-equal shares."""
    balanced_sizes(len(labels), num_clients)
    return np.array_split(rng.permutation(len(labels)), num_clients)


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    num_classes: int | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Dirichlet label skew: client k's class prior q_k ~ Dir(alpha * 1), near-equal sizes.

    Returns the index arrays and the (C, L) priors (reused to draw each client's test split).
    """
    if alpha <= 0:
        raise PartitionError(f"--alpha must be > 0, got {alpha}")
    num_classes = num_classes or int(labels.max()) + 1
    sizes = balanced_sizes(len(labels), num_clients)
    priors = rng.dirichlet(np.full(num_classes, alpha), size=num_clients)
    bad = ~np.isfinite(priors).all(axis=1) | (priors.sum(axis=1) <= 0)
    if bad.any():  # gamma underflow at tiny alpha: the limit is a one-hot prior
        priors[bad] = np.eye(num_classes)[rng.integers(num_classes, size=int(bad.sum()))]
    return allocate_by_priors(labels, sizes, priors, rng), priors


def shards(
    labels: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """McMahan et al.'s pathological split: sort by label, cut into C*k shards, deal k each."""
    num_shards = num_clients * shards_per_client
    if len(labels) < num_shards:
        raise PartitionError(
            f"{len(labels)} examples cannot make {num_shards} shards "
            f"(--clients {num_clients} x --shards-per-client {shards_per_client})"
        )
    order = np.lexsort((rng.random(len(labels)), labels))
    pieces = np.array_split(order, num_shards)
    deal = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.concatenate([pieces[s] for s in row]) for row in deal]


def classes_per_client(
    labels: np.ndarray,
    num_clients: int,
    n: int,
    rng: np.random.Generator,
    num_classes: int | None = None,
) -> list[np.ndarray]:
    """Each client holds exactly ``n`` labels (DS-FL's non-IID setting); classes are dealt evenly.

    Client label sets come from a sequence of random class permutations, so every class is held by
    the same number of clients (+-1); each class's examples are split evenly among its holders.
    """
    num_classes = num_classes or int(labels.max()) + 1
    if not 1 <= n <= num_classes:
        raise PartitionError(f"--classes-per-client must be in [1, {num_classes}], got {n}")
    reps = -(-num_clients * n // num_classes) + 1
    seq = np.concatenate([rng.permutation(num_classes) for _ in range(reps)])
    held = []
    pos = 0
    for _ in range(num_clients):
        chosen: list[int] = []
        while len(chosen) < n:  # skip a repeat at a permutation boundary
            c = int(seq[pos])
            pos += 1
            if c not in chosen:
                chosen.append(c)
        held.append(chosen)
    holders: dict[int, list[int]] = {c: [] for c in range(num_classes)}
    for k, cs in enumerate(held):
        for c in cs:
            holders[c].append(k)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c, ks in holders.items():
        pool = rng.permutation(np.flatnonzero(labels == c))
        if ks and len(pool) < len(ks):
            raise PartitionError(
                f"class {c} has {len(pool)} examples for {len(ks)} clients; lower --clients or "
                "raise --classes-per-client"
            )
        for k, piece in zip(ks, np.array_split(pool, len(ks)) if ks else [], strict=False):
            parts[k].append(piece)
    return [rng.permutation(np.concatenate(p)) for p in parts]


def rare_labels(
    labels: np.ndarray,
    num_clients: int,
    rare: int,
    keep: int,
    rng: np.random.Generator,
    num_classes: int | None = None,
) -> list[np.ndarray]:
    """IID shares in which each client keeps only ``keep`` examples of ``rare`` of its labels.

    FD's non-IID setting (Jeong et al. 2018; FAug calls a client's scarce labels its "target
    labels"): near-equal IID shares, then each client draws ``rare`` distinct labels at random
    and drops all but ``keep`` of its examples of each (the dropped examples go to nobody).
    """
    num_classes = num_classes or int(labels.max()) + 1
    if not 0 <= rare < num_classes:
        raise PartitionError(f"--rare-labels must be in [0, {num_classes - 1}], got {rare}")
    if keep < 0:
        raise PartitionError(f"--rare-examples must be >= 0, got {keep}")
    out = []
    for share in iid(labels, num_clients, rng):
        scarce = rng.choice(num_classes, rare, replace=False)
        drop = np.zeros(len(share), bool)
        for label in scarce:
            rows = np.flatnonzero(labels[share] == label)
            drop[rows[keep:]] = True
        if drop.all():
            raise PartitionError(
                f"a client's share has only its --rare-labels {rare}; lower --clients or "
                "--rare-labels"
            )
        out.append(share[~drop])
    return out


def quantity_skew(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """IID labels, sizes 1 + Multinomial(N - C, Dir(alpha)): smaller alpha, more unequal sizes."""
    if alpha <= 0:
        raise PartitionError(f"--alpha must be > 0, got {alpha}")
    balanced_sizes(len(labels), num_clients)
    p = rng.dirichlet(np.full(num_clients, alpha))
    if not np.isfinite(p).all() or p.sum() <= 0:
        p = np.full(num_clients, 1.0 / num_clients)
    sizes = 1 + rng.multinomial(len(labels) - num_clients, p / p.sum())
    return np.split(rng.permutation(len(labels)), np.cumsum(sizes)[:-1])


def label_histograms(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """(C, L) label counts of each client's part (target-token counts, pad included, where
    ``labels`` are (N, T) next-token targets)."""
    return np.stack([np.bincount(labels[p].ravel(), minlength=num_classes) for p in parts])
