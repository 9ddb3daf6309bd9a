"""FD, federated distillation (Jeong et al. 2018, "Communication-efficient on-device machine
learning: federated distillation and augmentation under non-IID private data").

Clients keep their own models (of any architecture: ``--models``) and exchange only per-label
mean logits; no public data. Round t, S_t the m sampled clients, L labels:

1. each k in S_t trains on its private data for E epochs with
       loss = CE(y, f_k(x)) + beta * KL(softmax(G_t[y]) || softmax(f_k(x)))
   (the KL term only for labels that G_t has a row for), and meanwhile accumulates, per label
   l, the mean T_k[l] of the logits f_k(x) its training steps produced on its samples of label
   l (the logits of the step, before its update). It uploads T_k (L x L) and which labels it
   holds.
2. the server averages per label over the received clients that hold it:
       G_t+1[l] = sum_{k holds l} T_k[l] / #{k holds l};
   a label nobody in S_t holds keeps its previous row (or stays without one).

Private tables (``--dp-clip S --dp-noise z``, :mod:`jaxfl.mechanisms.uploads`): step 2 uses the
noised sums and noised holder counts of :func:`private_tables` (logits are unbounded: the clip S
bounds what one client can move).

beta = ``fd_beta``. Communication: L x L floats up and down per client. Evaluation: each
client's own model on its own test split (``client_acc``); there is no global model. Faults:
dropout (a lost table is not averaged), stragglers (fewer local steps), label flipping.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxfl.configs.distillation import FDConfig
from jaxfl.configs.specs import SPECS
from jaxfl.core import hooks, train
from jaxfl.core.algorithm import RoundParts, communication, make_algorithm, sample_clients
from jaxfl.data.federation import Federation
from jaxfl.mechanisms import faults, groups
from jaxfl.mechanisms.uploads import UploadMean, upload_mean

SPEC = SPECS["fd"]  # its config and capabilities (jaxfl.configs.specs)


@struct.dataclass
class FDState:
    client_params: tuple  # per model group, (C_g, ...) client models
    global_logits: jax.Array  # (L, L) G_t: row l is the mean logit vector of label l
    has_row: jax.Array  # (L,) bool: G_t[l] has been set
    round: jax.Array
    upload_state: Any = None  # the upload mean's (jaxfl.mechanisms.uploads): C_t with --dp-clip


def aggregate_tables(tables, holds, received, previous, previous_has_row):
    """G_t+1 from the clients' tables.

    Args:
      tables: (m, L, L) each client's per-label mean logits T_k.
      holds: (m, L) bool, client k had samples of label l this round.
      received: (m,) bool, its upload arrived.
      previous: (L, L) G_t; previous_has_row: (L,) bool.

    Returns:
      (G_t+1 (L, L), has_row (L,)).
    """
    w = (holds & received[:, None]).astype(jnp.float32)  # (m, L)
    n = jnp.sum(w, 0)  # (L,) holders per label
    mean = jnp.einsum("ml,mlc->lc", w, tables) / jnp.maximum(n, 1.0)[:, None]
    fresh = n > 0
    return jnp.where(fresh[:, None], mean, previous), previous_has_row | fresh


def private_tables(
    tables, holds, received, previous, previous_has_row, uploads: UploadMean, state, hook_key
):  # fmt: skip
    """G_t+1 from the clients' tables under DP (:mod:`jaxfl.mechanisms.uploads`).

    Each client's upload is the pair (T_k with the rows of labels it does not hold zeroed,
    holds_k as 0/1), clipped to norm C_t as ONE vector and summed over the received clients with
    Gaussian noise: the per-label sums and holder counts are both released privately, and
    G_t+1[l] = noised sum[l] / noised count[l] where the noised count is at least 1/2.
    Arguments as :func:`aggregate_tables`, plus the private upload mean, its state and the
    round's hook key; returns (G_t+1, has_row, new upload-mean
    state, its metrics).
    """
    m = holds.shape[0]
    w = holds.astype(jnp.float32)
    (sums, counts), upload_state, upload_metrics = uploads.mean(
        (tables * w[..., None], w), received, received, state, hook_key
    )
    n = counts * m  # noised holders per label
    fresh = n >= 0.5
    mean = sums * m / jnp.maximum(n, 1.0)[:, None]
    new = jnp.where(fresh[:, None], mean, previous)
    return new, previous_has_row | fresh, upload_state, upload_metrics


def local_training(
    apply, data, params, key, idx_row, count, opt, config, global_logits, has_row, label_map,
    max_steps,
):  # fmt: skip
    """One client's step 1: (params, mean loss, table (L, L), holds (L,) bool)."""
    L = data.num_classes
    positions, mask = train.batch_schedule(
        key, count, data.capacity, config.batch_size, config.local_epochs
    )
    target_probs = jax.nn.softmax(global_logits, -1)

    def step(carry, batch):
        params, opt_state, sums, seen, done = carry
        pos, m = batch
        active = m[0] if max_steps is None else m[0] & (done < max_steps)
        idx = idx_row[pos]
        y = label_map(data.train_y[idx]) if label_map is not None else data.train_y[idx]
        x = data.train_x[idx]

        def loss_fn(p):
            logits = apply(p, x)
            kd = jnp.where(has_row[y], train.kl_to_target(logits, target_probs[y]), 0.0)
            return train.masked_mean(train.cross_entropy(logits, y) + config.fd_beta * kd, m), (
                logits
            )

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, new_opt = opt.update(grads, opt_state, params)
        keep = lambda new, old: jnp.where(active, new, old)
        onehot = jax.nn.one_hot(y, L) * (m & active)[:, None]  # (B, L)
        carry = (
            jax.tree.map(keep, optax.apply_updates(params, updates), params),
            jax.tree.map(keep, new_opt, opt_state),
            sums + onehot.T @ jax.lax.stop_gradient(logits),
            seen + jnp.sum(onehot, 0),
            done + active,
        )
        return carry, (jnp.where(active, loss, 0.0), active)

    init = (params, opt.init(params), jnp.zeros((L, L)), jnp.zeros((L,)), jnp.int32(0))
    (params, _, sums, seen, _), (losses, active) = jax.lax.scan(step, init, (positions, mask))
    table = sums / jnp.maximum(seen, 1.0)[:, None]
    return params, jnp.sum(losses) / jnp.maximum(jnp.sum(active), 1), table, seen > 0


