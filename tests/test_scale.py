"""Past one device: sharding the client axis, several processes, rounds scanned in one call with
donated state, bfloat16 compute, and measured round memory."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfl.algorithms import ALGORITHMS
from jaxfl.cli import flags
from jaxfl.configs.run import RunConfig
from jaxfl.core.algorithm import loop_clients
from jaxfl.core.client_axis import map_clients, sum_clients
from jaxfl.core.cohort_chunks import chunk_schedule, deal_sorted, schedule_clients, size_schedule
from jaxfl.experiments import builder, memory
from jaxfl.experiments.results import read_metrics
from jaxfl.experiments.simulation import Simulation
from jaxfl.mechanisms.client_round import padding_efficiency
from jaxfl.models import get_model

from .test_cli import SMALL, run
from .tolerance import NEAR_ZERO, SUMS, ULPS, assert_trees_close

ROOT = Path(__file__).resolve().parents[1]


def _env(devices: int | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def test_sharded_rounds_match_one_device_and_the_per_client_loop():
    """8 CPU devices in a subprocess: map_clients sharded over 3 or 8 devices (3 and 13
    clients, whole and chunked) against a per-client Python loop, and two rounds plus evaluation
    of three algorithm set-ups (uneven client counts, chunking, DP-FedAvg with adaptive
    clipping, model groups with FedMD's two phases, rounds scanned in one call) against the same
    run on one device."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "sharded_worker.py")],
        env=_env(8),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    diffs = json.loads(done.stdout.strip().splitlines()[-1])
    assert len([k for k in diffs if k.startswith("map_clients")]) == 8
    assert len([k for k in diffs if k.startswith("sum_clients")]) == 8
    assert len([k for k in diffs if "devices=8" in k and "_clients m=" not in k]) == 4
    too_far = {k: v for k, v in diffs.items() if not v <= 2e-6}
    assert not too_far, too_far  # float summation order only


@pytest.mark.parametrize("m", [5, 8])
def test_sum_clients_is_the_loop_sum_for_every_chunking(m):
    w = jax.random.normal(jax.random.key(0), (4, 3))
    xs = jax.random.normal(jax.random.key(1), (m, 6, 4))

    def one_client(shared, x):
        return {"h": jnp.tanh(x @ shared).sum(0), "n": jnp.ones(())}

    expected = jax.tree.map(lambda x: x.sum(0), loop_clients(one_client, w, xs))
    schedule = ((2, 1), (1, m - 2))  # a chunk schedule: 2 clients vmapped, then one by one
    mismatched = ((2, 1), (1, m))  # planned for another m: falls back to its widest, 2
    for chunk in (None, 1, 2, 3, 8, schedule, mismatched):
        summed = jax.jit(
            lambda xs, c=chunk: sum_clients(lambda x: one_client(w, x), xs, chunk_size=c)
        )(xs)
        assert float(summed["n"]) == m  # padding clients are not counted
        np.testing.assert_allclose(summed["h"], expected["h"], rtol=SUMS, atol=NEAR_ZERO)
        mapped = jax.jit(
            lambda xs, c=chunk: map_clients(lambda x: one_client(w, x), xs, chunk_size=c)
        )(xs)
        stacked = loop_clients(one_client, w, xs)
        np.testing.assert_allclose(mapped["h"], stacked["h"], rtol=ULPS, atol=NEAR_ZERO)


def test_chunk_schedule_narrows_where_sizes_grow_and_reaches_its_target():
    # equal sizes: one chunk of the widest width, nothing to gain from narrower ones
    assert chunk_schedule([5] * 8, max_width=4) == ((4, 2),)
    assert chunk_schedule([5] * 8) == ((8, 1),)
    # one large client among small ones: it runs alone, the small ones together
    # (7 x 1 + 100 examples; slots 4 x 1 + 2 x 1 + 1 x 1 + 1 x 100 or better)
    sizes = [1] * 7 + [100]
    runs = chunk_schedule(sizes)
    assert schedule_clients(runs) == 8 and runs[-1][0] == 1  # widths 8, 4, 2, 1 only
    widths = [w for w, n in runs for _ in range(n)]
    ends = np.cumsum(widths) - 1
    efficiency = sum(sizes) / sum(w * sizes[e] for w, e in zip(widths, ends, strict=True))
    assert efficiency >= 0.95
    # heavy tails over devices: each device's block is dealt every size, one schedule fits all
    rng = np.random.default_rng(0)
    tail = np.clip(rng.lognormal(3.0, 1.2, 500).astype(int), 1, 900)
    for devices in (1, 2):
        runs = size_schedule(tail, 20, max_width=8, devices=devices)
        assert schedule_clients(runs) == 20 // devices
        assert max(w for w, _ in runs) <= 8
        measured = dict(devices=devices, by_size=True, seed=1)  # other cohorts than planned on
        # batch 1: a step is an example (with larger batches a client's last partial batch
        # costs slots no chunking can save)
        planned = padding_efficiency(tail, 20, 1, 900, chunk=runs, **measured)
        uniform = padding_efficiency(tail, 20, 1, 900, chunk=8, **measured)
        assert planned >= 0.9 > uniform, (planned, uniform)
    order = deal_sorted(jnp.arange(6), 2)  # device 0: positions 0, 2, 4; device 1: 1, 3, 5
    assert order.tolist() == [0, 2, 4, 1, 3, 5]
    assert deal_sorted(jnp.arange(5), 2).tolist() == list(range(5))  # 2 does not divide 5


def test_streamed_fedavg_equals_the_stacked_mean_and_its_memory_does_not_grow_with_m():
    argv = ["--algo", "fedavg", "--dataset", "synthetic", "--model", "mlp", "--client-chunk", "2"]
    exp = builder.build(flags.parse_config([*argv, "--clients", "9"]))
    module, cfg = ALGORITHMS["fedavg"], exp.algorithm_config
    streamed = exp.algorithm
    stacked = module.make(cfg, exp.data, exp.model, stream=False)
    assert streamed.parts.reduced and not stacked.parts.reduced
    state = streamed.init(jax.random.key(0))
    for a, b in zip(
        jax.tree.leaves(streamed.round(state, jax.random.key(4))),
        jax.tree.leaves(stacked.round(state, jax.random.key(4))),
        strict=True,
    ):
        assert_trees_close(np.asarray(a), np.asarray(b))
    temps = {}
    for c in (8, 64):
        big = builder.build(flags.parse_config([*argv, "--clients", str(c)]))
        raw = module.make(big.algorithm_config, big.data, big.model, stream=False)
        temps[c] = [
            memory.compiled_round_memory(a, 2).temp_size_in_bytes for a in (big.algorithm, raw)
        ]
    update_bytes = 4 * exp.model.num_params
    # stacking holds every sampled client's update: 56 more clients, at least 56 more updates
    assert temps[64][1] - temps[8][1] >= 56 * update_bytes
    assert temps[64][0] - temps[8][0] < 4 * update_bytes  # streaming: a few, whatever m


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_compute_the_single_process_run(tmp_path):
    """jax.distributed on localhost: two CPU processes (Gloo collectives), one mesh over both
    processes' devices; process 0 writes the results, both take part in the checkpoint."""
    argv = [
        "--algo", "dsfl", "--clients", "9", "--dataset", "synthetic", "--model", "mlp",
        "--rounds", "2", "--local-epochs", "1", "--public-per-round", "64",
        "--checkpoint-every", "1",
    ]  # fmt: skip
    assert run.main([*argv, "--out", str(tmp_path / "one")]) == 0
    dist = ["--coordinator-address", f"localhost:{_free_port()}", "--num-processes", "2"]
    cmd = [sys.executable, str(ROOT / "scripts" / "run.py"), *argv, *dist]
    cmd += ["--out", str(tmp_path / "two")]
    procs = [
        subprocess.Popen(
            [*cmd, "--process-id", str(i)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in (1, 0)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["processes"] == 2 and config["client_devices"] == 2
    one, two = (
        read_metrics(tmp_path / "one" / "metrics.jsonl"),
        read_metrics(tmp_path / "two" / "metrics.jsonl"),
    )
    assert [r["round"] for r in two] == [1, 2]
    for a, b in zip(one, two, strict=True):
        for key in ("train_loss", "test_acc", "client_acc_mean"):
            # tol: two runs of the same rounds, one of them resumed from a checkpoint: metrics are
            # float32 means over the test set; 1e-5 absolute bounds their reordering in another
            # compiled program.
            assert b[key] == pytest.approx(a[key], abs=1e-5), key
    assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["1", "2"]


def _fedavg(*extra):
    args = flags.parse(
        ["--algo", "fedavg", "--dataset", "synthetic", "--clients", "8", "--model", "mlp"]
        + ["--local-epochs", "1", "--batch-size", "10", *extra]
    )
    return builder.build(RunConfig.from_flags(args))


def test_rounds_per_call_gives_the_same_run_and_ends_blocks_where_state_is_needed():
    algo = _fedavg().algorithm
    plain = Simulation(algo, rounds=7, eval_every=3, seed=1)
    _, plain_history = plain.run()
    blocked = Simulation(algo, rounds=7, eval_every=3, seed=1, rounds_per_call=4)
    blocked.sync_every(2)  # as a checkpointer every 2 rounds does
    seen = []
    blocked.on("round_end", lambda record, state, **_: seen.append((record["round"], state)))
    _, history = blocked.run()
    # blocks: 1-2, 3, 4, 5-6, 7 (ending at evaluations 3, 6, 7 and the sync period 2)
    assert [r for r, s in seen if s is not None] == [2, 3, 4, 6, 7]
    assert [r for r, _ in seen] == list(range(1, 8))
    assert [h["round"] for h in history] == [3, 6, 7]
    for a, b in zip(plain_history, history, strict=True):
        for key in ("train_loss", "test_acc", "client_acc_mean"):
            # tol: the same rounds, evaluated on a schedule against every round: the same float32
            # metrics, within rounding.
            assert b[key] == pytest.approx(a[key], abs=1e-6), key


def test_run_rounds_donates_the_state_and_equals_single_rounds():
    algo = _fedavg().algorithm
    state = algo.init(jax.random.key(0))
    expected, metrics = state, []
    for r in (5, 6, 7):
        expected, m = algo.round(expected, jax.random.fold_in(jax.random.key(3), r))
        metrics.append(m["train_loss"])
    first_leaf = jax.tree.leaves(state)[0]
    scanned, scanned_metrics = algo.run_rounds(state, jax.random.key(3), 5, 3)
    assert first_leaf.is_deleted()  # donated: the buffers now hold the new state
    assert_trees_close(scanned_metrics["train_loss"], np.array(metrics))
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(scanned), strict=True):
        assert_trees_close(np.asarray(a), np.asarray(b))


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
    f32 = get_model("lenet5", (28, 28, 1), 10)
    bf16 = get_model("lenet5", (28, 28, 1), 10, compute_dtype="bfloat16")
    params = f32.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
    jaxpr = str(jax.make_jaxpr(bf16.apply)(params, x))
    assert "bf16" in jaxpr and "dot_general" in jaxpr
    logits = jax.jit(bf16.apply)(params, x)
    assert logits.dtype == jnp.float32
    # tol: bfloat16 keeps 8 bits of mantissa (0.4% per rounding); a two-layer MLP's logits
    # accumulate a few such roundings, bounded by 5% relative plus 0.05 absolute.
    np.testing.assert_allclose(logits, jax.jit(f32.apply)(params, x), atol=0.05, rtol=0.05)
    grads = jax.jit(jax.grad(lambda p: bf16.apply(p, x).sum()))(params)
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
    with pytest.raises(ValueError, match="--compute-dtype 'float16'"):
        get_model("mlp", (4,), 2, compute_dtype="float16")


def test_bfloat16_run_learns_like_float32(tmp_path):
    base = ["--algo", "fedavg", *SMALL, "--rounds", "3", "--model", "mlp"]
    assert run.main([*base, "--out", str(tmp_path / "f32")]) == 0
    assert run.main([*base, "--compute-dtype", "bfloat16", "--out", str(tmp_path / "bf16")]) == 0
    f32, bf16 = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("f32", "bf16"))
    assert bf16[-1]["train_loss"] < bf16[0]["train_loss"]
    assert bf16[-1]["test_acc"] > 0.3  # it learns (10 classes; float32 reaches 0.42)
    assert abs(bf16[-1]["test_acc"] - f32[-1]["test_acc"]) < 0.05
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert config["compute_dtype"] == "bfloat16"


def test_round_memory_is_measured_and_the_chunk_fits_the_budget():
    exp = _fedavg("--clients-per-round", "8")
    algo = exp.algorithm
    measured = memory.round_memory(algo, 2)
    assert measured.per_client_bytes > 0 and measured.temp_bytes > 0
    # the clients' state: FedAvg keeps each client's speed and latency (jaxfl.mechanisms.clock, 2 x
    # 4 bytes); DS-FL keeps a model per client
    assert measured.state_bytes_per_client == 8
    dsfl = builder.build(
        flags.parse_config(
            ["--algo", "dsfl", "--dataset", "synthetic", "--clients", "8", "--model", "mlp"]
            + ["--public-per-round", "64"]
        )
    ).algorithm
    assert memory.state_bytes_per_client(dsfl) == 4 * exp.model.num_params
    # a budget that holds the fixed part and 5 clients' temporaries -> chunk 5 (of 8)
    fixed = measured.argument_bytes + measured.output_bytes - measured.alias_bytes
    budget = (fixed + measured.base_bytes + 5.5 * measured.per_client_bytes) / 0.8
    chunk = memory.choose_chunk(algo, budget)
    assert chunk == 5
    at_chunk = memory.compiled_round_memory(algo, chunk).temp_size_in_bytes
    assert fixed + at_chunk <= 0.8 * budget
    assert memory.choose_chunk(algo, 100 * budget) is None  # everyone at once
    with pytest.raises(MemoryError, match="--devices"):
        memory.choose_chunk(algo, fixed)


def test_accelerator_default_chunk_is_the_measured_fit(monkeypatch):
    """The accelerator branch of the --client-chunk default, on this CPU: with a memory budget
    that holds 3 of 8 clients' temporaries, build picks chunk 3 and the round runs with it."""
    argv = ["--algo", "fedavg", "--dataset", "synthetic", "--clients", "8", "--model", "mlp"]
    probe = builder.build(flags.parse_config([*argv, "--client-chunk", "2"])).algorithm
    measured = memory.round_memory(probe, 2)
    fixed = measured.argument_bytes + measured.output_bytes - measured.alias_bytes
    budget = (fixed + measured.base_bytes + 3.5 * measured.per_client_bytes) / 0.8
    monkeypatch.setattr(builder, "_on_cpu", lambda: False)
    monkeypatch.setattr(builder, "device_memory_bytes", lambda: budget)
    exp = builder.build(flags.parse_config(argv))
    assert exp.config["client_chunk"] == exp.algorithm_config.client_chunk == 3
    state, metrics = exp.algorithm.round(exp.algorithm.init(jax.random.key(0)), jax.random.key(1))
    assert np.isfinite(float(metrics["train_loss"]))


@pytest.mark.parametrize(
    "flag, message",
    [
        (["--devices", "2"], "--devices must be between 1 and the 1 available cpu device(s)"),
        (["--devices", "0"], "--devices 0 is not allowed"),
        (["--rounds-per-call", "0"], "--rounds-per-call 0 is not allowed"),
        (["--compute-dtype", "float16"], "allowed: float32, bfloat16"),
        (["--num-processes", "2"], "all three together, or none"),
        (
            ["--coordinator-address", "x:1", "--num-processes", "2", "--process-id", "2"],
            "--process-id 2 is not allowed; allowed: 0..1",
        ),
    ],
)
def test_scale_flags_are_checked(tmp_path, capsys, flag, message):
    assert run.main(["--algo", "fedavg", *SMALL, "--out", str(tmp_path / "r"), *flag]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_resume_may_change_how_but_not_what_is_computed(tmp_path):
    base = ["--algo", "fedavg", *SMALL, "--checkpoint-every", "1"]
    assert run.main([*base, "--rounds", "4", "--out", str(tmp_path / "whole")]) == 0
    assert run.main([*base, "--rounds", "2", "--out", str(tmp_path / "part")]) == 0
    resumed = ["--resume", str(tmp_path / "part"), "--rounds", "4", "--rounds-per-call", "2"]
    assert run.main(resumed) == 0
    whole = read_metrics(tmp_path / "whole" / "metrics.jsonl")
    part = read_metrics(tmp_path / "part" / "metrics.jsonl")
    for a, b in zip(whole, part, strict=True):
        # tol: the same predictions counted in float32 by two programs (whole test set against its
        # parts): within rounding.
        assert b["test_acc"] == pytest.approx(a["test_acc"], abs=1e-6)


def test_bench_sweeps_devices_and_reports_memory(tmp_path):
    """scripts/bench.py end to end on a tiny workload, one and two (forced CPU) devices: the
    JSON rows carry the figures the README reports (their values are timings: not checked)."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench.py"),
            "--algo",
            "fedavg",
            "--models",
            "logreg",
            "--clients",
            "6",
            "--devices",
            "1",
            "2",
            "--rounds",
            "1",
            "--rounds-per-call",
            "2",
            "--loop-clients",
            "2",
            "--json",
            str(out),
            "--extra",
            "--local-epochs 1 --public-size 600",
        ],  # fmt: skip
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["devices"] for r in rows] == [1, 2]
    for row in rows:
        assert row["rounds_per_call"] == 2 and row["round_s"] > 0
        assert row["mem_per_client_mb"] > 0 and row["round_gflop"] > 0
        assert row["loop_round_s"] == rows[0]["loop_round_s"]  # timed once, on one device


@pytest.mark.slow  # the schedule and its efficiency are checked in the fast tests above
def test_bench_natural_suite_rows_and_the_fedjax_peer_plumbing(tmp_path):
    """scripts/bench.py --suite natural, tiny: the leaf_synthetic rows (schedule, efficiencies,
    the loop) and the EMNIST-CNN row on a FEMNIST-like file in FedJAX's format; FedJAX is not
    installed here, so its runner's failure must reach the row, not stop the suite."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--suite", "natural", "--tiny",
         "--rounds", "1", "--devices", "1", "--fedjax-python", sys.executable,
         "--json", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["natural_rows"]
    leaf = [r for r in rows if r.get("dataset") == "leaf_synthetic"]
    assert [r["clients_per_round"] for r in leaf] == [4, 10]
    for row in leaf:
        assert row["efficiency_schedule"] >= row["efficiency_uniform"] > row["efficiency_padded"]
        assert row["round_s"] > 0 and row["loop_round_s"] > 0
    (emnist,) = [r for r in rows if r.get("workload") == "emnist-cnn femnist-like"]
    assert emnist["writers"] == 40 and emnist["round_s"] > 0
    assert "fedjax" in emnist["fedjax_error"]  # No module named 'fedjax'


@pytest.mark.slow
def test_bench_language_suite_rows(tmp_path):
    """scripts/bench.py --suite language, tiny: the LSTM formulations and a FedAvg row on a
    Shakespeare-like federation in FedJAX's format; FedJAX's failure (not installed here)
    reaches the row."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--suite", "language", "--tiny",
         "--rounds", "1", "--devices", "1", "--fedjax-python", sys.executable,
         "--json", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["language_rows"]
    assert [r["formulation"] for r in rows[:2]] == [
        "hoisted input matmul (jaxfl)",
        "flax OptimizedLSTMCell",
    ]
    (fedavg,) = rows[2:]
    assert fedavg["roles"] == 40 and fedavg["round_s"] > 0 and fedavg["loop_round_s"] > 0
    assert 0 < fedavg["gemm_fraction"] < 1 and "fedjax" in fedavg["fedjax_error"]
