"""Local-only training: every client trains alone (Motley's reference for personalization).

Round t, with S_t the m sampled clients: each k in S_t runs E epochs of SGD on its own data,

    v_k <- LocalSGD_k(v_k; E epochs, batch B, lr eta)          for k in S_t,

and nothing is communicated. Every client starts from the same initial model (the one every
other algorithm starts from with the same seed), so round-0 accuracies agree across algorithms.
A personalized method should beat this baseline client by client; ``--compare-local`` in
scripts/run.py reports the fraction of clients that do not (Motley, Wu et al. 2022). Faults:
stragglers (fewer local steps) and label flipping; dropout is meaningless without uploads.

With ``--models`` (clients with different architectures, :mod:`jaxfl.mechanisms.groups`) each
group's clients start from their group's one initial model and train alone: the local-only
reference of the heterogeneous algorithms (FCCL's "be yourself" without "learning from others").
Evaluation reports ``client_acc`` (C,) on each client's own test split and ``others_acc_mean``,
every client's model on the global test set (every domain's, with ``--domains``), as FCCL does.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxfl.configs.personalization import LocalConfig
from jaxfl.configs.specs import SPECS
from jaxfl.core import hooks, hparams, train
from jaxfl.core.algorithm import RoundParts, communication, make_algorithm, sample_clients
from jaxfl.data.federation import Federation
from jaxfl.mechanisms import faults, groups
from jaxfl.mechanisms.personalization import broadcast_clients
from jaxfl.models import Model

SPEC = SPECS["local"]  # its config and capabilities (jaxfl.configs.specs)


@struct.dataclass
class LocalState:
    client_params: Any  # per model group, (group size, ...) every client's own model
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
    replacing the flags' optimizers (:func:`jaxfl.core.hooks.optimizer`).
    """
    m_total = config.clients_per_round or data.num_clients
    model_groups = groups.as_groups(model, data.num_clients, m_total)
    m = sum(g.per_round for g in model_groups)
    fault_config, adversary = faults.setup(fault_config, SPEC.attacks, m, data.num_clients, seed)
    if hparams.is_traced(fault_config.dropout) or fault_config.dropout > 0:
        raise ValueError("--dropout is not allowed for --algo local: local-only uploads nothing")
    opt = hooks.optimizer(client_optimizer, config, lambda: optax.sgd(config.lr))
    local = (config.batch_size, config.local_epochs)

    def init(key):
        """Every client of a group starts from its group's one initial model."""
        keys = [key] if len(model_groups) == 1 else jax.random.split(key, len(model_groups))
        params = tuple(
            broadcast_clients(g.model.init(k), g.size)
            for g, k in zip(model_groups, keys, strict=True)
        )
        return LocalState(params, jnp.zeros((), jnp.int32))

    def prepare(state, key, data):
        k_sample, k_clients = jax.random.split(key)
        sampled = groups.sample_groups(k_sample, model_groups, select_clients)
        _, work = faults.round_faults(key, m, fault_config)
        client_args = groups.client_inputs(
            model_groups,
            sampled,
            jax.random.split(k_clients, m),
            work,
            data,
            adversary,
            groups.gather_rows(state.client_params, model_groups, sampled),
        )
        counts = data.client_count[jnp.concatenate(sampled)]
        return data, client_args, (sampled, counts)

    def update_for(g):
        def client_update(data, params, client):
            label_map, max_steps = faults.local_training_faults(
                fault_config, data.num_classes, client, *local
            )
            trained = train.local_sgd(
                g.model.apply,
                data,
                params,
                client.key,
                client.idx_row,
                client.count,
                opt,
                *local,
                label_map=label_map,
                max_steps=max_steps,
            )
            return trained.params, trained.loss

        return client_update

    def finish(state, ctx, outputs, data):
        sampled, counts = ctx
        client_params = groups.scatter_rows(
            state.client_params, model_groups, sampled, [out[0] for out in outputs]
        )
        losses = jnp.concatenate([out[1] for out in outputs])
        new_state = LocalState(client_params, state.round + 1)
        return new_state, {"train_loss": jnp.sum(losses * counts) / jnp.sum(counts)}

    def evaluate(state, data):
        return groups.personal_metrics(model_groups, state.client_params, data, config.client_chunk)

    return make_algorithm(
        "local",
        RoundParts(prepare, tuple(update_for(g) for g in model_groups), finish, grouped=True),
        init,
        evaluate,
        data,
        clients_per_round=m,
        client_chunk=config.client_chunk,
        communication=communication(0, 0),
    )
