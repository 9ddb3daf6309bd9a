"""SCAFFOLD (Karimireddy, Kale, Mohri, Reddi, Stich, Suresh; ICML 2020), option II.

Control variates correct the client drift of local SGD. The server keeps the model x and a
control variate c; client i keeps its own c_i (all zero at the start). Per round, for i in S:

    y_i <- x;  K steps of  y_i <- y_i - eta_l (g_i(y_i) - c_i + c)       (corrected local SGD)
    c_i+ = c_i - c + (x - y_i) / (K eta_l)                                  (option II)
    upload (Delta y_i, Delta c_i) = (y_i - x, c_i+ - c_i);  c_i <- c_i+
    x <- x + eta_g (1/|S|) sum_i Delta y_i
    c <- c + (1/N) sum_i Delta c_i          ( = c + |S|/N * mean_i Delta c_i )

The correction is the gradient of the linear term <c - c_i, y> added to each local batch loss,
so local training is the same masked minibatch SGD as everywhere else (K is the number of steps
a client actually took: its data size, epochs and any straggler budget). The means are uniform
over the clients whose uploads arrive, as in the paper; a dropped client's c_i is not updated
(the server never learns it). ``train_loss`` is the data loss. SCAFFOLD's client optimizer is
plain SGD at ``--lr`` (option II's c_i+ assumes it); the server step is ``--server-lr``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxfl.algorithms.fedavg import server_update
from jaxfl.configs.averaging import ScaffoldConfig
from jaxfl.configs.specs import SPECS
from jaxfl.core import hooks, metrics
from jaxfl.core.algorithm import (
    RoundParts,
    communication,
    gather,
    make_algorithm,
    sample_clients,
    scatter_kept,
)
from jaxfl.core.train import tree_vdot
from jaxfl.data.federation import Federation
from jaxfl.mechanisms import faults
from jaxfl.mechanisms.client_round import standard_clients
from jaxfl.mechanisms.personalization import broadcast_clients
from jaxfl.models import Model

SPEC = SPECS["scaffold"]  # its config and capabilities (jaxfl.configs.specs)


@struct.dataclass
class ScaffoldState:
    params: Any  # x, the server model
    opt_state: Any  # the server optimizer's state (plain SGD at eta_g: empty)
    control: Any  # c, the server control variate (params' shapes)
    client_controls: Any  # c_i for every client, leading (C,) axis
    round: jax.Array  # () int32


def corrected_control(c_i, c, x, y, steps, lr):
    """Option II: c_i+ = c_i - c + (x - y) / (K eta_l); c_i unchanged when K = 0."""
    scale = 1.0 / (jnp.maximum(steps, 1) * lr)
    new = jax.tree.map(lambda ci, cg, xx, yy: ci - cg + (xx - yy) * scale, c_i, c, x, y)
    return faults.select(steps > 0, new, c_i)


def make(
    config: ScaffoldConfig,
    data: Federation,
    model: Model,
    *,
    fault_config: faults.FaultConfig | None = None,
    seed: int = 0,
    select_clients=sample_clients,
    client_optimizer: hooks.OptimizerArg | None = None,
    server_optimizer: hooks.OptimizerArg | None = None,
):
    """Bind SCAFFOLD to a federation and a model; returns a FederatedAlgorithm.

    ``client_optimizer`` / ``server_optimizer``: optax transformations (or functions of the
    config, :func:`jaxfl.core.hooks.optimizer`) instead of SGD at ``--lr`` (eta_l) and SGD at
    ``--server-lr`` (eta_g) on -Delta x. Option II's c_i+ divides by K eta_l with eta_l =
    ``--lr`` whatever the client optimizer (the paper's derivation assumes plain SGD)."""
    m = config.clients_per_round or data.num_clients
    clients = standard_clients(
        data,
        m,
        fault_config=fault_config,
        attacks=SPEC.attacks,
        seed=seed,
        select_clients=select_clients,
    )
    local = (config.batch_size, config.local_epochs)
    client_opt = hooks.optimizer(client_optimizer, config, lambda: optax.sgd(config.lr))
    num_clients = data.num_clients

    server_opt = hooks.optimizer(server_optimizer, config, lambda: optax.sgd(config.server_lr))

    def init(key):
        params = model.init(key)
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ScaffoldState(
            params,
            server_opt.init(params),
            zeros,
            broadcast_clients(zeros, num_clients),
            jnp.zeros((), jnp.int32),
        )

    def prepare(state, key, data):
        picked = clients.sample(key, data, state.client_controls)
        shared = (data, state.params, state.control)
        counts = data.client_count[picked.sampled]
        return shared, picked.client_args, (picked.sampled, picked.received, counts)

    def client_update(shared, c_i, client):
        data, x, c = shared
        correction = jax.tree.map(jnp.subtract, c, c_i)  # the gradient of <c - c_i, y>
        trained = clients.train(
            model.apply, data, x, client_opt, *local, client,
            penalty=lambda y: tree_vdot(correction, y),
        )  # fmt: skip
        c_new = corrected_control(c_i, c, x, trained.params, trained.steps, config.lr)
        delta_y = jax.tree.map(jnp.subtract, trained.params, x)
        return delta_y, c_new, trained.loss  # Delta c_i = c_new - c_i: in finish

    def finish(state, ctx, outputs, data):
        sampled, received, counts = ctx
        delta_y, c_new, losses = outputs
        delta_c = jax.tree.map(jnp.subtract, c_new, gather(state.client_controls, sampled))
        applied = faults.applied(received, clients.fault_config.min_received)
        arrived = received.astype(jnp.float32)
        mean_over_arrived = lambda d: jnp.tensordot(arrived, d, 1) / jnp.maximum(arrived.sum(), 1)
        mean_delta = jax.tree.map(mean_over_arrived, delta_y)
        x, opt_state = server_update(server_opt, state.params, state.opt_state, mean_delta)
        c = jax.tree.map(lambda p, d: p + jnp.tensordot(arrived, d, 1) / num_clients,
                         state.control, delta_c)  # fmt: skip
        new_state = ScaffoldState(
            x,
            opt_state,
            c,
            scatter_kept(state.client_controls, sampled, c_new, received),
            state.round + 1,
        )
        return new_state, {
            "train_loss": jnp.sum(losses * counts) / jnp.sum(counts),
            "received": jnp.sum(received),
            "applied": applied,
        }

    floats = model.num_params
    return make_algorithm(
        "scaffold",
        # a round not applied keeps x, c and every client's c_i
        RoundParts(
            prepare,
            client_update,
            finish,
            server_state=("params", "opt_state", "control", "client_controls"),
        ),
        init,
        metrics.global_model_evaluator(model.apply, config.client_chunk),
        data,
        clients_per_round=m,
        client_chunk=config.client_chunk,
        communication=communication(2 * floats, 2 * floats),  # (Delta y, Delta c) / (x, c)
        cohort_by_size=clients.by_size,
        cohort=clients.cohort,  # a function of the round key: the host-side store can gather it
    )
