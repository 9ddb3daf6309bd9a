"""Ditto (Li, Hu, Beirami, Smith, ICML 2021): a global FedAvg model plus personal models tied to it.

Round t, with w_t the global model, S_t the m sampled clients and n_k client k's sample count:

1. global update, as FedAvg:  w_k = LocalSGD_k(w_t; E epochs)  and
   w_t+1 = w_t + ServerOpt(-sum_k n_k (w_k - w_t) / sum_k n_k)
2. personal update, ``personal_epochs`` epochs of minibatch SGD with lr ``personal_lr``:
   v_k <- v_k - eta_p * grad[ f_k(v_k) + (lambda/2) ||v_k - w_t||^2 ]          (k in S_t)

lambda = ``ditto_lambda``: 0 gives local-only personal models, large lambda pulls them to the
global model. Every v_k starts as w_0. Clients not sampled keep v_k. Evaluation: each client's
personal model on its own test split (``client_acc``), the global model on the same splits
(``global_client_acc``) and on the global test set (``test_acc``). Faults: dropout (a dropped
client's w_k is lost, its v_k kept), stragglers (both updates take fewer steps), label flipping.
With ``--dp-clip``/``--dp-noise`` step 1's mean is DP-FedAvg's private mean
(:mod:`jaxfl.mechanisms.uploads`): only w_k - w_t leaves a client; v_k never does.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxfl.algorithms.fedavg import SERVER_STATE, flag_server_optimizer, server_update
from jaxfl.configs.personalization import DittoConfig
from jaxfl.configs.specs import SPECS
from jaxfl.core import hooks, hparams, metrics, train
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
from jaxfl.mechanisms.uploads import upload_mean
from jaxfl.models import Model

SPEC = SPECS["ditto"]  # its config and capabilities (jaxfl.configs.specs)


@struct.dataclass
class DittoState:
    params: Any  # global model w
    opt_state: Any  # server optimizer state
    personal_params: Any  # (C, ...) personal models v
    round: jax.Array
    upload_state: Any = None  # the upload mean's (jaxfl.mechanisms.uploads): C_t with --dp-clip


def personal_update(
    base_loss,
    optimizer,
    personal,
    anchor,
    lam: float,
    key,
    count,
    capacity,
    batch_size,
    epochs,
    max_steps=None,
):
    """Ditto's (and MR-MTL's) personal step: ``epochs`` of minibatch SGD on
    f_k(v) + (lam/2)||v - anchor||^2.

    Args:
      base_loss: ``(params, positions, mask) -> scalar``, f_k on a minibatch.
      optimizer: the personal optimizer (SGD with lr eta_p).
      personal: v_k, one client's personal parameters.
      anchor: the global model w_t (Ditto) or the mean of the personal models (MR-MTL).
      lam: lambda.
      key, count, capacity, batch_size, epochs, max_steps: as :func:`jaxfl.core.train.sgd_epochs`.

    Returns a :class:`jaxfl.core.train.Trained`: v_k, the mean data loss f_k, the steps taken and
    the mean proximal term.
    """
    prox = lambda p: train.prox_term(p, anchor, lam)
    return train.sgd_epochs(
        base_loss, optimizer, personal, key, count, capacity, batch_size, epochs, max_steps, prox
    )


def make(
    config: DittoConfig,
    data: Federation,
    model: Model,
    *,
    fault_config: faults.FaultConfig | None = None,
    seed: int = 0,
    select_clients=sample_clients,
    client_optimizer: hooks.OptimizerArg | None = None,
    server_optimizer: hooks.OptimizerArg | None = None,
    personal_optimizer: hooks.OptimizerArg | None = None,
):
    """Bind Ditto to a federation and a model; returns a FederatedAlgorithm.

    ``client_optimizer`` (the global model's local SGD, ``--lr``), ``server_optimizer``
    (``--server-opt``) and ``personal_optimizer`` (v_k's SGD, ``--personal-lr``): optax
    transformations (or functions of the config) replacing the flags' optimizers
    (:func:`jaxfl.core.hooks.optimizer`).
    """
    m = config.clients_per_round or data.num_clients
    fault_config, adversary = faults.setup(fault_config, SPEC.attacks, m, data.num_clients, seed)
    uploads = upload_mean(config, m)  # the updates' weighted mean, or the private one
    server_opt = hooks.optimizer(server_optimizer, config, lambda: flag_server_optimizer(config))
    opt = hooks.optimizer(client_optimizer, config, lambda: optax.sgd(config.lr))
    personal_opt = hooks.optimizer(
        personal_optimizer,
        config,
        lambda: optax.sgd(hparams.given(config.personal_lr, config.lr)),
    )
    personal_epochs = config.personal_epochs or config.local_epochs
    B = config.batch_size

    def init(key):
        params = model.init(key)
        return DittoState(
            params,
            server_opt.init(params),
            broadcast_clients(params, data.num_clients),
            jnp.zeros((), jnp.int32),
            uploads.init(),
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
        ctx = (sampled, data.client_count[sampled], received, hooks.round_key(key))
        return (data, state.params), client_args, ctx

    def client_update(shared, personal, client):
        data, global_params = shared
        k_global, k_personal = jax.random.split(client.key)
        label_map, max_steps = faults.local_training_faults(
            fault_config, data.num_classes, client, B, config.local_epochs
        )
        params, loss, *_ = train.local_sgd(
            model.apply,
            data,
            global_params,
            k_global,
            client.idx_row,
            client.count,
            opt,
            B,
            config.local_epochs,
            label_map=label_map,
            max_steps=max_steps,
        )
        _, personal_steps = faults.local_training_faults(
            fault_config, data.num_classes, client, B, personal_epochs
        )
        base = train.client_data_loss(
            model.apply, data.train_x, data.train_y, client.idx_row, label_map
        )
        personal, personal_loss, _, personal_penalty = personal_update(
            base,
            personal_opt,
            personal,
            global_params,
            config.ditto_lambda,
            k_personal,
            client.count,
            data.capacity,
            B,
            personal_epochs,
            personal_steps,
        )
        delta = jax.tree.map(jnp.subtract, params, global_params)
        return delta, personal, loss, personal_loss, personal_penalty

    def finish(state, ctx, outputs, data):
        sampled, counts, received, hook_key = ctx
        deltas, personal, losses, personal_losses, personal_penalties = outputs
        applied = faults.applied(received, fault_config.min_received)
        mean_delta, upload_state, upload_metrics = uploads.mean(
            deltas, counts * received, received, state.upload_state, hook_key
        )
        params, opt_state = server_update(server_opt, state.params, state.opt_state, mean_delta)
        new_state = DittoState(
            params,
            opt_state,
            scatter(state.personal_params, sampled, personal),
            state.round + 1,
            upload_state,
        )
        weights = counts / jnp.sum(counts)
        return new_state, {
            "train_loss": jnp.sum(losses * weights),
            "personal_loss": jnp.sum(personal_losses * weights),  # f_k(v_k), the data loss
            "personal_penalty": jnp.sum(personal_penalties * weights),  # (lam/2)||v_k - w_t||^2
            "received": jnp.sum(received),
            "applied": applied,
            **upload_metrics,
        }

    def evaluate(state, data):
        return personal_evaluation(
            model.apply, state.personal_params, state.params, data, config.client_chunk
        )

    floats = model.num_params
    return make_algorithm(
        "ditto",
        RoundParts(prepare, client_update, finish, server_state=SERVER_STATE),
        init,
        evaluate,
        data,
        clients_per_round=m,
        client_chunk=config.client_chunk,
        communication=communication(floats, floats),
    )


def personal_evaluation(apply, personal_params, global_params, data, chunk_size):
    """Personal models on each client's test split, the global model on the same and on the
    global test set."""
    return {
        "test_acc": metrics.global_test_accuracy(apply, global_params, data),
        "client_acc": metrics.per_client_accuracy(
            apply, personal_params, data, personal=True, chunk_size=chunk_size
        ),
        "global_client_acc": metrics.per_client_accuracy(
            apply, global_params, data, personal=False, chunk_size=chunk_size
        ),
    }
