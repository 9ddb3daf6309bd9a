"""The experiments axis: a sweep of S experiments equals S separate runs; traced hyperparameters
equal Python constants; stacked federations of different sizes; bad input names the flag."""

import argparse
import copy
import functools
import json

import jax
import numpy as np
import pytest

from jaxfl.algorithms import ALGORITHMS
from jaxfl.cli import flags
from jaxfl.configs.run import RunConfig
from jaxfl.experiments import axis, builder, memory, sweep_runner
from jaxfl.experiments.axis import GridPoint, SweepError, parse_seeds, parse_sweep
from jaxfl.experiments.vectorized import CompiledSweep

from .test_cli import run
from .tolerance import ULPS, between_programs

BASE = [
    "--dataset", "synthetic", "--clients", "6", "--model", "mlp", "--local-epochs", "1",
    "--batch-size", "10", "--public-size", "60", "--public-per-round", "20",
    "--client-test-size", "10",
]  # fmt: skip
EXTRA = {  # per-algorithm flags that keep its round small
    "dsfl": ["--distill-epochs", "1"],
    "fedmd": ["--fedmd-public-epochs", "1", "--fedmd-private-epochs", "1"],
    "fccl": ["--fccl-pretrain-epochs", "1", "--public-per-round", "8"],
    "feddf": ["--server-distill-steps", "4"],
    "ditto": ["--personal-epochs", "1"],
    "finetune": ["--finetune-epochs", "0,1"],
    "hypcluster": ["--num-clusters", "2"],
    "incfl": ["--rounds", "1"],  # its local-only baseline trains for --rounds rounds
    "fedbuff": ["--concurrency", "4", "--buffer", "2", "--client-speed", "lognormal:0.5"],
}


@functools.lru_cache(maxsize=64)
def build(algo: str, seed: int, *more: str):
    """One experiment as run.py builds it, cached: tests only read it (IncFL's build trains its
    local-only baseline, seconds each time)."""
    args = flags.parse(["--algo", algo, "--seed", str(seed), *BASE, *EXTRA.get(algo, []), *more])
    return builder.build(RunConfig.from_flags(args))


def one_run(exp, rounds: int):
    """What a single run computes: Simulation's keys, rounds 1..rounds, then evaluate."""
    init_key, round_key = jax.random.split(jax.random.key(exp.args.seed))
    algo = exp.algorithm
    state = algo.init(init_key)
    metrics = []
    for r in range(1, rounds + 1):
        state, m = algo.round(state, jax.random.fold_in(round_key, r))
        metrics.append(m)
    return state, metrics, algo.evaluate(state)


def compiled(algo: str, experiments_, built: dict, **kwargs) -> CompiledSweep:
    first = built[experiments_[0].seed]
    return CompiledSweep(
        ALGORITHMS[algo],
        first.algorithm_config,
        first.fault_config,
        first.groups or first.model,
        experiments_,
        {s: e.data for s, e in built.items()},
        {s: e.make_kwargs for s, e in built.items()},
        **kwargs,
    )


def max_diff(a, b) -> float:
    diffs = jax.tree.map(
        lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))),
        a,
        b,
    )
    return max(jax.tree.leaves(diffs), default=0.0)


# Round 1 to float tolerance in the default run for algorithms of each kind (plain averaging,
# distillation, FedDF's per-seed static split; FedBuff's per-seed clock and in-flight clients in
# tests/test_async.py); the rest (personal models included: local, mrmtl; IncFL's extra make
# arguments) are traced and shape-checked here and compared numerically under -m slow (the
# sweep's mechanism is the same for every algorithm: bind inside the trace).
# tests/test_privacy.py compares a swept DP noise multiplier numerically.
NUMERIC = ("dsfl", "fedavg", "feddf")


@pytest.mark.parametrize("algo", NUMERIC)
def test_two_seeds_in_one_call_equal_two_separate_runs_round_one(algo):
    """Round 1: experiment i of the sweep is the single run with seed s_i (own partition,
    sampling, initialisation), to float tolerance."""
    check_two_seeds(algo)


@pytest.mark.slow
@pytest.mark.parametrize("algo", sorted(set(ALGORITHMS) - set(NUMERIC)))
def test_two_seeds_in_one_call_equal_two_separate_runs_round_one_slow(algo):
    check_two_seeds(algo)


