"""Mapping a function over the client axis: vmap, optionally in chunks, inside one jit.

Client state is a pytree whose leaves have a leading client axis. ``map_clients`` vmaps a
single-client function over that axis; with ``chunk_size`` it runs a ``lax.map`` (a scan) over
chunks of ``chunk_size`` vmapped clients, so a population whose working set does not fit in
memory at once still runs in the same compiled round (``chunk_size=1`` is a plain compiled loop
over clients, the fastest form on a CPU: see :func:`cpu_chunk_size`). Padding clients added to
fill the last chunk repeat client 0 and are dropped from the result.

Several devices: inside ``use_mesh(client_mesh(n))`` (``--devices n``) a round runs as one
program per device (``jax.shard_map``, :func:`on_client_mesh`): the state and the data are
replicated, and ``map_clients`` gives device d the contiguous block of clients
``d * ceil(m / n) ...`` (a count not divisible by ``n`` is padded with copies of client 0 that
are dropped again), runs exactly the single-device code on it, chunked as above (so a compiled
loop over single clients stays free of batch dimensions on every device), and all-gathers the
outputs; ``sum_clients`` sums within each device and adds the devices with one ``psum``. What
the round does with the outputs (a weighted mean, ERA, server distillation) then runs
replicated, identically on every device. Per-client PRNG keys travel with the clients, so the
numbers do not depend on the device count beyond float summation order.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, PartitionSpec

from jaxfl.core.cohort_chunks import Runs, schedule_clients, widest

CLIENT_AXIS = "clients"


def client_mesh(devices: int | None = None) -> Mesh:
    """A 1-D mesh named ``"clients"`` over the first ``devices`` devices (default: all).

    With several processes (``jax.distributed``) ``jax.devices()`` lists every process's devices,
    so the mesh spans hosts. Use it as ``with use_mesh(client_mesh(8)): ...``.
    """
    available = jax.devices()
    n = len(available) if devices is None else devices
    if not 1 <= n <= len(available):
        raise ValueError(
            f"--devices must be between 1 and the {len(available)} available "
            f"{jax.default_backend()} device(s), got {devices}"
        )
    return Mesh(available[:n], (CLIENT_AXIS,), axis_types=(AxisType.Auto,))


_mesh: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("jaxfl_mesh", default=None)
_per_device: contextvars.ContextVar[bool] = contextvars.ContextVar("per_device", default=False)


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None):
    """Run jaxfl's rounds and evaluations with the clients split over ``mesh`` (``None`` or a
    one-device mesh: not split), e.g. ``with use_mesh(client_mesh(8)): algo.round(state, key)``.

    jaxfl's own context rather than ``jax.set_mesh``: under ``jax.set_mesh`` every array made
    and every value traced carries the mesh in its type, and a client function closing over one
    of them (the data, a constant built with the algorithm) cannot be traced in a per-device
    program. jaxfl's jitted functions take the mesh as a static argument, so a round compiled
    for one mesh is never reused under another.
    """
    token = _mesh.set(mesh if mesh is not None and mesh.size > 1 else None)
    try:
        yield mesh
    finally:
        _mesh.reset(token)


def use_devices(devices: int | None = None):
    """``use_mesh(client_mesh(devices))``."""
    return use_mesh(client_mesh(devices))


def current_mesh() -> Mesh | None:
    """The mesh of the enclosing :func:`use_mesh` (None: one device)."""
    return _mesh.get()


def replicate(tree):
    """Place ``tree`` replicated on the current mesh (a no-op without one).

    Done once for the data and the initial state, so a sharded round does not copy them from
    device 0 to every device on each call; with several processes it makes the global arrays
    that a multi-host computation takes (every process holds the same values).
    """
    mesh = current_mesh()
    if mesh is None:
        return tree
    sharding = jax.sharding.NamedSharding(mesh, PartitionSpec())
    if jax.process_count() > 1:  # global arrays are made from each process's host copy
        tree = jax.tree.map(_host_copy, tree)
    return jax.device_put(tree, sharding)


def _host_copy(x):
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return x
    return np.asarray(x)


def to_host(tree):
    """NumPy copies of a tree of (possibly multi-host, sharded) arrays, identical on every
    process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def client_devices() -> int:
    """Devices on the client axis of the current :func:`use_mesh` (1 without one)."""
    mesh = current_mesh()
    if mesh is None:
        abstract = jax.sharding.get_abstract_mesh()
        if CLIENT_AXIS in abstract.axis_names and AxisType.Manual not in abstract.axis_types:
            raise RuntimeError(
                "split clients over devices with jaxfl.core.client_axis.use_mesh(client_mesh(n)) "
                "(or use_devices(n)), not jax.set_mesh (see use_mesh)"
            )
        return 1
    return mesh.shape[CLIENT_AXIS]


