#!/usr/bin/env python
"""Benchmark one FL round: vmapped jitted round vs a per-client Python loop, side by side.

Default workload: the DS-FL authors' lab setting on MNIST (Dirichlet alpha 1.0, LeNet-5,
5 local epochs, batch 50, lr 0.1, 5 distillation epochs, open set 10,000 with 1,000 per round,
ERA T=0.1), for C = 10, 100, 1000 clients, every client sampled each round. For each C and conv
lowering it prints compile time, steady round time, clients/s, samples/s, peak memory, achieved
FLOP/s and its fraction of a dense GEMM measured in the same run, and the per-client loop's round
time with the ratio loop/vmap. Writes the rows as JSON.

FLOPs are the model's useful FLOPs per round (:mod:`jaxfl.flops`), so every conv lowering's
GFLOP/s is comparable.

The per-client loop calls the same jitted one-client function once per client; for large C it is
timed on ``--loop-clients`` clients and scaled linearly (the loop's cost is linear in clients by
construction), which the table marks with '~'.

``--devices 1 2 4 8`` repeats every row with the client axis sharded over that many devices (on a
CPU the devices are made with XLA_FLAGS=--xla_force_host_platform_device_count, set here before
JAX starts; they share the host's cores). Memory per client comes from XLA's buffer assignment of
the compiled round (:mod:`jaxfl.memory`): the temporaries one more client in flight costs, and
the state kept per client.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _force_host_devices(argv: list[str]) -> None:
    """Make enough CPU devices for ``--devices`` (must happen before JAX starts; harmless on
    accelerators, where the flag only concerns the CPU platform)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--devices", nargs="+", type=int, default=[1])
    wanted = max(pre.parse_known_args(argv)[0].devices)
    flags_now = os.environ.get("XLA_FLAGS", "")
    if wanted > 1 and "xla_force_host_platform_device_count" not in flags_now:
        os.environ["XLA_FLAGS"] = (
            f"{flags_now} --xla_force_host_platform_device_count={wanted}".strip()
        )


if __name__ == "__main__":
    _force_host_devices(sys.argv[1:])


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxfl import experiment, flags, memory  # noqa: E402
from jaxfl.algorithm import _jit_cache  # noqa: E402
from jaxfl.clients import client_mesh, replicate, use_mesh  # noqa: E402
from jaxfl.data import Dataset, DataUnavailableError, load_dataset  # noqa: E402
from jaxfl.flops import gemm_flops_per_s, round_flops  # noqa: E402
from jaxfl.models import CONV_LOWERINGS  # noqa: E402

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


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


def bench_one(
    argv: list[str],
    dataset: Dataset,
    gemm: float,
    rounds: int,
    loop_clients: int,
    devices: int = 1,
    rounds_per_call: int = 1,
    loop_s: tuple[float, bool] | None = None,
):
    """One row: compile and time the round (on ``devices`` devices, ``rounds_per_call`` rounds
    per compiled call), measure its memory, and time the per-client loop (on one device)
    unless ``loop_s`` gives it already."""
    mesh = client_mesh(devices)
    with use_mesh(mesh):
        args = flags.parse(argv)
        exp = experiment.build(args, dataset=dataset)
        algo = exp.algorithm
        state = replicate(algo.init(jax.random.key(0)))
        round_key = jax.random.key(1)
        start = time.perf_counter()
        jax.jit(algo.round_fn).lower(state, round_key, algo.data).compile()
        compile_s = time.perf_counter() - start
        # round 0 (no distillation yet), which also compiles run_rounds' own jit
        state, _ = algo.run_rounds(state, round_key, 0, 1)
        if rounds_per_call > 1:  # compile the scan
            jax.block_until_ready(
                algo.run_rounds(jax.tree.map(jnp.copy, state), round_key, 1, rounds_per_call)
            )
        times = []
        for r in range(rounds):
            start = time.perf_counter()
            state, metrics = algo.run_rounds(
                state, round_key, 1 + r * rounds_per_call, rounds_per_call
            )
            jax.block_until_ready((state, metrics))
            times.append((time.perf_counter() - start) / rounds_per_call)
        round_s = float(np.median(times))
        mem = memory.round_memory(algo, exp.config["client_chunk"])
    if loop_s is None:  # the per-client loop runs on one device, from an unsharded build
        if devices > 1:
            exp = experiment.build(args, dataset=dataset)
            state, _ = exp.algorithm.run_rounds(
                exp.algorithm.init(jax.random.key(0)), round_key, 0, 1
            )
        loop_s = time_loop(exp, state, jax.random.key(99), loop_clients)
    loop_round_s, scaled = loop_s
    flops, samples = round_flops(exp)
    m = exp.algorithm.clients_per_round
    return {
        "algo": args.algo,
        "model": exp.config["model"],
        "lowering": exp.config["conv_lowering"],
        "compute_dtype": args.compute_dtype,
        "clients": args.clients,
        "clients_per_round": m,
        "client_chunk": exp.config["client_chunk"],
        "devices": devices,
        "rounds_per_call": rounds_per_call,
        "compile_s": compile_s,
        "round_s": round_s,
        "clients_per_s": m / round_s,
        "samples_per_s": samples / round_s,
        "peak_mem_gb": peak_memory_bytes() / 2**30,
        "round_temp_gb": mem.temp_bytes / 2**30,
        "round_args_gb": mem.argument_bytes / 2**30,
        "mem_per_client_mb": mem.per_client_bytes / 2**20,
        "state_per_client_mb": mem.state_bytes_per_client / 2**20,
        "round_gflop": flops / 1e9,
        "gflop_per_s": flops / round_s / 1e9,
        "gemm_fraction": flops / round_s / gemm,
        "loop_round_s": loop_round_s,
        "loop_extrapolated": scaled,
        "loop_over_vmap": loop_round_s / round_s,
        "dataset": exp.data_info["dataset"],
        "data_source": exp.data_info["source"],
    }


