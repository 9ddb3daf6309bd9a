"""DS-FL: Distillation-Based Semi-Supervised FL (Itahara et al., IEEE TMC 2021), with ERA.

Clients keep their own models; only soft labels on an unlabeled open (public) set cross the
network. Round t, with O_t the open subset drawn this round and S_t the sampled clients:

1. each k in S_t distills on the previous round's global soft labels over O_{t-1}:
   min_w  mean_{x in O_{t-1}} KL(y_hat_{t-1}(x) || softmax(f_k(x; w)))          (distill_epochs)
2. each k trains on its private data with cross-entropy                          (local_epochs)
3. each k predicts p_k(x) = softmax(f_k(x)) for x in O_t
4. the server averages, p_bar(x) = (1/|S_t|) sum_k p_k(x), and applies Entropy Reduction
   Aggregation: y_hat_t(x) = softmax(p_bar(x) / T), T = 0.1 (``aggregation="sa"``: y_hat_t = p_bar)
5. the server model distills on (O_t, y_hat_t) as in step 1; it is the "global" model evaluated.

Private soft labels (``--dp-clip S --dp-noise z``, :mod:`jaxfl.mechanisms.uploads`): step 4 becomes
p_bar = (sum_k clip_S(p_k) + N(0, (z S)^2 I)) / m, each client's whole (P, L) upload clipped to
L2 norm S, then ERA as above (SA: p_bar put back on the simplex). A probability upload has norm
at most sqrt(P) (each row's L2 norm is at most its L1 norm, 1), so S >= sqrt(P) never clips.

Defaults follow the authors' lab code: 100 clients, open set 10,000 with 1,000 per round,
5 local epochs, batch 50, lr 0.1, 5 distillation epochs, Dirichlet alpha 1.0.

Clients may have different architectures (``--models lenet5:50,mlp:50``,
:mod:`jaxfl.mechanisms.groups`): only soft labels cross groups. The server model has the first
group's architecture.

Customisation inside the compiled round is by pure functions passed to :func:`make`:
``select_clients(key, C, m) -> (m,) int32``, ``aggregate_soft_labels(client_probs (m, P, L),
weights (m,)) -> (P, L)`` (default the ERA/SA of step 4, over the received clients) and
``client_loss_term(params, anchor_params) -> scalar`` added to every private batch loss (anchor:
the client's model before step 2; ``train_loss`` stays the data loss, ``train_penalty`` reports
the term). ``aggregate_soft_labels`` may also take keyword arguments ``key`` (its own PRNG key
each round) and ``hparams`` (this config, e.g. ERA's ``temperature``, traced in a sweep), and
``client_loss_term`` ``hparams`` (:mod:`jaxfl.core.hooks`). Optimizers: ``client_optimizer`` (step
2) and ``distill_optimizer`` (steps 1 and 5), optax transformations replacing the SGD of ``--lr`` /
``--distill-lr``. Faults (:mod:`jaxfl.mechanisms.faults`): dropout (the soft labels average
only the received uploads), stragglers (part of step 2), label flipping, random or scaled logits.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxfl.configs.distillation import DSFLConfig
from jaxfl.configs.specs import SPECS
from jaxfl.core import aggregate, hooks, hparams, metrics, train
from jaxfl.core.algorithm import RoundParts, communication, make_algorithm, sample_clients
from jaxfl.data.federation import Federation
from jaxfl.mechanisms import faults, groups
from jaxfl.mechanisms.uploads import upload_mean

SPEC = SPECS["dsfl"]  # its config and capabilities (jaxfl.configs.specs)


@struct.dataclass
class DSFLState:
    client_params: tuple  # per model group, (C_g, ...) every client's own model
    server_params: Any  # the server model distilled on the aggregated soft labels
    soft_labels: jax.Array  # (P_r, L) global soft labels of the previous round
    open_idx: jax.Array  # (P_r,) int32 rows of public_x those labels belong to
    round: jax.Array  # () int32
    upload_state: Any = None  # the upload mean's (jaxfl.mechanisms.uploads): C_t with --dp-clip


def make(
    config: DSFLConfig,
    data: Federation,
    model,
    *,
    fault_config: faults.FaultConfig | None = None,
    seed: int = 0,
    select_clients=sample_clients,
    aggregate_soft_labels=None,
    client_loss_term=None,
    client_optimizer: hooks.OptimizerArg | None = None,
    distill_optimizer: hooks.OptimizerArg | None = None,
):
    """Bind DS-FL to a federation and a model (or model groups); returns a FederatedAlgorithm.

    ``fault_config`` and ``seed`` (which draws the fixed adversarial set) simulate faults; the
    three functions customise the round (see the module docstring).
    """
    model_groups = groups.as_groups(
        model, data.num_clients, config.clients_per_round or data.num_clients
    )
    m = sum(g.per_round for g in model_groups)
    server_model = model_groups[0].model
    fault_config, adversary = faults.setup(fault_config, SPEC.attacks, m, data.num_clients, seed)
    attack = fault_config.attack
    local = (config.batch_size, config.local_epochs)
    custom_aggregation = aggregate_soft_labels is not None
    # the soft labels' mean, or with --dp-clip the private mean (jaxfl.mechanisms.uploads)
    uploads = upload_mean(config, m, custom="aggregate_soft_labels" if custom_aggregation else None)
    aggregate_hook = hooks.bind(aggregate_soft_labels, config)
    loss_term = hooks.bind(client_loss_term, config)

    n_open = config.public_per_round
    kd_batch = config.distill_batch_size or config.batch_size
    opt = hooks.optimizer(client_optimizer, config, lambda: optax.sgd(config.lr))
    kd_opt = hooks.optimizer(  # steps 1 and 5: the clients' and the server's distillation
        distill_optimizer, config, lambda: optax.sgd(hparams.given(config.distill_lr, config.lr))
    )
    if config.aggregation not in aggregate.AGGREGATIONS:
        raise ValueError(
            f"unknown --aggregation {config.aggregation!r}; allowed: "
            f"{', '.join(aggregate.AGGREGATIONS)}"
        )

    def distill(apply, params, inputs, targets, key):
        loss_fn = train.distill_loss(apply, inputs, targets)
        trained = train.sgd_epochs(
            loss_fn, kd_opt, params, key, jnp.int32(n_open), n_open, kd_batch, config.distill_epochs
        )
        return trained.params, trained.loss

    def init(key):
        k_server, k_clients = jax.random.split(key)
        return DSFLState(
            client_params=groups.init_params(k_clients, model_groups),
            server_params=server_model.init(k_server),
            soft_labels=jnp.zeros((n_open, data.num_classes), jnp.float32),
            open_idx=jnp.zeros((n_open,), jnp.int32),
            round=jnp.zeros((), jnp.int32),
            upload_state=uploads.init(),
        )

    def prepare(state, key, data):
        k_sample, k_open, k_clients, k_server = jax.random.split(key, 4)
        sampled = groups.sample_groups(k_sample, model_groups, select_clients)
        received, work = faults.round_faults(key, m, fault_config)
        next_open = jax.random.permutation(k_open, data.public_size)[:n_open].astype(jnp.int32)
        shared = (
            data,
            data.public_x[state.open_idx],
            state.soft_labels,
            data.public_x[next_open],
            state.round > 0,
        )
        params = groups.gather_rows(state.client_params, model_groups, sampled)
        client_args = groups.client_inputs(
            model_groups, sampled, jax.random.split(k_clients, m), work, data, adversary, params
        )
        ctx = (sampled, next_open, k_server, received, hooks.round_key(key))
        return shared, client_args, ctx

    def client_update_for(model):
        return lambda shared, *args: client_update(model, shared, *args)

    def client_update(model, shared, params, client):
        data, prev_x, prev_labels, open_x, has_labels = shared
        k_kd, k_train = jax.random.split(client.key)
        params, kd_loss = jax.lax.cond(
            has_labels,
            lambda p: distill(model.apply, p, prev_x, prev_labels, k_kd),
            lambda p: (p, jnp.float32(0.0)),
            params,
        )
        anchor = params
        label_map, max_steps = faults.local_training_faults(
            fault_config, data.num_classes, client, *local
        )
        trained = train.local_sgd(
            model.apply,
            data,
            params,
            k_train,
            client.idx_row,
            client.count,
            opt,
            *local,
            label_map=label_map,
            penalty=(lambda p: loss_term(p, anchor)) if loss_term else None,
            max_steps=max_steps,
        )
        params = trained.params
        if attack in ("random_logits", "scaled_logits"):
            probs = faults.attack_probs(
                train.batched_apply(model.apply, params, open_x),
                jax.random.fold_in(client.key, faults.FAULT_STREAM),
                attack,
                fault_config.attack_scale,
                client.is_adversary,
            )
        else:
            probs = train.predict_probs(model.apply, params, open_x)
        return params, probs, trained.loss, kd_loss, trained.penalty

    def finish(state, ctx, outputs, data):
        sampled, next_open, k_server, received, hook_key = ctx
        client_params = [out[0] for out in outputs]
        client_probs, train_loss, kd_loss, penalty = (
            jnp.concatenate([out[i] for out in outputs]) for i in (1, 2, 3, 4)
        )
        applied = faults.applied(received, fault_config.min_received)
        upload_state, upload_metrics = state.upload_state, {}
        if custom_aggregation:
            soft_labels = aggregate_hook(client_probs, received.astype(jnp.float32), key=hook_key)
        else:  # step 4: p_bar over the received clients (a noised one on the simplex for SA)
            era = config.aggregation == "era"
            mean_probs, upload_state, upload_metrics = uploads.mean(
                client_probs,
                received.astype(jnp.float32),
                received,
                state.upload_state,
                hook_key,
                domain=None if era else aggregate.onto_simplex,
            )
            soft_labels = (
                aggregate.entropy_reduction(mean_probs, config.temperature) if era else mean_probs
            )
        server_params, server_loss = distill(
            server_model.apply, state.server_params, data.public_x[next_open], soft_labels, k_server
        )
        new_state = DSFLState(
            client_params=groups.scatter_rows(
                state.client_params, model_groups, sampled, client_params
            ),
            server_params=server_params,
            soft_labels=soft_labels,
            open_idx=next_open,
            round=state.round + 1,
            upload_state=upload_state,
        )
        return new_state, {
            "received": jnp.sum(received),
            "applied": applied,
            "train_loss": jnp.mean(train_loss),
            **({"train_penalty": jnp.mean(penalty)} if loss_term else {}),
            "client_distill_loss": jnp.mean(kd_loss),
            "server_distill_loss": server_loss,
            "soft_label_entropy": jnp.mean(aggregate.entropy(soft_labels)),
            **upload_metrics,
        }

    def evaluate(state, data):
        return {
            "test_acc": metrics.global_test_accuracy(server_model.apply, state.server_params, data),
            **groups.personal_metrics(model_groups, state.client_params, data, config.client_chunk),
        }

    floats = n_open * data.num_classes
    return make_algorithm(
        "dsfl",
        RoundParts(
            prepare,
            tuple(client_update_for(g.model) for g in model_groups),
            finish,
            grouped=True,
            # a round not applied keeps the last soft labels, the server model and its place in
            # the open set; the clients' own models advance (they trained locally)
            server_state=("server_params", "soft_labels", "open_idx", "upload_state"),
        ),
        init,
        evaluate,
        data,
        clients_per_round=m,
        client_chunk=config.client_chunk,
        # up: soft labels on O_t; down: global soft labels on O_{t-1} + the indices of O_{t-1}, O_t
        communication=communication(floats, floats, extra_down_bytes=4 * 2 * n_open),
    )
