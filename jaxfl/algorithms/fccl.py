"""FCCL (Huang, Ye, Du, CVPR 2022, "Learn from Others and Be Yourself in Heterogeneous Federated
Learning"): federated cross-correlation learning on unlabeled public data, plus non-forgetting
distillation during local training. Clients keep their own models of any architecture.

Round t, S_t the m sampled clients, a public batch X of B = ``public_per_round`` inputs (authors:
512), L classes. Adam with lr ``fccl_lr`` throughout (authors: 1e-3); ``make(..., optimizer=)``
replaces it.

1. every k in S_t computes its logits z_k = f_k(X) (B, L)
2. the target is their mean, detached: z_t = mean_{k received} z_k
3. Federated Cross-Correlation Learning: each k takes ``fccl_collab_steps`` steps on
       Z_k = standardize(f_k(X)),  Z_t = standardize(z_t)   (each column over the batch)
       M = Z_k^T Z_t / B                                      (L x L)
       loss = sum_u (1 - M_uu)^2 + lambda sum_{u != v} (1 + M_uv)^2,   lambda = ``fccl_lambda``
   (the +1 off the diagonal follows the authors' code; 0.0051 is their lambda)
4. Federated Non-Forgetting Distillation, ``local_epochs`` on private data:
       CE(y, p) + KL(p_inter || p) + KL(p_intra || p)
   with p = softmax(f_k(x)), the inter-domain teacher = k's model right after step 3 (frozen),
   the intra-domain teacher = k's model pretrained on its private data only, at init
   (``fccl_pretrain_epochs``), frozen for the whole run.

Standardization is (z - mean) / sqrt(var + 1e-5) per column, as the authors' affine-free
BatchNorm1d. Evaluation reports both of FCCL's views: each client's model on its own test split
("be yourself", ``client_acc``) and on the whole test set, every domain's in a multi-domain
federation ("learn from others", ``others_acc_mean``, on a fixed subset of 500 test examples).
Faults: dropout (a lost upload is left out of the target), stragglers (fewer local steps), label
flipping.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxfl.configs.distillation import FCCLConfig
from jaxfl.configs.specs import SPECS
from jaxfl.core import aggregate, hooks, train
from jaxfl.core.algorithm import RoundParts, communication, make_algorithm, sample_clients
from jaxfl.core.client_axis import map_clients, on_client_mesh
from jaxfl.data.federation import Federation
from jaxfl.mechanisms import faults, groups

SPEC = SPECS["fccl"]  # its config and capabilities (jaxfl.configs.specs)


@struct.dataclass
class FCCLState:
    client_params: tuple  # per model group, (C_g, ...) every client's own model
    intra_params: tuple  # per model group, (C_g, ...) the frozen intra-domain teachers
    round: jax.Array


def standardize(z: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Each column of (B, L) to zero mean and unit (biased) variance over the batch."""
    return (z - jnp.mean(z, 0)) / jnp.sqrt(jnp.var(z, 0) + eps)


def cross_correlation_loss(logits: jax.Array, target: jax.Array, lam: float) -> jax.Array:
    """FCCL's loss: sum_u (1 - M_uu)^2 + lam sum_{u != v} (1 + M_uv)^2, M = Z^T Z_t / B."""
    batch = logits.shape[0]
    m = standardize(logits).T @ standardize(target) / batch
    on = jnp.sum(jnp.square(1.0 - jnp.diagonal(m)))
    off = jnp.sum(jnp.square(1.0 + m)) - jnp.sum(jnp.square(1.0 + jnp.diagonal(m)))
    return on + lam * off


def non_forgetting_loss(apply, data, idx_row, inter, intra, label_map=None):
    """CE + KL(p_inter || p) + KL(p_intra || p) on a private minibatch:
    ``loss(params, positions, mask)``; ``inter``/``intra`` are the frozen teachers' params."""

    def loss(params, positions, mask):
        idx = idx_row[positions]
        x, y = data.train_x[idx], data.train_y[idx]
        y = y if label_map is None else label_map(y)
        logits = apply(params, x)
        p_inter = jax.nn.softmax(jax.lax.stop_gradient(apply(inter, x)))
        p_intra = jax.nn.softmax(jax.lax.stop_gradient(apply(intra, x)))
        per_example = (
            train.cross_entropy(logits, y)
            + train.kl_to_target(logits, p_inter)
            + train.kl_to_target(logits, p_intra)
        )
        return train.masked_mean(per_example, mask)

    return loss


