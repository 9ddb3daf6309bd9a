"""Local-only training: every client trains alone (Motley's reference for personalization).

Round t, with S_t the m sampled clients: each k in S_t runs E epochs of SGD on its own data,

    v_k <- LocalSGD_k(v_k; E epochs, batch B, lr eta)          for k in S_t,

and nothing is communicated. Every client starts from the same initial model (the one every
other algorithm starts from with the same seed), so round-0 accuracies agree across algorithms.
A personalized method should beat this baseline client by client; ``--compare-local`` in
scripts/run.py reports the fraction of clients that do not (Motley, Wu et al. 2022). Faults:
stragglers (fewer local steps) and label flipping; dropout is meaningless without uploads.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxfl import faults, hooks, hparams, metrics, train
from jaxfl.algorithm import (
    RoundParts,
    client_inputs,
    communication,
    gather,
    make_algorithm,
    sample_clients,
    scatter,
)
from jaxfl.data.federation import Federation
from jaxfl.models import Model
from jaxfl.personal import broadcast_clients

ATTACKS = ("label_flip",)
GLOBAL_MODEL = False  # no global model: no test_acc; run.py watches client_acc_mean


@dataclasses.dataclass(frozen=True)
class LocalConfig:
    clients_per_round: int | None = None  # None: all clients
    local_epochs: int = 1
    batch_size: int = 50
    lr: float = 0.1
    client_chunk: int | None = None


CONFIG = LocalConfig
VALIDATION_FRACTION = 0.1  # the default --client-val-fraction of the personalization algorithms


@struct.dataclass
class LocalState:
    client_params: Any  # (C, ...) every client's own model
    round: jax.Array  # () int32


def make(
    config: LocalConfig,
    data: Federation,
    model: Model,
    *,
    fault_config: faults.FaultConfig | None = None,
    seed: int = 0,
    select_clients=sample_clients,
    client_optimizer: hooks.OptimizerArg | None = None,
):
    """Bind local-only training to a federation and a model; returns a FederatedAlgorithm.

    ``client_optimizer`` (``--lr``'s SGD): optax transformations (or functions of the config)
    replacing the flags' optimizers (:func:`jaxfl.hooks.optimizer`).
    """
    m = config.clients_per_round or data.num_clients
    fault_config, adversary = faults.setup(fault_config, ATTACKS, m, data.num_clients, seed)
    if hparams.is_traced(fault_config.dropout) or fault_config.dropout > 0:
        raise ValueError("--dropout is not allowed for --algo local: local-only uploads nothing")
    opt = hooks.optimizer(client_optimizer, config, lambda: optax.sgd(config.lr))
    local = (config.batch_size, config.local_epochs)

    def init(key):
        return LocalState(
            broadcast_clients(model.init(key), data.num_clients), jnp.zeros((), jnp.int32)
        )

    def prepare(state, key, data):
        k_sample, k_clients = jax.random.split(key)
        sampled = select_clients(k_sample, data.num_clients, m)
        _, work = faults.round_faults(key, m, fault_config)
        client_args = client_inputs(
            sampled,
            jax.random.split(k_clients, m),
            work,
            data,
            adversary,
            gather(state.client_params, sampled),
        )
        return data, client_args, (sampled, data.client_count[sampled])

    def client_update(data, params, key, idx_row, count, work, is_adversary):
        label_map, max_steps = faults.local_training_faults(
            fault_config, data.num_classes, is_adversary, work, count, *local
        )
        trained = train.private_sgd(
            model.apply,
            data,
            params,
            key,
            idx_row,
            count,
            opt,
            *local,
            label_map=label_map,
            max_steps=max_steps,
        )
        return trained.params, trained.loss

    def finish(state, ctx, outputs, data):
        sampled, counts = ctx
        client_params, losses = outputs
        new_state = LocalState(
            scatter(state.client_params, sampled, client_params), state.round + 1
        )
        return new_state, {"train_loss": jnp.sum(losses * counts) / jnp.sum(counts)}

    def evaluate(state, data):
        return {
            "client_acc": metrics.per_client_accuracy(
                model.apply,
                state.client_params,
                data,
                personal=True,
                chunk_size=config.client_chunk,
            )
        }

    return make_algorithm(
        "local",
        RoundParts(prepare, client_update, finish),
        init,
        evaluate,
        data,
        clients_per_round=m,
        client_chunk=config.client_chunk,
        communication=communication(0, 0),
    )
