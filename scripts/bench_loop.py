"""The per-client loop reference and peak memory, timed for ``scripts/bench.py``.

The loop calls the same jitted one-client function(s) the compiled round vmaps, once per client
from Python (one per model group, and per client phase for FedMD's two), timed on a few clients
and scaled to the round's m; ``prepare`` and ``finish`` are timed once. Kept apart from
``bench.py``, which times the compiled round and the peers' form and prints the tables.
"""

from __future__ import annotations

import resource
import time

import jax
import jax.numpy as jnp

from jaxfl.core.algorithm import _jit_cache


def peak_memory_bytes() -> int:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # process peak RSS


def time_loop(exp, state, key, loop_clients: int) -> tuple[float, bool]:
    """Round time of the per-client Python loop over the same jitted one-client function(s)
    (one per model group), timed on ``loop_clients`` clients per group and scaled."""
    algo, data = exp.algorithm, exp.data
    parts = algo.parts
    prepare, finish = jax.jit(parts.prepare), jax.jit(parts.finish)
    shared, client_args, ctx = prepare(state, key, data)
    total, scaled, stacked = _time_phase(
        parts, parts.client_update, shared, client_args, loop_clients
    )
    if parts.exchange is not None:  # a second client phase (FedMD)
        exchange = jax.jit(parts.exchange)
        shared, client_args, ctx = exchange(state, ctx, stacked, data)
        more, more_scaled, stacked = _time_phase(
            parts, parts.client_update2, shared, client_args, loop_clients
        )
        total, scaled = total + more, scaled or more_scaled
    jax.block_until_ready(finish(state, ctx, stacked, data))  # compile
    start = time.perf_counter()
    jax.block_until_ready(prepare(state, key, data))
    jax.block_until_ready(finish(state, ctx, stacked, data))
    overhead = time.perf_counter() - start
    return overhead + total, scaled


def _time_phase(parts, update, shared, client_args, loop_clients):
    """(seconds for all clients, whether scaled, stacked outputs) of one client phase."""
    updates = update if parts.grouped else (update,)
    group_args = client_args if parts.grouped else (client_args,)
    total, scaled, stacked = 0.0, False, []
    for update, args in zip(updates, group_args, strict=True):
        client_fn = _jit_cache.setdefault(update, jax.jit(update))
        m = jax.tree.leaves(args)[0].shape[0]
        k = min(m, loop_clients)
        one = lambda i, args=args: jax.tree.map(lambda a: a[i], args)
        jax.block_until_ready(client_fn(shared, *one(0)))  # compile once
        start = time.perf_counter()
        outs = [client_fn(shared, *one(i)) for i in range(k)]
        jax.block_until_ready(outs)
        total += (time.perf_counter() - start) / k * m
        scaled |= k < m
        if parts.reduced:  # finish takes the sum over clients
            stacked.append(jax.tree.map(lambda x, m=m: m * x, outs[0]))
        else:
            stacked.append(jax.tree.map(lambda *xs: jnp.stack(xs), *([outs[0]] * m)))
    return total, scaled, tuple(stacked) if parts.grouped else stacked[0]
