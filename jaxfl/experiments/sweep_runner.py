"""Running a sweep from flags: algorithms x seeds x hyperparameter grids, one results folder.

``scripts/run.py --algo fedavg,dsfl --seeds 5 --sweep lr=0.03,0.1`` lands here
(:func:`run_sweep`). For each algorithm in turn, every experiment (seed x setting) is built
as a single run would build it (the same partitions for the same seed, whichever algorithm),
compiled together (:class:`jaxfl.experiments.vectorized.CompiledSweep`, one group per value of any
shape-fixing hyperparameter) and run round by round. The results folder holds ``config.json``,
``metrics.jsonl`` (one line per experiment and evaluated round, naming its algorithm, seed and
hyperparameters), ``summary.json`` and ``comparison.md`` (per algorithm and setting: mean,
standard deviation and 95% confidence interval over seeds of each final metric and of its
best round), ``accuracy.png`` (mean curves with 95% CI bands) and ``checkpoints/`` (every
``--checkpoint-every`` rounds, per algorithm and group; ``--resume`` continues a stopped sweep).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import threading
import time
from pathlib import Path

import jax
import numpy as np

from jaxfl.algorithms import ALGORITHMS
from jaxfl.configs.run import RunConfig
from jaxfl.configs.specs import SPECS
from jaxfl.core.client_axis import cpu_chunk_size, device_memory_limit, to_host
from jaxfl.core.errors import ConfigError
from jaxfl.core.names import SEEDED_DATASETS
from jaxfl.experiments import builder, checkpoint, events, sweep_records
from jaxfl.experiments.axis import (  # noqa: F401  (SweepError: run.py catches it from here)
    SweepError,
    grid,
    parse_seeds,
    parse_sweep,
    static_groups,
)
from jaxfl.experiments.memory import choose_experiment_chunk
from jaxfl.experiments.report import comparison_table, plot_curves, summarize
from jaxfl.experiments.results import write_json
from jaxfl.experiments.validation import validate
from jaxfl.experiments.vectorized import CompiledSweep

SWEEP_FLAGS = ("seeds", "sweep")
# single-run flags a sweep does not take (each would need its own per-experiment host logic)
NOT_IN_SWEEPS = (
    "compare_local",
    "coordinator_address",
)
SHOWN = ("test_acc", "client_acc_mean", "train_loss")


def is_sweep(args: argparse.Namespace) -> bool:
    """Whether the flags ask for more than one experiment's machinery (seeds, a grid, several
    algorithms)."""
    return bool(args.seeds or args.sweep or "," in args.algo)


def check_sweep_flags(args: argparse.Namespace) -> None:
    for name in NOT_IN_SWEEPS:
        value = getattr(args, name, None)
        if value not in (None, False, 0):
            raise ConfigError(
                f"--{name.replace('_', '-')} is not supported with --seeds/--sweep/several "
                "--algo (it acts on one run); run it as a single experiment"
            )
    if getattr(args, "data_placement", "auto") == "host":
        raise ConfigError(
            "--data-placement host is not supported with --seeds/--sweep/several --algo (a "
            "sweep stacks its experiments' federations on the device); allowed: device, auto"
        )


@dataclasses.dataclass
class AlgorithmSweep:
    """One algorithm's part of a sweep: its experiments and their compiled groups."""

    algo: str
    args: argparse.Namespace
    experiments: list
    groups: list  # CompiledSweep per static group
    built: dict  # seed -> jaxfl.experiments.builder.Experiment


