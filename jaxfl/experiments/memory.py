"""Memory of a compiled round, measured from XLA's buffer assignment, and the chunk it allows.

``jax.jit(...).lower(...).compile().memory_analysis()`` reports what one device needs for a
round: its arguments (state and data), outputs and temporaries (activations, gathered client
rows, optimizer states of the clients in flight). Compiling the round at two chunk sizes gives
the temporaries' slope, the memory one more client in flight costs, and from the device's limit
:func:`choose_chunk` picks the largest ``--client-chunk`` that fits. Nothing runs: these are
compilations only.
"""

from __future__ import annotations

import dataclasses
import math

import jax

from jaxfl.core.client_axis import client_devices


@dataclasses.dataclass(frozen=True)
class RoundMemory:
    """Bytes per device of one compiled round (see the module docstring).

    Attributes:
      argument_bytes: inputs (state, key, data); output_bytes: outputs; alias_bytes: outputs
        that reuse donated inputs.
      temp_bytes: temporaries at ``chunk_size``.
      per_client_bytes: temporaries per client in flight (the slope between two chunk sizes).
      base_bytes: temporaries that do not depend on the chunk size.
      state_bytes_per_client: state leaves with a leading client axis, per client.
      chunk_size: the chunk the temporaries were measured at.
    """

    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    per_client_bytes: int
    base_bytes: int
    state_bytes_per_client: int
    chunk_size: int | None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def compiled_round_memory(algorithm, chunk_size: int | None):
    """XLA's memory analysis of ``algorithm.round_fn`` compiled with ``chunk_size`` and the state
    donated, as the simulation runs it (the new state may reuse the old one's buffers)."""
    state = jax.eval_shape(algorithm.init, jax.random.key(0))
    jitted = jax.jit(algorithm.round_fn, static_argnames="chunk_size", donate_argnums=0)
    lowered = jitted.lower(state, jax.random.key(0), algorithm.data, chunk_size=chunk_size)
    return lowered.compile().memory_analysis()


def state_bytes_per_client(algorithm) -> int:
    """Bytes of the state's leaves that have a leading axis of C clients, per client."""
    state = jax.eval_shape(algorithm.init, jax.random.key(0))
    num_clients = algorithm.data.num_clients
    total = sum(
        x.size * x.dtype.itemsize
        for x in jax.tree.leaves(state)
        if x.ndim and x.shape[0] == num_clients
    )
    return total // num_clients


def round_memory(algorithm, chunk_size: int | None, probe: tuple[int, int] = (2, 4)) -> RoundMemory:
    """Measure a round at ``chunk_size`` and the per-client slope between chunks ``probe``."""
    per_device = math.ceil(algorithm.clients_per_round / client_devices())
    measured = {}

    def stats(chunk):
        if chunk not in measured:
            measured[chunk] = compiled_round_memory(algorithm, chunk)
        return measured[chunk]

    small, large = probe
    if per_device > large:
        t_small = stats(small).temp_size_in_bytes
        t_large = stats(large).temp_size_in_bytes
        per_client = max(0, (t_large - t_small) // (large - small))
        base = max(0, t_small - small * per_client)
    else:  # every device holds so few clients that they all run at once
        per_client, base = stats(None).temp_size_in_bytes // max(per_device, 1), 0
    at = stats(chunk_size if per_device > large else None)
    return RoundMemory(
        argument_bytes=int(at.argument_size_in_bytes),
        output_bytes=int(at.output_size_in_bytes),
        alias_bytes=int(at.alias_size_in_bytes),
        temp_bytes=int(at.temp_size_in_bytes),
        per_client_bytes=int(per_client),
        base_bytes=int(base),
        state_bytes_per_client=state_bytes_per_client(algorithm),
        chunk_size=chunk_size,
    )


def choose_chunk(algorithm, memory_bytes: int, fraction: float = 0.8) -> int | None:
    """The largest chunk whose round fits in ``fraction`` of ``memory_bytes`` per device (None:
    every client at once), from :func:`round_memory`'s linear model. Raises ``MemoryError`` when
    even one client at a time does not fit."""
    per_device = math.ceil(algorithm.clients_per_round / client_devices())
    measured = round_memory(algorithm, 2)
    fixed = measured.argument_bytes + measured.output_bytes - measured.alias_bytes
    room = fraction * memory_bytes - fixed - measured.base_bytes
    if room < measured.per_client_bytes:
        raise MemoryError(
            f"a round needs {fixed / 2**30:.1f} GiB of state and data plus "
            f"{(measured.base_bytes + measured.per_client_bytes) / 2**30:.2f} GiB for one client "
            f"per device, more than {fraction:.0%} of the device's {memory_bytes / 2**30:.1f} GiB; "
            "use more --devices, fewer --clients-per-round or a smaller model"
        )
    fit = int(room // max(measured.per_client_bytes, 1))
    return None if fit >= per_device else max(1, fit)


def choose_experiment_chunk(sweep, memory_bytes: int, fraction: float = 0.8) -> int | None:
    """The largest ``--experiment-chunk`` whose compiled round of ``sweep`` (a
    :class:`jaxfl.experiments.vectorized.CompiledSweep`) fits in ``fraction`` of ``memory_bytes``
    per device (None: all of a device's experiments at once, one vmap).

    Each candidate is compiled (nothing runs) and XLA's memory analysis read: a device holds
    the state and data of all its experiments (the call's arguments and outputs) plus the
    temporaries of the experiments in flight. All at once is tried first, then one at a time
    (a ``lax.map`` over chunks, a different program: its temporaries do not lie on a line
    through the vmap's), then the chunk the two predict, halved until it fits. Raises
    :class:`jaxfl.experiments.axis.SweepError`, naming the flags, when one experiment does not fit.
    """
    from jaxfl.experiments.axis import SweepError

    budget = fraction * memory_bytes

    def need(chunk):
        m = sweep.round_memory(chunk)
        return (
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            - m.alias_size_in_bytes
            + (m.temp_size_in_bytes)
        )

    per_device = sweep.per_device
    if need(per_device) <= budget:
        return None
    if per_device == 1 or need(1) > budget:
        m = sweep.round_memory(1 if per_device > 1 else per_device)
        fixed = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
        gib = 2**30
        raise SweepError(
            f"this sweep cannot fit even one experiment at a time (--experiment-chunk 1): a "
            f"device holds {fixed / gib:.2f} GiB of state and data for its {per_device} "
            f"experiments plus {m.temp_size_in_bytes / gib:.2f} GiB for one in flight, more "
            f"than {fraction:.0%} of its {memory_bytes / gib:.2f} GiB; use fewer experiments "
            "per device (fewer --seeds or --sweep values, more --devices), a smaller "
            "--client-chunk or --clients-per-round, or a smaller model"
        )
    slope = max(1.0, (need(per_device) - need(1)) / (per_device - 1))
    chunk = int(min(per_device - 1, max(1, 1 + (budget - need(1)) // slope)))
    while chunk > 1 and need(chunk) > budget:
        chunk //= 2
    return chunk
