"""MR-MTL, mean-regularized multi-task learning (Evgeniou & Pontil 2004; in FL: Liu et al. 2022,
"On privacy and personalization in cross-silo federated learning"; a Motley baseline).

Only personal models v_k exist; the server keeps their mean w. Round t, S_t the m sampled clients:

1. v_k <- v_k - eta * grad[ f_k(v_k) + (lambda/2) ||v_k - w_t||^2 ]   for E epochs, k in S_t
2. w_t+1 = sum_{k in S_t} n_k v_k / sum_{k in S_t} n_k      (the mean of the personal models)

The personal step is Ditto's; unlike Ditto there is no separately trained global model, the
server averages the personal models themselves (lambda = ``mrmtl_lambda``; lambda = 0 is
local-only training, lambda -> infinity FedAvg with one local step). Every v_k starts as w_0.
Evaluation as Ditto: personal (``client_acc``) and mean model (``global_client_acc``,
``test_acc``). Faults: dropout (a dropped v_k is kept but not averaged), stragglers, label flipping.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxfl.algorithms.ditto import personal_evaluation, personal_update
from jaxfl.configs.personalization import MRMTLConfig
from jaxfl.configs.specs import SPECS
from jaxfl.core import aggregate, hooks, train
from jaxfl.core.algorithm import (
    RoundParts,
    client_inputs,
    communication,
    gather,
    make_algorithm,
    sample_clients,
    scatter,
)
from jaxfl.data.federation import Federation
from jaxfl.mechanisms import faults
from jaxfl.mechanisms.personalization import broadcast_clients
from jaxfl.models import Model

SPEC = SPECS["mrmtl"]  # its config and capabilities (jaxfl.configs.specs)


@struct.dataclass
class MRMTLState:
    mean_params: Any  # w, the mean of the personal models
    personal_params: Any  # (C, ...) v
    round: jax.Array


def make(
    config: MRMTLConfig,
    data: Federation,
    model: Model,
    *,
    fault_config: faults.FaultConfig | None = None,
    seed: int = 0,
    select_clients=sample_clients,
    client_optimizer: hooks.OptimizerArg | None = None,
):
    """Bind MR-MTL to a federation and a model; returns a FederatedAlgorithm.

    ``client_optimizer`` (the personal step's SGD, ``--lr``): optax transformations (or functions of
    the config) replacing the flags' optimizers (:func:`jaxfl.core.hooks.optimizer`).
    """
    m = config.clients_per_round or data.num_clients
    fault_config, adversary = faults.setup(fault_config, SPEC.attacks, m, data.num_clients, seed)
    opt = hooks.optimizer(client_optimizer, config, lambda: optax.sgd(config.lr))
    local = (config.batch_size, config.local_epochs)

    def init(key):
        params = model.init(key)
        return MRMTLState(
            params, broadcast_clients(params, data.num_clients), jnp.zeros((), jnp.int32)
        )

    def prepare(state, key, data):
        k_sample, k_clients = jax.random.split(key)
        sampled = select_clients(k_sample, data.num_clients, m)
        received, work = faults.round_faults(key, m, fault_config)
        client_args = client_inputs(
            sampled,
            jax.random.split(k_clients, m),
            work,
            data,
            adversary,
            gather(state.personal_params, sampled),
        )
        ctx = (sampled, data.client_count[sampled], received)
        return (data, state.mean_params), client_args, ctx

    def client_update(shared, personal, client):
        data, mean_params = shared
        label_map, max_steps = faults.local_training_faults(
            fault_config, data.num_classes, client, *local
        )
        base = train.client_data_loss(
            model.apply, data.train_x, data.train_y, client.idx_row, label_map
        )
        personal, loss, _, penalty = personal_update(
            base,
            opt,
            personal,
            mean_params,
            config.mrmtl_lambda,
            client.key,
            client.count,
            data.capacity,
            *local,
            max_steps,
        )
        return personal, loss, penalty

    def finish(state, ctx, outputs, data):
        sampled, counts, received = ctx
        personal, losses, penalties = outputs
        applied = faults.applied(received, fault_config.min_received)
        mean_params = aggregate.weighted_mean(personal, counts * received)
        new_state = MRMTLState(
            mean_params, scatter(state.personal_params, sampled, personal), state.round + 1
        )
        return new_state, {
            "personal_loss": jnp.sum(losses * counts) / jnp.sum(counts),  # the data loss
            "personal_penalty": jnp.sum(penalties * counts) / jnp.sum(counts),
            "received": jnp.sum(received),
            "applied": applied,
        }

    def evaluate(state, data):
        return personal_evaluation(
            model.apply, state.personal_params, state.mean_params, data, config.client_chunk
        )

    floats = model.num_params
    return make_algorithm(
        "mrmtl",
        # a round not applied keeps the mean; the personal models advance (trained locally)
        RoundParts(prepare, client_update, finish, server_state=("mean_params",)),
        init,
        evaluate,
        data,
        clients_per_round=m,
        client_chunk=config.client_chunk,
        communication=communication(floats, floats),
    )
