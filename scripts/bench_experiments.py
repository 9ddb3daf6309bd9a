"""The experiments axis timed for scripts/bench.py: S experiments in one compiled call against S
separate runs of one experiment each.

A separate run is what ``scripts/run.py --seed s`` costs: starting Python and importing JAX
(timed in a subprocess), building the federation and the algorithm, compiling, and its rounds;
S separate commands cost S times that (they are independent, so one is timed and multiplied).
The sweep is ``scripts/run.py --seeds S``'s work: one build per seed, one compile, the rounds
of all experiments together. Both are timed in this process on the same flags, with and
without compilation.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import jax

from jaxfl.cli import flags
from jaxfl.experiments import builder, sweep_runner
from jaxfl.experiments.axis import parse_seeds

ROOT = Path(__file__).resolve().parents[1]


def startup_seconds() -> float:
    """Wall time of a fresh Python importing jaxfl and JAX (what each separate command pays)."""
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import jax, jaxfl.experiments.builder, jaxfl.algorithms; jax.devices()",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def time_single(argv: list[str], rounds: int, dataset) -> dict:
    """One experiment as run.py runs it: build, compile (round 1), the other rounds."""
    start = time.perf_counter()
    exp = builder.build(flags.parse_config(argv), dataset=dataset)
    algo = exp.algorithm
    init_key, round_key = jax.random.split(jax.random.key(exp.args.seed))
    state = algo.init(init_key)
    jax.block_until_ready(state)
    built = time.perf_counter()
    state, _ = algo.run_rounds(state, round_key, 1, 1)
    jax.block_until_ready(state)
    first = time.perf_counter()
    for r in range(2, rounds + 1):
        state, _ = algo.run_rounds(state, round_key, r, 1)
    jax.block_until_ready(state)
    done = time.perf_counter()
    steady = (done - first) / max(rounds - 1, 1)
    return {"build_s": built - start, "first_round_s": first - built, "round_s": steady}


def time_sweep(argv: list[str], seeds: int, rounds: int, dataset, devices: int) -> dict:
    """``--seeds S`` on the same flags: build every seed, compile once, run every round."""
    args = flags.parse([*argv, "--seeds", str(seeds)])
    start = time.perf_counter()
    cache = {sweep_runner.dataset_key(args, args.seed): dataset}
    algo_sweep = sweep_runner.build_algorithm(
        args, args.algo, parse_seeds(args.seeds, args.seed), cache, devices
    )
    (group,) = algo_sweep.groups
    state = group.init()
    jax.block_until_ready(state)
    built = time.perf_counter()
    state, _ = group.run_rounds(state, 1, 1)
    jax.block_until_ready(state)
    first = time.perf_counter()
    for r in range(2, rounds + 1):
        state, _ = group.run_rounds(state, r, 1)
    jax.block_until_ready(state)
    done = time.perf_counter()
    return {
        "build_s": built - start,
        "first_round_s": first - built,
        "round_s": (done - first) / max(rounds - 1, 1),
        "devices": group.devices,
        "experiment_chunk": group.chunk,
    }


def compare(argv, counts, rounds, dataset, devices, startup) -> list[dict]:
    """Rows for S in ``counts``: the sweep against S separate runs, compile in and out."""
    single = time_single(argv, rounds, dataset)
    one_command = startup + single["build_s"] + single["first_round_s"]
    one_command += (rounds - 1) * single["round_s"]
    rows = []
    for s in counts:
        swept = time_sweep(argv, s, rounds, dataset, devices)
        sweep_wall = swept["build_s"] + swept["first_round_s"] + (rounds - 1) * swept["round_s"]
        sweep_wall += startup
        rows.append(
            {
                "argv": argv,
                "experiments": s,
                "rounds": rounds,
                "sweep_wall_s": sweep_wall,
                "sweep_round_s": swept["round_s"],
                "separate_wall_s": s * one_command,
                "separate_round_s": s * single["round_s"],
                "wall_ratio": sweep_wall / (s * one_command),
                "round_ratio": swept["round_s"] / (s * single["round_s"]),
                "experiment_rounds_per_s": s / swept["round_s"],
                "separate_experiment_rounds_per_s": 1 / single["round_s"],
                **{f"sweep_{k}": v for k, v in swept.items()},
                **{f"single_{k}": v for k, v in single.items()},
                "startup_s": startup,
            }
        )
    return rows


def print_rows(label: str, rows: list[dict]) -> None:
    print(
        f"{'workload':26} {'S':>3} {'dev':>3} {'sweep s':>8} {'S runs s':>9} {'wall':>6} "
        f"{'round s':>8} {'S x 1 s':>8} {'rounds':>6} {'exp-rounds/s':>12}"
    )
    for r in rows:
        print(
            f"{label:26} {r['experiments']:>3} {r['sweep_devices']:>3} {r['sweep_wall_s']:>8.1f} "
            f"{r['separate_wall_s']:>9.1f} {r['wall_ratio']:>6.2f} {r['sweep_round_s']:>8.2f} "
            f"{r['separate_round_s']:>8.2f} {r['round_ratio']:>6.2f} "
            f"{r['experiment_rounds_per_s']:>12.2f}",
            flush=True,
        )
