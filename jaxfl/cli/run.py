"""``jaxfl run`` / ``python scripts/run.py``: one simulation (or a sweep) and its results folder.

The results folder holds config.json (every resolved setting, the data set actually used),
metrics.jsonl (one line per evaluated round), summary.json, accuracy.png and checkpoints/
(Orbax, every --checkpoint-every rounds); a stopped run continues with --resume FOLDER. What
the run prints for a reader (the explained metrics, the time estimate) is
:mod:`jaxfl.cli.printout`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import jax

from jaxfl.cli import execution, flags, printout
from jaxfl.cli.flag_help import RUN_DESCRIPTION
from jaxfl.configs import SPECS
from jaxfl.configs.run import RunConfig
from jaxfl.core.client_axis import client_mesh, to_host, use_mesh
from jaxfl.data import DataUnavailableError, PartitionError
from jaxfl.experiments import builder, checkpoint, events, report, sweep_runner
from jaxfl.experiments.baseline import local_only_accuracy
from jaxfl.experiments.interrupt import StopSignals, announce
from jaxfl.experiments.results import (
    ResultsExistError,
    ResultsWriter,
    check_results_dir,
    default_results_dir,
    plot_staleness,
)
from jaxfl.experiments.simulation import NonFiniteError, Simulation
from jaxfl.models import tuning

SHOWN = (
    "test_acc",
    "client_acc_mean",
    "client_acc_p10",
    "frac_better_than_global",
    "frac_worse_than_local",
    "ipr",
    "dp_epsilon",
)
CONFIG_ERRORS = (
    flags.ConfigError,
    PartitionError,
    DataUnavailableError,
    ResultsExistError,
    FileNotFoundError,
    ValueError,
)


def parse_args(argv: list[str] | None):
    """The flags (a resumed run's saved ones), validated; joins the other hosts if asked."""
    args = flags.parse(argv, description=RUN_DESCRIPTION)
    if args.resume:
        args = flags.resume_args(argv, args.resume)
    flags.validate(args)
    execution.init_distributed(args)  # before anything else touches JAX
    return args


class _Silent:
    """The results writer of processes other than 0 in a multi-host run: they compute the same
    run and write nothing."""

    history: list = []

    def attach(self, sim):
        return self

    def finish(self, *args, **kwargs) -> None:
        pass


def setup(args):
    """Data, algorithm, results folder and, when resuming, the restored state.

    Returns (exp, out, writer, state, start_round); every check that can fail runs before
    anything is written.
    """
    primary = jax.process_index() == 0
    if args.early_stop_metric is None:
        has_global = SPECS[args.algo].global_model
        args.early_stop_metric = "test_acc" if has_global else "client_acc_mean"
    out = Path(args.out) if args.out else default_results_dir(args.algo, args.dataset)
    ckpt_dir = out / checkpoint.CHECKPOINT_DIR
    resume_round = None
    if args.resume:
        resume_round = checkpoint.latest_round(ckpt_dir)
        if resume_round is None:
            raise FileNotFoundError(
                f"--resume {out}: no complete checkpoint under {ckpt_dir} (was the run started "
                "with --checkpoint-every 0, or stopped before its first checkpoint?)"
            )
    elif primary:
        check_results_dir(out)
    if resume_round is not None and (out / LOWERINGS_FILE).exists():
        # the conv lowerings the run was compiled with: a resumed run computes the same numbers
        tuning.pin(json.loads((out / LOWERINGS_FILE).read_text()))
    exp = builder.build(RunConfig.from_flags(args))
    state, start_round = None, 1
    if resume_round is not None:
        like = jax.eval_shape(exp.algorithm.init, jax.random.key(0))
        state, meta = checkpoint.restore(ckpt_dir, like, resume_round)
        if meta.get("seed") != args.seed or meta.get("algorithm") != exp.algorithm.name:
            raise flags.ConfigError(f"--resume {out}: the checkpoint does not match config.json")
        start_round = resume_round + 1
    if primary:
        writer = ResultsWriter(out, {**exp.config, "out": str(out)}, resume_round)
    else:
        writer = _Silent()
    return exp, out, writer, state, start_round


LOWERINGS_FILE = "conv_lowerings.json"


def _write_lowerings(out: Path) -> None:
    chosen = tuning.choices()
    if chosen:
        (out / LOWERINGS_FILE).write_text(json.dumps(chosen, indent=1, sort_keys=True))


def attach_handlers(sim: Simulation, args, out: Path, writer: ResultsWriter) -> dict:
    """The built-in handlers run.py uses; returns a dict that tracks the last client accuracies
    (``client_acc``, ``global_client_acc``, and ``local_client_acc`` with --compare-local)."""
    writer.attach(sim)
    primary = jax.process_index() == 0
    if primary:  # the per-layer conv lowerings "auto" chose, known once a round has compiled
        sim.on("evaluate", lambda **_: _write_lowerings(out))
    if primary:
        events.progress_bar(sim, args.early_stop_metric)
    if args.checkpoint_every > 0:  # every process takes part in Orbax's multi-host save
        checkpoint.Checkpointer(
            out / checkpoint.CHECKPOINT_DIR,
            args.checkpoint_every,
            args.keep_checkpoints,
            meta={"partition_seed": args.seed, "clients": args.clients},
        ).attach(sim)
    if args.early_stop_patience > 0:
        events.early_stopping(sim, args.early_stop_metric, args.early_stop_patience)
    if args.target is not None:
        events.stop_at_target(sim, args.early_stop_metric, args.target)
    if args.time_budget is not None:
        events.time_budget(sim, args.time_budget)
    if args.tensorboard and primary:
        events.tensorboard(sim, str(out / "tensorboard"))
    last = {}
    sim.on(
        "evaluate",
        lambda client_acc, global_client_acc, **_: last.update(
            client_acc=client_acc, global_client_acc=global_client_acc
        ),
    )
    sim.on(
        "converged", lambda round, reason, **_: print(f"\nstopped after round {round}: {reason}")
    )
    return last


def run_sweep(args) -> int:
    """Several experiments (--seeds, --sweep, several --algo): jaxfl.experiments.sweep_runner."""
    stop = threading.Event()

    def first_signal(name: str) -> None:
        stop.set()
        announce(name, "the compiled block in flight")

    signals = StopSignals(first_signal)
    out = (
        Path(args.out)
        if args.out
        else default_results_dir(args.algo.replace(",", "+"), args.dataset)
    )
    try:
        if not args.resume:
            check_results_dir(out)
        with signals:
            summary = sweep_runner.run_sweep(RunConfig.from_flags(args), out, stop=stop)
    except (*CONFIG_ERRORS, sweep_runner.SweepError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second signal: quit at once, the periodic checkpoints kept
        print(
            f"\nquit at once; python scripts/run.py --resume {out} continues each group from its "
            "last periodic checkpoint (--checkpoint-every), where it has one",
            file=sys.stderr,
        )
        return signals.exit_status
    print(report.comparison_table(summary))
    print(f"results in {out} (comparison.md, summary.json, metrics.jsonl, accuracy.png)")
    if summary.get("status") == "stopped early":
        at = summary["stopped_at"]
        print(
            f"stopped after round {at['round']} of {at['algo']} (group {at['group']}): "
            f"{summary['stop_reason']}; checkpointed, continue with: python scripts/run.py "
            f"--resume {out}"
        )
    if summary.get("status") == "interrupted":
        at = summary["stopped_at"]
        print(
            f"interrupted after round {at['round']} of {at['algo']} (group {at['group']}), "
            f"checkpointed; continue with: python scripts/run.py --resume {out}",
            file=sys.stderr,
        )
        return signals.exit_status
    return 0


def interrupted(out: Path) -> tuple[dict, str]:
    """The summary status and the message of a run stopped by Ctrl-C: the resume command only
    when a complete checkpoint exists to resume from (``--resume`` refuses a folder without
    one), else how to start again."""
    saved = checkpoint.latest_round(out / checkpoint.CHECKPOINT_DIR)
    if saved is None:
        why = "interrupted before its first checkpoint (--checkpoint-every)"
        return (
            {"status": "interrupted", "checkpoint": None},
            f"{why}: nothing to resume; the metrics so far are in {out}, run the command again "
            "to start over",
        )
    command = f"python scripts/run.py --resume {out}"
    return (
        {"status": "interrupted", "checkpoint_round": saved, "resume": command},
        f"interrupted; continue from round {saved + 1} with: {command}",
    )


INTERRUPTED = "interrupted (Ctrl-C or SIGTERM)"


class CtrlC(StopSignals):
    """Ctrl-C or SIGTERM during the rounds: the first stops the run after the round in flight,
    which is then evaluated and checkpointed (the run's end always is), so no finished work is
    lost; a second quits at once (``KeyboardInterrupt``), leaving the last periodic checkpoint
    (:mod:`jaxfl.experiments.interrupt`)."""

    def __init__(self, sim: Simulation):
        super().__init__(self._first)
        self.sim = sim

    def _first(self, name: str) -> None:
        self.sim.stop(INTERRUPTED)
        took = self.sim.history[-1]["round_time_s"] if self.sim.history else None
        about = f" (a round takes about {took:.0f} s)" if took else ""
        announce(name, f"round {self.sim.round + 1}{about}")


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    try:
        args = parse_args(argv)
        mesh = client_mesh(args.devices)
    except CONFIG_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.out:  # one folder for the whole command, named before anything can fail
        args.out = str(default_results_dir(args.algo.replace(",", "+"), args.dataset))
    # one device: no mesh at all, so the single-device program is exactly the unsharded one
    try:
        with use_mesh(mesh):
            return run(args, start)
    except KeyboardInterrupt:  # before the rounds started (loading data, compiling)
        print("\ninterrupted before the first round: nothing to resume", file=sys.stderr)
        return 130
    except Exception as err:  # an unexpected failure: one line for the user, the traceback kept
        print(crash_message(err, Path(args.out)), file=sys.stderr)
        return 1


CRASH_FILE = "error.txt"


def crash_message(err: BaseException, out: Path) -> str:
    """The one line a user sees when a run fails unexpectedly: the exception's type and first
    line, and where its full traceback was written (the results folder's ``error.txt`` when the
    folder was started, else a file in the temporary directory, so that an empty ``--out``
    stays usable)."""
    text = "".join(traceback.format_exception(err))
    if out.is_dir() and any(out.iterdir()):
        path = out / CRASH_FILE
    else:
        fd, name = tempfile.mkstemp(prefix="jaxfl-error-", suffix=".txt")
        os.close(fd)
        path = Path(name)
    path.write_text(text)
    first = (str(err).strip().splitlines() or [""])[0]
    if len(first) > 300:
        first = first[:297] + "..."
    return (
        f"error: {type(err).__name__}: {first} (the run stopped; full traceback in {path}: "
        "please include it when reporting a bug)"
    )


def run(args, start: float) -> int:
    """Build, simulate and write the results of a parsed run (inside its device mesh)."""
    if sweep_runner.is_sweep(args):
        with use_mesh(None):  # a sweep splits its experiments over the devices itself
            return run_sweep(args)
    try:
        exp, out, writer, state, start_round = setup(args)
    except CONFIG_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    info = exp.data_info
    print(
        f"{exp.algorithm.name} on {info['dataset']} ({info['source']}): {info['num_clients']} "
        f"clients, partition {info['partition']}, model {exp.config['model']} "
        f"({exp.model.num_params:,} params), {printout.participation(exp)} "
        f"-> {out}" + (f" (resuming at round {start_round})" if start_round > 1 else "")
    )
    if info["client_size_max"] > info["client_size_min"]:
        print(printout.client_sizes(info, exp.config))
    if printout.data_placement(exp.config):
        print(printout.data_placement(exp.config))
    if jax.process_index() == 0 and start_round <= args.rounds:
        print(printout.round_time_estimate(exp, args.rounds - start_round + 1))
    if exp.config["privacy"] is not None:
        print(printout.privacy_line(exp.config["privacy"], args))
    sim = Simulation(exp.algorithm, args.rounds, args.eval_every, args.seed, args.rounds_per_call)
    sim.accountant = exp.accountant
    last = attach_handlers(sim, args, out, writer)
    if args.compare_local or SPECS[args.algo].needs_local_baseline:
        sim.local_client_acc = local_only_accuracy(
            exp.run, exp.config["client_val_fraction"], builder.build
        )
    if args.unseen_clients:
        sim.seen_clients = args.clients - args.unseen_clients

    def per_client():
        return {k: last.get(k) for k in ("client_acc", "global_client_acc")} | {
            "local_client_acc": sim.local_client_acc
        }

    ctrl_c = CtrlC(sim)
    try:
        with ctrl_c:
            final_state, history = sim.run(state, start_round, writer.history)
    except NonFiniteError as err:
        writer.finish({"status": "failed", "error": str(err)}, **per_client())
        print(f"error: {err}", file=sys.stderr)
        return 3
    except Exception as err:  # keep the rounds already recorded; main prints the one line
        writer.finish({"status": "failed", "error": f"{type(err).__name__}: {err}"}, **per_client())
        raise
    except KeyboardInterrupt:
        status, message = interrupted(out)
        writer.finish(status, **per_client())
        print(message, file=sys.stderr)
        return ctrl_c.exit_status
    if not history:
        writer.finish({"status": "completed", "rounds": args.rounds})
        print(f"nothing to run: round {args.rounds} was already reached; results in {out}")
        return 0
    final = history[-1]
    summary = {
        "status": "stopped early" if sim.stop_reason else "completed",
        "stop_reason": sim.stop_reason,
        "rounds": final["round"],
        "wall_time_s": time.perf_counter() - start,
        "final": final,
        "best_test_acc": max(h.get("test_acc", 0.0) for h in history),
        "best_client_acc_mean": max(h["client_acc_mean"] for h in history),
        "communication_per_client_per_round": exp.algorithm.communication,
        "privacy": exp.config["privacy"],
    }
    if sim.stop_reason == INTERRUPTED:
        status, message = interrupted(out)
        summary.update(status)
    if final.get("sim_time"):  # the virtual clock: clients trained per simulated second
        trained = final["round"] * exp.algorithm.participants_per_round
        summary["clients_trained_per_sim_second"] = trained / final["sim_time"]
    if hasattr(final_state, "staleness_hist"):  # asynchronous: how old the applied updates were
        counts = to_host(final_state.staleness_hist).tolist()
        summary["staleness_hist"] = counts
        plot_staleness(counts, out / "staleness.png")
    writer.finish(summary, **per_client())
    shown = [f"{k} {final[k]:.4f}" for k in SHOWN if k in final]
    print(f"round {final['round']}: {', '.join(shown)}; results in {out}")
    epsilon_of = (exp.config.get("privacy") or {}).get("epsilon_of")
    majority = printout.majority_share(exp.data.test_y) if exp.data.test_y.ndim == 2 else None
    print(printout.explained(history, exp.data.num_classes, epsilon_of, majority))
    if sim.stop_reason == INTERRUPTED:
        print(message, file=sys.stderr)
        return ctrl_c.exit_status
    return 0
