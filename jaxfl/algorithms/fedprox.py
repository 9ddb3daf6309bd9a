"""FedProx (Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith; MLSys 2020).

FedAvg whose clients minimise a proximal objective around the round's global model w_t:

    h_k(w; w_t) = F_k(w) + (mu/2) ||w - w_t||^2            (every local step's loss)
    w_k   = LocalSGD_k(h_k; from w_t, E epochs, batch B, lr eta)   for k in S_t
    w_t+1 = w_t + ServerOpt(-sum_k n_k (w_k - w_t) / sum_k n_k)    (FedAvg's server)

The paper's partial work (gamma-inexact solutions: a device does fewer local steps and its
update still counts) is ``--straggler-fraction`` / ``--straggler-work``. mu = 0 is FedAvg.
Everything but the proximal term is FedAvg's (:mod:`jaxfl.algorithms.fedavg`): sampling,
faults, DP (the proximal term changes what a client trains, not what it uploads), the virtual
clock, the server optimizer; ``train_penalty`` reports the mean proximal term.
"""

from __future__ import annotations

import dataclasses

from jaxfl.algorithms import fedavg
from jaxfl.configs.averaging import FedProxConfig
from jaxfl.configs.specs import SPECS
from jaxfl.core import aggregate, hooks, train
from jaxfl.core.algorithm import sample_clients
from jaxfl.data.federation import Federation
from jaxfl.mechanisms import faults
from jaxfl.models import Model

SPEC = SPECS["fedprox"]  # its config and capabilities (jaxfl.configs.specs)


def proximal_term(params, global_params, hparams: FedProxConfig):
    """(mu/2) ||w - w_t||^2, added to every local batch loss; ``hparams`` is the (possibly
    traced, in a sweep) config."""
    return train.prox_term(params, global_params, hparams.prox_mu)


def make(
    config: FedProxConfig,
    data: Federation,
    model: Model,
    *,
    fault_config: faults.FaultConfig | None = None,
    seed: int = 0,
    select_clients=sample_clients,
    aggregate_updates=aggregate.weighted_mean,
    stream: bool = True,
    client_optimizer: hooks.OptimizerArg | None = None,
    server_optimizer: hooks.OptimizerArg | None = None,
):
    """Bind FedProx: FedAvg's :func:`jaxfl.algorithms.fedavg.make` (the same arguments) with
    :func:`proximal_term` as every client's loss term."""
    algorithm = fedavg.make(
        config,
        data,
        model,
        fault_config=fault_config,
        seed=seed,
        select_clients=select_clients,
        aggregate_updates=aggregate_updates,
        client_loss_term=proximal_term,
        stream=stream,
        client_optimizer=client_optimizer,
        server_optimizer=server_optimizer,
    )
    return dataclasses.replace(algorithm, name="fedprox")