def _chunk_default(exp, per_device: int) -> int | None:
    """``--experiment-chunk``'s default: on a CPU, as many experiments as keep one training step
    (times the clients already in flight) in cache; elsewhere all of a device's."""
    if jax.default_backend() != "cpu":
        return None
    models = [g.model for g in exp.groups] if exp.groups else [exp.model]
    step = max(builder.estimate_step_bytes(m, exp.args.batch_size) for m in models)
    clients = exp.config["client_chunk"] or exp.algorithm.clients_per_round
    return max(1, cpu_chunk_size(per_device * clients, step) // clients)


class ExperimentStops:
    """``--early-stop-patience`` and ``--target`` for each experiment of a sweep.

    Each experiment's metric lines feed its own triggers (:func:`jaxfl.experiments.events.
    no_improvement` and :func:`~jaxfl.experiments.events.metric_crosses`, a single run's). An
    experiment that stops keeps computing inside the vectorized call (its lanes cannot leave
    it) but its lines end at its stop round, the last one saying why (``"stopped"``), as its
    separate run's would end; a group ends once all its experiments have stopped.
    """

    def __init__(self, args: argparse.Namespace, metric_of):
        self.patience = args.early_stop_patience
        self.target = args.target
        self.metric_of = metric_of  # algo -> the metric watched (run.py's default per algo)
        self.triggers: dict[tuple, list] = {}
        self.stopped: dict[tuple, tuple[int, str]] = {}  # (algo, experiment) -> (round, why)

    @property
    def active(self) -> bool:
        return self.patience > 0 or self.target is not None

    def _triggers(self, algo: str, key: tuple) -> list:
        if key not in self.triggers:
            metric, found = self.metric_of(algo), []
            if self.patience > 0:
                why = f"no better {metric} in {self.patience} evaluations"
                found.append((events.no_improvement(metric, self.patience), why))
            if self.target is not None:
                why = f"{metric} >= {self.target}"
                found.append((events.metric_crosses(metric, self.target), why))
            self.triggers[key] = found
        return self.triggers[key]

    def keep(self, records: list[dict]) -> list[dict]:
        """The records of experiments still running, each fed to its triggers; an experiment
        whose trigger fires keeps this record (marked ``"stopped"``) and no later one."""
        if not self.active:
            return records
        kept = []
        for record in records:
            key = (record["algo"], record["experiment"])
            if key in self.stopped:
                continue
            kept.append(record)
            fired = [why for trigger, why in self._triggers(record["algo"], key)
                     if trigger(None, record=record)]  # fmt: skip
            if fired:
                self.stopped[key] = (record["round"], fired[0])
                record["stopped"] = fired[0]
        return kept

    def all_stopped(self, algo: str, experiments) -> bool:
        return self.active and all((algo, e.index) in self.stopped for e in experiments)


def watched_metric(args, algo: str) -> str:
    """``--early-stop-metric``, default test_acc, or client_acc_mean without a global model."""
    if args.early_stop_metric is not None:
        return args.early_stop_metric
    return "test_acc" if SPECS[algo].global_model else "client_acc_mean"


def dataset_key(args, seed: int) -> tuple:
    """What a sweep's loaded data depends on: its key in ``build_algorithm``'s cache (the seed
    only for data generated from it)."""
    return (args.dataset, args.data_dir, args.clients, args.min_client_examples,
            args.max_client_examples, args.sequence_length,
            seed if _seeded_data(args) else None)  # fmt: skip


def build_algorithm(args, algo: str, seeds, dataset_cache: dict, devices: int) -> AlgorithmSweep:
    """Every experiment of ``algo``: the flags with ``--algo algo``, one build per seed (as a
    single run with that seed builds it), the grid, the compiled groups."""
    args = copy.copy(args)
    args.algo = algo
    validate(args)
    module = ALGORITHMS[algo]
    grid_values = parse_sweep(args.sweep, module, algo)
    experiments = grid(seeds, grid_values)
    built = {}
    for seed in seeds:
        seed_args = copy.copy(args)
        seed_args.seed = seed
        seed_args.data_placement = "device"  # the experiments axis stacks device federations
        key = dataset_key(args, seed)
        if key not in dataset_cache and not args.domains:
            from jaxfl.data import load_dataset

            dataset_cache[key] = load_dataset(
                args.dataset,
                args.data_dir,
                num_clients=args.clients,
                seed=seed,
                min_client_examples=args.min_client_examples,
                max_client_examples=args.max_client_examples,
                sequence_length=args.sequence_length,
            )
        built[seed] = builder.build(RunConfig.from_flags(seed_args), dataset=dataset_cache.get(key))
    first = built[seeds[0]]
    per_device = math.ceil(len(experiments) / max(1, devices))
    chunk = args.experiment_chunk or _chunk_default(first, per_device)
    groups = []
    for members in static_groups(experiments, module):
        try:
            groups.append(
                CompiledSweep(
                    module,
                    first.algorithm_config,
                    first.fault_config,
                    first.groups or first.model,
                    members,
                    {s: built[s].data for s in seeds},
                    {s: built[s].make_kwargs for s in seeds},
                    devices=devices,
                    experiment_chunk=chunk,
                )
            )
        except ValueError as err:
            if isinstance(err, SweepError | ConfigError):
                raise
            raise ConfigError(f"--algo {algo}: {err}") from err
    fit_memory(groups, args.experiment_chunk)
    return AlgorithmSweep(algo, args, experiments, groups, built)


def fit_memory(groups: list, given_chunk: int | None) -> None:
    """Where a device's memory is known (an accelerator, or ``$JAXFL_DEVICE_MEMORY``), check
    from compiled memory analyses that one experiment fits (else a SweepError naming the flags)
    and, unless ``--experiment-chunk`` was given, lower each group's chunk to what fits."""
    limit = device_memory_limit()
    if limit is None:
        return
    for group in groups:
        fit = choose_experiment_chunk(group, limit)
        if given_chunk is None and fit is not None:
            group.chunk = fit if group.chunk is None else min(group.chunk, fit)


def _seeded_data(args) -> bool:
    return args.dataset in SEEDED_DATASETS


class SweepStopped(Exception):
    """The sweep stopped after checkpointing ``round`` of a group: on request (``stop`` set,
    ``reason`` None) or by its own rule (``reason``: the time budget used)."""

    def __init__(self, algo: str, group: int, round_index: int, reason: str | None = None):
        super().__init__(f"{algo} group {group} stopped after round {round_index}")
        self.algo, self.group, self.round, self.reason = algo, group, round_index, reason


def run_sweep(
    run: RunConfig,
    out: Path,
    progress: bool = True,
    stop: threading.Event | None = None,
) -> dict:
    """Run every algorithm's experiments of ``run`` (its seeds, its sweep grid, each of its
    algorithms) and write the results folder ``out``; returns the summary.
    ``run.output.resume`` continues from each group's newest checkpoint.

    ``stop``: when it is set (by a signal handler, :mod:`jaxfl.experiments.interrupt`), the
    compiled block in flight finishes, its group is checkpointed (whatever
    ``--checkpoint-every``), and the summary says ``"status": "interrupted"`` with the round
    reached; ``--resume`` continues from there (groups already finished are not run again when
    their last round was checkpointed)."""
    args = run.to_flags()
    check_sweep_flags(args)
    seeds = parse_seeds(args.seeds, args.seed)
    algos = [a.strip() for a in args.algo.split(",") if a.strip()]
    devices = args.devices or len(jax.devices())
    cache: dict = {}
    sweeps = [build_algorithm(args, algo, seeds, cache, devices) for algo in algos]
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    history = sweep_records.read_lines(metrics_path) if args.resume else []
    config = sweep_records.config_record(args, seeds, sweeps)
    write_json(out / "config.json", config)
    start = time.perf_counter()
    stopped = None
    board = events.SweepTensorBoard(str(out / "tensorboard")) if args.tensorboard else None
    stops = ExperimentStops(args, lambda algo: watched_metric(args, algo))
    try:
        for sweep in sweeps:
            for g, group in enumerate(sweep.groups):
                history = _run_group(
                    args, out, sweep, g, group, history, metrics_path, progress,
                    stop=stop, board=board, stops=stops, started=start,
                    first=sweep is sweeps[0] and g == 0,
                )  # fmt: skip
    except SweepStopped as err:
        stopped = err
        history = sweep_records.read_lines(metrics_path)
    finally:
        if board is not None:
            board.close()
    summary = summarize(history, seeds)
    summary["wall_time_s"] = time.perf_counter() - start
    described = {  # how the epsilons were computed (participation, adjacency, accountant)
        (a["config"].get("privacy") or {}).get("epsilon_of") for a in config["algorithms"].values()
    } - {None}
    if described:
        summary["dp_epsilon_of"] = "; ".join(sorted(described))
    if stopped is not None:
        summary |= {
            "status": "interrupted" if stopped.reason is None else "stopped early",
            "stopped_at": {"algo": stopped.algo, "group": stopped.group, "round": stopped.round},
        }
        if stopped.reason is not None:
            summary["stop_reason"] = stopped.reason
    write_json(out / "summary.json", summary)
    (out / "comparison.md").write_text(comparison_table(summary))
    plot_curves(history, out / "accuracy.png")
    return summary


def _run_group(
    args, out, sweep, g, group, history, metrics_path, progress, *,
    stop=None, board=None, stops=None, started=None, first=True,
):  # fmt: skip
    ckpt_dir = out / checkpoint.CHECKPOINT_DIR / f"{sweep.algo}-{g}"
    start_round = 1
    state = group.init()
    if args.resume and checkpoint.latest_round(ckpt_dir) is not None:
        state, meta = checkpoint.restore(ckpt_dir, state)
        start_round = meta["round"] + 1
    names = {e.index for e in group.experiments}
    history = [
        h
        for h in history
        if not (h["algo"] == sweep.algo and h["experiment"] in names and h["round"] >= start_round)
    ]
    sweep_records.rewrite_lines(metrics_path, history)
    if stops is not None:  # a resumed group: its lines so far replayed through the triggers
        stops.keep([h for h in history if h["algo"] == sweep.algo and h["experiment"] in names])
    if stop is not None and stop.is_set():  # stopped between groups: this one has not started
        raise SweepStopped(sweep.algo, g, start_round - 1)
    budget = getattr(args, "time_budget", None)  # wall-clock seconds for the whole sweep
    started = time.perf_counter() if started is None else started
    if budget is not None and not first and time.perf_counter() - started >= budget:
        raise SweepStopped(sweep.algo, g, start_round - 1, f"time budget of {budget:g} s used")
    bar = _progress(progress, args.rounds, start_round, sweep.algo, group.num)
    first = start_round
    while first <= args.rounds:
        last = _block_end(first, args)
        state, block = group.run_rounds(state, first, last - first + 1)
        block = to_host(block)
        if last % args.eval_every == 0 or last == args.rounds:
            records = sweep_records.records(
                sweep.algo, group, block, to_host(group.evaluate(state)), last
            )
            first_built = next(iter(sweep.built.values()))
            sweep_records.add_epsilon(records, group, first_built.config)
            sweep_records.add_communication(records, first_built.algorithm)
            if stops is not None:  # early stopping / --target, per experiment
                records = stops.keep(records)
            history += records
            sweep_records.append_lines(metrics_path, records)
            if board is not None:  # one TensorBoard run per experiment
                board.log(records)
            if bar is not None and records:
                shown = [r.get("test_acc", r.get("client_acc_mean")) for r in records]
                bar.set_postfix_str(
                    f"mean acc {np.nanmean(shown):.4f} over {group.num} experiments"
                )
        over_budget = budget is not None and time.perf_counter() - started >= budget
        stopping = (stop is not None and stop.is_set() or over_budget) and last < args.rounds
        periodic = args.checkpoint_every and (
            last % args.checkpoint_every == 0 or last == args.rounds
        )
        if periodic or stopping:
            meta = {
                "algorithm": sweep.algo,
                "group": g,
                "seeds": [e.seed for e in group.experiments],
            }
            checkpoint.save(ckpt_dir, last, state, meta, args.keep_checkpoints, check_finite=False)
        if bar is not None:
            bar.update(last - first + 1)
        if stopping:
            if bar is not None:
                bar.close()
            why = f"time budget of {budget:g} s used" if over_budget else None
            raise SweepStopped(sweep.algo, g, last, why)
        first = last + 1
        if stops is not None and stops.all_stopped(sweep.algo, group.experiments):
            break  # every experiment of the group has stopped
    if bar is not None:
        bar.close()
    return history


def _block_end(first: int, args) -> int:
    """The last round of the compiled block starting at ``first``: it ends at evaluations and
    checkpoints, after at most ``--rounds-per-call`` rounds."""
    last = min(args.rounds, first + args.rounds_per_call - 1)
    periods = [args.eval_every] + ([args.checkpoint_every] if args.checkpoint_every else [])
    for r in range(first, last):
        if any(r % p == 0 for p in periods):
            return r
    return last


def _progress(enabled: bool, rounds: int, start: int, algo: str, num: int):
    if not enabled or jax.process_index() != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=rounds, initial=start - 1, desc=f"{algo} x {num} experiments", unit="round")
