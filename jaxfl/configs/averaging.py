"""The configs of the model-averaging family: FedAvg and the algorithms that change its client
objective (FedProx, FedDyn, MOON), its aggregation (FedNova, IncFL), its server (SCAFFOLD) or its
timing (FedBuff). Each field is a setting (:func:`jaxfl.configs.fields.setting`): its help and
allowed values are the command line's."""

from __future__ import annotations

import dataclasses

from jaxfl.configs import shared
from jaxfl.configs.fields import setting
from jaxfl.configs.shared import (
    ClockFields,
    DPFields,
    LocalTrainingFields,
    ParticipationFields,
    ServerOptFields,
)
from jaxfl.core.names import INCFL_RULES


@dataclasses.dataclass(frozen=True)
class FedAvgFields(DPFields):
    """FedAvg's settings without the virtual clock: the base of an algorithm that reuses
    FedAvg's client and server steps but composes its own round without the clock (IncFL)."""

    clients_per_round: int | None = shared.clients_per_round()
    local_epochs: int = shared.local_epochs(1)
    batch_size: int = shared.batch_size()
    lr: float = shared.lr()
    server_opt: str = shared.server_opt()
    server_lr: float = shared.server_lr()
    server_momentum: float = shared.server_momentum()
    server_epsilon: float | None = shared.server_epsilon()
    client_chunk: int | None = shared.client_chunk()
    unseen_clients: int = shared.unseen_clients()


@dataclasses.dataclass(frozen=True)
class FedAvgConfig(FedAvgFields, ClockFields, ParticipationFields):
    """FedAvg's settings, the virtual clock's (its round waits for, or moves on from, the
    clients' simulated arrivals: :mod:`jaxfl.mechanisms.clock`) and the participation's (fixed
    or Poisson cohorts: :mod:`jaxfl.mechanisms.client_round`)."""


@dataclasses.dataclass(frozen=True)
class FedProxConfig(FedAvgConfig):
    prox_mu: float = setting(
        0.01,
        "mu of the proximal term (mu/2)||w - w_t||^2 added to every local loss (the paper tries "
        "0.001 to 1)",
        check=">= 0",
    )


@dataclasses.dataclass(frozen=True)
class FedBuffConfig(ClockFields):
    concurrency: int | None = setting(
        None,
        "M, clients training at once, each from the model version it downloaded",
        check=">= 1",
        default_help="--clients-per-round, else every client",
    )
    buffer: int | None = setting(
        None,
        "K, the server applies an update when K uploads have arrived (1..M; 1 is FedAsync)",
        check=">= 1",
        default_help="max(1, M // 5)",
    )
    staleness: str = setting(
        "polynomial:0.5",
        "staleness weight s(tau) of an update tau server steps old: constant, polynomial:A "
        "((1+tau)^-A), hinge:A:B (1 up to B, then 1/(A(tau-B)+1)); polynomial:0.5 is FedBuff's",
    )
    clients_per_round: int | None = shared.clients_per_round("every client; the default of M")
    local_epochs: int = shared.local_epochs(1)
    batch_size: int = shared.batch_size()
    lr: float = shared.lr()
    server_opt: str = shared.server_opt()
    server_lr: float = shared.server_lr()
    server_momentum: float = shared.server_momentum()
    server_epsilon: float | None = shared.server_epsilon()
    client_chunk: int | None = shared.client_chunk()


@dataclasses.dataclass(frozen=True)
class ScaffoldConfig(LocalTrainingFields):
    server_lr: float = shared.server_lr()  # eta_g


@dataclasses.dataclass(frozen=True)
class FedNovaConfig(LocalTrainingFields, ServerOptFields):
    """FedNova has no settings of its own: the local training's and FedAvg's server's."""


@dataclasses.dataclass(frozen=True)
class FedDynConfig(LocalTrainingFields):
    feddyn_alpha: float = setting(
        0.01,
        "alpha of the dynamic regularizer -<g_k, w> + alpha/2 ||w - w_t||^2 (the paper uses 0.1, "
        "0.01, 0.001)",
        check="> 0",
    )


@dataclasses.dataclass(frozen=True)
class MoonConfig(LocalTrainingFields, ServerOptFields, DPFields):
    moon_mu: float = setting(
        1.0,
        "mu, the weight of the model-contrastive loss (the paper: 5 on CIFAR-10, 1 on CIFAR-100)",
        check=">= 0",
    )
    moon_temperature: float = setting(0.5, "tau, the contrastive loss's temperature", check="> 0")


@dataclasses.dataclass(frozen=True)
class IncFLConfig(FedAvgFields):
    incfl_rule: str = setting(
        INCFL_RULES[0],
        "the aggregation rule. maxfl: MaxFL's q_k = s(1 - s), s = sigmoid(c x_k), x_k = "
        "F_k(w_t) - F_k(local), step eta_g (--server-lr) sum q_k (w_k - w_t) / (sum q_k + eps); "
        "bump: the earlier n_k-weighted bump of width --incfl-tau with floor --incfl-floor",
        choices=INCFL_RULES,
    )
    incfl_c: float = setting(1.0, "maxfl: sharpness c of the sigmoid, in 1/loss units", check="> 0")
    incfl_eps: float = setting(
        1e-3, "maxfl: eps added to sum_k q_k in the step's denominator", check=">= 0"
    )
    incfl_tau: float = setting(
        0.5,
        "bump: width tau (in loss units) of the weight bump around F_k(w) = F_k(local)",
        check="> 0",
    )
    incfl_floor: float = setting(
        0.05,
        "bump: the smallest aggregation weight, as a fraction of n_k (1 is FedAvg)",
        check="[0, 1]",
    )
