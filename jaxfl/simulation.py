"""The host loop between compiled rounds, with event hooks.

A round is one compiled function, so customisation outside it happens here, between rounds, by
registering handlers (after FederatedScope's event-driven design)::

    sim = Simulation(algorithm, rounds=50, eval_every=5, seed=0)
    sim.on("evaluate", lambda record, **_: print(record["test_acc"]))
    state, history = sim.run()

Events and their keyword payloads:
  ``run_start(sim, state)``, ``round_end(sim, record, state)``,
  ``evaluate(sim, record, state, client_acc)``, ``run_end(sim, state, history)``.
The progress bar and the results writer (``jaxfl.io``) are handlers on this same API.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable

import jax
import numpy as np

from jaxfl.algorithm import FederatedAlgorithm
from jaxfl.metrics import summarize_clients

EVENTS = ("run_start", "round_end", "evaluate", "run_end")


class NonFiniteError(FloatingPointError):
    """A loss or metric became NaN/inf; the message names the round and the metric."""


class Simulation:
    """Runs ``rounds`` rounds of an algorithm; round r uses key ``fold_in(key, r)``.

    Args:
      algorithm: a :class:`jaxfl.algorithm.FederatedAlgorithm`.
      rounds: number of rounds.
      eval_every: evaluate every this many rounds (and after the last).
      seed: seeds the model initialisation and every round's key.
    """

    def __init__(
        self, algorithm: FederatedAlgorithm, rounds: int, eval_every: int = 1, seed: int = 0
    ):
        if rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {rounds}")
        if eval_every < 1:
            raise ValueError(f"--eval-every must be >= 1, got {eval_every}")
        self.algorithm = algorithm
        self.rounds = rounds
        self.eval_every = eval_every
        self.init_key, self.round_key = jax.random.split(jax.random.key(seed))
        self.handlers: dict[str, list[Callable]] = defaultdict(list)
        self.history: list[dict] = []

    def on(self, event: str, handler: Callable) -> Callable:
        """Register ``handler(**payload)`` for ``event``; handlers run in registration order."""
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; allowed: {', '.join(EVENTS)}")
        self.handlers[event].append(handler)
        return handler

    def emit(self, event: str, **payload) -> None:
        for handler in self.handlers[event]:
            handler(sim=self, **payload)

    def run(self, state=None):
        """Run all rounds from ``state`` (default: a fresh ``init``); returns (state, history)."""
        algo = self.algorithm
        state = algo.init(self.init_key) if state is None else state
        comm = algo.communication
        up_total = down_total = 0.0
        self.emit("run_start", state=state)
        for r in range(1, self.rounds + 1):
            start = time.perf_counter()
            state, round_metrics = algo.round(state, jax.random.fold_in(self.round_key, r))
            record = {"round": r, **{k: float(v) for k, v in round_metrics.items()}}
            record["round_time_s"] = time.perf_counter() - start
            _check_finite(record, r)
            up_total += algo.clients_per_round * comm["up_bytes"]
            down_total += algo.clients_per_round * comm["down_bytes"]
            record["comm_up_bytes_total"] = up_total
            record["comm_down_bytes_total"] = down_total
            if r % self.eval_every == 0 or r == self.rounds:
                evaluated = algo.evaluate(state)
                client_acc = np.asarray(evaluated.pop("client_acc"))
                record.update({k: float(v) for k, v in evaluated.items()})
                record.update(summarize_clients(client_acc, "client_acc"))
                _check_finite(record, r)
                self.history.append(record)
                self.emit("evaluate", record=record, state=state, client_acc=client_acc)
            self.emit("round_end", record=record, state=state)
        self.emit("run_end", state=state, history=self.history)
        return state, self.history


def _check_finite(record: dict, round_index: int) -> None:
    for name, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise NonFiniteError(
                f"round {round_index}: metric {name!r} is {value}; training diverged "
                "(try a smaller --lr or --server-lr). Results written so far are kept."
            )


def progress_bar(sim: Simulation, metric: str = "test_acc"):
    """Attach a tqdm progress bar over rounds showing the latest ``metric``."""
    from tqdm.auto import tqdm

    bar = tqdm(total=sim.rounds, desc=sim.algorithm.name, unit="round", dynamic_ncols=True)

    def on_round_end(record, **_):
        bar.update(1)

    def on_evaluate(record, **_):
        bar.set_postfix(
            {
                metric: f"{record.get(metric, float('nan')):.4f}",
                "clients": f"{record.get('client_acc_mean', float('nan')):.4f}",
            }
        )

    def on_run_end(**_):
        bar.close()

    sim.on("round_end", on_round_end)
    sim.on("evaluate", on_evaluate)
    sim.on("run_end", on_run_end)
    return bar
