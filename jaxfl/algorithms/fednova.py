"""FedNova (Wang, Liu, Liang, Joshi, Poor; NeurIPS 2020): normalized averaging.

Clients that take different numbers of local steps tau_i (different data sizes with the same
epochs, stragglers) make FedAvg optimise a skewed objective: a client's update grows with its
tau_i. FedNova averages *normalized* updates and rescales by an effective step count. With plain
local SGD (a_i = [1, ..., 1], ||a_i||_1 = tau_i) and p_i = n_i / sum_{j in S} n_j:

    d_i      = (w_t - w_i) / tau_i                       (the client's mean step, times eta)
    tau_eff  = sum_i p_i tau_i
    w_t+1    = w_t - tau_eff sum_i p_i d_i               ( = w_t + ServerOpt(-Delta) with
    Delta    = tau_eff sum_i p_i (w_i - w_t) / tau_i       the plain server step, lr 1 )

When every tau_i is equal this is FedAvg. tau_i is the number of steps client i actually took
(:class:`jaxfl.core.train.Trained`), so a straggler's partial work is normalized, not dropped.
p_i counts only the clients whose uploads arrive. The server optimizer is FedAvg's
(``--server-opt``, ``--server-lr``), applied to Delta.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxfl.algorithms.fedavg import flag_server_optimizer, server_update
from jaxfl.core import hooks, metrics
from jaxfl.core.algorithm import RoundParts, communication, make_algorithm, sample_clients
from jaxfl.data.federation import Federation
from jaxfl.mechanisms import faults
from jaxfl.mechanisms.client_round import standard_clients
from jaxfl.models import Model

ATTACKS = ("label_flip",)


@dataclasses.dataclass(frozen=True)
class FedNovaConfig:
    clients_per_round: int | None = None  # None: all clients
    local_epochs: int = 1
    batch_size: int = 50
    lr: float = 0.1
    server_opt: str = "sgd"
    server_lr: float = 1.0
    server_momentum: float = 0.9
    client_chunk: int | None = None


CONFIG = FedNovaConfig


@struct.dataclass
class FedNovaState:
    params: Any
    opt_state: Any
    round: jax.Array  # () int32


def normalized_delta(deltas, steps: jax.Array, weights: jax.Array):
    """Delta = tau_eff sum_i p_i delta_i / tau_i with p_i = weights_i / sum(weights).

    ``deltas``: pytree with leading (m,) axis of w_i - w_t; ``steps`` (m,) tau_i; ``weights`` (m,)
    n_i, 0 for a client whose upload did not arrive. Returns (Delta, tau_eff)."""
    p = weights / jnp.maximum(jnp.sum(weights), 1e-30)
    tau = steps.astype(jnp.float32)
    tau_eff = jnp.sum(p * tau)
    coef = tau_eff * p / jnp.maximum(tau, 1.0)
    return jax.tree.map(lambda d: jnp.tensordot(coef, d, 1), deltas), tau_eff


def make(
    config: FedNovaConfig,
    data: Federation,
    model: Model,
    *,
    fault_config: faults.FaultConfig | None = None,
    seed: int = 0,
    select_clients=sample_clients,
    client_optimizer: hooks.OptimizerArg | None = None,
    server_optimizer: hooks.OptimizerArg | None = None,
):
    """Bind FedNova to a federation and a model; returns a FederatedAlgorithm.

    ``client_optimizer`` / ``server_optimizer``: optax transformations (or functions of the
    config, :func:`jaxfl.core.hooks.optimizer`) instead of SGD at ``--lr`` and the
    ``--server-opt`` shortcut. The normalization by tau_i is the paper's for plain local SGD;
    with another client optimizer it is kept as is (the paper's a_i changes with momentum)."""
    m = config.clients_per_round or data.num_clients
    clients = standard_clients(
        data,
        m,
        fault_config=fault_config,
        attacks=ATTACKS,
        seed=seed,
        select_clients=select_clients,
    )
    server_opt = hooks.optimizer(server_optimizer, config, lambda: flag_server_optimizer(config))
    local = (config.batch_size, config.local_epochs)
    client_opt = hooks.optimizer(client_optimizer, config, lambda: optax.sgd(config.lr))

    def init(key):
        params = model.init(key)
        return FedNovaState(params, server_opt.init(params), jnp.zeros((), jnp.int32))

    def prepare(state, key, data):
        picked = clients.sample(key, data)
        counts = data.client_count[picked.sampled]
        return (data, state.params), picked.client_args, (counts, picked.received)

    def client_update(shared, key, idx_row, count, work, is_adversary):
        data, params = shared
        trained = clients.train(
            model.apply, data, params, client_opt, *local, key, idx_row, count, work,
            is_adversary,
        )  # fmt: skip
        return jax.tree.map(jnp.subtract, trained.params, params), trained.steps, trained.loss

    def finish(state, ctx, outputs, data):
        counts, received = ctx
        deltas, steps, losses = outputs
        delta, tau_eff = normalized_delta(deltas, steps, counts * received)
        applied = faults.applied(received, clients.fault_config.min_received)
        params, opt_state = server_update(server_opt, state.params, state.opt_state, delta, applied)
        return FedNovaState(params, opt_state, state.round + 1), {
            "train_loss": jnp.sum(losses * counts) / jnp.sum(counts),
            "tau_eff": tau_eff,
            "received": jnp.sum(received),
            "applied": applied,
        }

    floats = model.num_params
    return make_algorithm(
        "fednova",
        RoundParts(prepare, client_update, finish),
        init,
        metrics.global_model_evaluator(model.apply, config.client_chunk),
        data,
        clients_per_round=m,
        client_chunk=config.client_chunk,
        communication=communication(floats, floats),  # (d_i, tau_i): tau_i is one number
    )