def check_two_seeds(algo):
    seeds = (0, 3)
    built = {s: build(algo, s) for s in seeds}
    groups = axis.static_groups(axis.grid(seeds, {}), ALGORITHMS[algo])
    assert len(groups) == (2 if algo == "feddf" else 1)  # FedDF's public split is per seed
    check_round_one(algo, compiled(algo, groups[-1], built), built)  # FedDF: seed 3's group


@pytest.mark.parametrize("algo", sorted(set(ALGORITHMS) - set(NUMERIC)))
def test_every_algorithm_binds_inside_the_traced_sweep(algo):
    """Traced, not compiled: the sweep of two seeds, with every float hyperparameter of the
    algorithm traced (two values each), gives each experiment the single run's state shapes
    and a (2, 1) row per round metric."""
    seeds = (0, 3)
    built = {s: build(algo, s) for s in seeds}
    traced, _ = axis.sweepable(ALGORITHMS[algo])
    if algo == "local":  # it refuses any fault (no uploads), so a traced probability too
        traced = {n: k for n, k in traced.items() if k != "faults"}
    first = built[0]
    defaults = {**vars(first.algorithm_config), **vars(first.fault_config)}
    values = {n: float(defaults[n]) for n in traced if defaults[n] is not None}  # None: derived
    grid = [GridPoint(i, s, {n: v * (1 + 0.1 * i) for n, v in values.items()}) for i, s in
            enumerate(seeds)]  # fmt: skip
    sweep_ = compiled(algo, grid, built)
    assert set(sweep_.swept) == set(values)
    state = jax.eval_shape(sweep_._init, sweep_.lanes)
    state, block = jax.eval_shape(
        lambda s, lanes: sweep_._rounds(s, lanes, 1, num_rounds=1), state, sweep_.lanes
    )
    single = jax.eval_shape(first.algorithm.init, jax.random.key(0))
    assert jax.tree.map(lambda x: x.shape[1:], state) == jax.tree.map(lambda x: x.shape, single)
    assert all(v.shape == (2, 1) for v in block.values())


def check_round_one(algo, sweep_, built):
    """The sweep's last experiment against its own single run (one reference compile per
    algorithm; the last lane shows that each lane reads its own seed's data and keys)."""
    state, block = sweep_.run_rounds(sweep_.init(), 1, 1)
    evaluated = sweep_.evaluate(state)
    i, s = len(sweep_.experiments) - 1, sweep_.experiments[-1].seed
    ref_state, ref_metrics, ref_eval = one_run(built[s], 1)
    lane = jax.tree.map(lambda x: x[i], state)
    # a vmapped sweep and a single run are different programs: tests/tolerance.py's bound
    assert max_diff(lane, ref_state) < between_programs(ref_state), (algo, s)
    for k, v in ref_metrics[0].items():
        assert abs(float(block[k][i, 0]) - float(v)) < between_programs(v), (algo, s, k)
    for k, v in ref_eval.items():
        assert max_diff(evaluated[k][i], v) < between_programs(v), (algo, s, k)


def test_fedavg_logreg_whole_history_and_traced_lr_equal_separate_runs():
    """FedAvg with logistic regression is not chaotic: three rounds of a seeds x lr grid match
    the separate runs closely; a traced lr equals the same lr given as a Python constant."""
    seeds, lrs = (0, 1), (0.05, 0.2)
    built = {s: build("fedavg", s, "--model", "logreg") for s in seeds}
    grid = axis.grid(seeds, {"lr": lrs})
    sweep_ = compiled("fedavg", grid, built)
    state = sweep_.init()
    state, block = sweep_.run_rounds(state, 1, 3)
    for i, e in enumerate(grid):
        if i not in (0, len(grid) - 1):  # the grid's two corners: each seed, each lr once
            continue
        ref = build("fedavg", e.seed, "--model", "logreg", "--lr", str(e.hparams["lr"]))
        ref_state, ref_metrics, _ = one_run(ref, 3)
        lane = jax.tree.map(lambda x, i=i: x[i], state)
        assert max_diff(lane, ref_state) < between_programs(ref_state, rounds=3)
        losses = [float(m["train_loss"]) for m in ref_metrics]
        assert max_diff(block["train_loss"][i], losses) < between_programs(losses, rounds=3)


