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
(``--server-opt``, ``--server-lr``), applied to Delta. Both sums (sum_i p_i d_i / tau_i and
tau_eff) are accumulated chunk by chunk (``RoundParts(reduced=True)``), as FedAvg's mean: memory
for one chunk of updates, not m.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxfl.algorithms.fedavg import flag_server_optimizer, server_update
from jaxfl.configs.averaging import FedNovaConfig
from jaxfl.configs.specs import SPECS
from jaxfl.core import hooks, metrics
from jaxfl.core.algorithm import RoundParts, communication, make_algorithm, sample_clients
from jaxfl.data.federation import Federation
from jaxfl.mechanisms import faults
from jaxfl.mechanisms.client_round import standard_clients
from jaxfl.models import Model

SPEC = SPECS["fednova"]  # its config and capabilities (jaxfl.configs.specs)


@struct.dataclass
class FedNovaState:
    params: Any
    opt_state: Any
    round: jax.Array  # () int32


def normalized_delta(deltas, steps: jax.Array, weights: jax.Array):
    """Delta = tau_eff sum_i p_i delta_i / tau_i with p_i = weights_i / sum(weights), on
    stacked updates (the round computes the same two sums streamed, client by client).

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
        attacks=SPEC.attacks,
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
        weights = (counts * picked.received).astype(jnp.float32)
        p = weights / jnp.maximum(jnp.sum(weights), 1e-30)  # p_i over the arrived uploads
        loss_weights = counts / jnp.sum(counts)
        client_args = (*picked.client_args, p, loss_weights)
        return (data, state.params), client_args, picked.received

    def client_update(shared, client, p, loss_weight):
        data, params = shared
        trained = clients.train(model.apply, data, params, client_opt, *local, client)
        tau = trained.steps.astype(jnp.float32)
        scale = p / jnp.maximum(tau, 1.0)  # this client's term of sum_i p_i d_i / tau_i
        delta = jax.tree.map(lambda w, w0: scale * (w - w0), trained.params, params)
        return delta, p * tau, loss_weight * trained.loss

    def finish(state, ctx, outputs, data):
        received = ctx
        normalized, tau_eff, loss = outputs  # sums over the clients, chunk by chunk
        delta = jax.tree.map(lambda d: tau_eff * d, normalized)
        applied = faults.applied(received, clients.fault_config.min_received)
        params, opt_state = server_update(server_opt, state.params, state.opt_state, delta)
        return FedNovaState(params, opt_state, state.round + 1), {
            "train_loss": loss,
            "tau_eff": tau_eff,
            "received": jnp.sum(received),
            "applied": applied,
        }

    floats = model.num_params
    return make_algorithm(
        "fednova",
        RoundParts(
            prepare, client_update, finish, reduced=True, server_state=("params", "opt_state")
        ),
        init,
        metrics.global_model_evaluator(model.apply, config.client_chunk),
        data,
        clients_per_round=m,
        client_chunk=config.client_chunk,
        communication=communication(floats, floats),  # (d_i, tau_i): tau_i is one number
        cohort_by_size=clients.by_size,
        cohort=clients.cohort,  # a function of the round key: the host-side store can gather it
    )