def on_client_mesh(fn: Callable) -> Callable:
    """``fn`` run as one program per device of the current :func:`use_mesh` mesh
    (``jax.shard_map`` with every argument and result replicated), or unchanged without one.

    Inside, :func:`map_clients` and :func:`sum_clients` give each device its own block of
    clients and all-gather (or ``psum``) the results, so everything else a round does
    (sampling, aggregation, the server's own training) runs replicated, identically on every
    device, and client functions may close over any value the program computed. jaxfl wraps
    its rounds and evaluations in it; a client map called outside one wraps itself.
    """

    def wrapped(*args, **kwargs):
        mesh = current_mesh()
        if mesh is None or _per_device.get():
            return fn(*args, **kwargs)

        leaves, treedef = jax.tree.flatten((args, kwargs))
        is_array = [isinstance(x, jax.Array | np.ndarray) for x in leaves]

        def per_device(*arrays):  # Python values (static sizes) stay closed over
            it = iter(arrays)
            rebuilt = [next(it) if a else x for x, a in zip(leaves, is_array, strict=True)]
            args, kwargs = jax.tree.unflatten(treedef, rebuilt)
            token = _per_device.set(True)
            try:
                return fn(*args, **kwargs)
            finally:
                _per_device.reset(token)

        # check_vma=False: no differentiation crosses devices here (clients differentiate their
        # own losses inside their block), and results are replicated by construction (the
        # client maps' all-gathers and psums), so replication types need not be tracked
        spec = PartitionSpec()
        arrays = [x for x, a in zip(leaves, is_array, strict=True) if a]
        return jax.shard_map(per_device, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)(
            *arrays
        )

    return wrapped


_in_flight: contextvars.ContextVar[int] = contextvars.ContextVar("clients_in_flight", default=1)


# experiments vmapped side by side around the client maps (jaxfl.experiments.axis)
experiments_in_flight: contextvars.ContextVar[int] = contextvars.ContextVar(
    "experiments_in_flight", default=1
)


def clients_in_flight() -> int:
    """How many clients the function being traced runs side by side on one device: the width of
    the enclosing ``map_clients``/``sum_clients`` vmap (1 in a compiled loop over single clients,
    or outside any client map) times the experiments vmapped around it. Layers whose fastest
    lowering depends on it read it at trace time (:mod:`jaxfl.models.tuning`)."""
    return _in_flight.get() * experiments_in_flight.get()


def _vmap_clients(fn: Callable, width: int) -> Callable:
    """``jax.vmap(fn)``, traced with :func:`clients_in_flight` = ``width``."""

    def traced(*args):
        token = _in_flight.set(width)
        try:
            return fn(*args)
        finally:
            _in_flight.reset(token)

    return jax.vmap(traced)


def _leading(tree) -> int:
    sizes = {x.shape[0] for x in jax.tree.leaves(tree)}
    if len(sizes) != 1:
        raise ValueError(f"client-axis arguments disagree on the number of clients: {sizes}")
    return sizes.pop()


def _check_chunk(chunk_size: int | Runs | None) -> None:
    if isinstance(chunk_size, tuple):
        if not chunk_size or any(w < 1 or n < 1 for w, n in chunk_size):
            raise ValueError(f"a chunk schedule needs (width, count) runs >= 1, got {chunk_size}")
    elif chunk_size is not None and chunk_size < 1:
        raise ValueError(f"--client-chunk must be >= 1, got {chunk_size}")


