"""HypCluster (Mansour et al. 2020, "Three approaches for personalization with applications to
federated learning") / IFCA (Ghosh et al., NeurIPS 2020): k cluster models, each client served
by the one that fits its data best.

Round t, with cluster models h_1..h_K, S_t the m sampled clients and n_k the sample counts:

1. each k in S_t picks  j_k = argmin_j F_k(h_j)   (mean cross-entropy on its training split);
   during warm-up (the first ``cluster_warmup`` fraction of the rounds) j_k is uniform at random
2. k trains h_{j_k} locally:  h_k' = LocalSGD_k(h_{j_k}; E epochs)
3. each cluster j averages the updates of the clients that chose it:
   h_j <- h_j + sum_{k: j_k = j} n_k (h_k' - h_{j_k}) / sum_{k: j_k = j} n_k
   (a cluster nobody chose keeps its model)

Cluster models start from K independent initialisations (IFCA's symmetry breaking). Warm-up
with random assignment is my choice where the issue asks for "optional warm start": every
cluster model first trains as FedAvg on a random half of the updates, so none is starved when
the loss-based choice starts. Motley uses K = 2 (``--num-clusters``). Evaluation: each client
takes the cluster model with the lowest loss on its training split and is scored on its test
split (``client_acc``); ``cluster_frac_j`` is the fraction of clients choosing cluster j.
Faults: dropout (a dropped update is not averaged), stragglers, label flipping.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxfl.configs.personalization import HypClusterConfig
from jaxfl.configs.specs import SPECS
from jaxfl.core import hooks, train
from jaxfl.core.algorithm import (
    RoundParts,
    client_inputs,
    communication,
    make_algorithm,
    sample_clients,
)
from jaxfl.core.client_axis import map_clients
from jaxfl.data.federation import Federation
from jaxfl.mechanisms import faults
from jaxfl.models import Model

SPEC = SPECS["hypcluster"]  # its config and capabilities (jaxfl.configs.specs)


# float flags that fix shapes (a fraction that becomes a count): a sweep compiles a group
# per value (jaxfl.core.hparams)


@struct.dataclass
class HypClusterState:
    cluster_params: Any  # (K, ...) the cluster models
    round: jax.Array


def cluster_losses(apply, cluster_params, x, y, idx_row, count) -> jax.Array:
    """(K,) mean cross-entropy of every cluster model on one client's split."""
    return jax.vmap(lambda p: train.client_loss(apply, p, x, y, idx_row, count))(cluster_params)


def cluster_update(cluster_params, deltas, choice: jax.Array, weights: jax.Array):
    """h_j + weighted mean of the deltas of the clients that chose j; unchosen clusters unchanged.

    Args:
      cluster_params: leaves (K, ...).
      deltas: leaves (m, ...), each client's h_k' - h_{j_k}.
      choice: (m,) int cluster of each client.
      weights: (m,) client weights (sample count, 0 when its upload was lost).
    """
    k = jax.tree.leaves(cluster_params)[0].shape[0]
    w = jax.nn.one_hot(choice, k) * weights[:, None].astype(jnp.float32)  # (m, K)
    total = jnp.sum(w, 0)  # (K,)
    coef = w / jnp.maximum(total, 1e-30)

    def leaf(h, d):
        mean = jnp.tensordot(coef.T, d, axes=1)  # (K, ...)
        return h + mean.astype(h.dtype)

    return jax.tree.map(leaf, cluster_params, deltas)


