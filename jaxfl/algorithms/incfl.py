"""IncFL / MaxFL (Cho, Jhunjhunwala, Li, Smith, Joshi 2022, "To Federate or Not To Federate:
Incentivizing Client Participation in Federated Learning", later "MaxFL: Maximizing Global Model
Appeal in Federated Learning"): FedAvg whose aggregation weights favour the clients at the margin
of being incentivized.

Client k is *incentivized* when the global model serves it better than the model it could
train alone: F_k(w) < rho_k = F_k(w_k^loc). The incentivized participation rate (IPR) is the
fraction of such clients. Each sampled client measures, BEFORE local training,

    x_k = F_k(w_t) - rho_k

the loss of the incoming global model on its own validation split (its training split when it
has none) minus the validation loss of its local-only model. Two aggregation rules
(``incfl_rule``):

**maxfl** (the default: the rule the later version of the paper reports): MaxFL maximises the
smoothed IPR sum_k s(c (rho_k - F_k(w))), s = sigmoid, whose gradient weighs client k's loss
gradient by c s'(c x_k) = c s_k (1 - s_k). Round t:

    w_k = LocalSGD_k(w_t; E epochs)                                        k in S_t
    q_k = s_k (1 - s_k),  s_k = sigmoid(c x_k)                             (``incfl_c`` = c)
    w_t+1 = w_t - eta_g / (sum_k q_k + eps) * sum_k q_k (w_t - w_k)

(eta_g is ``--server-lr`` of the server optimizer, plain SGD by default; ``incfl_eps`` = eps).
q_k is largest (1/4) at x_k = 0 and vanishes for clients that already gain a lot (x_k << 0) and
for those that cannot be won (x_k >> 0); the step is normalised by sum_k q_k, not by m.

**bump** (this repository's earlier rule, kept as an option): a sample-count-weighted mean with
weights p_k = n_k (floor + (1 - floor) 4 s(x_k / tau) (1 - s(x_k / tau))), i.e. the same bump
shape with c = 1 / tau, a floor (``incfl_floor``) and FedAvg's n_k, and no eps; I derived it
before the MaxFL rule was available. It did not raise IPR over FedAvg in the setting of
``reproductions/incfl.py``.

rho_k comes from the cached local-only baseline (:mod:`jaxfl.experiments.baseline`), passed to
:func:`make` as ``local_losses`` (C,). ``unseen_clients`` (U) keeps the last U clients out of
training entirely, to measure how IPR generalizes to clients the server never saw.

With ``--dp-clip``/``--dp-noise`` (:mod:`jaxfl.mechanisms.uploads`) x_k never leaves the client: it
computes its own weight and uploads the weighted update, clipped as ONE vector with the weight.
maxfl: (q_k (w_k - w_t), q_k), and the server divides the noised sum of the first by the noised
sum of the second, floored at 1/4, one marginal client's weight, so that noise near zero cannot
blow the step up (post-processing; q_k <= 1/4 adds at most 1/4 to the norm). bump: clip(b_k (w_k
- w_t)) with b_k = p_k / n_k in [floor, 1] and DP-FedAvg's fixed denominator m. Either way one
client moves what the server sees by at most the clip norm.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfl.algorithms import fedavg
from jaxfl.configs.averaging import IncFLConfig
from jaxfl.configs.specs import SPECS
from jaxfl.core import aggregate, hooks, hparams, metrics, train
from jaxfl.core.algorithm import (
    RoundParts,
    client_inputs,
    communication,
    make_algorithm,
    sample_clients,
)
from jaxfl.data.federation import Federation
from jaxfl.mechanisms import faults
from jaxfl.mechanisms.uploads import upload_mean
from jaxfl.models import Model

SPEC = SPECS["incfl"]  # its config and capabilities (jaxfl.configs.specs)


def incfl_weights(gaps: jax.Array, counts: jax.Array, tau: float, floor: float) -> jax.Array:
    """(m,) IncFL aggregation weights from the gaps g_k (m,) and sample counts n_k (m,).

    n_k (floor + (1 - floor) 4 s(g/tau)(1 - s(g/tau))): n_k at g = 0, n_k * floor far away.
    """
    s = jax.nn.sigmoid(gaps / tau)
    return counts * (floor + (1.0 - floor) * 4.0 * s * (1.0 - s))


def maxfl_weights(x: jax.Array, c: float) -> jax.Array:
    """(m,) MaxFL weights q_k = s_k (1 - s_k), s_k = sigmoid(c x_k), from x_k = F_k(w_t) - rho_k
    (m,): 1/4 at x_k = 0, vanishing as |x_k| grows."""
    s = jax.nn.sigmoid(c * x)
    return s * (1.0 - s)


def maxfl_direction(deltas, weights: jax.Array, eps: float):
    """sum_k q_k (w_k - w_t) / (sum_k q_k + eps): the MaxFL server step before eta_g.

    Args:
      deltas: pytree with leaves (m, ...), w_k - w_t per sampled client.
      weights: (m,) q_k, times 0 for an upload that did not arrive.
    """
    total = aggregate.weighted_sum(deltas, weights)
    return jax.tree.map(lambda t: t / (jnp.sum(weights) + eps), total)


def make(
    config: IncFLConfig,
    data: Federation,
    model: Model,
    *,
    local_losses=None,
    fault_config: faults.FaultConfig | None = None,
    seed: int = 0,
    select_clients=sample_clients,
    client_optimizer: hooks.OptimizerArg | None = None,
    server_optimizer: hooks.OptimizerArg | None = None,
):
    """Bind IncFL to a federation and a model; ``local_losses`` (C,) are F_k(w_k^loc), on the
    validation splits when ``data`` has them (else on the training splits).

    ``client_optimizer`` (``--lr``'s SGD) and ``server_optimizer`` (``--server-opt``): optax
    transformations (or functions of the config) replacing the flags' optimizers.
    """
    if local_losses is None:
        raise ValueError(
            "--algo incfl needs every client's local-only loss (local_losses); scripts/run.py "
            "trains and caches the local-only baseline for it"
        )
    local_losses = jnp.asarray(local_losses, jnp.float32)
    seen = fedavg.training_clients(config, data)
    m = config.clients_per_round or seen
    maxfl = config.incfl_rule == "maxfl"
    fault_config, adversary = faults.setup(fault_config, SPEC.attacks, m, data.num_clients, seed)
    uploads = upload_mean(config, m)  # the updates' mean, or with --dp-clip the private one
    private = uploads.private  # then the client weighs its own update: x_k stays on the client
    # the gaps' split: a Python bool, so prepare reads the rows from the round's own ``data``
    # (a federation captured here carries the mesh's sharding, which a per-device program
    # cannot close over)
    has_val = bool(np.any(jax.device_get(hparams.concrete(data).client_val_count)))
    server_opt = hooks.optimizer(
        server_optimizer, config, lambda: fedavg.flag_server_optimizer(config)
    )
    opt = hooks.optimizer(client_optimizer, config, lambda: optax.sgd(config.lr))
    local = (config.batch_size, config.local_epochs)

    def init(key):
        params = model.init(key)
        state = fedavg.FedAvgState(params, server_opt.init(params), jnp.zeros((), jnp.int32))
        return state.replace(upload_state=uploads.init())

    def prepare(state, key, data):
        k_sample, k_clients = jax.random.split(key)
        sampled = select_clients(k_sample, seen, m)
        received, work = faults.round_faults(key, m, fault_config)
        gap_idx = data.client_val_idx if has_val else data.client_idx
        gap_count = data.client_val_count if has_val else data.client_count
        client_args = (
            *client_inputs(sampled, jax.random.split(k_clients, m), work, data, adversary),
            gap_idx[sampled],
            gap_count[sampled],
            local_losses[sampled],  # each client's own: under DP the gap stays on the client
        )
        ctx = (data.client_count[sampled], received, local_losses[sampled], hooks.round_key(key))
        return (data, state.params), client_args, ctx

    def client_update(shared, client, gap_row, gap_n, local_loss):
        data, global_params = shared
        global_loss = train.client_loss(
            model.apply, global_params, data.train_x, data.train_y, gap_row, gap_n
        )
        label_map, max_steps = faults.local_training_faults(
            fault_config, data.num_classes, client, *local
        )
        params, loss, *_ = train.local_sgd(
            model.apply,
            data,
            global_params,
            client.key,
            client.idx_row,
            client.count,
            opt,
            *local,
            label_map=label_map,
            max_steps=max_steps,
        )
        delta = jax.tree.map(jnp.subtract, params, global_params)
        if private:  # the client weighs its own update: x_k stays on the client
            gap = global_loss - local_loss
            if maxfl:  # (q_k delta_k, q_k), clipped together
                q = maxfl_weights(gap, config.incfl_c)
                delta = (jax.tree.map(lambda d: q * d, delta), q)
            else:  # b_k delta_k, b_k in [floor, 1]
                bump = incfl_weights(gap, 1.0, config.incfl_tau, config.incfl_floor)
                delta = jax.tree.map(lambda d: bump * d, delta)
        return delta, loss, global_loss

    def finish(state, ctx, outputs, data):
        counts, received, local_loss, hook_key = ctx
        deltas, losses, global_losses = outputs
        gaps = global_losses - local_loss
        applied = faults.applied(received, fault_config.min_received)
        upload_state, upload_metrics = state.upload_state, {}
        if private:  # the private mean of the weighted updates (and, for maxfl, of the weights)
            mean_delta, upload_state, upload_metrics = uploads.mean(
                deltas, received, received, state.upload_state, hook_key
            )
            if maxfl:  # noised sum q delta / (noised sum q + eps), both divided by m; the
                # noised sum is floored at one marginal client's weight (1/4): noise near 0
                # must not blow the step up (post-processing, no privacy cost)
                mean_qdelta, mean_q = mean_delta
                m_sampled = received.shape[0]
                floor = 0.25 / m_sampled
                denominator = jnp.maximum(mean_q, floor) + config.incfl_eps / m_sampled
                mean_delta = jax.tree.map(lambda t: t / denominator, mean_qdelta)
        elif maxfl:
            weights = maxfl_weights(gaps, config.incfl_c)
            mean_delta = maxfl_direction(deltas, weights * received, config.incfl_eps)
        else:
            weights = incfl_weights(gaps, counts, config.incfl_tau, config.incfl_floor)
            mean_delta = aggregate.weighted_mean(deltas, weights * received)
        params, opt_state = fedavg.server_update(
            server_opt, state.params, state.opt_state, mean_delta
        )
        return fedavg.FedAvgState(params, opt_state, state.round + 1, upload_state), {
            "train_loss": jnp.sum(losses * counts) / jnp.sum(counts),
            "round_frac_incentivized": jnp.mean(gaps < 0),
            "mean_gap": jnp.mean(gaps),
            "received": jnp.sum(received),
            "applied": applied,
            **upload_metrics,
        }

    def evaluate(state, data):
        global_acc = metrics.per_client_accuracy(
            model.apply, state.params, data, personal=False, chunk_size=config.client_chunk
        )
        return {
            "test_acc": metrics.global_test_accuracy(model.apply, state.params, data),
            "client_acc": global_acc,
        }

    floats = model.num_params
    return make_algorithm(
        "incfl",
        RoundParts(prepare, client_update, finish, server_state=fedavg.SERVER_STATE),
        init,
        evaluate,
        data,
        clients_per_round=m,
        client_chunk=config.client_chunk,
        communication=communication(floats + 1, floats),  # up: the update and F_k(w_t)
    )
