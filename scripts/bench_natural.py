"""``scripts/bench.py --suite natural``: heavy-tailed client sizes, and what padding costs.

FedAvg (MLP, batch 10, 1 local epoch) on LEAF's synthetic federation (1,000 clients, lognormal
sizes 4..900 examples, :func:`jaxfl.data.natural.leaf_synthetic`), 10 and 100 clients per
round, on each ``--devices`` count. Each row times the same compiled round three ways, from the
same state and key:

- ``schedule``: the round as jaxfl runs it: the cohort sorted by size, dealt round-robin to the
  devices, each device's clients in chunks that narrow as sizes grow
  (:func:`jaxfl.core.cohort_chunks.size_schedule`), each chunk running its longest client's steps;
- ``uniform``: the same sorted cohort in equal chunks of the widest width (the previous layout);
- ``loop``: the per-client Python loop over the same jitted one-client function.

Then FedAvg with Reddi et al.'s EMNIST CNN (``--model emnist-cnn``, batch 20, 1 local epoch) on
a FEMNIST-like federation (``--natural-writers`` writers, default 500, lognormal sizes of median
166 capped to 19..500 as FEMNIST's writers, random pixels and labels: timing needs no real
data), written in FedJAX's SQLite format and read by jaxfl as ``emnist62_federated``; with
``--fedjax-python`` (FedJAX's own environment, see ``benchmarks/fedjax_fedavg.py``) FedJAX
itself runs its FedAvg on the same file and clients per round, and the row shows both.

Beside each: the padding efficiency (examples trained / example slots computed, expected over
cohorts, :func:`jaxfl.mechanisms.client_round.padding_efficiency`), and that of padding every
client to the largest (what a plain vmap over the padded capacity computes). The EMNIST rows
also time the host loop's path (``run_rounds``, one round per call) with the training split on
the device and with ``--data-placement host`` (:mod:`jaxfl.data.host_store`: the split in host
memory, each round's cohort gathered and sent, the next while the current one computes), and
give the bytes each keeps on the device and sends per round. ``--tiny`` runs
100 clients and 4 and 10 per round.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from bench_loop import time_loop

from jaxfl.cli import flags
from jaxfl.core.client_axis import client_mesh, replicate, use_mesh
from jaxfl.data.natural import fedjax_sqlite
from jaxfl.data.natural.store import ClientColumns
from jaxfl.experiments import builder
from jaxfl.mechanisms.client_round import padding_efficiency


def _time_round(algo, state, key, chunk, rounds: int) -> tuple[float, float]:
    """(compile seconds, median round seconds) of ``algo``'s round under client ``chunk``."""
    # the data is an argument, not a constant captured in the program (2 GB at 3,400 writers)
    round_fn = jax.jit(lambda s, k, data: algo.round_fn(s, k, data, chunk_size=chunk))
    start = time.perf_counter()
    jax.block_until_ready(round_fn(state, key, algo.data))
    compile_s = time.perf_counter() - start
    times = []
    for r in range(rounds):
        start = time.perf_counter()
        jax.block_until_ready(round_fn(state, jax.random.fold_in(key, r), algo.data))
        times.append(time.perf_counter() - start)
    return compile_s, float(np.median(times))


def _time_run_rounds(algo, state, rounds: int) -> float:
    """Median seconds of ``algo.run_rounds`` one round at a time after a first (compiling) one:
    the host loop's path, where ``--data-placement host`` gathers and sends each cohort (the
    next one while the current one computes)."""
    round_key = jax.random.key(1)
    state, _ = algo.run_rounds(state, round_key, 1, 1)
    jax.block_until_ready(state)
    times = []
    for r in range(2, rounds + 2):
        start = time.perf_counter()
        state, metrics = algo.run_rounds(state, round_key, r, 1)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


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
                exp = builder.build(flags.parse_config(argv))
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
                exp1 = builder.build(flags.parse_config(argv))
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


FEDJAX_RUNNER = Path(__file__).resolve().parents[1] / "benchmarks" / "fedjax_fedavg.py"