def make(
    config: HypClusterConfig,
    data: Federation,
    model: Model,
    *,
    fault_config: faults.FaultConfig | None = None,
    seed: int = 0,
    select_clients=sample_clients,
    client_optimizer: hooks.OptimizerArg | None = None,
):
    """Bind HypCluster to a federation and a model; returns a FederatedAlgorithm.

    ``client_optimizer`` (``--lr``'s SGD): optax transformations (or functions of the config)
    replacing the flags' optimizers (:func:`jaxfl.core.hooks.optimizer`).
    """
    m = config.clients_per_round or data.num_clients
    fault_config, adversary = faults.setup(fault_config, SPEC.attacks, m, data.num_clients, seed)
    K = config.num_clusters
    warmup_rounds = int(round(config.cluster_warmup * config.rounds))
    opt = hooks.optimizer(client_optimizer, config, lambda: optax.sgd(config.lr))
    local = (config.batch_size, config.local_epochs)

    def init(key):
        return HypClusterState(
            jax.vmap(model.init)(jax.random.split(key, K)), jnp.zeros((), jnp.int32)
        )

    def prepare(state, key, data):
        k_sample, k_clients, k_assign = jax.random.split(key, 3)
        sampled = select_clients(k_sample, data.num_clients, m)
        received, work = faults.round_faults(key, m, fault_config)
        random_choice = jax.random.randint(k_assign, (m,), 0, K)
        client_args = (
            *client_inputs(sampled, jax.random.split(k_clients, m), work, data, adversary),
            random_choice,
        )
        shared = (data, state.cluster_params, state.round < warmup_rounds)
        return shared, client_args, (data.client_count[sampled], received)

    def client_update(shared, client, random_choice):
        data, cluster_params, warm = shared
        losses = cluster_losses(
            model.apply, cluster_params, data.train_x, data.train_y, client.idx_row, client.count
        )
        choice = jnp.where(warm, random_choice, jnp.argmin(losses)).astype(jnp.int32)
        start = jax.tree.map(lambda h: h[choice], cluster_params)
        label_map, max_steps = faults.local_training_faults(
            fault_config, data.num_classes, client, *local
        )
        params, loss, *_ = train.local_sgd(
            model.apply,
            data,
            start,
            client.key,
            client.idx_row,
            client.count,
            opt,
            *local,
            label_map=label_map,
            max_steps=max_steps,
        )
        return jax.tree.map(jnp.subtract, params, start), choice, loss

    def finish(state, ctx, outputs, data):
        counts, received = ctx
        deltas, choice, losses = outputs
        applied = faults.applied(received, fault_config.min_received)
        updated = cluster_update(state.cluster_params, deltas, choice, counts * received)
        new_state = HypClusterState(updated, state.round + 1)
        frac = jnp.mean(jax.nn.one_hot(choice, K), 0)
        return new_state, {
            "train_loss": jnp.sum(losses * counts) / jnp.sum(counts),
            "received": jnp.sum(received),
            "applied": applied,
            **{f"round_cluster_frac_{j}": frac[j] for j in range(K)},
        }

    def evaluate(state, data):
        choice = assign_clusters(model.apply, state.cluster_params, data, config.client_chunk)
        test_x, test_y = data.test_x, data.test_y

        def one_client(j, idx_row, count):
            params = jax.tree.map(lambda h: h[j], state.cluster_params)
            return train.client_accuracy(model.apply, params, test_x, test_y, idx_row, count)

        client_acc = map_clients(
            one_client,
            choice,
            data.client_test_idx,
            data.client_test_count,
            chunk_size=config.client_chunk,
        )
        frac = jnp.mean(jax.nn.one_hot(choice, K), 0)
        return {"client_acc": client_acc, **{f"cluster_frac_{j}": frac[j] for j in range(K)}}

    floats = model.num_params
    return make_algorithm(
        "hypcluster",
        RoundParts(prepare, client_update, finish, server_state=("cluster_params",)),
        init,
        evaluate,
        data,
        clients_per_round=m,
        client_chunk=config.client_chunk,
        # down: all K cluster models (the client picks); up: the update of the one it trained
        communication=communication(floats, K * floats),
    )


def assign_clusters(apply, cluster_params, data: Federation, chunk_size=None) -> jax.Array:
    """(C,) int: each client's cluster, the model with the lowest loss on its training split."""

    def one_client(idx_row, count):
        losses = cluster_losses(apply, cluster_params, data.train_x, data.train_y, idx_row, count)
        return jnp.argmin(losses).astype(jnp.int32)

    return map_clients(one_client, data.client_idx, data.client_count, chunk_size=chunk_size)