def test_stacked_federations_of_different_sizes_equal_separate_runs():
    """Quantity skew gives each seed other client sizes (another capacity n_max): padded to a
    common shape, every experiment still computes its own run."""
    more = ("--partition", "quantity", "--alpha", "0.5", "--dataset", "synthetic_iid")
    seeds = (0, 1, 2)
    built = {s: build("fedavg", s, *more) for s in seeds}
    capacities = {built[s].data.capacity for s in seeds}
    assert len(capacities) > 1, "the seeds must give different client sizes"
    sweep_ = compiled("fedavg", axis.grid(seeds, {}), built, experiment_chunk=2)
    state, _ = sweep_.run_rounds(sweep_.init(), 1, 2)
    for i, s in enumerate(seeds):
        ref_state, _, _ = one_run(built[s], 2)
        lane = jax.tree.map(lambda x, i=i: x[i], state)
        assert max_diff(lane, ref_state) < between_programs(ref_state, rounds=2)


def test_seeds_and_sweep_flags_parse_and_refuse_with_the_flag_named():
    assert parse_seeds("3", 5) == (5, 6, 7)
    assert parse_seeds("0,3,7") == (0, 3, 7)
    with pytest.raises(SweepError, match="--seeds 0"):
        parse_seeds("0")
    with pytest.raises(SweepError, match="--seeds"):
        parse_seeds("a,b")
    dsfl = ALGORITHMS["dsfl"]
    assert parse_sweep(["temperature=0.1,0.5", "lr=0.1"], dsfl, "dsfl") == {
        "temperature": (0.1, 0.5),
        "lr": (0.1,),
    }
    with pytest.raises(SweepError, match="--sweep --tempreature.*allowed: .*temperature"):
        parse_sweep(["tempreature=0.1"], dsfl, "dsfl")
    with pytest.raises(SweepError, match="--sweep --local-epochs: not sweepable: it fixes"):
        parse_sweep(["local_epochs=1,2"], dsfl, "dsfl")
    with pytest.raises(SweepError, match="--sweep --lr: give at least one value"):
        parse_sweep(["lr="], dsfl, "dsfl")
    with pytest.raises(SweepError, match="must be numbers"):
        parse_sweep(["lr=fast"], dsfl, "dsfl")
    # a float that fixes a shape is swept as one compiled group per value
    feddf = ALGORITHMS["feddf"]
    values = parse_sweep(["distill_val_fraction=0.1,0.2", "lr=0.1,0.2"], feddf, "feddf")
    grid = axis.grid((0,), values)
    groups = axis.static_groups(grid, feddf)
    assert len(groups) == 2 and all(len(g) == 2 for g in groups)


def test_a_refused_value_is_named_before_anything_compiles():
    built = {0: build("ditto", 0)}
    bad = [GridPoint(0, 0, {"ditto_lambda": -1.0})]
    with pytest.raises(ValueError, match="--ditto-lambda -1.0 is not allowed"):
        compiled("ditto", bad, built)


def sweep_args(tmp_path, *more):
    argv = ["--out", str(tmp_path / "out"), "--rounds", "2", *BASE, *more]
    return ["--algo", "fedavg,dsfl", "--seeds", "2", "--distill-epochs", "1", *argv]


def test_run_py_sweep_writes_the_comparison_and_uses_the_same_partitions(tmp_path):
    """`run.py --algo fedavg,dsfl --seeds 2`: one folder; every metrics line names its
    algorithm, seed and setting; the two algorithms ran on identical partitions per seed;
    comparison.md and summary.json give mean and CI over the two seeds; --tensorboard logs
    one TensorBoard run per experiment with the metrics lines' numbers."""
    assert run.main([*sweep_args(tmp_path), "--tensorboard"]) == 0
    out = tmp_path / "out"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {(h["algo"], h["seed"], h["round"]) for h in lines} == {
        (a, s, r) for a in ("fedavg", "dsfl") for s in (0, 1) for r in (1, 2)
    }
    config = json.loads((out / "config.json").read_text())
    infos = {a: config["algorithms"][a]["config"]["data"] for a in ("fedavg", "dsfl")}
    assert infos["fedavg"] == infos["dsfl"]
    up = {(h["algo"], h["round"]): h["comm_up_bytes_total"] for h in lines}  # as a single run
    fedavg_config = config["algorithms"]["fedavg"]["config"]
    m = fedavg_config["algorithm_config"]["clients_per_round"]
    params = fedavg_config["model_params"]
    assert up[("fedavg", 2)] == 2 * up[("fedavg", 1)] == 2 * m * 4 * params
    assert 0 < up[("dsfl", 2)] < up[("fedavg", 2)]
    summary = json.loads((out / "summary.json").read_text())
    entry = next(s for s in summary["settings"] if s["algo"] == "dsfl")
    finals = [h["test_acc"] for h in lines if h["algo"] == "dsfl" and h["round"] == 2]
    assert entry["final"]["test_acc"]["mean"] == pytest.approx(np.mean(finals))
    assert entry["final"]["test_acc"]["n"] == 2 and entry["final"]["test_acc"]["ci95_half"] > 0
    table = (out / "comparison.md").read_text()
    assert "| fedavg | default | 2 | 2 |" in table and "±" in table
    assert (out / "accuracy.png").stat().st_size > 0
    for h in lines:  # each experiment's TensorBoard run holds its line's test accuracy
        logged = tensorboard_scalars(out / "tensorboard" / h["algo"] / f"default-seed{h['seed']}")
        assert logged[("test_acc", h["round"])] == pytest.approx(h["test_acc"], rel=ULPS)


