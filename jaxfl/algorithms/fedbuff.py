"""FedBuff (Nguyen et al., AISTATS 2022) and FedAsync (Xie et al. 2019) on a virtual clock.

M clients (``--concurrency``) train at once, each from the model version it downloaded. Client c
dispatched at virtual time t_0 arrives at t_0 + d_c (:mod:`jaxfl.mechanisms.clock`: steps x time
per step + latency). One server step takes the K (``--buffer``) earliest arrivals, in arrival order:

    tau_k = t - v_k                                   staleness: steps since k's version v_k
    Delta = sum_k s(tau_k) (w_k - w_{v_k}) / K        K received updates, staleness-weighted
    w_{t+1} = w_t + ServerOpt(-Delta)                 (``--server-opt``, ``--server-lr``)

and dispatches K new clients (uniform over the clients not in flight) from w_{t+1} at the K-th
arrival's time, which is the clock's new time. ``s`` is ``--staleness``: ``constant``,
``polynomial:A`` ((1 + tau)^-A; FedBuff's choice is A = 0.5) or ``hinge:A:B`` (FedAsync's).
K = 1 is FedAsync in FedBuff's update form (the client's own delta applied to the current
model, scaled by eta_g s(tau)), as FedBuff's paper runs it as a baseline.

Everything is in one compiled server step (the clock, the ordering, the training, the dispatch):
the arrivals are a ``top_k`` of the in-flight clients' arrival times (ties: lower slot first),
the K arrivals train as one vmap over the client axis, each from its own start model (the
in-flight slots keep each client's start model, (M, ...) per parameter), and ``run_rounds``
scans server steps. A "round" of this module is one server step. With equal speeds and K = M
every in-flight client arrives at once and the step is synchronous FedAvg's round on the same
clients (tests/test_async.py).

Faults: a dropped upload (``--dropout``) arrives but is not used (Delta divides by the received
count); the step is applied when at least ``--min-received`` arrive; stragglers do ``work`` of
their steps (and finish sooner); label flipping and scaled updates as in FedAvg.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxfl.algorithms import fedavg
from jaxfl.configs.averaging import FedBuffConfig
from jaxfl.configs.specs import SPECS
from jaxfl.core import hooks, metrics
from jaxfl.core.algorithm import (
    RoundParts,
    client_inputs,
    communication,
    gather,
    make_algorithm,
)
from jaxfl.data.federation import Federation
from jaxfl.mechanisms import clock, faults
from jaxfl.mechanisms.client_round import standard_clients
from jaxfl.models import Model

SPEC = SPECS["fedbuff"]  # its config and capabilities (jaxfl.configs.specs)

DISPATCH_STREAM = 0xD15
STALENESS_BINS = 64  # the histogram's last bin counts every staleness >= 63


def concurrency_and_buffer(config: FedBuffConfig, num_clients: int) -> tuple[int, int]:
    """(M, K) with their defaults filled in; ValueError naming the flag when they cannot work."""
    m = config.concurrency or config.clients_per_round or num_clients
    k = config.buffer or max(1, m // 5)
    if not 1 <= m <= num_clients:
        raise ValueError(
            f"--concurrency {m} is not allowed; allowed: 1..--clients ({num_clients}): a client "
            "trains one model at a time"
        )
    if not 1 <= k <= m:
        raise ValueError(
            f"--buffer {k} is not allowed; allowed: 1..--concurrency ({m}): a server step "
            "waits for K of the M clients in flight"
        )
    return m, k


@struct.dataclass
class InFlight:
    """The M clients training now, one slot each.

    Attributes:
      client: (M,) int32 client index.
      version: (M,) int32 server step whose model the client downloaded.
      arrival: (M,) float32 virtual time its upload arrives.
      work: (M,) float32 fraction of its local steps it runs (stragglers < 1).
      params: the model it downloaded, every leaf (M, ...).
    """

    client: jax.Array
    version: jax.Array
    arrival: jax.Array
    work: jax.Array
    params: Any


@struct.dataclass
class FedBuffState:
    params: Any  # the server model w_t
    opt_state: Any  # server optimizer state
    round: jax.Array  # () int32, server steps taken: the model version
    clock: clock.ClockState  # virtual time and every client's speed and latency
    flight: InFlight  # the clients in flight
    staleness_hist: jax.Array  # (STALENESS_BINS,) int32, staleness of every arrival so far


def make(
    config: FedBuffConfig,
    data: Federation,
    model: Model,
    *,
    fault_config: faults.FaultConfig | None = None,
    seed: int = 0,
    client_optimizer: hooks.OptimizerArg | None = None,
    server_optimizer: hooks.OptimizerArg | None = None,
):
    """Bind FedBuff to a federation and a model; returns a FederatedAlgorithm whose ``round``
    is one server step (its ``clients_per_round`` is K, the updates per step)."""
    if config.round_deadline is not None or config.round_first is not None:
        raise ValueError(
            "--round-deadline and --round-first are a synchronous round's; FedBuff moves on "
            "after --buffer arrivals"
        )
    m_flight, k = concurrency_and_buffer(config, data.num_clients)
    clock.parse_staleness(config.staleness)
    clients = standard_clients(data, k, fault_config=fault_config, attacks=SPEC.attacks, seed=seed)
    fault_config = clients.fault_config
    server_opt = hooks.optimizer(
        server_optimizer, config, lambda: fedavg.flag_server_optimizer(config)
    )
    client_opt = hooks.optimizer(client_optimizer, config, lambda: optax.sgd(config.lr))
    local = (config.batch_size, config.local_epochs)
    num_clients = data.num_clients

    def arrival_after(now, clock_state, data, new_clients, work):
        steps = faults.step_budget(work, data.client_count[new_clients], *local)
        return now + clock.durations(clock_state, new_clients, steps)

    def dispatch(key, busy, count):
        """``count`` distinct idle clients (uniform), and their work fractions."""
        k_pick, k_work = jax.random.split(key)
        scores = jnp.where(busy, 2.0, jax.random.uniform(k_pick, (num_clients,)))
        _, picked = jax.lax.top_k(-scores, count)
        _, work = faults.round_faults(k_work, count, fault_config)
        return picked.astype(jnp.int32), work

    def init(key):
        params = model.init(key)
        clock_state = clock.init(config, key, num_clients)
        first, work = dispatch(
            jax.random.fold_in(key, DISPATCH_STREAM), jnp.zeros(num_clients, bool), m_flight
        )
        flight = InFlight(
            first,
            jnp.zeros(m_flight, jnp.int32),
            arrival_after(clock_state.time, clock_state, data, first, work),
            work,
            jax.tree.map(lambda x: jnp.broadcast_to(x, (m_flight, *x.shape)), params),
        )
        return FedBuffState(
            params,
            server_opt.init(params),
            jnp.zeros((), jnp.int32),
            clock_state,
            flight,
            jnp.zeros(STALENESS_BINS, jnp.int32),
        )

    def prepare(state, key, data):
        flight = state.flight
        neg_arrival, slots = jax.lax.top_k(-flight.arrival, k)  # the K earliest, in order
        sampled = flight.client[slots]
        _, k_clients = jax.random.split(key)  # as FedAvg's round keys its clients
        received, _ = faults.round_faults(key, k, fault_config)
        staleness = state.round - flight.version[slots]
        weight = clock.staleness_weights(config.staleness, staleness)
        mean_weights = weight * received / jnp.maximum(jnp.sum(received), 1).astype(jnp.float32)
        counts = data.client_count[sampled]
        loss_weights = counts / jnp.sum(counts)
        client_args = (
            *client_inputs(
                sampled,
                jax.random.split(k_clients, k),
                flight.work[slots],
                data,
                clients.adversary,
                gather(flight.params, slots),
            ),
            mean_weights,
            loss_weights,
        )
        ctx = (slots, received, staleness, -neg_arrival[-1], key)
        return data, client_args, ctx

    def client_update(data, start_params, client, *weights):
        trained = clients.train(model.apply, data, start_params, client_opt, *local, client)
        delta = jax.tree.map(jnp.subtract, trained.params, start_params)
        if fault_config.attack == "scaled_update":
            delta = jax.tree.map(
                lambda d: jnp.where(client.is_adversary, fault_config.attack_scale, 1.0) * d,
                delta,
            )
        mean_weight, loss_weight = weights
        return jax.tree.map(lambda d: mean_weight * d, delta), loss_weight * trained.loss

    def finish(state, ctx, outputs, data):
        slots, received, staleness, now, key = ctx
        mean_delta, train_loss = outputs
        applied = faults.applied(received, fault_config.min_received)
        # the guard is applied here, not by the round composition: the clients dispatched
        # this round start from the model the guard leaves
        params, opt_state = faults.select(
            applied,
            fedavg.server_update(server_opt, state.params, state.opt_state, mean_delta),
            (state.params, state.opt_state),
        )
        version = state.round + 1
        flight = state.flight
        busy = jnp.zeros(num_clients, bool).at[flight.client].set(True)
        busy = busy.at[flight.client[slots]].set(False)
        new_clients, work = dispatch(jax.random.fold_in(key, DISPATCH_STREAM), busy, k)
        flight = InFlight(
            flight.client.at[slots].set(new_clients),
            flight.version.at[slots].set(version),
            flight.arrival.at[slots].set(arrival_after(now, state.clock, data, new_clients, work)),
            flight.work.at[slots].set(work),
            jax.tree.map(lambda rows, p: rows.at[slots].set(p), flight.params, params),
        )
        hist = state.staleness_hist.at[jnp.minimum(staleness, STALENESS_BINS - 1)].add(1)
        new_state = FedBuffState(
            params, opt_state, version, state.clock.replace(time=now), flight, hist
        )
        return new_state, {
            "train_loss": train_loss,
            "received": jnp.sum(received),
            "applied": applied,
            "staleness_mean": jnp.mean(staleness.astype(jnp.float32)),
            "staleness_max": jnp.max(staleness),
            "sim_time": now,
        }

    evaluate = metrics.global_model_evaluator(model.apply, config.client_chunk)
    floats = model.num_params
    return make_algorithm(
        "fedbuff",
        RoundParts(prepare, client_update, finish, reduced=True),
        init,
        evaluate,
        data,
        clients_per_round=k,
        client_chunk=config.client_chunk,
        communication=communication(floats, floats),
    )