def load_bench_data(args) -> Dataset:
    for folder in ([args.data_dir] if args.data_dir else []) + [str(SHARED_MNIST)]:
        if folder and Path(folder).exists():
            return load_dataset("mnist", folder)
    try:
        return load_dataset("mnist")
    except DataUnavailableError:
        print("MNIST unavailable: timing on random 28x28 images of the same shape", flush=True)
        rng = np.random.default_rng(0)
        x = rng.uniform(-1, 1, (60000, 28, 28, 1)).astype(np.float32)
        y = rng.integers(10, size=60000).astype(np.int32)
        return Dataset("random-mnist-shape", x, y, x[:10000], y[:10000], 10, source="generated")


CONV_MODELS = ("lenet5", "cnn", "resnet8", "resnet20")


def _print_row(algo: str, label: str, lowering: str, c: int, row: dict) -> None:
    print(
        f"{algo:10} {label:16} {lowering:8} {c:>5} {row['devices']:>3} {row['compile_s']:>9.1f} "
        f"{row['round_s']:>8.2f} {row['clients_per_s']:>9.1f} "
        f"{row['samples_per_s']:>10.0f} {row['peak_mem_gb']:>6.1f} "
        f"{row['mem_per_client_mb'] + row['state_per_client_mb']:>9.2f} "
        f"{row['gflop_per_s']:>8.1f} {100 * row['gemm_fraction']:>5.1f}% "
        f"{'~' if row['loop_extrapolated'] else ' '}{row['loop_round_s']:>7.2f} "
        f"{row['loop_over_vmap']:>9.2f}",
        flush=True,
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--algo", nargs="+", default=["dsfl"], help="algorithms to time (any of run.py's --algo)"
    )
    p.add_argument(
        "--clients",
        nargs="+",
        type=int,
        default=[10, 100, 1000],
        help="population sizes C to sweep (all sampled each round)",
    )
    p.add_argument(
        "--models", nargs="+", default=["lenet5"], help="models to time (lenet5 cnn mlp logreg)"
    )
    p.add_argument(
        "--lowerings",
        nargs="+",
        default=list(CONV_LOWERINGS),
        help="conv lowerings to time for conv models",
    )
    p.add_argument("--rounds", type=int, default=2, help="timed steady-state rounds (median)")
    p.add_argument(
        "--loop-clients",
        type=int,
        default=20,
        help="clients the per-client loop is timed on before scaling to C",
    )
    p.add_argument("--data-dir", default=None, help="MNIST IDX folder (default ../shared/data)")
    p.add_argument("--client-chunk", type=int, default=None, help="as in run.py")
    p.add_argument(
        "--groups",
        nargs="+",
        default=[],
        help="also time mixed-architecture runs: run.py --models specs, e.g. lenet5:50,mlp:50",
    )
    p.add_argument(
        "--devices",
        nargs="+",
        type=int,
        default=[1],
        help="device counts to sweep, the client axis sharded over each (on a CPU, host devices "
        "are forced to the largest; the per-client loop always runs on one device)",
    )
    p.add_argument(
        "--rounds-per-call",
        type=int,
        default=1,
        help="rounds per compiled call (lax.scan over rounds), as in run.py",
    )
    p.add_argument("--extra", default="", help="more run.py flags, e.g. '--local-epochs 1'")
    p.add_argument("--json", default="bench-results/bench.json", help="where to write the rows")
    args = p.parse_args(argv)
    dataset = load_bench_data(args)
    gemm = gemm_flops_per_s()
    print(
        f"{platform.processor() or platform.machine()} | backend {jax.default_backend()} | "
        f"{jax.devices()[0].device_kind} | dense f32 GEMM {gemm / 1e9:.1f} GFLOP/s",
        flush=True,
    )
    rows = []
    header = (
        f"{'algo':10} {'model':16} {'lowering':8} {'C':>5} {'dev':>3} {'compile s':>9} "
        f"{'round s':>8} {'clients/s':>9} {'samples/s':>10} {'mem GB':>6} {'MB/client':>9} "
        f"{'GFLOP/s':>8} {'%GEMM':>6} {'loop s':>8} {'loop/vmap':>9}"
    )
    print(header, flush=True)
    variants = [  # (label, run.py model flags, lowering)
        (model, ["--model", model], lowering)
        for model in args.models
        for lowering in (args.lowerings if model in CONV_MODELS else ["-"])
    ] + [(spec, ["--models", spec], "-") for spec in args.groups]
    for algo in args.algo:
        for label, model_flags, lowering in variants:
            for c in args.clients:
                run_argv = [
                    "--algo",
                    algo,
                    "--clients",
                    str(c),
                    *model_flags,
                    "--partition",
                    "dirichlet",
                    "--alpha",
                    "1.0",
                    "--public-size",
                    "10000",
                    *args.extra.split(),
                ]
                if lowering != "-":
                    run_argv += ["--conv-lowering", lowering]
                if args.client_chunk:
                    run_argv += ["--client-chunk", str(args.client_chunk)]
                loop_s = None  # timed once per C, on one device
                for devices in args.devices:
                    row = bench_one(
                        run_argv,
                        dataset,
                        gemm,
                        args.rounds,
                        args.loop_clients,
                        devices,
                        args.rounds_per_call,
                        loop_s,
                    )
                    loop_s = (row["loop_round_s"], row["loop_extrapolated"])
                    row["gemm_gflop_per_s"] = gemm / 1e9
                    rows.append(row)
                    _print_row(algo, label, lowering, c, row)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "backend": jax.default_backend(),
                "device": jax.devices()[0].device_kind,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
