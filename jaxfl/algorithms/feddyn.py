"""FedDyn (Acar, Zhao, Matas, Mattina, Whatmough, Saligrama; ICLR 2021): dynamic regularization.

Each client's objective changes every round so that its stationary points agree with the global
one. With theta^{t-1} the server model, g_k the client's stored gradient state (zero at the
start), m = C clients in all and P_t the active clients (Algorithm 1):

    theta_k^t = argmin_theta L_k(theta) - <g_k, theta> + (alpha/2) ||theta - theta^{t-1}||^2
    g_k      <- g_k - alpha (theta_k^t - theta^{t-1})
    h^t       = h^{t-1} - alpha (1/m) sum_{k in P_t} (theta_k^t - theta^{t-1})
    theta^t   = (1/|P_t|) sum_{k in P_t} theta_k^t - (1/alpha) h^t

The argmin is the same masked local SGD as everywhere (``--local-epochs`` at ``--lr``), with
the linear and quadratic terms added to each batch loss (``train_penalty`` reports their mean).
P_t is the sampled clients whose uploads arrive; a dropped client's g_k is not updated.
``--feddyn-alpha`` is alpha (the paper uses 0.1, 0.01 and 0.001).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxfl.configs.averaging import FedDynConfig
from jaxfl.configs.specs import SPECS
from jaxfl.core import hooks, metrics, train
from jaxfl.core.algorithm import (
    RoundParts,
    communication,
    gather,
    make_algorithm,
    sample_clients,
    scatter_kept,
)
from jaxfl.data.federation import Federation
from jaxfl.mechanisms import faults
from jaxfl.mechanisms.client_round import standard_clients
from jaxfl.mechanisms.personalization import broadcast_clients
from jaxfl.models import Model

SPEC = SPECS["feddyn"]  # its config and capabilities (jaxfl.configs.specs)


@struct.dataclass
class FedDynState:
    params: Any  # theta^t, the server model sent to the clients
    h: Any  # h^t (params' shapes)
    client_grads: Any  # g_k for every client, leading (C,) axis
    round: jax.Array  # () int32


def dynamic_penalty(theta, g_k, anchor, alpha):
    """-<g_k, theta> + (alpha/2) ||theta - theta^{t-1}||^2."""
    return -train.tree_vdot(g_k, theta) + train.prox_term(theta, anchor, alpha)


def server_step(params, h, local, active, alpha, num_clients):
    """(theta^t, h^t) from the active clients' models ``local`` (leading (m,) axis) and the
    (m,) bool ``active``."""
    w = active.astype(jnp.float32)
    summed = lambda tree: jax.tree.map(lambda x: jnp.tensordot(w, x, 1), tree)
    drift = summed(jax.tree.map(lambda x, p: x - p, local, params))
    h_new = jax.tree.map(lambda hh, d: hh - alpha * d / num_clients, h, drift)
    mean_local = jax.tree.map(lambda s: s / jnp.maximum(w.sum(), 1.0), summed(local))
    theta = jax.tree.map(lambda mu, hh: mu - hh / alpha, mean_local, h_new)
    return theta, h_new


def make(
    config: FedDynConfig,
    data: Federation,
    model: Model,
    *,
    fault_config: faults.FaultConfig | None = None,
    seed: int = 0,
    select_clients=sample_clients,
    client_optimizer: hooks.OptimizerArg | None = None,
):
    """Bind FedDyn to a federation and a model; returns a FederatedAlgorithm.

    ``client_optimizer``: an optax transformation (or a function of the config,
    :func:`jaxfl.core.hooks.optimizer`) minimising the client objective instead of SGD at
    ``--lr``."""
    m = config.clients_per_round or data.num_clients
    clients = standard_clients(
        data,
        m,
        fault_config=fault_config,
        attacks=SPEC.attacks,
        seed=seed,
        select_clients=select_clients,
    )
    local = (config.batch_size, config.local_epochs)
    client_opt = hooks.optimizer(client_optimizer, config, lambda: optax.sgd(config.lr))
    alpha, num_clients = config.feddyn_alpha, data.num_clients

    def init(key):
        params = model.init(key)
        zeros = jax.tree.map(jnp.zeros_like, params)
        return FedDynState(
            params, zeros, broadcast_clients(zeros, num_clients), jnp.zeros((), jnp.int32)
        )

    def prepare(state, key, data):
        picked = clients.sample(key, data, state.client_grads)
        counts = data.client_count[picked.sampled]
        ctx = (picked.sampled, picked.received, counts)
        return (data, state.params), picked.client_args, ctx

    def client_update(shared, g_k, client):
        data, anchor = shared
        trained = clients.train(
            model.apply, data, anchor, client_opt, *local, client,
            penalty=lambda theta: dynamic_penalty(theta, g_k, anchor, alpha),
        )  # fmt: skip
        return trained.params, trained.loss, trained.penalty  # g_k's update: in finish

    def finish(state, ctx, outputs, data):
        sampled, received, counts = ctx
        local_params, losses, penalties = outputs
        g_new = jax.tree.map(  # g_k - alpha (theta_k - theta^{t-1})
            lambda g, t, a: g - alpha * (t - a),
            gather(state.client_grads, sampled),
            local_params,
            state.params,
        )
        applied = faults.applied(received, clients.fault_config.min_received)
        theta, h = server_step(state.params, state.h, local_params, received, alpha, num_clients)
        new_state = FedDynState(
            theta,
            h,
            scatter_kept(state.client_grads, sampled, g_new, received),
            state.round + 1,
        )
        weights = counts / jnp.sum(counts)
        return new_state, {
            "train_loss": jnp.sum(losses * weights),
            "train_penalty": jnp.sum(penalties * weights),
            "received": jnp.sum(received),
            "applied": applied,
        }

    floats = model.num_params
    return make_algorithm(
        "feddyn",
        # a round not applied keeps theta, h and every client's gradient g_k
        RoundParts(prepare, client_update, finish, server_state=("params", "h", "client_grads")),
        init,
        metrics.global_model_evaluator(model.apply, config.client_chunk),
        data,
        clients_per_round=m,
        client_chunk=config.client_chunk,
        communication=communication(floats, floats),
        cohort_by_size=clients.by_size,
        cohort=clients.cohort,  # a function of the round key: the host-side store can gather it
    )
