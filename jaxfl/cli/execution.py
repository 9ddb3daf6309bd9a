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

from jaxfl.cli.config_flags import add_setting_flags
from jaxfl.configs.fields import settings
from jaxfl.configs.run import ExecutionConfig

# flags that change how a run executes, not what it computes: --resume accepts them
EXECUTION_FLAGS = tuple(settings(ExecutionConfig))


def add_scale_arguments(a) -> None:
    """Add the flags of :class:`jaxfl.configs.run.ExecutionConfig` with ``a =
    parser.add_argument``."""
    add_setting_flags(a, tuple(settings(ExecutionConfig)))


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
