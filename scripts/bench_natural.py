"""``scripts/bench.py --suite natural``: heavy-tailed client sizes, and what padding costs.

FedAvg (MLP, batch 10, 1 local epoch) on LEAF's synthetic federation (1,000 clients, lognormal
sizes 4..900 examples, :func:`jaxfl.data.natural.leaf_synthetic`), 10 and 100 clients per
round, on each ``--devices`` count. Each row times the same compiled round three ways, from the
same state and key:

- ``schedule``: the round as jaxfl runs it: the cohort sorted by size, dealt round-robin to the
  devices, each device's clients in chunks that narrow as sizes grow
  (:func:`jaxfl.core.client_axis.size_schedule`), each chunk running its longest client's steps;
- ``uniform``: the same sorted cohort in equal chunks of the widest width (the previous layout);
- ``loop``: the per-client Python loop over the same jitted one-client function.

Beside each: the padding efficiency (examples trained / example slots computed, expected over
cohorts, :func:`jaxfl.mechanisms.client_round.padding_efficiency`), and that of padding every
client to the largest (what a plain vmap over the padded capacity computes). ``--tiny`` runs
100 clients and 4 and 10 per round.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from bench_loop import time_loop

from jaxfl.cli import flags
from jaxfl.core.client_axis import client_mesh, replicate, use_mesh
from jaxfl.experiments import builder
from jaxfl.mechanisms.client_round import padding_efficiency


def _time_round(algo, state, key, chunk, rounds: int) -> tuple[float, float]:
    """(compile seconds, median round seconds) of ``algo``'s round under client ``chunk``."""
    round_fn = jax.jit(lambda s, k: algo.round_fn(s, k, algo.data, chunk_size=chunk))
    start = time.perf_counter()
    jax.block_until_ready(round_fn(state, key))
    compile_s = time.perf_counter() - start
    times = []
    for r in range(rounds):
        start = time.perf_counter()
        jax.block_until_ready(round_fn(state, jax.random.fold_in(key, r)))
        times.append(time.perf_counter() - start)
    return compile_s, float(np.median(times))


def run_natural_suite(args) -> list[dict]:
    """The suite's rows (see the module docstring); prints a table as it goes."""
    clients, cohorts = (100, (4, 10)) if args.tiny else (1000, (10, 100))
    print(
        f"{'m':>4} {'dev':>3} {'schedule (width x count runs)':<34} {'eff':>5} {'s/round':>8} "
        f"{'uniform':>8} {'eff':>5} {'padded eff':>10} {'loop s':>8} {'loop/jaxfl':>10}",
        flush=True,
    )
    rows = []
    for m in cohorts:
        argv = ["--algo", "fedavg", "--dataset", "leaf_synthetic", "--clients", str(clients)]
        argv += ["--clients-per-round", str(m), "--model", "mlp", "--batch-size", "10"]
        argv += ["--local-epochs", "1", "--lr", "0.05"]
        loop_s = None
        for devices in args.devices:
            with use_mesh(client_mesh(devices)):
                exp = builder.build(flags.parse(argv))
                algo = exp.algorithm
                state = replicate(algo.init(jax.random.key(0)))
                key = jax.random.key(1)
                schedule = algo.client_chunk
                widest = max(w for w, _ in schedule) if isinstance(schedule, tuple) else schedule
                sizes = np.asarray(algo.data.client_count)
                eff = {
                    name: padding_efficiency(
                        sizes, m, 10, algo.data.capacity, chunk=chunk, devices=devices,
                        by_size=by_size, seed=1,
                    )
                    for name, chunk, by_size in (
                        ("schedule", schedule, True),
                        ("uniform", widest, True),
                        ("padded", widest, False),
                    )
                }  # fmt: skip
                compile_s, round_s = _time_round(algo, state, key, schedule, args.rounds)
                uniform_compile_s, uniform_s = _time_round(algo, state, key, widest, args.rounds)
            if loop_s is None:  # the per-client loop, on one device
                exp1 = builder.build(flags.parse(argv))
                state1 = exp1.algorithm.init(jax.random.key(0))
                loop_s, _ = time_loop(exp1, state1, key, m)
            row = {
                "suite": "natural",
                "dataset": "leaf_synthetic",
                "clients": clients,
                "clients_per_round": m,
                "devices": devices,
                "schedule": [list(r) for r in schedule] if isinstance(schedule, tuple) else None,
                "widest_chunk": widest,
                "efficiency_schedule": eff["schedule"],
                "efficiency_uniform": eff["uniform"],
                "efficiency_padded": eff["padded"],
                "compile_s": compile_s,
                "round_s": round_s,
                "uniform_compile_s": uniform_compile_s,
                "uniform_round_s": uniform_s,
                "loop_round_s": loop_s,
                "loop_over_jaxfl": loop_s / round_s,
            }
            rows.append(row)
            runs = " ".join(f"{w}x{n}" for w, n in schedule) if row["schedule"] else str(widest)
            print(
                f"{m:>4} {devices:>3} {runs:<34} {eff['schedule']:>5.2f} {round_s:>8.3f} "
                f"{uniform_s:>8.3f} {eff['uniform']:>5.2f} {eff['padded']:>10.2f} "
                f"{loop_s:>8.3f} {loop_s / round_s:>10.1f}",
                flush=True,
            )
    return rows