def tensorboard_scalars(logdir) -> dict:
    """{(tag, step): value} of every scalar in ``logdir``'s event files: TFRecords (length,
    its CRC, the serialized Event, its CRC) read with tensorboardX's Event proto."""
    import struct

    from tensorboardX.proto import event_pb2

    found = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                found[(value.tag, event.step)] = value.simple_value
    return found


def test_a_resumed_sweep_equals_an_uninterrupted_one(tmp_path):
    whole = tmp_path / "whole"
    argv = ["--algo", "fedavg", "--seeds", "2", "--sweep", "lr=0.05,0.1", *BASE]
    assert run.main([*argv, "--rounds", "3", "--checkpoint-every", "1", "--out", str(whole)]) == 0
    part = tmp_path / "part"
    assert run.main([*argv, "--rounds", "2", "--checkpoint-every", "1", "--out", str(part)]) == 0
    assert run.main(["--resume", str(part), "--rounds", "3"]) == 0
    read = lambda p: sorted(
        (h["experiment"], h["round"], h["test_acc"])
        for h in map(json.loads, (p / "metrics.jsonl").read_text().splitlines())
    )
    assert read(whole) == read(part)


class _LinearMemory:
    """A stand-in sweep whose compiled round needs 100 bytes of state and data plus
    10 + 50 * chunk of temporaries (the chunker only reads per_device and round_memory)."""

    per_device = 8

    def __init__(self):
        self.compiled = []

    def round_memory(self, chunk):
        self.compiled.append(chunk)
        return argparse.Namespace(
            argument_size_in_bytes=100,
            output_size_in_bytes=20,
            alias_size_in_bytes=20,
            temp_size_in_bytes=10 + 50 * chunk,
        )


def test_the_experiment_chunk_is_the_largest_that_fits_in_device_memory():
    fits = lambda chunk: 100 + 10 + 50 * chunk  # noqa: E731
    assert memory.choose_experiment_chunk(_LinearMemory(), fits(8) / 0.8) is None  # all 8
    sweep_ = _LinearMemory()
    assert memory.choose_experiment_chunk(sweep_, fits(3) / 0.8 + 1) == 3
    assert set(sweep_.compiled) <= {8, 1, 3}  # all, one, the predicted chunk: compiled once each
    with pytest.raises(SweepError, match="even one experiment.*--experiment-chunk 1"):
        memory.choose_experiment_chunk(_LinearMemory(), fits(1) / 0.8 - 1)


def test_a_sweep_whose_one_experiment_exceeds_device_memory_is_refused(monkeypatch):
    """Measured from the real compiled sweep: $JAXFL_DEVICE_MEMORY below one experiment's need
    is refused naming the flags; a device with room leaves the chunk as it was."""
    seeds = (0, 3)
    built = {s: build("fedavg", s, "--model", "logreg") for s in seeds}
    group = compiled("fedavg", axis.grid(seeds, {}), built, experiment_chunk=2)
    monkeypatch.setenv("JAXFL_DEVICE_MEMORY", "1e9")
    sweep_runner.fit_memory([group], None)
    assert group.chunk == 2
    monkeypatch.setenv("JAXFL_DEVICE_MEMORY", "1000")
    with pytest.raises(SweepError, match="--experiment-chunk 1.*--seeds or --sweep"):
        sweep_runner.fit_memory([group], None)


def test_sweep_flags_that_act_on_one_run_are_refused():
    args = argparse.Namespace(**vars(flags.parse(["--seeds", "2", "--compare-local"])))
    with pytest.raises(flags.ConfigError, match="--compare-local is not supported with --seeds"):
        sweep_runner.check_sweep_flags(copy.copy(args))


