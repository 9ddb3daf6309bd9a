"""Triggers and built-in handlers for :class:`jaxfl.experiments.simulation.Simulation`'s events.

A *trigger* is a predicate ``(sim, **payload) -> bool`` passed as ``when=`` to ``sim.on``: the
handler runs only when it holds. Triggers here: :func:`every` (every N rounds),
:func:`metric_crosses` (a metric reaches a threshold, once), :func:`no_improvement` (K
evaluations without a better value) and :func:`wall_clock` (time since ``run_start``)::

    sim.on("evaluate", lambda sim, **_: sim.stop("target reached"),
           when=metric_crosses("test_acc", 0.95))

The progress bar, early stopping, the time budget and TensorBoard logging are handlers on the same
API (the results writer is in :mod:`jaxfl.experiments.results`, checkpointing in
:mod:`jaxfl.experiments.checkpoint`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

Trigger = Callable[..., bool]


def every(n: int) -> Trigger:
    """True on rounds n, 2n, 3n, ... (payloads that carry ``record`` or ``round``)."""
    if n < 1:
        raise ValueError(f"every(n) needs n >= 1, got {n}")

    def trigger(sim, record=None, round=None, **_):
        r = record["round"] if record is not None else round
        return r is not None and r % n == 0

    return trigger


def metric_crosses(metric: str, threshold: float, mode: str = "above") -> Trigger:
    """True the first time ``record[metric]`` reaches ``threshold`` (``mode`` above or below)."""
    if mode not in ("above", "below"):
        raise ValueError(f"mode {mode!r}; allowed: above, below")
    fired = False

    def trigger(sim, record=None, **_):
        nonlocal fired
        if fired or record is None or metric not in record:
            return False
        value = record[metric]
        fired = value >= threshold if mode == "above" else value <= threshold
        return fired

    return trigger


def no_improvement(
    metric: str, patience: int, mode: str = "max", min_delta: float = 0.0
) -> Trigger:
    """True once ``patience`` consecutive evaluations have not beaten the best ``metric``.

    An evaluation improves when it beats the best so far by more than ``min_delta``
    (``mode="max"``: larger is better; ``"min"``: smaller is better).
    """
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    if mode not in ("max", "min"):
        raise ValueError(f"mode {mode!r}; allowed: max, min")
    best = -math.inf if mode == "max" else math.inf
    stale = 0

    def trigger(sim, record=None, **_):
        nonlocal best, stale
        if record is None or metric not in record:
            return False
        value = record[metric]
        better = value > best + min_delta if mode == "max" else value < best - min_delta
        if better:
            best, stale = value, 0
        else:
            stale += 1
        return stale >= patience

    return trigger


def wall_clock(seconds: float) -> Trigger:
    """True once ``seconds`` have passed since the run started (``sim.start_time``)."""

    def trigger(sim, **_):
        return time.perf_counter() - sim.start_time >= seconds

    return trigger


# ----------------------------------------------------------------------------------------------
# Built-in handlers
# ----------------------------------------------------------------------------------------------
def early_stopping(sim, metric: str = "test_acc", patience: int = 5, mode: str = "max"):
    """Stop (event ``converged``) after ``patience`` evaluations without a better ``metric``."""
    sim.on(
        "evaluate",
        lambda sim, **_: sim.stop(f"no better {metric} in {patience} evaluations"),
        when=no_improvement(metric, patience, mode),
    )


def stop_at_target(sim, metric: str, threshold: float):
    """Stop (event ``converged``) once ``metric`` reaches ``threshold``."""
    sim.on(
        "evaluate",
        lambda sim, record, **_: sim.stop(f"{metric} {record[metric]:.4f} >= {threshold}"),
        when=metric_crosses(metric, threshold),
    )


def time_budget(sim, seconds: float):
    """Stop (event ``converged``) at the end of the first round past ``seconds`` of wall clock."""
    sim.on(
        "round_end",
        lambda sim, **_: sim.stop(f"time budget of {seconds:g} s used"),
        when=wall_clock(seconds),
    )


def progress_bar(sim, metric: str = "test_acc"):
    """A tqdm bar over rounds showing the latest ``metric`` and the clients' mean accuracy."""
    from tqdm.auto import tqdm

    bar = None

    def on_run_start(sim, start_round, **_):
        nonlocal bar
        bar = tqdm(
            total=sim.rounds,
            initial=start_round - 1,
            desc=sim.algorithm.name,
            unit="round",
            dynamic_ncols=True,
        )

    def on_evaluate(record, **_):
        bar.set_postfix(
            {
                metric: f"{record.get(metric, float('nan')):.4f}",
                "clients": f"{record.get('client_acc_mean', float('nan')):.4f}",
            }
        )

    sim.on("run_start", on_run_start)
    sim.on("evaluate", on_evaluate)
    sim.on("round_end", lambda **_: bar.update(1))
    sim.on("run_end", lambda **_: bar.close())


def _writer_class():
    try:
        from tensorboardX import SummaryWriter
    except ImportError as err:
        raise ImportError(
            "--tensorboard needs tensorboardX: pip install 'jaxfl[tensorboard]'"
        ) from err
    return SummaryWriter


def _summary_writer(logdir: str):
    return _writer_class()(logdir)


def _add_scalars(writer, record: dict) -> None:
    """A metrics record's numbers (not its round, bools or labels) at its round."""
    for name, value in record.items():
        if name != "round" and isinstance(value, int | float) and not isinstance(value, bool):
            writer.add_scalar(name, value, record["round"])
    writer.flush()


def tensorboard(sim, logdir: str):
    """Log every evaluated record's scalars to TensorBoard under ``logdir`` (tensorboardX)."""
    writer = _summary_writer(logdir)
    sim.on("evaluate", lambda record, **_: _add_scalars(writer, record))
    sim.on("run_end", lambda **_: writer.close())


class SweepTensorBoard:
    """A sweep's TensorBoard log: one run per experiment, ``logdir/ALGO/SETTING-seedS`` (so
    TensorBoard overlays the experiments as it overlays separate runs), fed the sweep's metric
    records as each evaluated block ends (:mod:`jaxfl.experiments.sweep_runner`)."""

    def __init__(self, logdir: str):
        _writer_class()  # tensorboardX is optional: missing, say so before any round runs
        self.logdir = logdir
        self.writers: dict[str, object] = {}

    @staticmethod
    def run_name(record: dict) -> str:
        setting = record.get("setting") or "default"
        return f"{record['algo']}/{setting}-seed{record['seed']}".replace(" ", ",")

    def log(self, records: list[dict]) -> None:
        for record in records:
            name = self.run_name(record)
            if name not in self.writers:
                self.writers[name] = _summary_writer(f"{self.logdir}/{name}")
            _add_scalars(self.writers[name], record)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