def make(
    config: FDConfig,
    data: Federation,
    model,
    *,
    fault_config: faults.FaultConfig | None = None,
    seed: int = 0,
    select_clients=sample_clients,
    client_optimizer: hooks.OptimizerArg | None = None,
):
    """Bind FD to a federation and a model or model groups; returns a FederatedAlgorithm.

    ``client_optimizer`` (``--lr``'s SGD): optax transformations (or functions of the config)
    replacing the flags' optimizers (:func:`jaxfl.core.hooks.optimizer`).
    """
    m_total = config.clients_per_round or data.num_clients
    model_groups = groups.as_groups(model, data.num_clients, m_total)
    m = sum(g.per_round for g in model_groups)
    fault_config, adversary = faults.setup(fault_config, SPEC.attacks, m, data.num_clients, seed)
    uploads = upload_mean(config, m)  # with --dp-clip the private mean of the tables
    opt = hooks.optimizer(client_optimizer, config, lambda: optax.sgd(config.lr))
    L = data.num_classes

    def init(key):
        return FDState(
            groups.init_params(key, model_groups),
            jnp.zeros((L, L), jnp.float32),
            jnp.zeros((L,), bool),
            jnp.zeros((), jnp.int32),
            uploads.init(),
        )

    def prepare(state, key, data):
        k_sample, k_clients = jax.random.split(key)
        sampled = groups.sample_groups(k_sample, model_groups, select_clients)
        received, work = faults.round_faults(key, m, fault_config)
        params = groups.gather_rows(state.client_params, model_groups, sampled)
        client_args = groups.client_inputs(
            model_groups, sampled, jax.random.split(k_clients, m), work, data, adversary, params
        )
        shared = (data, state.global_logits, state.has_row)
        return shared, client_args, (sampled, received, hooks.round_key(key))

    def client_update_for(g):
        def client_update(shared, params, client):
            data, global_logits, has_row = shared
            label_map, max_steps = faults.local_training_faults(
                fault_config, L, client, config.batch_size, config.local_epochs
            )
            return local_training(
                g.model.apply, data, params, client.key, client.idx_row, client.count, opt,
                config, global_logits, has_row, label_map, max_steps,
            )  # fmt: skip

        return client_update

    def finish(state, ctx, outputs, data):
        sampled, received, hook_key = ctx
        client_params = groups.scatter_rows(
            state.client_params, model_groups, sampled, [out[0] for out in outputs]
        )
        losses = jnp.concatenate([out[1] for out in outputs])
        tables = jnp.concatenate([out[2] for out in outputs])
        holds = jnp.concatenate([out[3] for out in outputs])
        applied = faults.applied(received, fault_config.min_received)
        upload_state, upload_metrics = state.upload_state, {}
        if uploads.private:  # a private mean needs the holder counts released too
            global_logits, has_row, upload_state, upload_metrics = private_tables(
                tables, holds, received, state.global_logits, state.has_row, uploads,
                state.upload_state, hook_key,
            )  # fmt: skip
        else:
            global_logits, has_row = aggregate_tables(
                tables, holds, received, state.global_logits, state.has_row
            )
        new_state = FDState(client_params, global_logits, has_row, state.round + 1, upload_state)
        return new_state, {
            "train_loss": jnp.mean(losses),
            "labels_with_global_logits": jnp.sum(jnp.where(applied, has_row, state.has_row)),
            "received": jnp.sum(received),
            "applied": applied,
            **upload_metrics,
        }

    def evaluate(state, data):
        return groups.personal_metrics(model_groups, state.client_params, data, config.client_chunk)

    return make_algorithm(
        "fd",
        RoundParts(
            prepare,
            tuple(client_update_for(g) for g in model_groups),
            finish,
            grouped=True,
            server_state=("global_logits", "has_row", "upload_state"),  # kept if not applied
        ),
        init,
        evaluate,
        data,
        clients_per_round=m,
        client_chunk=config.client_chunk,
        # up: the table and which labels it holds (L flags)
        communication=communication(L * L, L * L, extra_up_bytes=L),
    )
