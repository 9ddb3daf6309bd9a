"""The ``async`` suite of ``scripts/bench.py``: FedBuff's compiled server step against the
synchronous FedAvg round on the same model and federation.

Rows, at C = 1,000 and 10,000 clients (MLP, MNIST or random images of its shape), each timed as
blocks of ``--rounds-per-call`` steps in one compiled call (a ``lax.scan``):

- ``sync fedavg``: m = 100 clients per round; a round applies 100 client updates.
- ``fedbuff``: M = 100 in flight, K = 10 per server step (the buffer is 10% of the concurrency).
- ``fedbuff K=M``: M = K = 100, the same client work per step as the synchronous round, plus
  the async bookkeeping (top-k arrival order, per-slot start models, dispatch).

Columns: server steps per second, client updates per second (K per step, m per sync round), the
ratio of updates/s to the synchronous round's in the same run, and the per-client Python loop's
step time over the same one-client function (``scripts/bench_loop.py``).
"""

from __future__ import annotations

import time

import jax
import numpy as np
from bench_loop import time_loop

from jaxfl.cli import flags
from jaxfl.experiments import builder

WORKLOADS = (  # (label, run.py flags)
    ("sync fedavg", ["--algo", "fedavg", "--clients-per-round", "100"]),
    ("fedbuff", ["--algo", "fedbuff", "--concurrency", "100", "--buffer", "10"]),
    ("fedbuff K=M", ["--algo", "fedbuff", "--concurrency", "100", "--buffer", "100"]),
)
TINY = {"100": "8", "10": "2"}  # --tiny: 8 in flight, 2 per step, on C = 100 and 200


def time_steps(exp, per_call: int, calls: int):
    """(median seconds per round or server step over ``calls`` compiled blocks of ``per_call``,
    the state after them)."""
    algo = exp.algorithm
    state = algo.init(jax.random.key(0))
    key = jax.random.key(1)
    state, _ = algo.run_rounds(state, key, 1, per_call)  # compile
    jax.block_until_ready(state)
    times = []
    for c in range(calls):
        start = time.perf_counter()
        state, metrics = algo.run_rounds(state, key, 1 + (c + 1) * per_call, per_call)
        jax.block_until_ready((state, metrics))
        times.append((time.perf_counter() - start) / per_call)
    return float(np.median(times)), state


def run_async_suite(args, dataset) -> list[dict]:
    sizes = (100, 200) if args.tiny else (1000, 10000)
    per_call = max(args.rounds_per_call, 2 if args.tiny else 10)
    print(
        f"{'workload':14} {'C':>6} {'in flight':>9} {'per step':>8} {'step s':>8} "
        f"{'steps/s':>8} {'updates/s':>10} {'vs sync':>8} {'loop s':>8} {'loop/jaxfl':>10}",
        flush=True,
    )
    rows = []
    for c in sizes:
        sync_rate = None
        for label, argv in WORKLOADS:
            argv = [TINY.get(a, a) for a in argv] if args.tiny else argv
            run_argv = ["--clients", str(c), "--model", "mlp", "--local-epochs", "1",
                        "--partition", "iid", *argv]  # fmt: skip
            exp = builder.build(flags.parse_config(run_argv), dataset=dataset)
            step_s, state = time_steps(exp, per_call, max(args.rounds, 2))
            per_step = exp.algorithm.clients_per_round
            in_flight = state.flight.client.shape[0] if hasattr(state, "flight") else per_step
            updates = per_step / step_s
            sync_rate = sync_rate or updates
            loop_s, scaled = time_loop(exp, state, jax.random.key(7), args.loop_clients)
            row = {
                "workload": label,
                "clients": c,
                "in_flight": in_flight,
                "updates_per_step": per_step,
                "step_s": step_s,
                "steps_per_s": 1 / step_s,
                "updates_per_s": updates,
                "updates_vs_sync": updates / sync_rate,
                "loop_step_s": loop_s,
                "loop_extrapolated": scaled,
                "loop_over_jaxfl": loop_s / step_s,
                "rounds_per_call": per_call,
            }
            rows.append(row)
            print(
                f"{label:14} {c:>6} {in_flight:>9} {per_step:>8} {step_s:>8.4f} "
                f"{1 / step_s:>8.1f} {updates:>10.0f} {updates / sync_rate:>8.2f} "
                f"{'~' if scaled else ' '}{loop_s:>7.3f} {loop_s / step_s:>10.1f}",
                flush=True,
            )
    return rows
