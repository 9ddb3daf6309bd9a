"""MOON (Li, He, Song; CVPR 2021): model-contrastive federated learning.

FedAvg whose clients also pull their representation towards the global model's and away from
their own previous local model's. On a batch, with z = R_w(x) the local model's representation,
z_glob = R_{w_t}(x) and z_prev = R_{w_k^{t-1}}(x) (no gradient through either), sim the cosine
similarity and tau a temperature:

    l_con = -log( exp(sim(z, z_glob)/tau) / (exp(sim(z, z_glob)/tau) + exp(sim(z, z_prev)/tau)) )
    l     = CE(logits, y) + mu * l_con                                  (each local step's loss)

after which the server is FedAvg's (weighted mean, ``--server-opt``; with ``--dp-clip`` the
private mean of the updates, from :mod:`jaxfl.mechanisms.uploads`). Each client keeps its
last local model w_k^{t-1} (the initial global model before its first round). The representation
is the model's :attr:`jaxfl.models.Model.represent`: for the zoo's models the input of the
output layer (the paper puts a projection head there; ours is the last hidden layer).
``train_loss`` is the cross-entropy, ``train_penalty`` the mean of mu * l_con.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxfl.algorithms.fedavg import SERVER_STATE, flag_server_optimizer, server_update
from jaxfl.configs.averaging import MoonConfig
from jaxfl.configs.specs import SPECS
from jaxfl.core import hooks, metrics, train
from jaxfl.core.algorithm import RoundParts, communication, make_algorithm, sample_clients, scatter
from jaxfl.data.federation import Federation
from jaxfl.mechanisms import faults
from jaxfl.mechanisms.client_round import standard_clients
from jaxfl.mechanisms.personalization import broadcast_clients
from jaxfl.mechanisms.uploads import upload_mean
from jaxfl.models import Model

SPEC = SPECS["moon"]  # its config and capabilities (jaxfl.configs.specs)


@struct.dataclass
class MoonState:
    params: Any  # w_t, the global model
    opt_state: Any
    previous: Any  # every client's last local model, leading (C,) axis
    round: jax.Array  # () int32
    upload_state: Any = None  # the upload mean's (jaxfl.mechanisms.uploads): C_t with --dp-clip


def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """(B,) cosine similarity of rows of (B, D) ``a`` and ``b``."""
    norms = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
    return jnp.sum(a * b, axis=-1) / jnp.maximum(norms, 1e-8)


def contrastive(z, z_glob, z_prev, temperature) -> jax.Array:
    """(B,) l_con: the global model's representation is the positive, the previous local
    model's the negative."""
    pos = cosine(z, z_glob) / temperature
    neg = cosine(z, z_prev) / temperature
    return jnp.logaddexp(pos, neg) - pos


def contrastive_term(model: Model, data, idx_row, global_params, previous, mu, temperature):
    """``(params, positions, mask) -> mu * l_con`` over the batch of a client's slots
    ``positions`` (``idx_row`` (n_max,) its index view), added to the cross-entropy."""

    def term(params, positions, mask):
        x = data.train_x[idx_row[positions]]
        z_glob = jax.lax.stop_gradient(model.represent(global_params, x))
        z_prev = jax.lax.stop_gradient(model.represent(previous, x))
        con = contrastive(model.represent(params, x), z_glob, z_prev, temperature)
        return mu * train.masked_mean(con, mask)

    return term


def make(
    config: MoonConfig,
    data: Federation,
    model: Model,
    *,
    fault_config: faults.FaultConfig | None = None,
    seed: int = 0,
    select_clients=sample_clients,
    client_optimizer: hooks.OptimizerArg | None = None,
    server_optimizer: hooks.OptimizerArg | None = None,
):
    """Bind MOON to a federation and a model (one with ``represent``); returns a
    FederatedAlgorithm. ``client_optimizer`` / ``server_optimizer`` as FedAvg's."""
    if model.represent is None:
        raise ValueError(
            "--algo moon needs a model with a representation (Model.represent): the zoo's "
            "models have one; give your own Model(..., represent=...)"
        )
    m = config.clients_per_round or data.num_clients
    clients = standard_clients(
        data,
        m,
        fault_config=fault_config,
        attacks=SPEC.attacks,
        seed=seed,
        select_clients=select_clients,
    )
    fault_config = clients.fault_config
    client_opt = hooks.optimizer(client_optimizer, config, lambda: optax.sgd(config.lr))
    server_opt = hooks.optimizer(server_optimizer, config, lambda: flag_server_optimizer(config))
    B, E = config.batch_size, config.local_epochs
    uploads = upload_mean(config, m)  # FedAvg's weighted mean, or with --dp-clip the private one

    def init(key):
        params = model.init(key)
        return MoonState(
            params,
            server_opt.init(params),
            broadcast_clients(params, data.num_clients),
            jnp.zeros((), jnp.int32),
            uploads.init(),
        )

    def prepare(state, key, data):
        picked = clients.sample(key, data, state.previous)
        counts = data.client_count[picked.sampled]
        ctx = (picked.sampled, picked.received, counts, hooks.round_key(key))
        return (data, state.params), picked.client_args, ctx

    def client_update(shared, previous, client):
        data, global_params = shared
        term = contrastive_term(
            model, data, client.idx_row, global_params, previous, config.moon_mu,
            config.moon_temperature,
        )  # fmt: skip
        trained = clients.train(
            model.apply, data, global_params, client_opt, B, E, client, batch_penalty=term
        )
        return trained.params, trained.loss, trained.penalty

    def finish(state, ctx, outputs, data):
        sampled, received, counts, hook_key = ctx
        local_params, ce, con = outputs
        deltas = jax.tree.map(lambda w, w0: w - w0, local_params, state.params)
        applied = faults.applied(received, fault_config.min_received)
        mean_delta, upload_state, upload_metrics = uploads.mean(
            deltas, counts * received, received, state.upload_state, hook_key
        )
        params, opt_state = server_update(server_opt, state.params, state.opt_state, mean_delta)
        previous = scatter(state.previous, sampled, local_params)  # kept on the device
        weights = counts / jnp.sum(counts)
        return MoonState(params, opt_state, previous, state.round + 1, upload_state), {
            "train_loss": jnp.sum(ce * weights),
            "train_penalty": jnp.sum(con * weights),  # mu * l_con
            "received": jnp.sum(received),
            "applied": applied,
            **upload_metrics,
        }

    floats = model.num_params
    return make_algorithm(
        "moon",
        RoundParts(prepare, client_update, finish, server_state=SERVER_STATE),
        init,
        metrics.global_model_evaluator(model.apply, config.client_chunk),
        data,
        clients_per_round=m,
        client_chunk=config.client_chunk,
        communication=communication(floats, floats),
        cohort_by_size=clients.by_size,
        cohort=clients.cohort,  # a function of the round key: the host-side store can gather it
    )
