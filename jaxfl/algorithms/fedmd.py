"""FedMD (Li & Wang 2019, "FedMD: Heterogenous Federated Learning via Model Distillation").

Clients keep their own models, of any architecture (``--models``), and agree on their outputs on
a shared labeled public set. Adam with lr ``fedmd_lr`` throughout (authors: 1e-3);
``make(..., optimizer=)`` replaces it.

Init (transfer learning): every client model trains on the labeled public set
(``fedmd_public_epochs``), then on its own private data (``fedmd_private_epochs``).

Round t, S_t the m sampled clients:

1. a fresh sample D_t of ``public_per_round`` public inputs (authors: 5,000)
2. communicate: every k in S_t computes its logits f_k(x) for x in D_t
3. aggregate: the consensus c(x) = mean_{k in S_t received} f_k(x)
4. digest: k regresses the consensus with the L1 loss mean_x,l |f_k(x)_l - c(x)_l| for
   ``fedmd_digest_epochs`` epochs (authors: 1) of batch ``fedmd_digest_batch`` (authors: 256)
5. revisit: k trains on its private data with cross-entropy for ``local_epochs`` (authors: 2-4)

Steps 2 and 4-5 are two client phases of the same compiled round (``RoundParts.exchange``).
The public labels are used only by the transfer learning at init. Evaluation: each client's own
model on its own test split (``client_acc``). Faults: dropout (a lost upload is left out of the
consensus; the client still digests it), stragglers (fewer revisit steps), label flipping.

Private logits (``--dp-clip S --dp-noise z``, :mod:`jaxfl.mechanisms.uploads`): step 3 becomes
c = (sum_k clip_S(f_k(X)) + N(0, (z S)^2 I)) / m, each client's whole (P, L) logit upload
clipped to L2 norm S (logits are unbounded: without the clip one client could move c anywhere).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxfl.configs.distillation import FedMDConfig
from jaxfl.configs.specs import SPECS
from jaxfl.core import hooks, hparams, train
from jaxfl.core.algorithm import RoundParts, communication, make_algorithm, sample_clients
from jaxfl.core.client_axis import map_clients, on_client_mesh
from jaxfl.data.federation import Federation
from jaxfl.mechanisms import faults, groups
from jaxfl.mechanisms.uploads import upload_mean

SPEC = SPECS["fedmd"]  # its config and capabilities (jaxfl.configs.specs)


@struct.dataclass
class FedMDState:
    client_params: tuple  # per model group, (C_g, ...) every client's own model
    round: jax.Array
    upload_state: Any = None  # the upload mean's (jaxfl.mechanisms.uploads): C_t with --dp-clip


def l1_to_consensus(apply, inputs, consensus):
    """Digest loss over a shared set: ``loss(params, positions, mask)`` = masked mean over the
    batch of mean_l |f(x)_l - c(x)_l|. ``inputs`` (n, ...), ``consensus`` (n, L)."""

    def loss(params, positions, mask):
        diff = jnp.abs(apply(params, inputs[positions]) - consensus[positions])
        return train.masked_mean(jnp.mean(diff, -1), mask)

    return loss


def make(
    config: FedMDConfig,
    data: Federation,
    model,
    *,
    fault_config: faults.FaultConfig | None = None,
    seed: int = 0,
    select_clients=sample_clients,
    client_optimizer: hooks.OptimizerArg | None = None,
):
    """Bind FedMD to a federation and a model or model groups; returns a FederatedAlgorithm.

    ``client_optimizer`` (every client step; the authors' Adam at ``--fedmd-lr``): optax
    transformations (or functions of the config) replacing the flags' optimizers
    (:func:`jaxfl.core.hooks.optimizer`).
    """
    m_total = config.clients_per_round or data.num_clients
    model_groups = groups.as_groups(model, data.num_clients, m_total)
    m = sum(g.per_round for g in model_groups)
    fault_config, adversary = faults.setup(fault_config, SPEC.attacks, m, data.num_clients, seed)
    uploads = upload_mean(config, m)  # the logits' mean, or with --dp-clip the private one
    n = config.public_per_round
    if not 0 < n <= data.public_size:
        raise ValueError(
            f"--public-per-round {n} is not allowed for FedMD; allowed: 1..the public set's "
            f"{data.public_size} examples (raise --public-size)"
        )
    labels = None if hparams.is_traced(data.public_y) else jax.device_get(data.public_y)
    if labels is not None and (labels.min() < 0 or labels.max() >= data.num_classes):
        raise ValueError(
            "FedMD's transfer learning needs public labels in the private label space "
            f"(0..{data.num_classes - 1}); this public set has labels "
            f"{labels.min()}..{labels.max()} (choose another --public-dataset)"
        )
    # the authors' Adam unless one is given
    opt = hooks.optimizer(client_optimizer, config, lambda: optax.adam(config.fedmd_lr))
    digest_batch = min(config.fedmd_digest_batch, n)

    def transfer(apply, params, key, idx_row, count, data):
        """Init: the labeled public set, then the private data."""
        k_pub, k_priv = jax.random.split(key)
        P = data.public_size
        public_loss = train.client_data_loss(apply, data.public_x, data.public_y, jnp.arange(P))
        params, *_ = train.sgd_epochs(
            public_loss, opt, params, k_pub, jnp.int32(P), P, config.batch_size,
            config.fedmd_public_epochs,
        )  # fmt: skip
        params, *_ = train.local_sgd(
            apply, data, params, k_priv, idx_row, count, opt, config.batch_size,
            config.fedmd_private_epochs,
        )  # fmt: skip
        return params

    @jax.jit
    @on_client_mesh  # the transfer learning runs each device's block of clients
    def init_with(key, data):
        k_init, k_transfer = jax.random.split(key)
        fresh = groups.init_params(k_init, model_groups)
        trained = []
        for i, (g, params) in enumerate(zip(model_groups, fresh, strict=True)):
            keys = jax.random.split(jax.random.fold_in(k_transfer, i), g.size)
            trained.append(
                map_clients(
                    lambda p, k, idx, cnt, g=g: transfer(g.model.apply, p, k, idx, cnt, data),
                    params,
                    keys,
                    data.client_idx[g.start : g.stop],
                    data.client_count[g.start : g.stop],
                    chunk_size=config.client_chunk,
                )
            )
        return FedMDState(tuple(trained), jnp.zeros((), jnp.int32), uploads.init())

    def init(key):
        return init_with(key, data)

    def prepare(state, key, data):
        k_sample, k_public, k_clients = jax.random.split(key, 3)
        sampled = groups.sample_groups(k_sample, model_groups, select_clients)
        received, work = faults.round_faults(key, m, fault_config)
        public_rows = jax.random.permutation(k_public, data.public_size)[:n]
        params = groups.gather_rows(state.client_params, model_groups, sampled)
        phase2 = groups.client_inputs(
            model_groups, sampled, jax.random.split(k_clients, m), work, data, adversary, params
        )
        public_inputs = data.public_x[public_rows]
        ctx = (sampled, received, public_inputs, phase2, hooks.round_key(key))
        return public_inputs, tuple((p,) for p in params), ctx

    def communicate_for(g):
        return lambda public_inputs, params: train.batched_apply(
            g.model.apply, params, public_inputs
        )

    def exchange(state, ctx, outputs, data):
        sampled, received, public_inputs, phase2, hook_key = ctx
        logits = jnp.concatenate(outputs)
        consensus, upload_state, upload_metrics = uploads.mean(  # step 3, over the received
            logits, received, received, state.upload_state, hook_key
        )
        shared = (data, public_inputs, consensus)
        return shared, phase2, (sampled, received, upload_state, upload_metrics)

    def digest_and_revisit_for(g):
        def update(shared, params, client):
            data, public_inputs, consensus = shared
            k_digest, k_revisit = jax.random.split(client.key)
            digest = l1_to_consensus(g.model.apply, public_inputs, consensus)
            params, digest_loss, *_ = train.sgd_epochs(
                digest, opt, params, k_digest, jnp.int32(n), n, digest_batch,
                config.fedmd_digest_epochs,
            )  # fmt: skip
            label_map, max_steps = faults.local_training_faults(
                fault_config, data.num_classes, client, config.batch_size,
                config.local_epochs,
            )  # fmt: skip
            params, revisit_loss, *_ = train.local_sgd(
                g.model.apply, data, params, k_revisit, client.idx_row, client.count, opt,
                config.batch_size, config.local_epochs, label_map=label_map, max_steps=max_steps,
            )  # fmt: skip
            return params, digest_loss, revisit_loss

        return update

    def finish(state, ctx, outputs, data):
        sampled, received, upload_state, upload_metrics = ctx
        client_params = groups.scatter_rows(
            state.client_params, model_groups, sampled, [out[0] for out in outputs]
        )
        return FedMDState(client_params, state.round + 1, upload_state), {
            "digest_loss": jnp.mean(jnp.concatenate([out[1] for out in outputs])),
            "revisit_loss": jnp.mean(jnp.concatenate([out[2] for out in outputs])),
            "received": jnp.sum(received),
            **upload_metrics,
        }

    def evaluate(state, data):
        return groups.personal_metrics(model_groups, state.client_params, data, config.client_chunk)

    floats = n * data.num_classes
    return make_algorithm(
        "fedmd",
        RoundParts(
            prepare,
            tuple(communicate_for(g) for g in model_groups),
            finish,
            grouped=True,
            exchange=exchange,
            client_update2=tuple(digest_and_revisit_for(g) for g in model_groups),
        ),
        init,
        evaluate,
        data,
        clients_per_round=m,
        client_chunk=config.client_chunk,
        # up: logits on D_t; down: the consensus and the indices of D_t
        communication=communication(floats, floats, extra_down_bytes=4 * n),
    )
