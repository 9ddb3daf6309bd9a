#!/usr/bin/env python
"""Benchmark one FL round: jaxfl's compiled round vs a per-client loop and the peers' form.

``--suite`` runs a named workload in one command (each row: compile time, steady round time,
clients/s, samples/s, peak memory, achieved useful GFLOP/s and its fraction of a dense GEMM
measured in the same run, the per-client loop and its ratio, and the peers' form and its ratio):

The suites (``fedavg-cnn``, ``dsfl-lab``, ``lowerings``, ``experiments``, ``gpu``, ``async``,
``natural``)
are defined and described in ``scripts/bench_suites.py``; ``--tiny`` shrinks every suite to
seconds.

Without ``--suite`` the flags choose the workload (default: the DS-FL lab setting for C = 10,
100, 1000). The per-client loop calls the same jitted one-client function once per client; the
peers' form (:mod:`benchmarks.peer`, FedJAX's form) is a Python loop over clients and minibatches
calling one jitted SGD step per batch fed from host arrays. For large C both are timed on
``--loop-clients`` clients and scaled linearly (marked '~'). FLOPs are the model's useful FLOPs
per round (:mod:`jaxfl.experiments.flops`), so every lowering's GFLOP/s is comparable.

On a CPU JAX starts with one host device per core (``--devices`` defaults to all of them, so
the clients are split over the cores); ``--devices 1 2 4`` sweeps device counts. Memory per
client comes from XLA's buffer assignment of the compiled round (:mod:`jaxfl.experiments.memory`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # bench_experiments


def _force_host_devices(argv: list[str]) -> None:
    """Make enough CPU devices for ``--devices`` (at least one per core; must happen before JAX
    starts; harmless on accelerators, where the flag only concerns the CPU platform)."""
    from jaxfl.cli.execution import cpu_cores, force_host_devices

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--devices", nargs="+", type=int, default=[cpu_cores()])
    force_host_devices(max(max(pre.parse_known_args(argv)[0].devices), cpu_cores()))


if __name__ == "__main__":
    _force_host_devices(sys.argv[1:])

import bench_async  # noqa: E402
import bench_language  # noqa: E402
import bench_natural  # noqa: E402
import bench_suites  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_loop import peak_memory_bytes, time_loop  # noqa: E402
from bench_suites import CONV_MODELS, SUITES, TINY_FLAGS  # noqa: E402

from benchmarks import peer  # noqa: E402
from jaxfl.cli import flags  # noqa: E402
from jaxfl.core.client_axis import client_mesh, replicate, use_mesh  # noqa: E402
from jaxfl.data import Dataset, DataUnavailableError, load_dataset  # noqa: E402
from jaxfl.experiments import builder, memory  # noqa: E402
from jaxfl.experiments.flops import gemm_flops_per_s, round_flops  # noqa: E402
from jaxfl.models import LOWERING_CHOICES, tuning  # noqa: E402

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


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
        run_config = flags.parse_config(argv)
        exp = builder.build(run_config, dataset=dataset)
        algo = exp.algorithm
        state = replicate(algo.init(jax.random.key(0)))
        round_key = jax.random.key(1)
        start = time.perf_counter()
        jax.jit(algo.round_fn).lower(state, round_key, algo.data).compile()
        compile_s = time.perf_counter() - start
        # round 0 (no distillation yet), which also compiles run_rounds' own jit
        state, _ = algo.run_rounds(state, round_key, 0, 1)
        jax.block_until_ready(state)  # else round 1's time would include round 0's
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
            exp = builder.build(run_config, dataset=dataset)
            state, _ = exp.algorithm.run_rounds(
                exp.algorithm.init(jax.random.key(0)), round_key, 0, 1
            )
        loop_s = time_loop(exp, state, jax.random.key(99), loop_clients)
    loop_round_s, scaled = loop_s
    flops, samples = round_flops(exp)
    m = exp.algorithm.clients_per_round
    return {
        "algo": exp.args.algo,
        "model": exp.config["model"],
        "lowering": exp.config["conv_lowering"],
        "compute_dtype": exp.args.compute_dtype,
        "clients": exp.args.clients,
        "clients_per_round": m,
        "client_chunk": exp.config["client_chunk"],
        "padding_efficiency": exp.config["padding_efficiency"],
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


def gpu_rows(args, dataset, gemm) -> list[dict]:
    """The ``gpu`` suite's round rows (see the module docstring)."""
    tiny = args.tiny
    plan = bench_suites.gpu_plan(tiny)
    rows = []
    for label, algo, model, c, lowering, chunk, extra in plan:
        argv = ["--algo", algo, "--clients", str(c), "--model", model, "--conv-lowering", lowering]
        argv += ["--public-size", "10000" if not tiny else "200", *extra]
        argv += ["--client-chunk", str(chunk)] if chunk else []
        row = bench_one(argv, dataset, gemm, args.rounds, args.loop_clients, args.devices[-1])
        row["gemm_gflop_per_s"] = gemm / 1e9
        rows.append({**row, "label": label})
        _print_row(algo, f"{model} {label}", lowering, c, row)
    return rows


