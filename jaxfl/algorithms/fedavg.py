"""FedAvg (McMahan et al., AISTATS 2017) with an optax server optimizer (Reddi et al., ICLR 2021).

Per round t, with S_t the m sampled clients and n_k client k's sample count:

    w_k   = LocalSGD_k(w_t; E epochs, batch B, lr eta)          for k in S_t
    Delta = sum_k n_k (w_k - w_t) / sum_k n_k
    w_t+1 = w_t + ServerOpt(-Delta)

With ``server_opt="sgd"`` and ``server_lr=1`` this is plain FedAvg (w_t+1 = weighted mean of w_k);
``momentum`` gives FedAvgM and ``adam`` FedAdam.

Customisation inside the compiled round is by pure functions passed to :func:`make`:
``select_clients(key, C, m) -> (m,) int32`` (default uniform without replacement),
``aggregate_updates(deltas, weights) -> delta`` over the leading client axis (default the
weighted mean; ``weights`` (m,) are the sample counts, 0 for a dropped client) and
``client_loss_term(params, global_params) -> scalar`` added to every local batch loss (e.g.
FedProx's (mu/2)||w - w_t||^2; ``train_loss`` stays the data loss and ``train_penalty``
reports the term). ``aggregate_updates`` may also take keyword arguments ``key`` (a PRNG key of
its own each round: DP noise) and ``hparams`` (this config, traced in a sweep), and
``client_loss_term`` ``hparams`` (:mod:`jaxfl.core.hooks`). ``--dp-clip``/``--dp-noise`` make the
round DP-FedAvg (:mod:`jaxfl.mechanisms.privacy`): each update is clipped to norm C_t, every client
weighs the same, and Delta = (sum_k clip(w_k - w_t) + N(0, (z C_t)^2 I)) / m. ``unseen_clients`` U
keeps the last U clients out of training (they are only evaluated), to measure generalization to
clients the server never saw. Faults (:mod:`jaxfl.mechanisms.faults`): dropout, stragglers, label
flipping and scaled updates. The virtual clock (:mod:`jaxfl.mechanisms.clock`) gives every round a
simulated duration (``sim_time`` is its running total): the round waits for all sampled clients,
the first ``round_first`` of them or until ``round_deadline``; a client it does not wait for counts
as dropped.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxfl.configs.averaging import FedAvgConfig
from jaxfl.configs.specs import SPECS
from jaxfl.core import aggregate, hooks, metrics
from jaxfl.core.algorithm import RoundParts, communication, make_algorithm, sample_clients
from jaxfl.core.names import SERVER_OPTS as SERVER_OPTS  # defined without JAX, for --help
from jaxfl.data.federation import Federation
from jaxfl.mechanisms import clock, faults
from jaxfl.mechanisms.client_round import standard_clients
from jaxfl.mechanisms.uploads import upload_mean
from jaxfl.models import Model

SPEC = SPECS["fedavg"]  # its config and capabilities (jaxfl.configs.specs)


@struct.dataclass
class FedAvgState:
    params: Any  # global model
    opt_state: Any  # server optimizer state
    round: jax.Array  # () int32
    upload_state: Any = None  # the upload mean's (jaxfl.mechanisms.uploads): C_t with --dp-clip
    clock: clock.ClockState | None = None  # virtual time and client speeds (jaxfl.mechanisms.clock)


def flag_server_optimizer(config: FedAvgConfig) -> optax.GradientTransformation:
    """The server optimizer the flags describe (``--server-opt``, ``--server-lr``,
    ``--server-momentum``, ``--server-epsilon``); ``make(server_optimizer=...)`` replaces it.

    FedAdam and FedYogi are optax's Adam and Yogi (bias-corrected, beta1 0.9, beta2 0.999,
    Yogi's moments starting at 1e-6), as the Keras Adam and the TensorFlow Addons Yogi that
    Reddi et al.'s TFF code used; the epsilon is their tau."""
    eps = {} if config.server_epsilon is None else {"eps": config.server_epsilon}
    if config.server_opt == "sgd":
        return optax.sgd(config.server_lr)
    if config.server_opt == "momentum":
        return optax.sgd(config.server_lr, momentum=config.server_momentum)
    if config.server_opt == "adam":
        return optax.adam(config.server_lr, **eps)
    if config.server_opt == "yogi":
        return optax.yogi(config.server_lr, **eps)
    raise ValueError(
        f"unknown --server-opt {config.server_opt!r}; allowed: {', '.join(SERVER_OPTS)}"
    )


