"""The configs of the personalization baselines (Motley, Wu et al. 2022): local-only training,
FedAvg + fine-tuning, Ditto, MR-MTL, HypCluster and Per-FedAvg. Each field is a setting
(:func:`jaxfl.configs.fields.setting`): its help and allowed values are the command line's."""

from __future__ import annotations

import dataclasses

from jaxfl.configs import shared
from jaxfl.configs.averaging import FedAvgConfig
from jaxfl.configs.fields import setting
from jaxfl.configs.shared import DPFields
from jaxfl.core.names import FINETUNE_LAYERS


@dataclasses.dataclass(frozen=True)
class LocalConfig:
    clients_per_round: int | None = shared.clients_per_round()
    local_epochs: int = shared.local_epochs(1)
    batch_size: int = shared.batch_size()
    lr: float = shared.lr()
    client_chunk: int | None = shared.client_chunk()


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(FedAvgConfig):
    finetune_epochs: str = setting(
        "0,1,2,5",
        "candidate fine-tuning epochs, comma-separated; the one with the best mean accuracy on "
        "the clients' validation splits is used (0 = no fine-tuning)",
    )
    finetune_layers: str = setting(
        "all", "layers to fine-tune (last: the output layer only)", choices=FINETUNE_LAYERS
    )
    finetune_lr: float | None = setting(None, "fine-tuning lr", check="> 0", default_help="--lr")


@dataclasses.dataclass(frozen=True)
class DittoConfig(DPFields):
    clients_per_round: int | None = shared.clients_per_round()
    local_epochs: int = shared.local_epochs(1)
    batch_size: int = shared.batch_size()
    lr: float = shared.lr()
    ditto_lambda: float = setting(
        0.1, "lambda of the personal objective f_k(v) + lambda/2 ||v - w||^2", check=">= 0"
    )
    personal_epochs: int | None = setting(
        None,
        "epochs of the personal update per round",
        check=">= 1",
        default_help="--local-epochs",
    )
    personal_lr: float | None = setting(
        None, "personal-update lr", check="> 0", default_help="--lr"
    )
    server_opt: str = shared.server_opt()
    server_lr: float = shared.server_lr()
    server_momentum: float = shared.server_momentum()
    server_epsilon: float | None = shared.server_epsilon()
    client_chunk: int | None = shared.client_chunk()


@dataclasses.dataclass(frozen=True)
class MRMTLConfig:
    clients_per_round: int | None = shared.clients_per_round()
    local_epochs: int = shared.local_epochs(1)
    batch_size: int = shared.batch_size()
    lr: float = shared.lr()
    mrmtl_lambda: float = setting(
        0.1, "lambda of f_k(v) + lambda/2 ||v - mean of the personal models||^2", check=">= 0"
    )
    client_chunk: int | None = shared.client_chunk()


@dataclasses.dataclass(frozen=True)
class HypClusterConfig:
    clients_per_round: int | None = shared.clients_per_round()
    local_epochs: int = shared.local_epochs(1)
    batch_size: int = shared.batch_size()
    lr: float = shared.lr()
    num_clusters: int = setting(2, "cluster models K", check=">= 1")
    cluster_warmup: float = setting(
        0.0,
        "fraction of --rounds in which clients join a random cluster before choosing by loss",
        check="[0, 1]",
    )
    rounds: int = setting(
        1, "the run's length, to place the warm-up's end (--rounds)", check=">= 1", flag=False
    )
    client_chunk: int | None = shared.client_chunk()


@dataclasses.dataclass(frozen=True)
class PerFedAvgConfig(DPFields):
    clients_per_round: int | None = shared.clients_per_round()
    local_epochs: int = shared.local_epochs(1)
    batch_size: int = shared.batch_size()
    lr: float = shared.lr()
    meta_lr: float | None = setting(
        None,
        "inner (personalization) step size alpha",
        check="> 0",
        default_help="--lr",
    )
    personal_steps: int = setting(
        1,
        "gradient steps a client takes from the global model before it is evaluated",
        check=">= 0",
    )
    server_opt: str = shared.server_opt()
    server_lr: float = shared.server_lr()
    server_momentum: float = shared.server_momentum()
    server_epsilon: float | None = shared.server_epsilon()
    client_chunk: int | None = shared.client_chunk()