def map_clients(fn: Callable, *args, chunk_size: int | None = None):
    """``jax.vmap(fn)(*args)``, processed ``chunk_size`` clients at a time when given.

    Args:
      fn: single-client function; every positional argument carries the client axis.
      *args: pytrees whose leaves have a leading client axis of the same length m.
      chunk_size: clients per chunk and device (None or >= m: one vmap over all), or a
        schedule of (width, count) runs covering a device's clients
        (:func:`jaxfl.core.cohort_chunks.chunk_schedule`).
    """
    m = _leading(args)
    _check_chunk(chunk_size)
    n = client_devices()
    if n > 1 and not _per_device.get():  # called outside a per-device program
        return on_client_mesh(lambda *a: map_clients(fn, *a, chunk_size=chunk_size))(*args)
    if n == 1:
        return _local(fn, args, m, chunk_size)
    per_device = math.ceil(m / n)
    block = jax.tree.map(lambda x: _device_block(x, n, per_device), args)
    out = _local(fn, block, per_device, chunk_size)
    gathered = jax.tree.map(lambda x: jax.lax.all_gather(x, CLIENT_AXIS, tiled=True), out)
    return jax.tree.map(lambda x: x[:m], gathered)


def sum_clients(fn: Callable, *args, chunk_size: int | None = None):
    """``sum over clients of fn(client)``, without ever holding every client's output at once.

    The streaming form of ``map_clients`` followed by a sum over the client axis (FedAvg's
    weighted mean, with the weights folded into ``fn``): chunks are accumulated into a running
    sum inside a ``lax.scan``, so memory holds one chunk's outputs, not m of them (10,000
    clients' model updates would not fit on one device). Padding clients are masked out of the
    sum. On a mesh every device sums its own clients and one all-reduce (``psum``) combines the
    devices.

    Args: as :func:`map_clients`; returns a pytree shaped like one client's output.
    """
    m = _leading(args)
    _check_chunk(chunk_size)
    n = client_devices()
    if n > 1 and not _per_device.get():
        return on_client_mesh(lambda *a: sum_clients(fn, *a, chunk_size=chunk_size))(*args)
    valid = jnp.ones(m, bool)
    if n == 1:
        return _local_sum(fn, (valid, *args), m, chunk_size)
    per_device = math.ceil(m / n)
    block = jax.tree.map(lambda x: _device_block(x, n, per_device), (valid, *args))
    block = (block[0] & (_block_start(per_device) + jnp.arange(per_device) < m), *block[1:])
    return jax.lax.psum(_local_sum(fn, block, per_device, chunk_size), CLIENT_AXIS)


def _block_start(per_device: int) -> jax.Array:
    return jax.lax.axis_index(CLIENT_AXIS) * per_device


def _device_block(x: jax.Array, n: int, per_device: int) -> jax.Array:
    """This device's rows ``d * per_device ... (d + 1) * per_device`` of ``x`` (padded with
    copies of row 0 to ``n * per_device``): devices hold contiguous blocks of clients."""
    x = _pad(x, n * per_device - x.shape[0])
    return jax.lax.dynamic_slice_in_dim(x, _block_start(per_device), per_device)


def _local_sum(fn: Callable, blocks, m: int, chunk_size):
    """Sum of ``fn`` over the rows of ``blocks = (valid (m,), *args)`` whose ``valid`` is set, in
    a scan over chunks of ``chunk_size`` clients (one client per step, no batch dimension, when
    ``chunk_size`` is 1; a schedule of (width, count) runs sums run by run)."""
    chunk_size = _runs_or_width(chunk_size, m)
    if isinstance(chunk_size, tuple):
        parts = [
            _local_sum(fn, part, n, width) for width, n, part in _run_slices(blocks, chunk_size)
        ]
        return jax.tree.map(lambda *xs: sum(xs[1:], xs[0]), *parts)
    num_chunks = 1 if chunk_size is None else math.ceil(m / chunk_size)
    c = math.ceil(m / num_chunks)
    blocks = jax.tree.map(lambda x: _pad(x, num_chunks * c - m), blocks)
    valid, *args = blocks
    valid = valid & (jnp.arange(num_chunks * c) < m)

    def chunk_sum(total, chunk):
        mask, *chunk_args = chunk
        if c == 1:  # one client per step: no size-1 batch dimensions (faster on a CPU)
            out = fn(*jax.tree.map(lambda x: x[0], chunk_args))
            part = jax.tree.map(lambda x: jnp.where(mask[0], x, 0), out)
        else:
            out = _vmap_clients(fn, c)(*chunk_args)
            part = jax.tree.map(
                lambda x: jnp.where(mask.reshape(c, *[1] * (x.ndim - 1)), x, 0).sum(0), out
            )
        return jax.tree.map(jnp.add, total, part), None

    chunks = jax.tree.map(lambda x: x.reshape(num_chunks, c, *x.shape[1:]), (valid, *args))
    one = jax.eval_shape(fn, *jax.tree.map(lambda x: x[0], args))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), one)
    if num_chunks == 1:
        return chunk_sum(zeros, jax.tree.map(lambda x: x[0], chunks))[0]
    return jax.lax.scan(chunk_sum, zeros, chunks)[0]