HEADER = (
    f"{'algo':10} {'model':16} {'lowering':8} {'C':>5} {'dev':>3} {'compile s':>9} "
    f"{'round s':>8} {'clients/s':>9} {'samples/s':>10} {'mem GB':>6} {'MB/client':>9} "
    f"{'GFLOP/s':>8} {'%GEMM':>6} {'loop s':>8} {'loop/jaxfl':>9} {'peer s':>8} "
    f"{'peer/jaxfl':>9}"
)


def _print_row(algo: str, label: str, lowering: str, c: int, row: dict) -> None:
    peer_s = row.get("peer_round_s")
    peer_cols = (
        f"{'~' if row['peer_extrapolated'] else ' '}{peer_s:>7.2f} {row['peer_over_jaxfl']:>9.2f}"
        if peer_s is not None
        else f"{'-':>8} {'-':>9}"
    )
    print(
        f"{algo:10} {label:16} {lowering:8} {c:>5} {row['devices']:>3} {row['compile_s']:>9.1f} "
        f"{row['round_s']:>8.2f} {row['clients_per_s']:>9.1f} "
        f"{row['samples_per_s']:>10.0f} {row['peak_mem_gb']:>6.1f} "
        f"{row['mem_per_client_mb'] + row['state_per_client_mb']:>9.2f} "
        f"{row['gflop_per_s']:>8.1f} {100 * row['gemm_fraction']:>5.1f}% "
        f"{'~' if row['loop_extrapolated'] else ' '}{row['loop_round_s']:>7.2f} "
        f"{row['loop_over_vmap']:>9.2f} {peer_cols}",
        flush=True,
    )


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--suite",
        choices=sorted(SUITES),
        default=None,
        help="a named workload (see below); its settings replace --algo/--models/--clients/"
        "--lowerings/--extra",
    )
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
        default=["auto"],
        help=f"conv lowerings to time for conv models ({', '.join(LOWERING_CHOICES)}; "
        "default auto, the per-layer measured choice)",
    )
    p.add_argument("--rounds", type=int, default=2, help="timed steady-state rounds (median)")
    p.add_argument(
        "--loop-clients",
        type=int,
        default=20,
        help="clients the per-client loop and the peers' form are timed on before scaling to C",
    )
    p.add_argument("--no-peer", action="store_true", help="skip the peers' form (benchmarks.peer)")
    p.add_argument(
        "--experiments",
        nargs="+",
        type=int,
        default=None,
        help="experiment counts S for --suite experiments/gpu (default 1 4 8; gpu: 1 8 64)",
    )
    p.add_argument(
        "--workloads",
        nargs="+",
        default=None,
        help="--suite experiments: time only these workloads, by algorithm (fedavg, dsfl)",
    )
    p.add_argument(
        "--tiny", action="store_true", help="shrink the suite to seconds (tests the command)"
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
        default=None,
        help="device counts to sweep, the clients split over each (default: every device; on a "
        "CPU one host device per core; the per-client loop always runs on one device)",
    )
    p.add_argument(
        "--rounds-per-call",
        type=int,
        default=1,
        help="rounds per compiled call (lax.scan over rounds), as in run.py",
    )
    p.add_argument("--extra", default="", help="more run.py flags, e.g. '--local-epochs 1'")
    p.add_argument(
        "--fedjax-python",
        default=os.environ.get("JAXFL_FEDJAX_PYTHON"),
        help="--suite natural/language: the python of an environment with FedJAX installed "
        "(see benchmarks/fedjax_fedavg.py), to run FedJAX's FedAvg on the same federation "
        "(default $JAXFL_FEDJAX_PYTHON; none: jaxfl's rows only)",
    )
    p.add_argument(
        "--natural-writers",
        type=int,
        default=500,
        help="--suite natural: writers of the FEMNIST-like federation (default 500)",
    )
    p.add_argument("--json", default="bench-results/bench.json", help="where to write the rows")
    args = p.parse_args(argv)
    args.partition = "dirichlet"
    if args.suite:
        for name, value in SUITES[args.suite].items():
            setattr(args, name, value)
    if args.suite == "experiments":
        args.clients = [200 if args.tiny else 100]
        args.extra = " ".join(TINY_FLAGS) if args.tiny else ""
    args.devices = args.devices or [len(jax.devices())]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    dataset = load_bench_data(args)
    gemm = gemm_flops_per_s()
    print(
        f"{platform.processor() or platform.machine()} | backend {jax.default_backend()} | "
        f"{jax.devices()[0].device_kind} x {len(jax.devices())} | "
        f"dense f32 GEMM {gemm / 1e9:.1f} GFLOP/s | jax {jax.__version__}",
        flush=True,
    )
    if args.suite == "async":
        _write(args, gemm, [], async_rows=bench_async.run_async_suite(args, dataset))
        return 0
    if args.suite == "natural":
        rows = bench_natural.run_natural_suite(args) + bench_natural.run_emnist_suite(args)
        _write(args, gemm, [], natural_rows=rows)
        return 0
    if args.suite == "language":
        _write(args, gemm, [], language_rows=bench_language.run_language_suite(args, gemm))
        return 0
    if args.suite in ("experiments", "gpu"):
        rows, sweep_rows = [], []
        if args.suite == "gpu":
            print(HEADER, flush=True)
            rows = gpu_rows(args, dataset, gemm)
            args.clients = [200 if args.tiny else 100]
            args.extra = " ".join(TINY_FLAGS) if args.tiny else ""
        counts = args.experiments or ([1, 2] if args.tiny else [1, 4, 8])
        if args.suite == "gpu" and not args.experiments:
            counts = [1, 2] if args.tiny else [1, 8, 64]
        sweep_rows = bench_suites.run_experiment_suite(args, dataset, counts, max(args.rounds, 2))
        _write(args, gemm, rows, sweep_rows)
        return 0
    rows = []
    print(HEADER, flush=True)
    variants = [  # (label, run.py model flags, lowering)
        (model, ["--model", model], lowering)
        for model in args.models
        for lowering in (args.lowerings if model in CONV_MODELS else ["-"])
    ] + [(spec, ["--models", spec], "-") for spec in args.groups]
    for algo in args.algo:
        for label, model_flags, lowering in variants:
            for c in args.clients:
                run_argv = [
                    "--algo", algo, "--clients", str(c), *model_flags,
                    "--partition", args.partition, "--alpha", "1.0", "--public-size", "10000",
                    *args.extra.split(),
                ]  # fmt: skip
                if lowering != "-":
                    run_argv += ["--conv-lowering", lowering]
                if args.client_chunk:
                    run_argv += ["--client-chunk", str(args.client_chunk)]
                loop_s = peer_s = None  # timed once per C, on one device
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
                    if peer_s is None and not args.no_peer:
                        exp = builder.build(flags.parse_config(run_argv), dataset=dataset)
                        peer_s = peer.round_seconds(exp, args.loop_clients) or (None, False)
                    if peer_s is not None and peer_s[0] is not None:
                        row["peer_round_s"], row["peer_extrapolated"] = peer_s
                        row["peer_over_jaxfl"] = peer_s[0] / row["round_s"]
                    row["gemm_gflop_per_s"] = gemm / 1e9
                    rows.append(row)
                    _print_row(algo, label, lowering, c, row)
    choices = _lowering_choices()
    if choices:
        print("conv lowerings chosen by 'auto' (ms per step of each candidate):")
        for key, entry in choices.items():
            times = " ".join(f"{k} {1e3 * v:.2f}" for k, v in entry.get("seconds", {}).items())
            print(f"  {key}: {entry['lowering']}  ({times or 'pinned or rule of thumb'})")
    _write(args, gemm, rows)
    return 0


def _write(
    args,
    gemm: float,
    rows: list[dict],
    experiment_rows: list[dict] | None = None,
    async_rows: list[dict] | None = None,
    natural_rows: list[dict] | None = None,
    language_rows: list[dict] | None = None,
):
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "backend": jax.default_backend(),
                "device": jax.devices()[0].device_kind,
                "devices": len(jax.devices()),
                "suite": args.suite,
                "gemm_gflop_per_s": gemm / 1e9,
                "rows": rows,
                "experiment_rows": experiment_rows or [],
                "async_rows": async_rows or [],
                "natural_rows": natural_rows or [],
                "language_rows": language_rows or [],
                "conv_lowerings": _lowering_choices(),
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


def _lowering_choices() -> dict:
    """Every 'auto' choice made in this run, with its measured times where it was measured."""
    cached = tuning.cached()
    return {key: cached.get(key, {"lowering": low}) for key, low in tuning.choices().items()}


if __name__ == "__main__":
    sys.exit(main())
