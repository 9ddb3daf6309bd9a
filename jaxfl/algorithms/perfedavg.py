"""Per-FedAvg, first-order (Fallah, Mokhtari, Ozdaglar, NeurIPS 2020): FedAvg on the MAML
objective, the meta-learning representative among Motley's baselines.

The global model w is trained for  F(w) = (1/n) sum_k f_k(w - alpha grad f_k(w)),  a model that
is good *after one personal gradient step*. Each local step on client k, with a minibatch split
into two halves D and D':

    w_tmp = w - alpha grad f_k(w; D)                      (inner step, lr alpha = ``meta_lr``)
    w     = w - beta  grad f_k(w_tmp; D')                  (outer step, lr beta = ``lr``)

(first-order: the Hessian term of the exact MAML gradient is dropped). The server aggregates as
FedAvg: w_t+1 = w_t + ServerOpt(-sum_k n_k (w_k - w_t) / sum_k n_k). Evaluation personalizes:
each client takes ``personal_steps`` full-batch gradient steps of lr alpha from w on its own
training split and is scored on its test split (``client_acc``); the unadapted w gives
``global_client_acc`` and ``test_acc``. Faults: dropout, stragglers, label flipping. With
``--dp-clip``/``--dp-noise`` the server's mean is DP-FedAvg's private mean
(:mod:`jaxfl.mechanisms.uploads`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxfl.algorithms.fedavg import SERVER_STATE, flag_server_optimizer, server_update
from jaxfl.configs.personalization import PerFedAvgConfig
from jaxfl.configs.specs import SPECS
from jaxfl.core import hooks, hparams, metrics, train
from jaxfl.core.algorithm import (
    RoundParts,
    client_inputs,
    communication,
    make_algorithm,
    sample_clients,
)
from jaxfl.data.federation import Federation
from jaxfl.mechanisms import faults
from jaxfl.mechanisms.personalization import adapt_and_score
from jaxfl.mechanisms.uploads import upload_mean
from jaxfl.models import Model

SPEC = SPECS["perfedavg"]  # its config and capabilities (jaxfl.configs.specs)


@struct.dataclass
class PerFedAvgState:
    params: Any
    opt_state: Any
    round: jax.Array
    upload_state: Any = None  # the upload mean's (jaxfl.mechanisms.uploads): C_t with --dp-clip


def meta_loss(base_loss, alpha: float):
    """First-order MAML loss over a minibatch split in halves: ``loss(params, positions, mask)``.

    Its value is f(w_tmp; D') and its gradient with respect to ``params`` is grad f(w_tmp; D'),
    w_tmp = w - alpha grad f(w; D): ``params + stop_gradient(w_tmp - params)`` has the value
    w_tmp and an identity Jacobian.

    Args:
      base_loss: ``(params, positions (b,), mask (b,)) -> scalar`` masked mean loss.
      alpha: the inner learning rate.
    """

    def loss(params, positions, mask):
        half = positions.shape[0] // 2
        inner_grads = jax.grad(base_loss)(params, positions[:half], mask[:half])
        w_tmp = jax.tree.map(lambda w, g: w - alpha * g, params, inner_grads)
        shifted = jax.tree.map(lambda w, t: w + jax.lax.stop_gradient(t - w), params, w_tmp)
        return base_loss(shifted, positions[half:], mask[half:])

    return loss


def make(
    config: PerFedAvgConfig,
    data: Federation,
    model: Model,
    *,
    fault_config: faults.FaultConfig | None = None,
    seed: int = 0,
    select_clients=sample_clients,
    client_optimizer: hooks.OptimizerArg | None = None,
    server_optimizer: hooks.OptimizerArg | None = None,
):
    """Bind Per-FedAvg (FO) to a federation and a model; returns a FederatedAlgorithm.

    ``client_optimizer`` (the outer step, ``--lr``) and ``server_optimizer`` (``--server-opt``):
    optax transformations (or functions of the config) replacing the flags' optimizers
    (:func:`jaxfl.core.hooks.optimizer`).
    """
    m = config.clients_per_round or data.num_clients
    fault_config, adversary = faults.setup(fault_config, SPEC.attacks, m, data.num_clients, seed)
    uploads = upload_mean(config, m)  # the updates' weighted mean, or the private one
    if config.batch_size < 2:
        raise ValueError(
            f"--batch-size {config.batch_size} is not allowed for --algo perfedavg; allowed: >= 2 "
            "(each batch is split into an inner and an outer half)"
        )
    alpha = hparams.given(config.meta_lr, config.lr)
    server_opt = hooks.optimizer(server_optimizer, config, lambda: flag_server_optimizer(config))
    opt = hooks.optimizer(client_optimizer, config, lambda: optax.sgd(config.lr))
    local = (config.batch_size, config.local_epochs)

    def init(key):
        params = model.init(key)
        return PerFedAvgState(
            params, server_opt.init(params), jnp.zeros((), jnp.int32), uploads.init()
        )

    def prepare(state, key, data):
        k_sample, k_clients = jax.random.split(key)
        sampled = select_clients(k_sample, data.num_clients, m)
        received, work = faults.round_faults(key, m, fault_config)
        client_args = client_inputs(sampled, jax.random.split(k_clients, m), work, data, adversary)
        ctx = (data.client_count[sampled], received, hooks.round_key(key))
        return (data, state.params), client_args, ctx

    def client_update(shared, client):
        data, global_params = shared
        label_map, max_steps = faults.local_training_faults(
            fault_config, data.num_classes, client, *local
        )
        base = train.client_data_loss(
            model.apply, data.train_x, data.train_y, client.idx_row, label_map
        )
        params, loss, *_ = train.sgd_epochs(
            meta_loss(base, alpha),
            opt,
            global_params,
            client.key,
            client.count,
            data.capacity,
            *local,
            max_steps,
        )
        return jax.tree.map(jnp.subtract, params, global_params), loss

    def finish(state, ctx, outputs, data):
        counts, received, hook_key = ctx
        deltas, losses = outputs
        applied = faults.applied(received, fault_config.min_received)
        mean_delta, upload_state, upload_metrics = uploads.mean(
            deltas, counts * received, received, state.upload_state, hook_key
        )
        params, opt_state = server_update(server_opt, state.params, state.opt_state, mean_delta)
        return PerFedAvgState(params, opt_state, state.round + 1, upload_state), {
            "meta_loss": jnp.sum(losses * counts) / jnp.sum(counts),
            "received": jnp.sum(received),
            "applied": applied,
            **upload_metrics,
        }

    def evaluate(state, data):
        chunk = config.client_chunk
        return {
            "test_acc": metrics.global_test_accuracy(model.apply, state.params, data),
            "client_acc": adapt_and_score(
                model.apply,
                state.params,
                data,
                steps=config.personal_steps,
                lr=alpha,
                chunk_size=chunk,
            ),
            "global_client_acc": metrics.per_client_accuracy(
                model.apply, state.params, data, personal=False, chunk_size=chunk
            ),
        }

    floats = model.num_params
    return make_algorithm(
        "perfedavg",
        RoundParts(prepare, client_update, finish, server_state=SERVER_STATE),
        init,
        evaluate,
        data,
        clients_per_round=m,
        client_chunk=config.client_chunk,
        communication=communication(floats, floats),
    )