def test_each_experiment_of_a_sweep_stops_early_on_its_own_lines():
    """--early-stop-patience and --target per experiment: experiment 1 stalls for 2
    evaluations and stops at round 3, experiment 0 reaches the target at round 4; each keeps
    the line it stopped on (marked), none after it, and the group ends when both stopped."""
    args = flags.parse(["--seeds", "2", "--early-stop-patience", "2", "--target", "0.9"])
    stops = sweep_runner.ExperimentStops(args, lambda algo: "test_acc")
    experiments = [axis.GridPoint(i, i, {}) for i in (0, 1)]
    values = {0: [0.5, 0.6, 0.7, 0.95, 0.96], 1: [0.5, 0.4, 0.45, 0.6, 0.7]}
    kept = []
    for r in range(5):
        records = [{"algo": "a", "experiment": e, "round": r + 1, "test_acc": values[e][r]}
                   for e in (0, 1)]  # fmt: skip
        kept += stops.keep(records)
        assert stops.all_stopped("a", experiments) == (r + 1 >= 4)
    assert [(k["experiment"], k["round"]) for k in kept] == [
        (0, 1), (1, 1), (0, 2), (1, 2), (0, 3), (1, 3), (0, 4)
    ]  # fmt: skip
    assert kept[5]["stopped"] == "no better test_acc in 2 evaluations"
    assert kept[6]["stopped"] == "test_acc >= 0.9"
    replayed = sweep_runner.ExperimentStops(args, lambda algo: "test_acc")
    replayed.keep([dict(k) for k in kept])  # a resumed sweep replays its lines
    assert replayed.stopped == stops.stopped


def test_a_sweep_past_its_time_budget_stops_with_a_checkpoint(tmp_path):
    """--time-budget in a sweep: the block past the budget ends it (at least one block runs),
    checkpointed; the summary says "stopped early" and why, and --resume can continue."""
    out = tmp_path / "out"
    argv = ["--algo", "fedavg", "--seeds", "2", "--rounds", "4", "--eval-every", "1",
            "--rounds-per-call", "1", "--time-budget", "0", "--out", str(out), *BASE]  # fmt: skip
    assert run.main(argv) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(h["seed"], h["round"]) for h in lines] == [(0, 1), (1, 1)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped early"
    assert summary["stop_reason"] == "time budget of 0 s used"
    assert summary["stopped_at"] == {"algo": "fedavg", "group": 0, "round": 1}
    assert (out / "checkpoints" / "fedavg-0" / "1").is_dir()


def test_a_sweep_with_a_reached_target_ends_at_that_round(tmp_path):
    argv = ["--algo", "fedavg", "--seeds", "2", "--rounds", "4", "--eval-every", "1",
            "--target", "0.0", "--out", str(tmp_path / "out"), *BASE]  # fmt: skip
    assert run.main(argv) == 0
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [(h["seed"], h["round"]) for h in lines] == [(0, 1), (1, 1)]
    assert all(h["stopped"] == "test_acc >= 0.0" for h in lines)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["settings"][0]["rounds"] == 1


def test_bench_experiments_times_the_sweep_against_separate_runs(capsys):
    """scripts/bench_experiments.py's comparison in-process on a small workload: one row per S
    with the sweep's and the separate runs' times (their values are timings: not checked, only
    that each ratio is the quotient it claims to be)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import bench_experiments

    argv = ["--algo", "fedavg", *BASE]
    rows = bench_experiments.compare(argv, [1, 2], 2, None, 1, startup=0.5)
    assert [r["experiments"] for r in rows] == [1, 2]
    for row in rows:
        assert row["sweep_round_s"] > 0 and row["separate_wall_s"] > 0
        assert row["wall_ratio"] == row["sweep_wall_s"] / row["separate_wall_s"]
    bench_experiments.print_rows("fedavg mlp", rows)
    assert "fedavg mlp" in capsys.readouterr().out


@pytest.mark.slow  # the same comparison runs in-process in the test above
def test_bench_experiments_suite_times_the_sweep_against_separate_runs(tmp_path):
    """scripts/bench.py --suite experiments, tiny: rows for both workloads with the sweep's and
    the separate runs' times (their values are timings: not checked)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(root / "scripts" / "bench.py"), "--suite", "experiments", "--tiny",
         "--experiments", "2", "--rounds", "2", "--devices", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["experiment_rows"]
    assert [r["workload"] for r in rows] == ["fedavg mlp C=100", "dsfl lenet5 C=100"]
    for row in rows:
        assert row["experiments"] == 2 and row["sweep_round_s"] > 0 and row["separate_wall_s"] > 0