def training_clients(config, data: Federation) -> int:
    """C - U: the clients that may be sampled (the last ``unseen_clients`` U never train)."""
    unseen = config.unseen_clients
    m = config.clients_per_round or 1
    if not 0 <= unseen <= data.num_clients - m:
        raise ValueError(
            f"--unseen-clients {unseen} is not allowed; allowed: 0..{data.num_clients - m} "
            f"(--clients {data.num_clients} minus --clients-per-round {m})"
        )
    return data.num_clients - unseen


# what a round not applied (fewer than --min-received uploads) keeps: w_t, the server
# optimizer's state and the upload mean's (DP's adaptive clip norm)
SERVER_STATE = ("params", "opt_state", "upload_state")


def server_update(server_opt, params, opt_state, mean_delta):
    """w_t+1 = w_t + ServerOpt(-Delta): returns (params, opt_state); ``mean_delta`` is the
    aggregated client update Delta. (A round not applied keeps w_t and the optimizer's state:
    the round composition's guard, ``RoundParts(server_state=...)``.)"""
    pseudo_grad = jax.tree.map(jnp.negative, mean_delta)
    updates, new_opt_state = server_opt.update(pseudo_grad, opt_state, params)
    return optax.apply_updates(params, updates), new_opt_state


def make(
    config: FedAvgConfig,
    data: Federation,
    model: Model,
    *,
    fault_config: faults.FaultConfig | None = None,
    seed: int = 0,
    select_clients=sample_clients,
    aggregate_updates=aggregate.weighted_mean,
    client_loss_term=None,
    stream: bool = True,
    client_optimizer: hooks.OptimizerArg | None = None,
    server_optimizer: hooks.OptimizerArg | None = None,
):
    """Bind FedAvg to a federation and a model; returns a FederatedAlgorithm.

    ``client_optimizer`` / ``server_optimizer``: your own optax transformations, or functions
    ``config -> transformation`` that follow swept values (:func:`jaxfl.core.hooks.optimizer`; fresh
    client state every round; the server's state is kept in ``FedAvgState.opt_state``), instead
    of the flags' shortcuts (``--lr``: SGD; ``--server-opt``/``--server-lr``/``--server-momentum``).

    ``fault_config`` and ``seed`` (which draws the fixed adversarial set) simulate faults; the
    three functions customise the round (see the module docstring). With the default weighted
    mean and ``stream`` the clients' updates are summed chunk by chunk instead of stacked
    (``parts.client_update`` then returns a client's weighted update, not its raw one).
    """
    seen = training_clients(config, data)
    m = config.clients_per_round or seen  # with Poisson participation the expected cohort q C
    poisson = getattr(config, "participation", "fixed") == "poisson"
    clients = standard_clients(
        data,
        m,
        fault_config=fault_config,
        attacks=SPEC.attacks,
        seed=seed,
        select_clients=select_clients,
        population=seen,
        participation="poisson" if poisson else "fixed",
    )
    fault_config = clients.fault_config
    server_opt = hooks.optimizer(server_optimizer, config, lambda: flag_server_optimizer(config))
    client_opt = hooks.optimizer(client_optimizer, config, lambda: optax.sgd(config.lr))
    attack = fault_config.attack
    local = (config.batch_size, config.local_epochs)
    # the plain weighted mean streams: each client returns its weighted update and finish gets
    # their sum (memory for one chunk of updates, not m); other aggregators see every update
    streamed = stream and aggregate_updates is aggregate.weighted_mean
    uploads = upload_mean(  # the weighted mean of the updates, or with --dp-clip the private one
        config,
        m,
        custom=None if aggregate_updates is aggregate.weighted_mean else "aggregate_updates",
    )
    clock.check_round(config, m)
    aggregate_hook = hooks.bind(aggregate_updates, config)
    loss_term = hooks.bind(client_loss_term, config)

    def init(key):
        params = model.init(key)
        state = FedAvgState(params, server_opt.init(params), jnp.zeros((), jnp.int32))
        return state.replace(
            upload_state=uploads.init(), clock=clock.init(config, key, data.num_clients)
        )

    def prepare(state, key, data):
        picked = clients.sample(key, data)
        client_args, received = picked.client_args, picked.received
        (inputs,) = client_args
        counts = data.client_count[picked.sampled]
        # the virtual clock: how long each client takes, whom the round waits for
        steps = faults.step_budget(inputs.work, counts, *local)
        durations = clock.durations(state.clock, picked.sampled, steps)
        if poisson:  # a padded slot is nobody: the round does not wait for it, its loss is 0
            durations = jnp.where(picked.present, durations, 0.0)
            counts = counts * picked.present
        received, round_time = clock.move_on(
            durations, received, config.round_deadline, config.round_first
        )
        if streamed:  # each client's weight in the mean, and in the mean train loss
            mean_weights = uploads.client_weights(counts * received, received)
            loss_weights = counts / jnp.maximum(jnp.sum(counts), 1)
            client_args = (*client_args, mean_weights, loss_weights)
        shared = (data, state.params, state.upload_state)
        return shared, client_args, (counts, received, round_time, hooks.round_key(key))

    def client_update(shared, client, *weights):
        data, global_params, upload_state = shared
        trained = clients.train(
            model.apply,
            data,
            global_params,
            client_opt,
            *local,
            client,
            penalty=(lambda p: loss_term(p, global_params)) if loss_term else None,
        )
        delta = jax.tree.map(jnp.subtract, trained.params, global_params)
        losses = (trained.loss, trained.penalty) if loss_term else (trained.loss,)
        if attack == "scaled_update":
            scale = jnp.where(client.is_adversary, fault_config.attack_scale, 1.0)
            delta = jax.tree.map(lambda d: scale * d, delta)
        if not streamed:  # the stacked mean (uploads.mean) takes the raw updates
            return delta, losses
        delta, stats = uploads.client(delta, upload_state)  # with DP: clipped, and its bit
        mean_weight, loss_weight = weights  # this client's terms of the weighted means
        weighted = tuple(loss_weight * x for x in losses)
        stats = tuple(mean_weight * b for b in stats)
        return jax.tree.map(lambda d: mean_weight * d, delta), weighted, *stats

    def finish(state, ctx, outputs, data):
        counts, received, round_time, hook_key = ctx
        applied = uploads.applied(received, fault_config.min_received)
        if streamed:  # sums over the clients, accumulated chunk by chunk
            total, mean_losses, *stats = outputs
            mean_delta, upload_state, upload_metrics = uploads.finish(
                total, stats, state.upload_state, hook_key
            )
        else:
            deltas, losses = outputs
            mean_delta, upload_state, upload_metrics = uploads.mean(
                deltas,
                counts * received,
                received,
                state.upload_state,
                hook_key,
                plain=lambda u, w: aggregate_hook(u, w, key=hook_key),
            )
            mean_losses = tuple(
                jnp.sum(x * counts) / jnp.maximum(jnp.sum(counts), 1) for x in losses
            )
        params, opt_state = server_update(server_opt, state.params, state.opt_state, mean_delta)
        sim_time = state.clock.time + round_time
        new_state = FedAvgState(
            params, opt_state, state.round + 1, upload_state, state.clock.replace(time=sim_time)
        )
        penalty = {"train_penalty": mean_losses[1]} if loss_term else {}
        return new_state, {
            "train_loss": mean_losses[0],
            **penalty,
            "received": jnp.sum(received),
            "applied": applied,
            "sim_time": sim_time,
            **upload_metrics,
        }

    evaluate = metrics.global_model_evaluator(model.apply, config.client_chunk)
    floats = model.num_params
    return make_algorithm(
        "fedavg",
        RoundParts(prepare, client_update, finish, reduced=streamed, server_state=SERVER_STATE),
        init,
        evaluate,
        data,
        clients_per_round=clients.slots,
        participants_per_round=m,
        client_chunk=config.client_chunk,
        communication=communication(floats, floats),
        cohort_by_size=clients.by_size,
        cohort=clients.cohort,  # a function of the round key: the host-side store can gather it
    )
