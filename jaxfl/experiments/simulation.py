"""The host loop between compiled rounds, with event hooks.

A round is one compiled function, so customisation outside it happens here, between rounds, by
registering handlers (after FederatedScope's event-driven design)::

    sim = Simulation(algorithm, rounds=50, eval_every=5, seed=0)
    sim.on("evaluate", lambda record, **_: print(record["test_acc"]))
    sim.on("round_end", save_something, when=events.every(10))   # a condition trigger
    events.early_stopping(sim, "test_acc", patience=5)            # a built-in handler
    state, history = sim.run()

Events and their keyword payloads (every handler also gets ``sim``):
  ``run_start(state, start_round)``, ``evaluate(record, state, client_acc,
  global_client_acc)`` (``global_client_acc`` is None for algorithms without a global model),
  ``round_end(record, state)``, ``checkpoint(round, path)``, ``converged(round, reason)``,
  ``run_end(state, history, stop_reason)``.
In a round, ``evaluate`` (on evaluation rounds) comes before ``round_end``; a handler that calls
:meth:`Simulation.stop` ends the run after the current round, which then emits ``converged``.

``rounds_per_call=K`` runs up to K rounds in one compiled call (a ``lax.scan``, one host round
trip); a block always ends at an evaluation round and at every multiple of the periods handlers
register with :meth:`Simulation.sync_every` (the checkpointer does), so those rounds' events
carry the state. The other rounds of a block still emit ``round_end`` with their own metrics, but
with ``state=None``, and a stop requested inside a block takes effect at the block's end. The
state passed into the compiled rounds is donated (its buffers are reused for the new state): a
handler that keeps a state beyond its event must copy it (``jax.tree.map(jnp.copy, state)``).
The progress bar, results writer, checkpointer, early stopping and TensorBoard logging are all
handlers on this same API (:mod:`jaxfl.experiments.events`, :mod:`jaxfl.experiments.results`,
:mod:`jaxfl.experiments.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxfl.core.algorithm import FederatedAlgorithm, traffic_totals
from jaxfl.core.client_axis import replicate, to_host
from jaxfl.core.metrics import personalization_summary, summarize_clients

EVENTS = ("run_start", "round_end", "evaluate", "checkpoint", "converged", "run_end")


class NonFiniteError(FloatingPointError):
    """A loss or metric became NaN/inf; the message names the round and the metric."""


class Simulation:
    """Runs rounds ``start_round..rounds`` of an algorithm; round r uses ``fold_in(key, r)``.

    Because round r's key depends only on the seed and r, a run resumed from round k's state
    computes exactly what the uninterrupted run computed.

    Args:
      algorithm: a :class:`jaxfl.core.algorithm.FederatedAlgorithm`.
      rounds: the last round.
      eval_every: evaluate every this many rounds (and after the last).
      seed: seeds the model initialisation and every round's key.
      rounds_per_call: at most this many rounds per compiled call (see the module docstring).
    """

    def __init__(
        self,
        algorithm: FederatedAlgorithm,
        rounds: int,
        eval_every: int = 1,
        seed: int = 0,
        rounds_per_call: int = 1,
    ):
        if rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {rounds}")
        if eval_every < 1:
            raise ValueError(f"--eval-every must be >= 1, got {eval_every}")
        if rounds_per_call < 1:
            raise ValueError(f"--rounds-per-call must be >= 1, got {rounds_per_call}")
        self.rounds_per_call = rounds_per_call
        self.sync_periods: set[int] = {eval_every}
        self.algorithm = algorithm
        self.rounds = rounds
        self.eval_every = eval_every
        self.seed = seed
        self.init_key, self.round_key = jax.random.split(jax.random.key(seed))
        self.handlers: dict[str, list[tuple[Callable, Callable | None]]] = defaultdict(list)
        self.history: list[dict] = []
        self.stop_reason: str | None = None
        self.start_time = time.perf_counter()
        self.round = 0
        # (C,) local-only accuracies on the same split: adds frac_worse_than_local to records
        self.local_client_acc: np.ndarray | None = None
        self.seen_clients: int | None = None  # clients 0..S-1 train; the rest only evaluated
        # jaxfl.mechanisms.accounting.Accountant of a DP run: adds dp_epsilon (after the round) to
        # records
        self.accountant = None

    def on(self, event: str, handler: Callable, when: Callable | None = None) -> Callable:
        """Register ``handler(sim=..., **payload)`` for ``event``, run in registration order.

        ``when``: an optional trigger ``(sim, **payload) -> bool`` (see
        :mod:`jaxfl.experiments.events`); the handler runs only when it returns True.
        """
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; allowed: {', '.join(EVENTS)}")
        self.handlers[event].append((handler, when))
        return handler

    def emit(self, event: str, **payload) -> None:
        for handler, when in self.handlers[event]:
            if when is None or when(self, **payload):
                handler(sim=self, **payload)

    def sync_every(self, period: int) -> None:
        """Make every multiple of ``period`` end a compiled block, so its events get the state."""
        self.sync_periods.add(period)

    def block_end(self, first: int) -> int:
        """The last round of the compiled block that starts at round ``first``."""
        last = min(self.rounds, first + self.rounds_per_call - 1)
        for r in range(first, last):
            if any(r % p == 0 for p in self.sync_periods):
                return r
        return last

    def stop(self, reason: str) -> None:
        """Ask the loop to end after the current round (emits ``converged`` with ``reason``)."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def run(self, state=None, start_round: int = 1, history: list[dict] | None = None):
        """Run rounds ``start_round..rounds``; returns (state, history).

        Args:
          state: the state after round ``start_round - 1`` (default: a fresh ``init``).
          start_round: the first round to run (> 1 when resuming).
          history: the evaluated records of rounds before ``start_round`` (resuming).
        """
        algo = self.algorithm
        state = replicate(algo.init(self.init_key) if state is None else state)
        self.history = list(history or [])
        self.start_time = time.perf_counter()
        self.emit("run_start", state=state, start_round=start_round)
        first = start_round
        while first <= self.rounds and self.stop_reason is None:
            last = self.block_end(first)
            start = time.perf_counter()
            state, block_metrics = algo.run_rounds(state, self.round_key, first, last - first + 1)
            block_metrics = to_host(wait_ready(block_metrics))
            elapsed = (time.perf_counter() - start) / (last - first + 1)
            records = []
            for i, r in enumerate(range(first, last + 1)):
                record = {"round": r, **{k: float(v[i]) for k, v in block_metrics.items()}}
                record["round_time_s"] = elapsed
                _check_finite(record, r, algo.name)
                records.append(record)
            if not bool(to_host(all_finite(state))):
                raise NonFiniteError(
                    f"round {last}: the state (model parameters) holds NaN or inf; training "
                    f"diverged ({divergence_hint(algo.name)}). Results written so far are kept."
                )
            for record in records:
                r = self.round = record["round"]
                participants = getattr(algo, "participants_per_round", algo.clients_per_round)
                record.update(traffic_totals(algo.communication, participants, r))
                if self.accountant is not None:
                    record["dp_epsilon"] = self.accountant.epsilon(r)
                evaluated = r == last and (r % self.eval_every == 0 or r == self.rounds)
                if evaluated:
                    self._evaluate(state, record)
                self.emit("round_end", record=record, state=state if r == last else None)
            if self.stop_reason is not None:
                if not evaluated:  # the run's last round is always evaluated
                    self._evaluate(state, record)
                self.emit("converged", round=last, reason=self.stop_reason)
            first = last + 1
        self.emit("run_end", state=state, history=self.history, stop_reason=self.stop_reason)
        return state, self.history

    def _clients_with_tests(self) -> np.ndarray | None:
        """(C,) bool: the clients with a test split, where some have none (a language task's
        users or roles without test text); None where every client has one."""
        counts = getattr(getattr(self.algorithm, "data", None), "client_test_count", None)
        if counts is None:
            return None
        counts = np.asarray(counts)
        return None if (counts > 0).all() else counts > 0

    def _evaluate(self, state, record: dict) -> None:
        evaluated = to_host(wait_ready(self.algorithm.evaluate(state)))
        client_acc = np.asarray(evaluated.pop("client_acc"))
        global_client_acc = evaluated.pop("global_client_acc", None)
        if global_client_acc is not None:
            global_client_acc = np.asarray(global_client_acc)
        record.update({k: float(v) for k, v in evaluated.items()})
        record.update(summarize_clients(client_acc, "client_acc", self._clients_with_tests()))
        record.update(
            personalization_summary(
                client_acc, global_client_acc, self.local_client_acc, self.seen_clients
            )
        )
        _check_finite(record, record["round"], self.algorithm.name)
        self.history.append(record)
        self.emit(
            "evaluate",
            record=record,
            state=state,
            client_acc=client_acc,
            global_client_acc=global_client_acc,
        )


