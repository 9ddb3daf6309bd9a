"""Mapping a function over the client axis: vmap, optionally in chunks, inside one jit.

Client state is a pytree whose leaves have a leading client axis. ``map_clients`` vmaps a
single-client function over that axis; with ``chunk_size`` it runs a ``lax.map`` (a scan) over
chunks of ``chunk_size`` vmapped clients, so a population whose working set does not fit in
memory at once still runs in the same compiled round. Padding clients added to fill the last chunk
repeat client 0 and are dropped from the result.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp


def _leading(tree) -> int:
    sizes = {x.shape[0] for x in jax.tree.leaves(tree)}
    if len(sizes) != 1:
        raise ValueError(f"client-axis arguments disagree on the number of clients: {sizes}")
    return sizes.pop()


def map_clients(fn: Callable, *args, chunk_size: int | None = None):
    """``jax.vmap(fn)(*args)``, processed ``chunk_size`` clients at a time when given.

    Args:
      fn: single-client function; every positional argument carries the client axis.
      *args: pytrees whose leaves have a leading client axis of the same length m.
      chunk_size: clients per chunk (None or >= m: one vmap over all).
    """
    m = _leading(args)
    if chunk_size is None or chunk_size >= m:
        return jax.vmap(fn)(*args)
    if chunk_size < 1:
        raise ValueError(f"--client-chunk must be >= 1, got {chunk_size}")
    num_chunks = math.ceil(m / chunk_size)
    pad = num_chunks * chunk_size - m

    def to_chunks(x):
        if pad:
            x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad, *x.shape[1:]))])
        return x.reshape(num_chunks, chunk_size, *x.shape[1:])

    out = jax.lax.map(lambda chunk: jax.vmap(fn)(*chunk), jax.tree.map(to_chunks, args))
    return jax.tree.map(lambda x: x.reshape(num_chunks * chunk_size, *x.shape[2:])[:m], out)


def device_memory_bytes() -> int:
    """Memory of the default device: the accelerator's limit, or the host's RAM on CPU."""
    stats = None
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # CPU devices may not report stats
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def default_chunk_size(
    num_sampled: int,
    bytes_per_client: int,
    budget_fraction: float = 0.25,
    memory_bytes: int | None = None,
) -> int | None:
    """Largest chunk whose working set stays under ``budget_fraction`` of device memory.

    Returns None (no chunking) when all ``num_sampled`` clients fit at once.
    """
    budget = budget_fraction * (memory_bytes or device_memory_bytes())
    fit = max(1, int(budget // max(bytes_per_client, 1)))
    return None if fit >= num_sampled else fit
