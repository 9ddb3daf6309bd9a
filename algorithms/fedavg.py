"""FedAvg (McMahan et al., AISTATS 2017) with an optax server optimizer (Reddi et al., ICLR 2021).

Per round t, with S_t the m sampled clients and n_k client k's sample count:

    w_k   = LocalSGD_k(w_t; E epochs, batch B, lr eta)          for k in S_t
    Delta = sum_k n_k (w_k - w_t) / sum_k n_k
    w_t+1 = w_t + ServerOpt(-Delta)

With ``server_opt="sgd"`` and ``server_lr=1`` this is plain FedAvg (w_t+1 = weighted mean of w_k);
``momentum`` gives FedAvgM and ``adam`` FedAdam.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxfl import aggregate, metrics, train
from jaxfl.algorithm import RoundParts, make_algorithm, sample_clients
from jaxfl.data.federation import Federation
from jaxfl.models import Model

SERVER_OPTS = ("sgd", "momentum", "adam")


@dataclasses.dataclass(frozen=True)
class FedAvgConfig:
    clients_per_round: int | None = None  # None: all clients
    local_epochs: int = 1
    batch_size: int = 50
    lr: float = 0.1
    server_opt: str = "sgd"
    server_lr: float = 1.0
    server_momentum: float = 0.9
    client_chunk: int | None = None


CONFIG = FedAvgConfig  # the config class scripts/run.py fills from its flags of the same names


@struct.dataclass
class FedAvgState:
    params: Any  # global model
    opt_state: Any  # server optimizer state
    round: jax.Array  # () int32


def server_optimizer(config: FedAvgConfig) -> optax.GradientTransformation:
    if config.server_opt == "sgd":
        return optax.sgd(config.server_lr)
    if config.server_opt == "momentum":
        return optax.sgd(config.server_lr, momentum=config.server_momentum)
    if config.server_opt == "adam":
        return optax.adam(config.server_lr)
    raise ValueError(
        f"unknown --server-opt {config.server_opt!r}; allowed: {', '.join(SERVER_OPTS)}"
    )


def make(config: FedAvgConfig, data: Federation, model: Model):
    """Bind FedAvg to a federation and a model; returns a FederatedAlgorithm."""
    m = config.clients_per_round or data.num_clients
    server_opt = server_optimizer(config)
    client_opt = optax.sgd(config.lr)

    def init(key):
        params = model.init(key)
        return FedAvgState(params, server_opt.init(params), jnp.zeros((), jnp.int32))

    def prepare(state, key, data):
        k_sample, k_clients = jax.random.split(key)
        sampled = sample_clients(k_sample, data.num_clients, m)
        client_args = (
            jax.random.split(k_clients, m),
            data.client_idx[sampled],
            data.client_count[sampled],
        )
        return (data, state.params), client_args, data.client_count[sampled]

    def client_update(shared, key, idx_row, count):
        data, global_params = shared
        loss_fn = train.private_loss(model.apply, data.train_x, data.train_y, idx_row)
        params, loss = train.sgd_epochs(
            loss_fn,
            client_opt,
            global_params,
            key,
            count,
            data.capacity,
            config.batch_size,
            config.local_epochs,
        )
        return jax.tree.map(jnp.subtract, params, global_params), loss

    def finish(state, counts, outputs, data):
        deltas, losses = outputs
        mean_delta = aggregate.weighted_mean(deltas, counts)
        pseudo_grad = jax.tree.map(jnp.negative, mean_delta)
        updates, opt_state = server_opt.update(pseudo_grad, state.opt_state, state.params)
        new_state = FedAvgState(
            optax.apply_updates(state.params, updates), opt_state, state.round + 1
        )
        return new_state, {"train_loss": jnp.sum(losses * counts) / jnp.sum(counts)}

    def evaluate(state, data):
        return {
            "test_acc": metrics.global_test_accuracy(model.apply, state.params, data),
            "client_acc": metrics.per_client_accuracy(
                model.apply, state.params, data, personal=False, chunk_size=config.client_chunk
            ),
        }

    floats = model.num_params
    return make_algorithm(
        "fedavg",
        RoundParts(prepare, client_update, finish),
        init,
        evaluate,
        data,
        clients_per_round=m,
        client_chunk=config.client_chunk,
        communication={
            "up_floats": floats,
            "down_floats": floats,
            "up_bytes": 4 * floats,
            "down_bytes": 4 * floats,
        },
    )