def _pad(x: jax.Array, pad: int) -> jax.Array:
    """Append ``pad`` copies of row 0 (a real client, so padding never computes on garbage)."""
    if not pad:
        return x
    return jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad, *x.shape[1:]))])


def _runs_or_width(chunk_size, m: int):
    """A chunk schedule that covers exactly ``m`` clients, or else a plain chunk width (a
    schedule made for another client count, e.g. planned for another number of devices, falls
    back to its widest chunk)."""
    if isinstance(chunk_size, tuple) and schedule_clients(chunk_size) != m:
        return widest(chunk_size)
    return chunk_size


def _run_slices(args, runs: Runs):
    """``args`` split at the runs' boundaries: one (width, clients, args slice) per run."""
    start = 0
    for width, count in runs:
        n = width * count
        yield width, n, jax.tree.map(lambda x, s=start, n=n: x[s : s + n], args)
        start += n


def _local(fn: Callable, args, m: int, chunk_size):
    """vmap over the m clients of ``args``, in chunks of ``chunk_size`` when given (a width, or
    a schedule of (width, count) runs, :func:`jaxfl.core.cohort_chunks.chunk_schedule`)."""
    chunk_size = _runs_or_width(chunk_size, m)
    if isinstance(chunk_size, tuple):
        outs = [_local(fn, part, n, width) for width, n, part in _run_slices(args, chunk_size)]
        return jax.tree.map(lambda *xs: jnp.concatenate(xs), *outs)
    if chunk_size is None or chunk_size >= m:
        return _vmap_clients(fn, m)(*args)
    if chunk_size == 1:  # a compiled loop over clients, with no size-1 batch dimensions
        return jax.lax.map(lambda one: fn(*one), args)
    num_chunks = math.ceil(m / chunk_size)
    chunk_size = math.ceil(m / num_chunks)  # balanced chunks: the least padding
    pad = num_chunks * chunk_size - m

    def to_chunks(x):
        return _pad(x, pad).reshape(num_chunks, chunk_size, *x.shape[1:])

    vmapped = _vmap_clients(fn, chunk_size)
    out = jax.lax.map(lambda chunk: vmapped(*chunk), jax.tree.map(to_chunks, args))
    return jax.tree.map(lambda x: x.reshape(num_chunks * chunk_size, *x.shape[2:])[:m], out)


MEMORY_ENV = "JAXFL_DEVICE_MEMORY"  # bytes per device, to plan as if the device had this much


def device_memory_limit() -> int | None:
    """Bytes one device may use: ``$JAXFL_DEVICE_MEMORY`` when set (to plan for a smaller
    device, or to cap a CPU run), else the accelerator's reported limit; None on a CPU, whose
    devices share the host's RAM and report none."""
    given = os.environ.get(MEMORY_ENV)
    if given:
        try:
            return int(float(given))
        except ValueError:
            raise ValueError(f"${MEMORY_ENV}={given!r} is not a number of bytes") from None
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # CPU devices may not report stats
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return None


def device_memory_bytes() -> int:
    """Memory of the default device: :func:`device_memory_limit`, or the host's RAM on CPU."""
    limit = device_memory_limit()
    if limit is not None:
        return limit
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