def make(
    config: FCCLConfig,
    data: Federation,
    model,
    *,
    fault_config: faults.FaultConfig | None = None,
    seed: int = 0,
    select_clients=sample_clients,
    client_optimizer: hooks.OptimizerArg | None = None,
):
    """Bind FCCL to a federation and a model or model groups; returns a FederatedAlgorithm.

    ``client_optimizer`` (every client step; the authors' Adam at ``--fccl-lr``): optax
    transformations (or functions of the config) replacing the flags' optimizers
    (:func:`jaxfl.core.hooks.optimizer`).
    """
    m_total = config.clients_per_round or data.num_clients
    model_groups = groups.as_groups(model, data.num_clients, m_total)
    m = sum(g.per_round for g in model_groups)
    fault_config, adversary = faults.setup(fault_config, SPEC.attacks, m, data.num_clients, seed)
    n = config.public_per_round
    if not 2 <= n <= data.public_size:
        raise ValueError(
            f"--public-per-round {n} is not allowed for FCCL (its public batch); allowed: "
            f"2..the public set's {data.public_size} examples (raise --public-size)"
        )
    # the authors' Adam unless one is given
    opt = hooks.optimizer(client_optimizer, config, lambda: optax.adam(config.fccl_lr))
    B = config.batch_size

    @jax.jit
    @on_client_mesh  # the transfer learning runs each device's block of clients
    def init_with(key, data):
        k_init, k_pretrain = jax.random.split(key)
        pretrained = []
        for i, (g, params) in enumerate(
            zip(model_groups, groups.init_params(k_init, model_groups), strict=True)
        ):
            keys = jax.random.split(jax.random.fold_in(k_pretrain, i), g.size)

            def pretrain(p, k, idx, cnt, g=g):
                return train.local_sgd(
                    g.model.apply, data, p, k, idx, cnt, opt, B, config.fccl_pretrain_epochs
                )[0]

            pretrained.append(
                map_clients(
                    pretrain,
                    params,
                    keys,
                    data.client_idx[g.start : g.stop],
                    data.client_count[g.start : g.stop],
                    chunk_size=config.client_chunk,
                )
            )
        return FCCLState(tuple(pretrained), tuple(pretrained), jnp.zeros((), jnp.int32))

    def init(key):
        return init_with(key, data)

    def prepare(state, key, data):
        k_sample, k_public, k_clients = jax.random.split(key, 3)
        sampled = groups.sample_groups(k_sample, model_groups, select_clients)
        received, work = faults.round_faults(key, m, fault_config)
        public_rows = jax.random.permutation(k_public, data.public_size)[:n]
        params = groups.gather_rows(state.client_params, model_groups, sampled)
        intra = groups.gather_rows(state.intra_params, model_groups, sampled)
        phase2 = groups.client_inputs(
            model_groups,
            sampled,
            jax.random.split(k_clients, m),
            work,
            data,
            adversary,
            params,
            intra,
        )
        public_inputs = data.public_x[public_rows]
        ctx = (sampled, received, public_inputs, phase2)
        return public_inputs, tuple((p,) for p in params), ctx

    def logits_for(g):
        return lambda public_inputs, params: g.model.apply(params, public_inputs)

    def exchange(state, ctx, outputs, data):
        sampled, received, public_inputs, phase2 = ctx
        target = aggregate.weighted_mean(jnp.concatenate(outputs), received)
        return (data, public_inputs, target), phase2, (sampled, received)

    def update_for(g):
        apply = g.model.apply

        def update(shared, params, intra, client):
            data, public_inputs, target = shared
            collab = lambda p: cross_correlation_loss(
                apply(p, public_inputs), target, config.fccl_lambda
            )

            def collab_step(carry, _):
                p, opt_state = carry
                loss, grads = jax.value_and_grad(collab)(p)
                updates, opt_state = opt.update(grads, opt_state, p)
                return (optax.apply_updates(p, updates), opt_state), loss

            (params, _), collab_losses = jax.lax.scan(
                collab_step, (params, opt.init(params)), None, length=config.fccl_collab_steps
            )
            inter = params
            label_map, max_steps = faults.local_training_faults(
                fault_config, data.num_classes, client, B, config.local_epochs
            )
            loss_fn = non_forgetting_loss(apply, data, client.idx_row, inter, intra, label_map)
            params, local_loss, *_ = train.sgd_epochs(
                loss_fn,
                opt,
                params,
                client.key,
                client.count,
                data.capacity,
                B,
                config.local_epochs,
                max_steps,
            )
            first = collab_losses[0] if config.fccl_collab_steps else jnp.float32(0.0)
            return params, first, local_loss

        return update

    def finish(state, ctx, outputs, data):
        sampled, received = ctx
        client_params = groups.scatter_rows(
            state.client_params, model_groups, sampled, [out[0] for out in outputs]
        )
        return FCCLState(client_params, state.intra_params, state.round + 1), {
            "collab_loss": jnp.mean(jnp.concatenate([out[1] for out in outputs])),
            "local_loss": jnp.mean(jnp.concatenate([out[2] for out in outputs])),
            "received": jnp.sum(received),
        }

    def evaluate(state, data):
        return groups.personal_metrics(model_groups, state.client_params, data, config.client_chunk)

    floats = n * data.num_classes
    return make_algorithm(
        "fccl",
        RoundParts(
            prepare,
            tuple(logits_for(g) for g in model_groups),
            finish,
            grouped=True,
            exchange=exchange,
            client_update2=tuple(update_for(g) for g in model_groups),
        ),
        init,
        evaluate,
        data,
        clients_per_round=m,
        client_chunk=config.client_chunk,
        communication=communication(floats, floats, extra_down_bytes=4 * n),
    )
