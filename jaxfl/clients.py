"""Mapping a function over the client axis: vmap, optionally in chunks, inside one jit.

Client state is a pytree whose leaves have a leading client axis. ``map_clients`` vmaps a
single-client function over that axis; with ``chunk_size`` it runs a ``lax.map`` (a scan) over
chunks of ``chunk_size`` vmapped clients, so a population whose working set does not fit in
memory at once still runs in the same compiled round (``chunk_size=1`` is a plain compiled loop
over clients, the fastest form on a CPU: see :func:`cpu_chunk_size`). Padding clients added to
fill the last chunk repeat client 0 and are dropped from the result.
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
    if chunk_size == 1:  # a compiled loop over clients, with no size-1 batch dimensions
        return jax.lax.map(lambda one: fn(*one), args)
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


def l2_cache_bytes(default: int = 1 << 20) -> int:
    """Per-core L2 cache size of this host (Linux sysfs), or ``default``."""
    try:
        for index in sorted(os.listdir("/sys/devices/system/cpu/cpu0/cache")):
            folder = f"/sys/devices/system/cpu/cpu0/cache/{index}"
            with open(f"{folder}/level") as f:
                if f.read().strip() != "2":
                    continue
            with open(f"{folder}/size") as f:
                size = f.read().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1], 1)
            return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return default


def cpu_chunk_size(num_sampled: int, step_bytes: int, cache_bytes: int | None = None) -> int:
    """Clients per chunk on a CPU: as many as keep one training step's working set in cache.

    The budget is 4x the per-core L2 (4 MiB here). Measured on the 2-core CPU, one DS-FL round:
    MNIST, LeNet-5, batch 50, 100 clients (4.1 MB a client step): 15.2 s in chunks of 1, 17.5 s
    in chunks of 4, 19.0 s of 10, 24.4 s all in one vmap; the MNIST MLP (2.6 MB): 3.0 s, 3.5 s
    (16), 3.6 s (100); Synthetic, MLP, batch 10, 1000 clients (0.7 MB): 67 s in chunks of 1,
    49 s of 8, 79 s of 64, over 150 s in one vmap. A CPU has few cores, which one client's GEMMs
    already keep busy, so batching many clients gains no parallelism and loses cache locality:
    every elementwise pass over the chunk's activations streams from memory instead of cache.
    """
    cache = cache_bytes or 4 * l2_cache_bytes()
    return int(min(max(1, cache // max(step_bytes, 1)), num_sampled))


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
