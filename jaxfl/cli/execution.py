"""Running past one device: the flags for the client mesh, round scanning, mixed precision and
several hosts, and the multi-host start-up.

One host: ``--devices N`` puts the client axis on a mesh of N devices
(:func:`jaxfl.core.client_axis.client_mesh`). Several hosts (JAX's multi-controller model): start
the same command on every host with ``--coordinator-address HOST:PORT --num-processes P
--process-id I``; :func:`init_distributed` calls ``jax.distributed.initialize`` before anything
else touches JAX, after which ``jax.devices()`` lists every host's devices and the one mesh spans
them all. Every process builds the same data from the same seed; process 0 alone writes the
results folder and checkpoints.
"""

from __future__ import annotations

import argparse
import os

from jaxfl.core.names import COMPUTE_DTYPES

# flags that change how a run executes, not what it computes: --resume accepts them
EXECUTION_FLAGS = (
    "devices",
    "rounds_per_call",
    "coordinator_address",
    "num_processes",
    "process_id",
)


def add_scale_arguments(a) -> None:
    a(
        "--devices",
        type=int,
        default=None,
        help="split the clients over this many devices, a 1-D mesh named 'clients' (default: "
        "all devices; on a CPU scripts/run.py makes one host device per core unless XLA_FLAGS="
        "--xla_force_host_platform_device_count=N says otherwise; --devices 1: no split)",
    )
    a(
        "--rounds-per-call",
        type=int,
        default=1,
        help="run up to this many rounds in one compiled call (lax.scan over rounds, one host "
        "round trip); blocks still end at every evaluation and checkpoint (default 1)",
    )
    a(
        "--compute-dtype",
        default="float32",
        help=f"dtype of the forward and backward passes: {', '.join(COMPUTE_DTYPES)}; parameters, "
        "optimizer states and aggregation stay float32 (default float32; bfloat16 pays off on "
        "GPUs and TPUs, not on CPUs)",
    )
    a(
        "--coordinator-address",
        default=None,
        help="several hosts: HOST:PORT of process 0, for jax.distributed.initialize (give the "
        "same command on every host with its own --process-id)",
    )
    a(
        "--num-processes",
        type=int,
        default=None,
        help="several hosts: how many processes take part (with --coordinator-address)",
    )
    a(
        "--process-id",
        type=int,
        default=None,
        help="several hosts: this process's index, 0..--num-processes - 1",
    )


def cpu_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def force_host_devices(count: int) -> None:
    """Start JAX's CPU platform with ``count`` devices (``XLA_FLAGS=
    --xla_force_host_platform_device_count``), unless ``XLA_FLAGS`` already sets a count.

    Must run before JAX initialises its backends (the first ``jax.devices()`` or computation);
    ``import jax`` alone is fine. It only concerns the CPU platform, so it is harmless where an
    accelerator is JAX's default. scripts/run.py and scripts/bench.py make one device per core:
    each device then runs its own block of clients on its own thread (on the 2-core CPU the
    FedAvg CNN round ran 1.5x faster on 2 devices than on 1, see the README).
    """
    flags_now = os.environ.get("XLA_FLAGS", "")
    if count > 1 and "xla_force_host_platform_device_count" not in flags_now:
        os.environ["XLA_FLAGS"] = f"{flags_now} --xla_force_host_platform_device_count={count}"
        os.environ["XLA_FLAGS"] = os.environ["XLA_FLAGS"].strip()


def init_distributed(args: argparse.Namespace) -> bool:
    """``jax.distributed.initialize`` when the multi-host flags are given; True if it ran.

    Must run before any other JAX computation. CPU processes exchange data through Gloo.
    """
    if args.coordinator_address is None:
        return False
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=args.coordinator_address,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )
    return True