def femnist_like_sizes(writers: int, seed: int = 0) -> np.ndarray:
    """FEMNIST-like train examples per writer: lognormal, median 166, capped to 19..500."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(170), 0.55, writers).astype(int), 19, 500)


def write_femnist_like(folder: Path, writers: int, seed: int = 0) -> Path:
    """FedJAX's two EMNIST files of random 28x28 pixels and 62 labels, in ``folder``: each of
    ``writers`` writers with FEMNIST-like train examples and a ninth of that (at least 1) as its
    test split, as the published files split every writer; returns the train file."""
    rng = np.random.default_rng(seed)
    train_sizes = femnist_like_sizes(writers, seed)
    ids = [f"f{k:05d}" for k in range(writers)]
    for split, sizes in (("train", train_sizes), ("test", np.maximum(train_sizes // 9, 1))):
        examples = [
            {
                "pixels": rng.random((n, 28, 28), dtype=np.float32),
                "label": rng.integers(0, 62, n).astype(np.int32),
            }
            for n in sizes
        ]
        fedjax_sqlite.write(
            folder / f"federated_emnist_{split}.sqlite", ClientColumns.from_clients(ids, examples)
        )
    return folder / "federated_emnist_train.sqlite"


def run_fedjax(python: str, path: Path, m: int, rounds: int, runner: Path = FEDJAX_RUNNER) -> dict:
    """FedJAX's FedAvg on ``path`` (``runner``, default ``benchmarks/fedjax_fedavg.py``, in
    FedJAX's environment); its failure's last line as ``fedjax_error``."""
    out = subprocess.run(
        [python, str(runner), str(path), "--clients-per-round", str(m),
         "--rounds", str(rounds)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        return {"fedjax_error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    peer = json.loads(out.stdout.strip().splitlines()[-1])
    # FedJAX's own environment's jax and device count, kept apart from jaxfl's row keys
    return {k if k.startswith("fedjax") else f"fedjax_{k}": v for k, v in peer.items()}


def run_emnist_suite(args) -> list[dict]:
    """FedAvg with the EMNIST CNN on a FEMNIST-like federation: jaxfl (on each ``--devices``
    count) and, with ``--fedjax-python``, FedJAX on the same file."""
    writers = 40 if args.tiny else args.natural_writers
    cohorts = (4,) if args.tiny else (10, 100)
    print(
        f"\nFedAvg, emnist-cnn, batch 20, FEMNIST-like writers: {writers}\n"
        f"{'m':>4} {'dev':>3} {'eff':>5} {'jaxfl s':>8} {'clients/s':>9} {'FedJAX s':>9} "
        f"{'FedJAX/jaxfl':>12}  {'data':>6} {'on device MB':>12} {'MB/round':>8} "
        f"{'host s':>7}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        train_file = write_femnist_like(Path(tmp), writers)
        for m in cohorts:
            peer = {}
            if args.fedjax_python:
                peer = run_fedjax(args.fedjax_python, train_file, m, args.rounds)
            argv = ["--algo", "fedavg", "--dataset", "emnist62_federated", "--data-dir", tmp]
            argv += ["--clients", str(writers), "--clients-per-round", str(m), "--lr", "0.1"]
            argv += ["--model", "emnist-cnn", "--batch-size", "20", "--local-epochs", "1"]
            for devices in args.devices:
                with use_mesh(client_mesh(devices)):
                    exp = builder.build(flags.parse_config(argv))
                    algo = exp.algorithm
                    state = replicate(algo.init(jax.random.key(0)))
                    compile_s, round_s = _time_round(
                        algo, state, jax.random.key(1), algo.client_chunk, args.rounds
                    )
                    built = {
                        k: exp.config[k] for k in ("padding_efficiency", "client_chunk_schedule")
                    }
                    device_data_bytes = int(algo.data.train_x.nbytes)
                    del exp, algo, state  # one federation in memory at a time (2 GB at 3,400)
                    # the host loop's path on each data placement (the training split on the
                    # device, or on the host with each cohort sent: --data-placement host)
                    placed = {}
                    for placement in ("device", "host"):
                        run = flags.parse_config([*argv, "--data-placement", placement])
                        placed[placement] = builder.build(run)
                        state = replicate(placed[placement].algorithm.init(jax.random.key(0)))
                        seconds = _time_run_rounds(placed[placement].algorithm, state, args.rounds)
                        placed[placement].config["loop_round_s"] = seconds
                        placed[placement] = placed[placement].config  # the data can go
                device_run, host_run = placed["device"], placed["host"]
                row = {
                    "suite": "natural",
                    "workload": "emnist-cnn femnist-like",
                    "writers": writers,
                    "clients_per_round": m,
                    "devices": devices,
                    "padding_efficiency": built["padding_efficiency"],
                    "schedule": built["client_chunk_schedule"],
                    "compile_s": compile_s,
                    "round_s": round_s,
                    "clients_per_s": m / round_s,
                    "device_data_bytes": device_data_bytes,
                    "host_loop_round_s_device_placement": device_run["loop_round_s"],
                    "host_loop_round_s_host_placement": host_run["loop_round_s"],
                    "train_split_bytes": host_run["train_split_bytes"],
                    "host_placement_device_bytes": host_run["train_split_device_bytes"],
                    "host_to_device_bytes_per_round": host_run["host_to_device_bytes_per_round"],
                    **peer,
                }
                if "fedjax_round_s" in peer:
                    row["fedjax_over_jaxfl"] = peer["fedjax_round_s"] / round_s
                rows.append(row)
                fj = peer.get("fedjax_round_s")
                print(
                    f"{m:>4} {devices:>3} {row['padding_efficiency']:>5.2f} {round_s:>8.2f} "
                    f"{m / round_s:>9.1f} "
                    + (f"{fj:>9.2f} {fj / round_s:>12.1f}" if fj else f"{'-':>9} {'-':>12}")
                    + (
                        f"  FedJAX failed: {peer['fedjax_error']}" if "fedjax_error" in peer else ""
                    ),
                    flush=True,
                )
                mb = 2**20
                for placement, record in placed.items():
                    on_device = record["train_split_device_bytes"] / mb
                    sent = (record["host_to_device_bytes_per_round"] or 0) / mb
                    print(
                        f"{'':>58}{placement:>6} {on_device:>12.1f} {sent:>8.1f} "
                        f"{record['loop_round_s']:>7.2f}",
                        flush=True,
                    )
    return rows