def wait_ready(tree, poll_s: float = 0.02):
    """Wait until every array of ``tree`` is computed, then return it.

    Waits in short sleeps rather than one blocking transfer: Python runs signal handlers (Ctrl-C)
    only between bytecodes, so a main thread blocked inside XLA for a whole round would not see
    Ctrl-C until the round ends; sleeping in steps of at most ``poll_s`` it sees it at once.
    """
    leaves = [x for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)]
    pause = 1e-5  # doubling up to poll_s: a sub-millisecond round is not held up by 20 ms
    while not all(x.is_ready() for x in leaves):
        time.sleep(pause)
        pause = min(2 * pause, poll_s)
    return tree


@jax.jit
def all_finite(state) -> jax.Array:
    """() bool: every floating-point leaf of ``state`` is free of NaN and inf."""
    leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in leaves] or [True]))


def divergence_hint(name: str) -> str:
    """The divergence hint for algorithm ``name``, naming the learning-rate flags it has, e.g.
    "try a smaller --lr or --distill-lr" (a flag the algorithm ignores only misleads)."""
    try:
        from jaxfl.configs import SPECS

        fields = [f.name for f in dataclasses.fields(SPECS[name].config)]
        rates = [f for f in fields if f == "lr" or (f.endswith("_lr") and f != "dp_clip_lr")]
    except (ImportError, KeyError, AttributeError):  # an algorithm of your own
        rates = []
    if not rates:
        return "try a smaller learning rate"
    return "try a smaller " + " or ".join("--" + f.replace("_", "-") for f in rates)


def _check_finite(record: dict, round_index: int, name: str = "") -> None:
    for metric, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise NonFiniteError(
                f"round {round_index}: metric {metric!r} is {value}; training diverged "
                f"({divergence_hint(name)}). Results written so far are kept."
            )
